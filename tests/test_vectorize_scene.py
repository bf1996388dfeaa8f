"""A hand-made scene for the vectorization tests, drawn with OpenCV from known 3D geometry.

Independent of the synthetic world (hdmap_seg.synthetic): poles are vertical cylinders (the hull
of their end circles), signs flat discs, medians ground polygons; every shape is densified in 3D, clipped at
the camera's near plane and projected with cv2.projectPoints (distortion included), far to near.
The tests in this file check the drawing itself against the projection of known points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import pytest

from hdmap_seg.geo.camera import CameraModel
from hdmap_seg.geo.frames import LocalFrame, invert_transform, make_transform, rotation_from_rpy

ORIGIN = LocalFrame(49.0, 8.4, 110.0)
IMU_HEIGHT_M = 0.93
# OpenCV camera axes in the vehicle frame (x forward, y left, z up): z_cam -> x, x_cam -> -y, y_cam -> -z.
R_VEHICLE_FROM_CAM = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
POLE, SIGN, MEDIAN, LANE_MARKING, ROAD = 4, 5, 3, 2, 1
_FINE = 3  # render_mask draws this many times finer and keeps each pixel's centre sample


def kitti_like_camera(dist=(), width: int = 1242, height: int = 375) -> CameraModel:
    """KITTI's rectified colour camera: f 721.5 px, 0.72 m above the OXTS unit, 1.08 m ahead of it."""
    K = np.array([[721.5377, 0.0, 609.5593], [0.0, 721.5377, 172.854], [0.0, 0.0, 1.0]])
    T = make_transform(R_VEHICLE_FROM_CAM, [1.08, -0.25, 0.72])
    return CameraModel(K, width, height, np.asarray(dist, float), T, IMU_HEIGHT_M)


@dataclass
class Scene:
    poles: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # x, y, radius, height
    signs: np.ndarray = field(
        default_factory=lambda: np.zeros((0, 5))
    )  # x, y, z centre, diameter, facing yaw
    medians: list = field(default_factory=list)  # (M, 2) ground polygons, world xy
    markings: list = field(default_factory=list)  # (M, 2) ground polygons of paint on the road, world xy


def default_scene() -> Scene:
    """Poles both sides of a road along +x, signs on posts, a median strip with a gap."""
    xs = np.arange(8.0, 100.0, 13.0)
    right = np.stack([xs, np.full_like(xs, -7.5), np.full_like(xs, 0.12), np.full_like(xs, 8.0)], 1)
    left = np.stack(
        [xs[1::2] + 4, np.full_like(xs[1::2], 9.0), np.full_like(xs[1::2], 0.1), np.full_like(xs[1::2], 6.0)],
        1,
    )
    sx = np.array([20.0, 47.0, 75.0])
    signs = np.stack(
        [sx, np.full(3, -6.8), np.array([2.6, 3.2, 2.9]), np.array([0.9, 0.7, 1.2]), np.full(3, np.pi)], 1
    )
    medians = [
        np.array([[5.0, 1.2], [45.0, 1.2], [45.0, 3.2], [5.0, 3.2]]),
        np.array([[55.0, 1.2], [95.0, 1.2], [95.0, 3.2], [55.0, 3.2]]),
    ]
    return Scene(np.concatenate([right, left]), signs, medians)


Ground = Callable[[np.ndarray, np.ndarray], np.ndarray]


def level(z_m: float = 0.0) -> Ground:
    """The level ground ``z = z_m``."""
    return lambda x, y: np.full(np.shape(x), z_m, dtype=float)


def trajectory(n: int, step_m: float = 1.0, seed: int = 0, ground: Ground | None = None) -> np.ndarray:
    """``(n, 4, 4)`` T_world_from_vehicle along +x, lane centre y = -2, with small pitch, roll and yaw sway.

    On a ``ground`` that is not level the car pitches with its grade and rolls with its cross slope
    (finite differences over the wheelbase), and the OXTS unit is ``IMU_HEIGHT_M`` above the contact
    point along the car's up axis.
    """
    ground = ground or level()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = i * step_m
        y = -2.0 + 0.3 * np.sin(0.05 * i)
        roll, pitch = (
            0.01 * np.sin(0.3 * i) + rng.normal(0, 0.003),
            0.012 * np.sin(0.2 * i + 1) + rng.normal(0, 0.003),
        )
        yaw = 0.02 * np.sin(0.05 * i)
        h = 1.0
        grade = float(ground(np.array(x + h), np.array(y)) - ground(np.array(x - h), np.array(y))) / (2 * h)
        cross = float(ground(np.array(x), np.array(y + h)) - ground(np.array(x), np.array(y - h))) / (2 * h)
        # OXTS angles: pitch positive = front down, roll positive = left side up.
        R = rotation_from_rpy(roll + np.arctan(cross), pitch - np.arctan(grade), yaw)
        contact = np.array([x, y, float(ground(np.array(x), np.array(y)))])
        out.append(make_transform(R, contact + R @ [0.0, 0.0, IMU_HEIGHT_M]))
    return np.array(out)


def _clip_near(p_cam: np.ndarray, near: float = 0.2) -> np.ndarray:
    """Sutherland-Hodgman of a closed 3D polygon against ``z >= near``."""
    if np.all(p_cam[:, 2] >= near):
        return p_cam
    out = []
    for i in range(len(p_cam)):
        a, b = p_cam[i], p_cam[(i + 1) % len(p_cam)]
        if a[2] >= near:
            out.append(a)
        if (a[2] >= near) != (b[2] >= near):
            t = (near - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out).reshape(-1, 3)


def _densify(poly: np.ndarray, step: float) -> np.ndarray:
    pts = []
    for a, b in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        k = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        pts.append(a + (b - a) * (np.arange(k) / k)[:, None])
    return np.concatenate(pts)


def _fill_world_polygon(
    mask, camera: CameraModel, T_cam_from_world: np.ndarray, poly_world: np.ndarray, value: int
):
    p_cam = _clip_near(_densify(poly_world, 0.25) @ T_cam_from_world[:3, :3].T + T_cam_from_world[:3, 3])
    if len(p_cam) < 3:
        return
    uv, _ = cv2.projectPoints(
        p_cam, np.zeros(3), np.zeros(3), camera.K, camera.dist if camera.dist.size else None
    )
    uv = np.clip(uv.reshape(-1, 2), -1e4, 1e4)
    cv2.fillPoly(mask, [np.round(uv * 16).astype(np.int32)], value, lineType=cv2.LINE_8, shift=4)


def _fill_world_hull(
    mask, camera: CameraModel, T_cam_from_world: np.ndarray, pts_world: np.ndarray, value: int
):
    """Fill the convex hull of points' images (left out when any point is behind the camera)."""
    p_cam = pts_world @ T_cam_from_world[:3, :3].T + T_cam_from_world[:3, 3]
    if np.any(p_cam[:, 2] < 0.2):
        return
    uv, _ = cv2.projectPoints(
        p_cam, np.zeros(3), np.zeros(3), camera.K, camera.dist if camera.dist.size else None
    )
    hull = cv2.convexHull(np.round(np.clip(uv.reshape(-1, 2), -1e4, 1e4) * 16).astype(np.int32))
    cv2.fillPoly(mask, [hull], value, lineType=cv2.LINE_8, shift=4)


def render_mask(
    camera: CameraModel, T_world_from_vehicle: np.ndarray, scene: Scene, ground: Ground | None = None
) -> np.ndarray:
    """The label mask of ``scene`` seen by ``camera`` on a vehicle at ``T_world_from_vehicle``.

    Each pixel takes the class at its centre, as a renderer (or a per-pixel classifier) does: drawn
    three times finer, then the middle sample of every 3x3 block (fillPoly alone also marks pixels
    an edge merely touches). Ground polygons are densified and follow ``ground``; poles and signs
    stand on it.
    """
    ground = ground or level()
    T_world_from_cam = T_world_from_vehicle @ camera.T_vehicle_from_cam
    T_cam_from_world = invert_transform(T_world_from_cam)
    C = T_world_from_cam[:3, 3]
    K = camera.K * [[_FINE], [_FINE], [1]]
    K[:2, 2] = (camera.K[:2, 2] + 0.5) * _FINE - 0.5  # pixel centres on integers at both scales
    fine_cam = CameraModel(
        K, camera.width * _FINE, camera.height * _FINE, camera.dist, camera.T_vehicle_from_cam
    )
    camera, coarse = fine_cam, camera
    mask = np.zeros((camera.height, camera.width), np.uint8)
    x = C[0]
    road = np.array([[x - 5, -6.0], [x + 80, -6.0], [x + 80, 6.0], [x - 5, 6.0]])
    for poly, value in (
        [(road, ROAD)] + [(m, MEDIAN) for m in scene.medians] + [(m, LANE_MARKING) for m in scene.markings]
    ):
        dense = _densify(poly, 0.25)
        _fill_world_polygon(
            mask, camera, T_cam_from_world, np.c_[dense, ground(dense[:, 0], dense[:, 1])], value
        )
    objects = []
    ring = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    for x, y, r, h in scene.poles:
        # a cylinder: its silhouette is the convex hull of its two end circles' images
        circle = np.c_[x + r * np.cos(ring), y + r * np.sin(ring)]
        z0 = float(ground(np.array(x), np.array(y)))
        ends = np.vstack([np.c_[circle, np.full(24, z0)], np.c_[circle, np.full(24, z0 + h)]])
        objects.append((np.hypot(x - C[0], y - C[1]), ends, POLE))
    for x, y, z, size, facing in scene.signs:
        a = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        tangent = np.array([-np.sin(facing), np.cos(facing), 0.0])
        disc = np.array([x, y, z + float(ground(np.array(x), np.array(y)))]) + 0.5 * size * (
            np.cos(a)[:, None] * tangent + np.sin(a)[:, None] * [0, 0, 1]
        )
        objects.append((np.linalg.norm(np.array([x, y]) - C[:2]) - 0.01, disc, SIGN))
    for _, pts, value in sorted(objects, key=lambda o: -o[0]):
        if value == POLE:
            _fill_world_hull(mask, camera, T_cam_from_world, pts, value)
        else:
            _fill_world_polygon(mask, camera, T_cam_from_world, pts, value)
    return mask[_FINE // 2 :: _FINE, _FINE // 2 :: _FINE][: coarse.height, : coarse.width].copy()


# ------------------------------------------------------------------------- tests of the drawing


@pytest.mark.parametrize("dist", [(), (-0.3, 0.12, 0.001, -0.0005, -0.02)])
def test_drawn_pole_base_lands_where_known_point_projects(dist):
    camera = kitti_like_camera(dist)
    T_wv = trajectory(1)[0]
    scene = Scene(poles=np.array([[15.0, -6.0, 0.15, 6.0]]))
    mask = render_mask(camera, T_wv, scene)
    T_cw = invert_transform(T_wv @ camera.T_vehicle_from_cam)
    above, _ = camera.project((T_cw @ [15.0, -6.0, 0.3, 1.0])[:3])  # 0.3 m up the pole
    u, v = np.round(above[0]).astype(int)
    assert mask[v, u] == POLE
    base, _ = camera.project((T_cw @ [15.0, -6.0, 0.0, 1.0])[:3])
    rows = np.flatnonzero(mask[:, int(round(base[0, 0]))] == POLE)
    assert abs(rows.max() + 0.5 - base[0, 1]) <= 1.0  # the drawn pole ends at its base


def test_drawn_sign_and_median_are_where_they_project():
    camera = kitti_like_camera()
    T_wv = trajectory(1)[0]
    scene = default_scene()
    mask = render_mask(camera, T_wv, scene)
    T_cw = invert_transform(T_wv @ camera.T_vehicle_from_cam)
    uv, _ = camera.project((T_cw @ [20.0, -6.8, 2.6, 1.0])[:3])
    assert mask[int(round(uv[0, 1])), int(round(uv[0, 0]))] == SIGN
    uv, _ = camera.project((T_cw @ [12.0, 2.2, 0.0, 1.0])[:3])
    assert mask[int(round(uv[0, 1])), int(round(uv[0, 0]))] == MEDIAN


# ------------------------------------------------------------------- a drive log of the scene


def kitti_calib_for(camera: CameraModel):
    """KITTI calibration files whose camera 2 is ``camera`` (rectified, no distortion)."""
    from hdmap_seg.geo.kitti import CameraCalib, CamToCamCalib, KittiCalib, RigidCalib

    size = np.array([camera.width, camera.height], float)
    P = np.c_[camera.K, np.zeros(3)]
    cams = {
        i: CameraCalib(size, camera.K, np.zeros(5), np.eye(3), np.zeros(3), size, np.eye(3), P)
        for i in (0, 2)
    }
    T_cam_from_imu = invert_transform(camera.T_vehicle_from_cam)
    return KittiCalib(
        CamToCamCalib(cams, "01-Jan-2026 00:00:00", 0.1),
        RigidCalib.from_matrix(np.eye(4), "01-Jan-2026 00:00:00"),
        RigidCalib.from_matrix(T_cam_from_imu, "01-Jan-2026 00:00:00"),
    )


def write_kitti_log(
    root,
    camera: CameraModel,
    traj: np.ndarray,
    scene: Scene,
    with_masks: bool = True,
    ground: Ground | None = None,
):
    """A KITTI raw drive log of ``scene`` on ``ground`` (frames are the masks themselves, 10 Hz from 2026-01-01 12:00)."""
    from pathlib import Path

    from hdmap_seg.geo.frames import oxts_pose_from_T
    from hdmap_seg.geo.kitti import OxtsPacket, write_oxts, write_timestamps

    root = Path(root)
    for sub in ("image_02/data", "oxts/data", "label_02/data"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    kitti_calib_for(camera).write(root)
    times = np.datetime64("2026-01-01T12:00:00", "ns") + np.arange(len(traj)) * np.timedelta64(
        100_000_000, "ns"
    )
    write_timestamps(root / "image_02" / "timestamps.txt", times)
    write_timestamps(root / "oxts" / "timestamps.txt", times)
    for i, T in enumerate(traj):
        pose = oxts_pose_from_T(ORIGIN, T)
        write_oxts(root / "oxts" / "data" / f"{i:010d}.txt", OxtsPacket(**pose))
        mask = render_mask(camera, T, scene, ground)
        cv2.imwrite(str(root / "image_02" / "data" / f"{i:010d}.png"), mask * 40)
        if with_masks:
            cv2.imwrite(str(root / "label_02" / "data" / f"{i:010d}.png"), mask)
    return root
