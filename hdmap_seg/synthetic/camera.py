"""The camera rig the synthetic world is rendered with: KITTI's calibration, or a variant of it.

A rig is a :class:`~hdmap_seg.geo.kitti.KittiCalib` (the three ``calib_*.txt`` files) plus the
index of the rendered camera and the height of the OXTS unit above the ground. Drive logs carry
those files, so that ``KittiCalib.read(log).rect_camera(2)`` gives back exactly the pinhole
``K`` and ``T_cam_from_imu`` the frames were rendered with.

The default is KITTI's left colour camera ``image_02`` as calibrated on 2011-09-26 (the numbers
below are those of ``calib_*.txt`` of that day, KITTI raw, CC BY-NC-SA 3.0; a test compares them
with ../shared/data/kitti_raw_sample): 1242x375, camera 1.65 m and OXTS unit 0.93 m above the
ground. ``wide1024`` is the same car with a 1024x512 image of the same horizontal field of view.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from hdmap_seg.errors import HdmapError
from hdmap_seg.geo.frames import make_transform
from hdmap_seg.geo.kitti import KITTI_IMU_HEIGHT_M, CameraCalib, CamToCamCalib, KittiCalib, RigidCalib

# calib_cam_to_cam.txt of 2011_09_26: per camera S, K, D, R, T, S_rect, R_rect, P_rect (row-major).
_KITTI_CAMS = {
    0: (
        [1.392e03, 5.12e02],
        [9.842439e02, 0, 6.9e02, 0, 9.808141e02, 2.331966e02, 0, 0, 1],
        [-3.728755e-01, 2.037299e-01, 2.219027e-03, 1.383707e-03, -7.233722e-02],
        [1, 0, 0, 0, 1, 0, 0, 0, 1],
        [2.573699e-16, -1.059758e-16, 1.61487e-16],
        [
            9.999239e-01,
            9.83776e-03,
            -7.445048e-03,
            -9.869795e-03,
            9.999421e-01,
            -4.278459e-03,
            7.402527e-03,
            4.351614e-03,
            9.999631e-01,
        ],
        [7.215377e02, 0, 6.095593e02, 0, 0, 7.215377e02, 1.72854e02, 0, 0, 0, 1, 0],
    ),
    1: (
        [1.392e03, 5.12e02],
        [9.895267e02, 0, 7.02e02, 0, 9.878386e02, 2.45559e02, 0, 0, 1],
        [-3.644661e-01, 1.790019e-01, 1.148107e-03, -6.298563e-04, -5.314062e-02],
        [
            9.993513e-01,
            1.860866e-02,
            -3.083487e-02,
            -1.887662e-02,
            9.997863e-01,
            -8.421873e-03,
            3.067156e-02,
            8.998467e-03,
            9.99489e-01,
        ],
        [-5.37e-01, 4.822061e-03, -1.252488e-02],
        [
            9.996878e-01,
            -8.976826e-03,
            2.331651e-02,
            8.876121e-03,
            9.999508e-01,
            4.418952e-03,
            -2.335503e-02,
            -4.210612e-03,
            9.997184e-01,
        ],
        [7.215377e02, 0, 6.095593e02, -3.875744e02, 0, 7.215377e02, 1.72854e02, 0, 0, 0, 1, 0],
    ),
    2: (
        [1.392e03, 5.12e02],
        [9.59791e02, 0, 6.960217e02, 0, 9.569251e02, 2.241806e02, 0, 0, 1],
        [-3.691481e-01, 1.968681e-01, 1.353473e-03, 5.677587e-04, -6.770705e-02],
        [
            9.999758e-01,
            -5.267463e-03,
            -4.552439e-03,
            5.251945e-03,
            9.999804e-01,
            -3.413835e-03,
            4.570332e-03,
            3.389843e-03,
            9.999838e-01,
        ],
        [5.956621e-02, 2.900141e-04, 2.577209e-03],
        [
            9.998817e-01,
            1.511453e-02,
            -2.841595e-03,
            -1.511724e-02,
            9.998853e-01,
            -9.33851e-04,
            2.827154e-03,
            9.766976e-04,
            9.999955e-01,
        ],
        [
            7.215377e02,
            0,
            6.095593e02,
            4.485728e01,
            0,
            7.215377e02,
            1.72854e02,
            2.163791e-01,
            0,
            0,
            1,
            2.745884e-03,
        ],
    ),
    3: (
        [1.392e03, 5.12e02],
        [9.037596e02, 0, 6.957519e02, 0, 9.019653e02, 2.242509e02, 0, 0, 1],
        [-3.639558e-01, 1.788651e-01, 6.029694e-04, -3.922424e-04, -5.38246e-02],
        [
            9.995599e-01,
            1.699522e-02,
            -2.431313e-02,
            -1.704422e-02,
            9.998531e-01,
            -1.809756e-03,
            2.42788e-02,
            2.223358e-03,
            9.997028e-01,
        ],
        [-4.73105e-01, 5.55147e-03, -5.250882e-03],
        [
            9.998321e-01,
            -7.193136e-03,
            1.685599e-02,
            7.232804e-03,
            9.999712e-01,
            -2.293585e-03,
            -1.683901e-02,
            2.415116e-03,
            9.998553e-01,
        ],
        [
            7.215377e02,
            0,
            6.095593e02,
            -3.395242e02,
            0,
            7.215377e02,
            1.72854e02,
            2.199936e00,
            0,
            0,
            1,
            2.729905e-03,
        ],
    ),
}
_KITTI_S_RECT = [1.242e03, 3.75e02]
# calib_imu_to_velo.txt (T_velo_from_imu) and calib_velo_to_cam.txt (T_cam0_from_velo) of 2011_09_26.
_KITTI_IMU_TO_VELO = (
    [
        9.999976e-01,
        7.553071e-04,
        -2.035826e-03,
        -7.854027e-04,
        9.998898e-01,
        -1.482298e-02,
        2.024406e-03,
        1.482454e-02,
        9.998881e-01,
    ],
    [-8.086759e-01, 3.195559e-01, -7.997231e-01],
)
_KITTI_VELO_TO_CAM = (
    [
        7.533745e-03,
        -9.999714e-01,
        -6.16602e-04,
        1.480249e-02,
        7.280733e-04,
        -9.998902e-01,
        9.998621e-01,
        7.52379e-03,
        1.480755e-02,
    ],
    [-4.069766e-03, -7.631618e-02, -2.717806e-01],
)


def kitti_calib_2011_09_26() -> KittiCalib:
    """KITTI's calibration of 2011-09-26 (all four cameras), as its ``calib_*.txt`` files hold it."""
    cams = {}
    for idx, (S, K, D, R, T, R_rect, P_rect) in _KITTI_CAMS.items():
        cams[idx] = CameraCalib(
            S=np.array(S, float),
            K=np.array(K, float).reshape(3, 3),
            D=np.array(D, float),
            R=np.array(R, float).reshape(3, 3),
            T=np.array(T, float),
            S_rect=np.array(_KITTI_S_RECT, float),
            R_rect=np.array(R_rect, float).reshape(3, 3),
            P_rect=np.array(P_rect, float).reshape(3, 4),
        )
    return KittiCalib(
        CamToCamCalib(cams, calib_time="09-Jan-2012 13:57:47", corner_dist=9.95e-02),
        RigidCalib(
            np.array(_KITTI_IMU_TO_VELO[0]).reshape(3, 3),
            np.array(_KITTI_IMU_TO_VELO[1]),
            calib_time="25-May-2012 16:47:16",
        ),
        RigidCalib(
            np.array(_KITTI_VELO_TO_CAM[0]).reshape(3, 3),
            np.array(_KITTI_VELO_TO_CAM[1]),
            calib_time="15-Mar-2012 11:37:16",
            extra={"delta_f": np.zeros(2), "delta_c": np.zeros(2)},
        ),
    )


@dataclass(frozen=True)
class CameraRig:
    """A calibrated car: the KITTI files, which camera is rendered, and the OXTS unit's height.

    ``K`` is 3x3, ``T_cam_from_imu`` 4x4 (``cam`` = the rectified frame of camera ``cam_index``,
    OpenCV axes), ``width``/``height`` in pixels; all derived from ``calib`` by the geo reader's
    own :meth:`~hdmap_seg.geo.kitti.KittiCalib.rect_camera`.
    """

    name: str
    calib: KittiCalib
    cam_index: int = 2
    imu_height_m: float = KITTI_IMU_HEIGHT_M

    @functools.cached_property
    def _rect(self) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        return self.calib.rect_camera(self.cam_index)

    @property
    def K(self) -> np.ndarray:
        return self._rect[0]

    @property
    def T_cam_from_imu(self) -> np.ndarray:
        return self._rect[1]

    @property
    def width(self) -> int:
        return self._rect[2][0]

    @property
    def height(self) -> int:
        return self._rect[2][1]

    @property
    def camera_height_m(self) -> float:
        """Height of the optical centre above the ground when the car stands level."""
        T_imu_from_cam = np.linalg.inv(self.T_cam_from_imu)
        return float(self.imu_height_m + T_imu_from_cam[2, 3])

    def with_intrinsics(self, K: np.ndarray, size: tuple[int, int], name: str) -> CameraRig:
        """The same car with every rectified camera's ``K`` and image size replaced.

        Each camera keeps its baseline: ``P_rect_0x = K @ [I | t_x]`` with ``t_x`` unchanged.
        """
        cams = {}
        for idx, cam in self.calib.cam_to_cam.cameras.items():
            t = np.linalg.solve(cam.P_rect[:, :3], cam.P_rect[:, 3])
            P = np.asarray(K, float) @ make_transform(np.eye(3), t)[:3]
            cams[idx] = dataclasses.replace(cam, P_rect=P, S_rect=np.array(size, float))
        c2c = dataclasses.replace(self.calib.cam_to_cam, cameras=cams)
        return dataclasses.replace(self, name=name, calib=dataclasses.replace(self.calib, cam_to_cam=c2c))

    def scaled(self, factor: float) -> CameraRig:
        """The rig whose images are this rig's resized by ``factor`` (pixel centres kept aligned)."""
        if not 0.05 <= factor <= 4.0:
            raise HdmapError(f"camera scale must be in [0.05, 4], got {factor}")
        if factor == 1.0:
            return self
        size = (int(round(self.width * factor)), int(round(self.height * factor)))
        sx, sy = size[0] / self.width, size[1] / self.height
        A = np.array([[sx, 0, 0.5 * (sx - 1)], [0, sy, 0.5 * (sy - 1)], [0, 0, 1.0]])
        return self.with_intrinsics(A @ self.K, size, f"{self.name}@{factor:g}")


def kitti_rig() -> CameraRig:
    """KITTI's ``image_02`` (1242x375) on KITTI's car."""
    return CameraRig("kitti", kitti_calib_2011_09_26())


def wide1024_rig() -> CameraRig:
    """KITTI's car with a 1024x512 camera of the same horizontal field of view (81 deg).

    The principal point sits above the image centre (row 220 of 512) so that more of the
    ground than of the sky is in view.
    """
    base = kitti_rig()
    f = base.K[0, 0] * 1024 / base.width
    K = np.array([[f, 0.0, base.K[0, 2] * 1024 / base.width], [0.0, f, 220.0], [0.0, 0.0, 1.0]])
    return base.with_intrinsics(K, (1024, 512), "wide1024")


RIGS = {"kitti": kitti_rig, "wide1024": wide1024_rig}


def rig_by_name(name: str, scale: float = 1.0) -> CameraRig:
    """One of :data:`RIGS` (``kitti``, ``wide1024``), optionally resized by ``scale``."""
    if name not in RIGS:
        raise HdmapError(f"unknown camera {name!r}; choose one of {sorted(RIGS)}")
    return RIGS[name]().scaled(scale)
