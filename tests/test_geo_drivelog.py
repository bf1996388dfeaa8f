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
    assert log.ground_z_m(0) == pytest.approx(0.0, abs=1e-4)  # the OXTS unit rides 0.93 m up the tilted car
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


def test_real_kitti_calibration_end_to_end(tmp_path, shared_dir):
    """A log on the real 2011_09_26 calibration and first OXTS packet; masks drawn with the devkit's own
    3x4 projection (P_rect_02 @ R_rect_00 @ Tr_velo_to_cam @ Tr_imu_to_velo); poles come back in place."""
    from hdmap_seg.geo.frames import LocalFrame, T_world_from_imu, make_transform, rotation_from_rpy
    from hdmap_seg.geo.kitti import KittiCalib, OxtsPacket, read_oxts, write_oxts, write_timestamps
    from hdmap_seg.vectorize import vectorize_log

    day = shared_dir / "data" / "kitti_raw_sample" / "2011_09_26"
    calib = KittiCalib.read(day)
    first = read_oxts(day / "2011_09_26_drive_0001_sync" / "oxts" / "data" / "0000000000.txt")
    origin = LocalFrame(first.lat, first.lon, first.alt - 0.93)  # world z = 0 on the road
    T0 = T_world_from_imu(origin, first.lat, first.lon, first.alt, first.roll, first.pitch, first.yaw)
    heading = T0[:2, 0] / np.linalg.norm(T0[:2, 0])
    left = np.array([-heading[1], heading[0]])
    poles = [T0[:2, 3] + a * heading + b * left for a, b in ((14.0, -5.0), (22.0, 6.0), (27.0, -5.5))]
    log = tmp_path / "2011_09_26_drive_0001_sync"
    for sub in ("image_02/data", "oxts/data", "label_02/data"):
        (log / sub).mkdir(parents=True)
    calib.write(log)
    P = calib.projection(2)
    n = 8
    for i in range(n):
        xy = T0[:2, 3] + 1.2 * i * heading
        T = make_transform(
            T0[:3, :3] @ rotation_from_rpy(0.01 * np.sin(i), 0.008 * np.cos(i), 0.0), [*xy, 0.93]
        )
        T_imu_from_world = invert_transform(T)
        fine = np.zeros((375 * 4, 1242 * 4), np.uint8)  # drawn 4x finer; a pixel is pole if mostly covered
        for p in poles:
            # a cylinder of radius 0.12 m, 6 m tall: its silhouette is the hull of its end circles' images
            a = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            ring = np.c_[p[0] + 0.12 * np.cos(a), p[1] + 0.12 * np.sin(a)]
            ends = np.vstack([np.c_[ring, np.zeros(24)], np.c_[ring, np.full(24, 6.0)]])
            uvw = np.c_[transform_points(T_imu_from_world, ends), np.ones(48)] @ P.T
            corners = (uvw[:, :2] / uvw[:, 2:] + 0.5) * 4 - 0.5  # pixel centres on integers at both scales
            hull = cv2.convexHull(np.round(corners * 16).astype(np.int32))
            cv2.fillPoly(fine, [hull], 255, shift=4)
        mask = np.where(cv2.resize(fine, (1242, 375), interpolation=cv2.INTER_AREA) > 127, 4, 0).astype(
            np.uint8
        )
        cv2.imwrite(str(log / "label_02" / "data" / f"{i:010d}.png"), mask)
        cv2.imwrite(str(log / "image_02" / "data" / f"{i:010d}.png"), mask)
        pose = oxts_pose_from_T(origin, T)
        write_oxts(log / "oxts" / "data" / f"{i:010d}.txt", OxtsPacket(**pose))
    times = np.datetime64("2011-09-26T13:02:25", "ns") + np.arange(n) * np.timedelta64(100_000_000, "ns")
    write_timestamps(log / "image_02" / "timestamps.txt", times)
    drive = open_drive_log(log, origin=origin)
    layers = vectorize_log(drive, progress=False)
    found = np.array([f.geometry.coords[0][:2] for f in layers["poles"]])
    assert len(found) == 3
    d = np.linalg.norm(found[:, None] - np.array(poles)[None], axis=2)
    assert d.min(axis=1).max() < 0.15  # 8 frames; 1 px of base row is 0.4 m at 22 m


def test_kitti_velocities_and_yaw_rate_round_trip_into_the_log(kitti_log):
    from hdmap_seg.geo.frames import LocalFrame
    from hdmap_seg.geo.kitti import read_oxts, write_oxts

    # Packets written without velocities hold zeros: the log has none.
    log = open_drive_log(kitti_log, origin=ORIGIN)
    assert log.v_world_mps is None and log.yaw_rate_radps is None
    v_neu = np.array([[3.0, 4.0, 0.1], [1.0, 0.0, 0.0], [0.0, 1.0, -0.2], [2.5, -1.5, 0.0]])
    for i, (vn, ve, vu) in enumerate(v_neu):
        path = kitti_log / "oxts" / "data" / f"{i:010d}.txt"
        packet = read_oxts(path)
        if i == 1:  # along the heading: yaw is from true east, counter-clockwise
            v_neu[i] = vn, ve, vu = np.sin(packet.yaw), np.cos(packet.yaw), 0.0
        packet.vn, packet.ve, packet.vu, packet.wu = vn, ve, vu, 0.01 * (i + 1)
        write_oxts(path, packet)
    # An origin 0.1 deg west puts the log 7 km east of its meridian: grid and true north differ.
    west = LocalFrame(ORIGIN.lat0, ORIGIN.lon0 - 0.1, ORIGIN.alt0)
    log = open_drive_log(kitti_log, origin=west)
    np.testing.assert_allclose(log.yaw_rate_radps, [0.01, 0.02, 0.03, 0.04])
    heading = log.T_world_from_vehicle[1, :2, 0] / np.linalg.norm(log.T_world_from_vehicle[1, :2, 0])
    np.testing.assert_allclose(log.v_world_mps[1, :2], heading, atol=1e-9)  # turned like the yaw
    for i, (vn, ve, vu) in enumerate(v_neu):
        p = oxts_pose_from_T(ORIGIN, trajectory(4)[i])
        north = np.subtract(
            west.to_world(p["lat"] + 1e-4, p["lon"])[:2], west.to_world(p["lat"], p["lon"])[:2]
        )
        north /= np.linalg.norm(north)
        east = np.array([north[1], -north[0]])
        assert np.degrees(np.arctan2(-north[0], north[1])) == pytest.approx(0.0755, abs=0.002)
        np.testing.assert_allclose(log.v_world_mps[i], [*(ve * east + vn * north), vu], atol=1e-9)


def test_generic_log_optional_velocity_columns(tmp_path):
    root, _, _ = _generic_log(tmp_path / "v")
    assert open_drive_log(root).v_world_mps is None
    lines = (root / "poses.csv").read_text().splitlines()
    rows = [lines[0] + ",vn,ve,vu,wu"] + [f"{ln},{i}.0,2.0,0.5,-0.1" for i, ln in enumerate(lines[1:])]
    (root / "poses.csv").write_text("\n".join(rows) + "\n")
    log = open_drive_log(root)  # the origin is the first frame: no grid convergence to speak of
    np.testing.assert_allclose(
        log.v_world_mps, [[2.0, 0.0, 0.5], [2.0, 1.0, 0.5], [2.0, 2.0, 0.5]], atol=1e-6
    )
    np.testing.assert_allclose(log.yaw_rate_radps, [-0.1, -0.1, -0.1])
    (root / "poses.csv").write_text(
        "\n".join([lines[0] + ",vn,ve"] + [f"{ln},1,2" for ln in lines[1:]]) + "\n"
    )
    with pytest.raises(HdmapError, match=r"poses.csv: velocity columns must be all of vn,ve,vu or none"):
        open_drive_log(root)
    (root / "poses.csv").write_text(
        "\n".join(rows[:2] + [rows[2].replace(",1.0,2.0,", ",nan,2.0,")] + rows[3:]) + "\n"
    )
    with pytest.raises(HdmapError, match=r"poses.csv:3: NaN or inf in the pose of frame f001"):
        open_drive_log(root)
