"""Drive logs in the KITTI raw and generic layouts: poses, cameras, and clear errors."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import yaml
from test_vectorize_scene import ORIGIN, Scene, kitti_like_camera, trajectory, write_kitti_log

from hdmap_seg.errors import HdmapError
from hdmap_seg.geo.drivelog import open_drive_log
from hdmap_seg.geo.frames import invert_transform, oxts_pose_from_T, transform_points

SCENE = Scene(poles=np.array([[15.0, -6.0, 0.12, 7.0]]))


@pytest.fixture
def kitti_log(tmp_path):
    return write_kitti_log(
        tmp_path / "2026_01_01" / "drive_0001_sync", kitti_like_camera(), trajectory(4), SCENE
    )


def test_kitti_log_gives_poses_camera_and_ground(kitti_log):
    traj = trajectory(4)
    log = open_drive_log(kitti_log, origin=ORIGIN)
    camera = kitti_like_camera()
    assert len(log) == 4 and log.layout == "kitti" and log[2].stem == "0000000002"
    assert log[1].timestamp == np.datetime64("2026-01-01T12:00:00.1", "ns")
    np.testing.assert_allclose(log.T_world_from_vehicle, traj, atol=1e-7)
    np.testing.assert_allclose(log.T_world_from_cam(3), traj[3] @ camera.T_vehicle_from_cam, atol=1e-7)
    np.testing.assert_allclose(log.camera.K, camera.K)
    assert log.ground_z_m(0) == pytest.approx(0.0, abs=1e-6)
    assert log.default_masks_dir == kitti_log / "label_02" / "data"
    # Without an origin the world frame sits at the first OXTS position.
    log0 = open_drive_log(kitti_log)
    np.testing.assert_allclose(log0.T_world_from_vehicle[0, :3, 3], [0, 0, 0], atol=1e-6)


def test_kitti_calibration_of_the_day_in_the_parent_or_given(kitti_log, tmp_path):
    day = kitti_log.parent
    for name in ("calib_cam_to_cam.txt", "calib_imu_to_velo.txt", "calib_velo_to_cam.txt"):
        shutil.move(kitti_log / name, day / name)
    assert open_drive_log(kitti_log).camera.width == 1242
    elsewhere = tmp_path / "calib"
    shutil.copytree(day, elsewhere, ignore=shutil.ignore_patterns("drive_*"))
    for name in ("calib_cam_to_cam.txt",):
        (day / name).unlink()
    with pytest.raises(HdmapError, match="no calib_cam_to_cam.txt in the drive folder or its parent"):
        open_drive_log(kitti_log)
    assert open_drive_log(kitti_log, calib_dir=elsewhere).camera.height == 375
    with pytest.raises(HdmapError, match=r"lacks the key 'P_rect_03'"):
        open_drive_log(kitti_log, camera=3, calib_dir=elsewhere)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "image_02/data/0000000002.png").unlink(), r"frame 0000000002 is missing"),
        (lambda d: (d / "oxts/data/0000000001.txt").unlink(), r"0000000001.txt: missing OXTS packet"),
        (
            lambda d: (d / "oxts/data/0000000003.txt").write_text(" ".join(["nan"] + ["0"] * 29)),
            r"0000000003.txt: NaN or inf",
        ),
        (
            lambda d: (d / "image_02/timestamps.txt").write_text(
                "2026-01-01 12:00:00.000000000\n2026-01-01 12:00:00.100000000\n"
                "2026-01-01 12:00:00.050000000\n2026-01-01 12:00:00.300000000\n"
            ),
            r"timestamps.txt: timestamps go backwards at frame 2",
        ),
        (
            lambda d: (d / "calib_velo_to_cam.txt").write_text("R: 1 0 0 0 1 0 0 0 1\n"),
            r"calib_velo_to_cam.txt: calibration lacks the key 'T'",
        ),
    ],
)
def test_kitti_log_errors_name_the_file(kitti_log, damage, message):
    damage(kitti_log)
    with pytest.raises(HdmapError, match=message):
        open_drive_log(kitti_log)


def _generic_log(root, dist=(-0.2, 0.05, 0.0, 0.0, 0.0)):
    camera = kitti_like_camera(dist)
    traj = trajectory(3)
    (root / "frames").mkdir(parents=True)
    rows = ["frame,timestamp,lat,lon,alt,roll,pitch,yaw"]
    for i, T in enumerate(traj):
        p = oxts_pose_from_T(ORIGIN, T)
        rows.append(
            f"f{i:03d},{1767268800 + 0.1 * i:.3f},{p['lat']!r},{p['lon']!r},{p['alt']!r},{p['roll']!r},{p['pitch']!r},{p['yaw']!r}"
        )
        cv2.imwrite(str(root / "frames" / f"f{i:03d}.jpg"), np.zeros((375, 1242, 3), np.uint8))
    (root / "poses.csv").write_text("\n".join(rows) + "\n")
    K = camera.K
    cam = {
        "width": 1242,
        "height": 375,
        "fx": float(K[0, 0]),
        "fy": float(K[1, 1]),
        "cx": float(K[0, 2]),
        "cy": float(K[1, 2]),
        "distortion": list(dist),
        "T_vehicle_from_cam": camera.T_vehicle_from_cam.tolist(),
        "ground_offset_m": 0.93,
    }
    (root / "camera.yaml").write_text(yaml.safe_dump(cam))
    return root, camera, traj


def test_generic_log_with_distortion(tmp_path):
    root, camera, traj = _generic_log(tmp_path / "rig")
    log = open_drive_log(root, origin=ORIGIN)
    assert log.layout == "generic" and [f.stem for f in log.frames] == ["f000", "f001", "f002"]
    assert log.default_masks_dir == root / "labels"
    np.testing.assert_allclose(log.T_world_from_vehicle, traj, atol=1e-7)
    assert log.camera.has_distortion and log.camera.ground_offset_m == 0.93
    assert (log[2].timestamp - log[0].timestamp) == np.timedelta64(200_000_000, "ns")
    # a world point projects through the distortion and comes back along its ray
    p_world = np.array([[10.0, 4.5, 0.0]])  # near the left edge of the image
    p_cam = transform_points(invert_transform(log.T_world_from_cam(0)), p_world)
    uv, _ = log.camera.project(p_cam)
    ray = log.camera.rays_cam(uv)[0]
    np.testing.assert_allclose(ray, p_cam[0] / np.linalg.norm(p_cam[0]), atol=1e-7)
    undistorted = camera.K @ (p_cam[0] / p_cam[0, 2])
    assert np.linalg.norm(uv[0] - undistorted[:2]) > 5  # the distortion is in play


def test_generic_log_errors(tmp_path):
    root, _, _ = _generic_log(tmp_path / "a")
    (root / "frames" / "f003.jpg").write_bytes((root / "frames" / "f000.jpg").read_bytes())
    with pytest.raises(HdmapError, match=r"poses.csv: no pose row for frame 'f003'"):
        open_drive_log(root)
    root, _, _ = _generic_log(tmp_path / "b")
    text = (root / "poses.csv").read_text().splitlines()
    (root / "poses.csv").write_text(
        "\n".join(text[:2] + [text[2].replace(text[2].split(",")[5], "inf")] + text[3:])
    )
    with pytest.raises(HdmapError, match=r"poses.csv:3: NaN or inf in the pose of frame f001"):
        open_drive_log(root)
    root, _, _ = _generic_log(tmp_path / "c")
    cam = yaml.safe_load((root / "camera.yaml").read_text())
    del cam["ground_offset_m"]
    (root / "camera.yaml").write_text(yaml.safe_dump(cam))
    with pytest.raises(HdmapError, match=r"camera.yaml: calibration lacks the key 'ground_offset_m'"):
        open_drive_log(root)
    with pytest.raises(HdmapError, match="not a drive log"):
        open_drive_log(tmp_path)
