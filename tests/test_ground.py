"""The road surface from the drive's poses, rays against it, and maps of a road that climbs, dips and falls away."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon
from test_vectorize_scene import (
    IMU_HEIGHT_M,
    ORIGIN,
    default_scene,
    kitti_like_camera,
    level,
    render_mask,
    trajectory,
    write_kitti_log,
)

from hdmap_seg.geo.ground import LevelPlane, TrajectoryGround, intersect_rays
from hdmap_seg.vectorize import MapBuilder, VectorizeConfig

# A sag from -5 % to +6 % between x = 30 and 70 m, a crest down to -4 % between 110 and 150 m.
_GRADE_KNOTS_X = np.array([-1e3, 30.0, 70.0, 110.0, 150.0, 1e3])
_GRADE_VALUES = np.array([-0.05, -0.05, 0.06, 0.06, -0.04, -0.04])
_FINE_X = np.arange(-200.0, 400.0, 0.01)
_FINE_Z = np.concatenate(
    [[0.0], np.cumsum(np.interp(_FINE_X[:-1] + 0.005, _GRADE_KNOTS_X, _GRADE_VALUES) * 0.01)]
)
_FINE_Z -= np.interp(0.0, _FINE_X, _FINE_Z)


def hills(x, y):
    """Height (m): the profile above along x, and a 2 % crown falling away from a median at y = 2.2 m."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    crown = -0.02 * np.clip(np.abs(y - 2.2) - 1.0, 0.0, 8.0)
    return np.interp(x, _FINE_X, _FINE_Z) + crown


def test_surface_from_the_poses_follows_grades_crests_and_the_cross_fall():
    traj = trajectory(100, step_m=1.5, ground=hills)
    ground = TrajectoryGround.from_poses(traj, IMU_HEIGHT_M)
    assert ground.length_m == pytest.approx(148.5, abs=0.5)
    # Beside the path on the near lane's side (the car's roll is that carriageway's cross-fall) and
    # towards the median, along the whole drive and 8 m behind its start: within 5 cm, though the
    # poses carry 0.6 deg of body roll (4 cm at 4 m off the path) and pitch.
    for i in range(0, 100, 7):
        surface = ground.near(i)
        x = traj[i, 0, 3]
        pts = np.array([[x + dx, y] for dx in (-8.0, 0.0, 12.0) for y in (-6.0, -2.0, 1.2)])
        np.testing.assert_allclose(surface.height_m(pts), hills(pts[:, 0], pts[:, 1]), atol=0.05)
    # Past the end the surface goes on with the grade it had there (on the crest, nearly -4 %).
    end = ground.near(99)
    x_end = traj[99, 0, 3]
    z = end.height_m(np.array([[x_end + 20.0, -2.0], [x_end, -2.0]]))
    assert (z[0] - z[1]) / 20.0 == pytest.approx(np.interp(x_end, _GRADE_KNOTS_X, _GRADE_VALUES), abs=0.002)


def test_left_out_frames_do_not_shape_the_surface_and_short_drives_fall_back(caplog):
    traj = trajectory(60, step_m=1.5, ground=hills)
    bad = traj.copy()
    bad[30, 2, 3] += 3.0  # a GNSS altitude glitch
    good = np.ones(60, bool)
    good[30] = False
    clean = TrajectoryGround.from_poses(bad, IMU_HEIGHT_M, good)
    pt = np.array([[traj[30, 0, 3], -2.0]])
    assert clean.near(30).height_m(pt)[0] == pytest.approx(hills(*pt.T)[0], abs=0.03)
    glitched = TrajectoryGround.from_poses(bad, IMU_HEIGHT_M)
    assert abs(glitched.near(30).height_m(pt)[0] - hills(*pt.T)[0]) > 0.2
    with caplog.at_level(logging.WARNING):
        assert TrajectoryGround.from_poses(traj[:3], IMU_HEIGHT_M, source="drive_0001") is None
    assert "drive_0001: the drive covers 3.0 m, too short to build a ground surface" in caplog.text


def test_ground_past_the_ends_of_the_drive_is_mapped_only_a_little_way():
    traj = trajectory(200, step_m=1.5, ground=hills)  # 300 m along +x
    ground = TrajectoryGround.from_poses(traj, IMU_HEIGHT_M, extrapolate_m=10.0, reach_m=70.0)
    assert ground.known_area(100) is None  # mid-drive: more than reach + 10 m from either end
    end = ground.known_area(199)
    x_end = traj[199, 0, 3]
    assert end.contains(shapely.Point(x_end + 9.0, -2.0)) and end.contains(shapely.Point(x_end - 50.0, 8.0))
    assert not end.contains(shapely.Point(x_end + 11.0, -2.0))
    start = ground.known_area(0)
    assert start.contains(shapely.Point(-9.0, -2.0)) and not start.contains(shapely.Point(-11.0, -2.0))


def test_rays_meet_a_grade_where_the_closed_form_says():
    """Rays from 1.65 m over a 6 % grade, and over a level plane: Newton lands on the plane's closed form."""

    class Grade:
        def height_and_gradient(self, xy):
            xy = np.asarray(xy).reshape(-1, 2)
            return 0.06 * xy[:, 0], np.tile([0.06, 0.0], (len(xy), 1))

        def height_m(self, xy):
            return self.height_and_gradient(xy)[0]

    origin = np.array([0.0, 0.0, 1.65])
    az = np.radians(np.linspace(-40, 40, 9))
    dep = np.radians(np.linspace(1.0, 30.0, 12))
    A, D = np.meshgrid(az, dep)
    dirs = np.stack([np.cos(D) * np.cos(A), np.cos(D) * np.sin(A), -np.sin(D)], -1).reshape(-1, 3)
    p, hit = intersect_rays(Grade(), origin, dirs, 1e4)
    # plane z = 0.06 x: 1.65 + t dz = 0.06 t dx  ->  t = 1.65 / (0.06 dx - dz)
    t = 1.65 / (0.06 * dirs[:, 0] - dirs[:, 2])
    assert hit.all()
    np.testing.assert_allclose(p, origin + t[:, None] * dirs, atol=1e-4)
    p, hit = intersect_rays(LevelPlane(0.0), origin, dirs, 30.0)
    horizontal = np.hypot(*(1.65 / -dirs[:, 2, None] * dirs[:, :2]).T)
    assert np.array_equal(hit, horizontal < 30.0)
    # A ray above the horizon never meets a level plane.
    assert not intersect_rays(LevelPlane(0.0), origin, np.array([[1.0, 0.0, 0.01]]), 1e4)[1][0]


def _map(traj, scene, ground_model, ground=hills):
    camera = kitti_like_camera()
    builder = MapBuilder(camera, VectorizeConfig(), ground_model)
    for i, T in enumerate(traj):
        builder.add_frame(i, render_mask(camera, T, scene, ground), T @ camera.T_vehicle_from_cam)
    return builder.finish()


def _pole_errors(layers, scene) -> np.ndarray:
    xy = np.array([[f.geometry.x, f.geometry.y] for f in layers["poles"]]).reshape(-1, 2)
    if len(xy) == 0:
        return np.full(len(scene.poles), np.inf)
    return np.linalg.norm(scene.poles[:, None, :2] - xy[None], axis=2).min(axis=1)


@pytest.mark.slow
def test_map_of_a_road_with_a_sag_and_a_crest():
    """On the drawn road over a sag and a crest the drive's own surface places the poles, sign heights
    and the median; the level plane under the car does not."""
    scene = default_scene()
    traj = trajectory(80, step_m=1.5, ground=hills)
    layers = _map(traj, scene, TrajectoryGround.from_poses(traj, IMU_HEIGHT_M, cross_reach_m=6.0))
    # The poles the drive passes (the one at x = 8 m leaves the image's side within the first frames).
    seen = (scene.poles[:, 0] > 10.0) & (scene.poles[:, 0] < 110.0)
    err = _pole_errors(layers, scene)[seen]
    assert (err < 0.3).all() and err.mean() < 0.1
    # Altitudes are the surface's. Across the median the crown falls the other way, which the car's
    # roll cannot tell: there the cross slope stops at cross_reach_m (6 m) and the error is the fall beyond.
    for f in layers["poles"]:
        far_side = f.geometry.y > 5.0
        assert f.geometry.z == pytest.approx(hills(f.geometry.x, f.geometry.y), abs=0.2 if far_side else 0.05)
    # Sign heights above the ground under them, and their centres' altitudes.
    sx = np.array([[f.geometry.x, f.geometry.y] for f in layers["signs"]])
    for x, y, z, *_ in scene.signs:
        k = np.argmin(np.hypot(*(sx - [x, y]).T))
        assert np.hypot(*(sx[k] - [x, y])) < 0.5
        assert layers["signs"][k].properties["height_m"] == pytest.approx(z, abs=0.1)
    # The median footprint matches the drawn one where the camera saw it.
    seen_ground = shapely.union_all([f.geometry for f in layers["coverage"]])
    truth = shapely.union_all([Polygon(m) for m in scene.medians]).intersection(seen_ground)
    found = shapely.union_all([f.geometry for f in layers["medians"] if f.properties["kind"] == "footprint"])
    assert found.intersection(truth).area / found.union(truth).area > 0.85

    plane = _map(traj, scene, None)
    plane_err = _pole_errors(plane, scene)[seen]
    assert plane_err.mean() > 3 * err.mean()


@pytest.mark.slow
def test_flat_road_maps_the_same_with_either_ground_model():
    scene = default_scene()
    traj = trajectory(60, step_m=1.5)
    surface = _map(traj, scene, TrajectoryGround.from_poses(traj, IMU_HEIGHT_M), level())
    plane = _map(traj, scene, None, level())
    a = np.array(sorted((f.geometry.x, f.geometry.y) for f in surface["poles"]))
    b = np.array(sorted((f.geometry.x, f.geometry.y) for f in plane["poles"]))
    assert a.shape == b.shape and np.abs(a - b).max() < 0.05


@pytest.mark.slow
def test_a_gnss_jump_is_reported_by_frame_and_left_out(tmp_path, caplog):
    """A drive over the sag whose OXTS altitude jumps 3 m at frame 30 (the frame itself saw the true road):
    the run names the frame, and the map is that of the clean drive."""
    from hdmap_seg.geo.drivelog import open_drive_log
    from hdmap_seg.geo.frames import oxts_pose_from_T
    from hdmap_seg.geo.kitti import OxtsPacket, write_oxts
    from hdmap_seg.vectorize import vectorize_log

    scene = default_scene()
    traj = trajectory(60, step_m=1.5, ground=hills)
    root = write_kitti_log(tmp_path / "drive_0001_sync", kitti_like_camera(), traj, scene, ground=hills)
    glitch = traj[30].copy()
    glitch[2, 3] += 3.0
    write_oxts(root / "oxts" / "data" / "0000000030.txt", OxtsPacket(**oxts_pose_from_T(ORIGIN, glitch)))
    with caplog.at_level(logging.WARNING):
        layers = vectorize_log(open_drive_log(root, origin=ORIGIN), progress=False)
    assert "GNSS position jumps (> 2 m) at frames 30:" in caplog.text
    seen = (scene.poles[:, 0] > 10.0) & (scene.poles[:, 0] < 80.0)
    err = _pole_errors(layers, scene)[seen]
    assert (err < 0.3).all() and err.mean() < 0.1
    for f in layers["poles"]:
        if f.geometry.y < 5.0:  # on the near side, where the car's roll is the road's cross-fall
            assert f.geometry.z == pytest.approx(hills(f.geometry.x, f.geometry.y), abs=0.05)
