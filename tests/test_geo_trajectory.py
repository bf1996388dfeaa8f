"""Trajectory smoothing, GNSS jump detection and the remaining pose noise, on a simulated drive."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import cumulative_trapezoid
from test_vectorize_scene import ORIGIN, kitti_like_camera

from hdmap_seg.geo.drivelog import DriveLog, Frame, find_log_jumps, smooth_log
from hdmap_seg.geo.frames import make_transform, rotation_from_rpy, rpy_from_rotation
from hdmap_seg.geo.trajectory import find_jumps, smooth_trajectory

POS_NOISE_M = 0.2
YAW_NOISE_RAD = np.radians(0.3)
VEL_NOISE_MPS = 0.02


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def simulated_drive(n: int = 200, hz: float = 10.0):
    """A curved drive at varying speed over a hill, integrated 50x finer than its frames.

    Returns ``t_s (n,)``, ``xyz_m (n, 3)``, ``rpy_rad (n, 3)``, ``v_world_mps (n, 3)``, ``yaw_rate_radps (n,)``.
    """
    sub = 50
    t = np.arange((n - 1) * sub + 1) / (hz * sub)
    speed = 8.0 + 3.0 * np.sin(0.3 * t)
    yaw_rate = 0.05 + 0.15 * np.sin(0.25 * t)
    yaw = 0.4 + cumulative_trapezoid(yaw_rate, t, initial=0.0)
    v = np.c_[speed * np.cos(yaw), speed * np.sin(yaw), 0.3 * np.cos(0.2 * t)]
    xyz = [100.0, -50.0, 2.0] + cumulative_trapezoid(v, t, axis=0, initial=0.0)
    rpy = np.c_[0.02 * np.sin(0.7 * t), 0.015 * np.sin(0.5 * t + 1.0), _wrap(yaw)]
    k = slice(None, None, sub)
    return t[k], xyz[k], rpy[k], v[k], yaw_rate[k]


def noisy(seed: int = 0):
    """The drive with 0.2 m / 0.3 deg white noise on poses and 0.02 m/s on velocities."""
    t, xyz, rpy, v, wz = simulated_drive()
    rng = np.random.default_rng(seed)
    return (
        t,
        xyz + rng.normal(0, POS_NOISE_M, xyz.shape),
        rpy + rng.normal(0, YAW_NOISE_RAD, rpy.shape),
        v + rng.normal(0, VEL_NOISE_MPS, v.shape),
        wz + rng.normal(0, np.radians(0.02), wz.shape),
    )


def _rms_xy(a, b):
    return float(np.sqrt(np.mean((a - b)[:, :2] ** 2)))


def _rms_yaw(a, b):
    return float(np.sqrt(np.mean(_wrap(a[:, 2] - b[:, 2]) ** 2)))


def test_noisy_drive_with_velocities_is_smoothed_and_its_remaining_noise_estimated():
    _, xyz, rpy, _, _ = simulated_drive()
    t, nxyz, nrpy, nv, nwz = noisy()
    sxyz, srpy, report = smooth_trajectory(t, nxyz, nrpy, nv, nwz)
    assert report.smoothed and report.good.all()
    raw_pos, pos = _rms_xy(nxyz, xyz), _rms_xy(sxyz, xyz)
    raw_yaw, yaw = _rms_yaw(nrpy, rpy), _rms_yaw(srpy, rpy)
    assert raw_pos > 0.17 and pos < 0.04 and pos < raw_pos / 5
    assert raw_yaw > np.radians(0.25) and yaw < np.radians(0.08) and yaw < raw_yaw / 4
    assert np.sqrt(np.mean((sxyz - xyz)[:, 2] ** 2)) < 0.07
    # The estimate is of the right order: within a factor 2 of the true error.
    assert pos / 2 < report.sigma_pos_m < 2 * pos
    assert yaw / 2 < report.sigma_yaw_rad < 2 * yaw
    # Roll and pitch are the unit's own, the body's motion included: left exactly as recorded.
    np.testing.assert_array_equal(srpy[:, :2], nrpy[:, :2])


def test_without_velocities_still_smooths_by_a_clear_factor():
    _, xyz, rpy, _, _ = simulated_drive()
    t, nxyz, nrpy, _, _ = noisy(seed=1)
    sxyz, srpy, report = smooth_trajectory(t, nxyz, nrpy)
    assert report.smoothed and report.good.all()
    pos, raw_pos = _rms_xy(sxyz, xyz), _rms_xy(nxyz, xyz)
    assert pos < 0.08 and pos < raw_pos / 2.5
    assert _rms_yaw(srpy, rpy) < _rms_yaw(nrpy, rpy) / 2.5
    assert pos / 2 < report.sigma_pos_m < 2 * pos


@pytest.mark.parametrize("with_rates", [True, False])
def test_noise_free_drive_is_left_nearly_unchanged(with_rates):
    t, xyz, rpy, v, wz = simulated_drive()
    sxyz, srpy, report = smooth_trajectory(t, xyz, rpy, v if with_rates else None, wz if with_rates else None)
    assert report.smoothed and report.good.all()
    assert np.abs(sxyz - xyz).max() < 0.005
    assert np.abs(_wrap(srpy - rpy)).max() < np.radians(0.02)


def test_yaw_across_the_wrap_is_smoothed_as_one_angle():
    t, xyz, rpy, v, wz = noisy(seed=2)
    turned = rpy.copy()
    turned[:, 2] = _wrap(rpy[:, 2] + np.pi - 0.9)  # the drive now crosses +-pi
    assert np.abs(np.diff(turned[:, 2])).max() > 6
    _, srpy, _ = smooth_trajectory(t, xyz, turned, v, wz)
    _, _, true_rpy, _, _ = simulated_drive()
    assert np.abs(_wrap(srpy[:, 2] - (true_rpy[:, 2] + np.pi - 0.9))).max() < np.radians(0.3)


@pytest.mark.parametrize("with_velocities", [True, False])
def test_one_frame_spike_is_reported_there_and_its_pose_comes_from_the_others(with_velocities):
    _, xyz, _, _, _ = simulated_drive()
    t, nxyz, nrpy, nv, _ = noisy(seed=3)
    nxyz[57] += [3.0, 0.0, 0.0]
    v = nv if with_velocities else None
    sxyz, _, report = smooth_trajectory(t, nxyz, nrpy, v)
    assert report.jump_frames.tolist() == [57]
    assert find_jumps(t, nxyz, v).tolist() == report.good.tolist()
    assert np.linalg.norm(sxyz[57] - xyz[57]) < 0.2


def test_altitude_only_spike_is_reported():
    t, nxyz, nrpy, nv, _ = noisy(seed=4)
    nxyz[120, 2] += 2.5
    assert np.flatnonzero(~find_jumps(t, nxyz, nv)).tolist() == [120]
    assert np.flatnonzero(~find_jumps(t, nxyz)).tolist() == [120]


def test_burst_of_three_frames_is_reported():
    _, xyz, _, _, _ = simulated_drive()
    t, nxyz, nrpy, nv, _ = noisy(seed=5)
    nxyz[80:83] += [[2.6, 1.5, 0.0], [2.8, 1.6, 0.0], [2.5, 1.4, 0.0]]
    sxyz, _, report = smooth_trajectory(t, nxyz, nrpy, nv)
    assert report.jump_frames.tolist() == [80, 81, 82]
    assert np.linalg.norm(sxyz[80:83] - xyz[80:83], axis=1).max() < 0.2


@pytest.mark.parametrize("with_velocities", [True, False])
def test_step_is_reported_at_its_frame_without_flagging_the_rest(with_velocities):
    _, xyz, _, _, _ = simulated_drive()
    t, nxyz, nrpy, nv, _ = noisy(seed=6)
    nxyz[100:] += [0.0, 3.0, 0.0]
    sxyz, _, report = smooth_trajectory(t, nxyz, nrpy, nv if with_velocities else None)
    bad = report.jump_frames
    assert 1 <= len(bad) <= 4 and np.abs(bad - 100).max() <= 2
    # The spline is fitted apart on each side: the first half keeps its accuracy.
    assert _rms_xy(sxyz[:95], xyz[:95]) < 0.1


def test_too_short_drive_comes_back_unchanged():
    t, nxyz, nrpy, nv, nwz = noisy()
    sxyz, srpy, report = smooth_trajectory(t[:5], nxyz[:5], nrpy[:5], nv[:5], nwz[:5])
    assert not report.smoothed and "too short" in report.skipped
    assert report.sigma_pos_m is None and report.good.all()
    np.testing.assert_array_equal(sxyz, nxyz[:5])
    np.testing.assert_array_equal(srpy, nrpy[:5])


def _drive_log(t_s, xyz_m, rpy_rad, v_world_mps=None) -> DriveLog:
    start = np.datetime64("2026-01-01T12:00:00", "ns")
    frames = [
        Frame(
            i, f"{i:010d}", Path(f"/logs/d1/{i:010d}.png"), start + np.timedelta64(int(round(s * 1e9)), "ns")
        )
        for i, s in enumerate(t_s)
    ]
    poses = np.stack([make_transform(rotation_from_rpy(*a), p) for a, p in zip(rpy_rad, xyz_m, strict=True)])
    return DriveLog(
        Path("/logs/d1"), "kitti", frames, poses, kitti_like_camera(), ORIGIN, Path("/m"), v_world_mps
    )


def test_smooth_log_rebuilds_poses_and_warns_of_jumps(caplog):
    _, xyz, rpy, _, _ = simulated_drive()
    t, nxyz, nrpy, nv, _ = noisy(seed=7)
    nxyz[[30, 31, 32, 150]] += [0.0, 0.0, 3.0]
    drive = _drive_log(t, nxyz, nrpy, nv)
    with caplog.at_level(logging.WARNING):
        smoothed, report = smooth_log(drive)
    assert report.jump_frames.tolist() == [30, 31, 32, 150]
    assert "/logs/d1: GNSS position jumps (> 2 m) at frames 30-32, 150" in caplog.text
    assert smoothed is not drive and smoothed.frames is drive.frames
    assert np.abs(drive.T_world_from_vehicle[:, :3, 3] - nxyz).max() < 1e-12  # the input is untouched
    assert _rms_xy(smoothed.T_world_from_vehicle[:, :3, 3], xyz) < 0.05
    yaw = np.array([rpy_from_rotation(T[:3, :3])[2] for T in smoothed.T_world_from_vehicle])
    assert np.sqrt(np.mean(_wrap(yaw - rpy[:, 2]) ** 2)) < np.radians(0.15)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert find_log_jumps(drive).tolist() == report.good.tolist()
    assert "frames 30-32, 150" in caplog.text


def test_smooth_log_of_a_short_drive_warns_and_keeps_its_poses(caplog):
    t, nxyz, nrpy, _, _ = noisy()
    drive = _drive_log(t[:5], nxyz[:5], nrpy[:5])
    with caplog.at_level(logging.WARNING):
        smoothed, report = smooth_log(drive)
    assert not report.smoothed
    assert "/logs/d1: poses not smoothed: too short to smooth (5 frames, 0.4 s)" in caplog.text
    np.testing.assert_allclose(smoothed.T_world_from_vehicle, drive.T_world_from_vehicle, atol=1e-12)
