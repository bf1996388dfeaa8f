"""KITTI raw files: parse the real sample, write what KITTI's readers accept, read back the same."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from hdmap_seg.errors import HdmapError
from hdmap_seg.geo.frames import LocalFrame, T_world_from_imu, invert_transform, transform_points
from hdmap_seg.geo.kitti import (
    OXTS_FIELDS,
    CamToCamCalib,
    KittiCalib,
    OxtsPacket,
    RigidCalib,
    format_timestamp,
    read_calib_file,
    read_oxts,
    read_timestamps,
    seconds_since,
    write_oxts,
    write_timestamps,
)

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti_raw_sample" / "2011_09_26"
DRIVE = SAMPLE / "2011_09_26_drive_0001_sync"
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"KITTI raw sample not found at {SAMPLE}")


def _pykitti_read_calib_file(path: Path) -> dict:
    """pykitti's reader (utils.read_calib_file), verbatim in spirit: what users' tools do with our files."""
    data = {}
    with open(path) as f:
        for line in f:
            key, value = line.split(":", 1)
            with contextlib.suppress(ValueError):
                data[key] = np.array([float(x) for x in value.split()])
    return data


@needs_sample
def test_real_oxts_packet_parses_with_kitti_meanings():
    p = read_oxts(DRIVE / "oxts" / "data" / "0000000000.txt")
    assert len(OXTS_FIELDS) == 30 and OXTS_FIELDS[:6] == ("lat", "lon", "alt", "roll", "pitch", "yaw")
    assert (p.lat, p.lon) == pytest.approx((49.015003823272, 8.4342971002335))
    assert (p.numsats, p.navstat) == (11, 4)
    # yaw 0 = east, counter-clockwise: the velocity's own direction (vn, ve) agrees with the heading.
    assert np.arctan2(p.vn, p.ve) == pytest.approx(p.yaw, abs=0.02)
    # ... and so does the forward axis of the pose built from it.
    f = LocalFrame(p.lat, p.lon, p.alt)
    T = T_world_from_imu(f, p.lat, p.lon, p.alt, p.roll, p.pitch, p.yaw)
    v_world = np.array([p.ve, p.vn]) / np.hypot(p.ve, p.vn)
    assert T[:2, 0] @ v_world == pytest.approx(1.0, abs=1e-3)


@needs_sample
def test_real_timestamps_parse_with_nanoseconds():
    ts = read_timestamps(DRIVE / "oxts" / "timestamps.txt")
    assert len(ts) == 108
    assert format_timestamp(ts[0]) == "2011-09-26 13:02:25.964389445"
    dt = np.diff(seconds_since(ts))
    assert np.all(dt > 0.09) and np.all(dt < 0.12)  # 10 Hz


@needs_sample
def test_real_calibration_parses():
    calib = KittiCalib.read(SAMPLE)
    cam2 = calib.cam_to_cam.cameras[2]
    assert sorted(calib.cam_to_cam.cameras) == [0, 1, 2, 3]
    assert cam2.K[0, 0] == pytest.approx(959.791) and cam2.P_rect[0, 3] == pytest.approx(44.85728)
    assert tuple(cam2.S_rect) == (1242, 375)
    assert calib.velo_to_cam.extra["delta_f"].shape == (2,)
    assert KittiCalib.find_dir(DRIVE) == SAMPLE


@needs_sample
def test_rect_camera_reproduces_devkit_projection_and_known_rig():
    calib = KittiCalib.read(SAMPLE)
    K, T_cam_from_imu, size = calib.rect_camera(2)
    assert size == (1242, 375)
    P = calib.projection(2)
    pts_imu = np.array([[10.0, 2.0, -0.5], [25.0, -4.0, 1.0], [6.0, 0.0, -0.93]])
    p_cam = transform_points(T_cam_from_imu, pts_imu)
    uv_ours = (p_cam @ K.T)[:, :2] / p_cam[:, 2:]
    uvw = np.c_[pts_imu, np.ones(3)] @ P.T
    np.testing.assert_allclose(uv_ours, uvw[:, :2] / uvw[:, 2:], atol=1e-9)
    # KITTI's setup: cameras 1.65 m and OXTS 0.93 m above ground, cam 2 about 1.08 m ahead and
    # 0.25 m right of the OXTS unit; camera z (optical axis) looks along imu x.
    T_imu_from_cam = invert_transform(T_cam_from_imu)
    np.testing.assert_allclose(T_imu_from_cam[:3, 3], [1.08, -0.25, 0.72], atol=0.03)
    assert T_imu_from_cam[:3, 2] @ [1, 0, 0] > 0.999


@needs_sample
def test_calibration_round_trip(tmp_path):
    calib = KittiCalib.read(SAMPLE)
    calib.write(tmp_path)
    again = KittiCalib.read(tmp_path)
    for idx, cam in calib.cam_to_cam.cameras.items():
        for name in ("S", "K", "D", "R", "T", "S_rect", "R_rect", "P_rect"):
            np.testing.assert_array_equal(getattr(again.cam_to_cam.cameras[idx], name), getattr(cam, name))
    np.testing.assert_array_equal(again.imu_to_velo.matrix, calib.imu_to_velo.matrix)
    np.testing.assert_array_equal(again.velo_to_cam.extra["delta_c"], calib.velo_to_cam.extra["delta_c"])
    assert again.cam_to_cam.calib_time == "09-Jan-2012 13:57:47"
    # What KITTI's Python readers do with our file gives the original numbers.
    theirs = _pykitti_read_calib_file(tmp_path / "calib_cam_to_cam.txt")
    original = read_calib_file(SAMPLE / "calib_cam_to_cam.txt")
    for key in ("K_02", "P_rect_02", "R_rect_00", "D_03", "S_rect_01"):
        np.testing.assert_array_equal(theirs[key], original[key])


def test_oxts_and_timestamps_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    packet = OxtsPacket(*rng.normal(size=25), 4, 9, 5, 5, 6)
    write_oxts(tmp_path / "0000000007.txt", packet)
    assert len((tmp_path / "0000000007.txt").read_text().split()) == 30
    assert read_oxts(tmp_path / "0000000007.txt") == packet
    ts = np.datetime64("2011-09-26T13:02:25.964389445", "ns") + np.arange(5) * np.timedelta64(
        103_456_789, "ns"
    )
    write_timestamps(tmp_path / "timestamps.txt", ts)
    assert (tmp_path / "timestamps.txt").read_text().splitlines()[1] == "2011-09-26 13:02:26.067846234"
    np.testing.assert_array_equal(read_timestamps(tmp_path / "timestamps.txt"), ts)


def test_rigid_calib_round_trip_of_arbitrary_transform(tmp_path):
    from scipy.spatial.transform import Rotation

    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", [0.1, -0.2, 0.3]).as_matrix()
    T[:3, 3] = [0.123456789123, -1.5, 2.0]
    RigidCalib.from_matrix(T, "01-Jan-2020 00:00:00").write(tmp_path / "calib_imu_to_velo.txt")
    np.testing.assert_array_equal(RigidCalib.read(tmp_path / "calib_imu_to_velo.txt").matrix, T)


def test_bad_files_give_clear_errors(tmp_path):
    (tmp_path / "oxts.txt").write_text("1 2 3\n")
    with pytest.raises(HdmapError, match="expected 30 OXTS numbers"):
        read_oxts(tmp_path / "oxts.txt")
    (tmp_path / "oxts.txt").write_text(" ".join(["nan"] + ["0"] * 29))
    with pytest.raises(HdmapError, match="NaN or inf"):
        read_oxts(tmp_path / "oxts.txt")
    (tmp_path / "calib.txt").write_text("R: 1 0 0 0 1 0 0 0 1\n")
    with pytest.raises(HdmapError, match=r"calib.txt: calibration lacks the key 'T'"):
        RigidCalib.read(tmp_path / "calib.txt")
    (tmp_path / "cam.txt").write_text("P_rect_00: " + " ".join(["1"] * 12) + "\n")
    with pytest.raises(HdmapError, match="lacks the key 'S_00'"):
        CamToCamCalib.read(tmp_path / "cam.txt")
    (tmp_path / "ts.txt").write_text("2011-09-26 13:02:25.964389445\nyesterday\n")
    with pytest.raises(HdmapError, match=r"ts.txt:2: not a KITTI timestamp"):
        read_timestamps(tmp_path / "ts.txt")
