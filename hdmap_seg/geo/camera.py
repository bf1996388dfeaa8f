"""Camera model (OpenCV's, with distortion) and camera -> vehicle -> world.

Pixel coordinates follow OpenCV: ``(u, v)`` with pixel centres on integers, ``u`` to the right,
``v`` down. The ``cam`` frame is OpenCV's (x right, y down, z forward). Rays meet the ground in
:mod:`hdmap_seg.geo.ground`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from hdmap_seg.errors import HdmapError
from hdmap_seg.geo.frames import invert_transform

_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)


@dataclass(frozen=True, eq=False)
class CameraModel:
    """A pinhole camera with OpenCV distortion, mounted on the vehicle.

    ``K`` 3x3 intrinsics; ``dist`` OpenCV coefficients ``(k1, k2, p1, p2[, k3[, k4, k5, k6]])``, empty
    for an undistorted (e.g. KITTI rectified) image; ``T_vehicle_from_cam`` the mounting;
    ``ground_offset_m`` the height of the vehicle's reference point above the ground.
    """

    K: np.ndarray
    width: int
    height: int
    dist: np.ndarray = field(default_factory=lambda: np.zeros(0))
    T_vehicle_from_cam: np.ndarray = field(default_factory=lambda: np.eye(4))
    ground_offset_m: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "K", np.asarray(self.K, float).reshape(3, 3))
        object.__setattr__(self, "dist", np.asarray(self.dist, float).ravel())
        object.__setattr__(
            self, "T_vehicle_from_cam", np.asarray(self.T_vehicle_from_cam, float).reshape(4, 4)
        )
        if self.dist.size not in (0, 4, 5, 8):
            raise HdmapError(f"camera distortion must have 0, 4, 5 or 8 coefficients, got {self.dist.size}")

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return self.width, self.height

    @property
    def focal_px(self) -> float:
        """Mean focal length in pixels (for pixel <-> metre error budgets)."""
        return float(0.5 * (self.K[0, 0] + self.K[1, 1]))

    @property
    def has_distortion(self) -> bool:
        return bool(np.any(self.dist != 0))

    def check_mask(self, mask: np.ndarray, source: str) -> None:
        """A clear error when a mask's size is not the camera's."""
        if mask.ndim != 2 or mask.shape != (self.height, self.width):
            raise HdmapError(
                f"{source}: mask is {mask.shape[1] if mask.ndim >= 2 else '?'}x{mask.shape[0]}"
                f"{'' if mask.ndim == 2 else f' with {mask.ndim} dims'}, the camera's images are "
                f"{self.width}x{self.height} (single-channel class ids expected)"
            )

    def normalized_from_pixels(self, uv: np.ndarray) -> np.ndarray:
        """``(N, 2)`` pixels -> ``(N, 2)`` undistorted normalised coordinates ``(x/z, y/z)``."""
        uv = np.asarray(uv, np.float64).reshape(-1, 2)
        if not self.has_distortion:
            return (uv - self.K[:2, 2]) / np.diag(self.K)[:2]
        # OpenCV's default stops after 5 iterations (1e-5 rad off at wide angles); iterate to 1e-10.
        pts = uv.reshape(-1, 1, 2)
        return cv2.undistortPoints(pts, self.K, self.dist, None, None, None, _UNDISTORT_CRITERIA).reshape(
            -1, 2
        )

    def pixels_from_normalized(self, xy: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`normalized_from_pixels` (applies distortion)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        if not self.has_distortion:
            return xy * np.diag(self.K)[:2] + self.K[:2, 2]
        pts = np.concatenate([xy, np.ones((len(xy), 1))], axis=1).reshape(-1, 1, 3)
        uv, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), self.K, self.dist)
        return uv.reshape(-1, 2)

    def project(self, p_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, 3)`` points in ``cam`` -> ``(N, 2)`` pixels and ``(N,)`` in-front flags (z > 0)."""
        p_cam = np.asarray(p_cam, np.float64).reshape(-1, 3)
        in_front = p_cam[:, 2] > 1e-9
        z = np.where(in_front, p_cam[:, 2], 1.0)
        return self.pixels_from_normalized(p_cam[:, :2] / z[:, None]), in_front

    def rays_cam(self, uv: np.ndarray) -> np.ndarray:
        """``(N, 2)`` pixels -> ``(N, 3)`` unit ray directions in ``cam``."""
        xy = self.normalized_from_pixels(uv)
        d = np.concatenate([xy, np.ones((len(xy), 1))], axis=1)
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    def ground_z_m(self, T_world_from_cam: np.ndarray) -> float:
        """World height of the ground under the vehicle that carries the camera at this pose."""
        T_world_from_vehicle = T_world_from_cam @ invert_transform(self.T_vehicle_from_cam)
        return float(T_world_from_vehicle[2, 3] - self.ground_offset_m)
