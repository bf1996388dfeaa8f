"""The ego car: a drive along a lane of the world, its 6-DoF poses, and its OXTS packets.

The car's wheels stand on the world's terrain: its contact point is the ground at the road
coordinates it drives, its pitch follows the grade along its heading (OXTS: pitch positive =
front down, so climbing pitches negative), its roll the cross slope (positive = left side up).
The OXTS unit rides ``imu_height_m`` (KITTI: 0.93 m) above the contact point along the
vehicle's up axis (the surface normal there), so on flat ground it is exactly ``imu_height_m``
above the level ground, as the geo stage assumes (docs/conventions.md); on a slope of grade
``g`` its world height above the contact point is ``imu_height_m * cos(atan g)`` (3 mm less at 8 %).
On top, pitch and roll carry small oscillations (a few tenths of a degree), as a real car's
suspension gives (turning the body about the OXTS unit); lateral position and heading wander a
little within the lane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hdmap_seg.geo.frames import (
    LocalFrame,
    make_transform,
    oxts_pose_from_T,
    rotation_from_rpy,
    rpy_from_rotation,
)
from hdmap_seg.geo.kitti import OxtsPacket
from hdmap_seg.synthetic.world import World

GRAVITY_MPS2 = 9.81


@dataclass(frozen=True)
class Drive:
    """``n`` poses: ``t_s`` (n,) seconds from the start, ``T_world_from_imu`` (n, 4, 4)."""

    t_s: np.ndarray
    T_world_from_imu: np.ndarray
    s_m: np.ndarray  # the car's arc length along the road, (n,)
    direction: int = 1  # +1 towards increasing s (the world's ego carriageway), -1 the other way


@dataclass(frozen=True)
class Wobble:
    """The car's small motions: amplitudes and phases of sinusoids (amplitudes in m and rad)."""

    lateral_m: float
    lateral_period_s: float
    pitch_rad: tuple[float, float]
    roll_rad: float
    phases: tuple[float, float, float, float]

    @classmethod
    def random(cls, rng: np.random.Generator) -> Wobble:
        return cls(
            lateral_m=float(rng.uniform(0.05, 0.3)),
            lateral_period_s=float(rng.uniform(4.0, 12.0)),
            pitch_rad=(float(rng.uniform(0.002, 0.008)), float(rng.uniform(0.001, 0.004))),
            roll_rad=float(rng.uniform(0.002, 0.006)),
            phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 4)),
        )


def pose_on_road(
    world: World, s_m, d_m, t_s, wobble: Wobble, imu_height_m: float, direction: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Poses of the car at road coordinates ``(s_m, d_m)`` and times ``t_s`` (arrays of one length),
    heading along the road towards increasing ``s`` (``direction`` +1) or decreasing ``s`` (-1).

    Returns ``(T_world_from_imu (n, 4, 4), (n, 3) roll, pitch, yaw in rad)``. The lateral wobble
    turns the heading by its slope, so the car points where it goes. On a terrain the car's
    attitude is that of the surface under its contact point, plus the wobble.
    """
    s = np.atleast_1d(np.asarray(s_m, float))
    t = np.atleast_1d(np.asarray(t_s, float))
    w = 2 * np.pi / wobble.lateral_period_s
    p = wobble.phases
    d = np.asarray(d_m, float) + wobble.lateral_m * np.sin(w * t + p[0])
    _, _, heading = world.road.pose_at(s)
    x, y = world.road.point_at(s, d)
    # Slope of the lateral offset per metre driven (speed from the spacing; 10 m/s where single).
    ds_dt = np.gradient(s, t) if len(s) > 1 else np.array([10.0])
    dd_ds = wobble.lateral_m * w * np.cos(w * t + p[0]) / np.maximum(np.abs(ds_dt), 1.0)
    # Driving towards -s, the car's left is the road's -d: the same drift turns it the other way.
    yaw = heading + np.pi - np.arctan(dd_ds) if direction < 0 else heading + np.arctan(dd_ds)
    pitch = wobble.pitch_rad[0] * np.sin(2 * np.pi * 0.7 * t + p[1]) + wobble.pitch_rad[1] * np.sin(
        2 * np.pi * 1.9 * t + p[2]
    )
    roll = wobble.roll_rad * np.sin(2 * np.pi * 0.45 * t + p[3])
    if world.terrain.is_flat:
        T = np.stack(
            [
                make_transform(rotation_from_rpy(r, pi, ya), [xi, yi, imu_height_m])
                for r, pi, ya, xi, yi in zip(roll, pitch, yaw, x, y, strict=True)
            ]
        )
        return T, np.column_stack([roll, pitch, yaw])
    roll_g, pitch_g = surface_roll_pitch(world, s, d, yaw)
    z = world.terrain.height_m(s, d)
    T = np.empty((len(s), 4, 4))
    for k in range(len(s)):
        # The wheels sit on the surface: the unit is imu_height_m along the surface normal
        # (the up axis of the car at rest); the suspension's wobble turns the body about it.
        up = rotation_from_rpy(roll_g[k], pitch_g[k], yaw[k])[:, 2]
        contact = np.array([x[k], y[k], z[k]])
        T[k] = make_transform(
            rotation_from_rpy(roll_g[k] + roll[k], pitch_g[k] + pitch[k], yaw[k]), contact + imu_height_m * up
        )
    return T, np.column_stack([roll_g + roll, pitch_g + pitch, yaw])


def surface_roll_pitch(world: World, s_m, d_m, yaw_rad) -> tuple[np.ndarray, np.ndarray]:
    """``(roll_rad, pitch_rad)`` (OXTS signs) of a car at rest on the ground at ``(s_m, d_m)``
    heading ``yaw_rad``, arrays of one shape: its x and y axes lie in the surface's tangent plane.

    With the ground's slopes ``a`` along the heading and ``b`` to its left:
    ``pitch = -atan(a)`` (front down positive), ``roll = atan(b / sqrt(1 + a^2))`` (left up positive).
    """
    gx, gy = world.ground_slope_xy(s_m, d_m)
    c, sn = np.cos(yaw_rad), np.sin(yaw_rad)
    along = gx * c + gy * sn
    left = -gx * sn + gy * c
    return np.arctan(left / np.sqrt(1.0 + along**2)), -np.arctan(along)


def make_drive(
    world: World,
    n_frames: int,
    rng: np.random.Generator,
    imu_height_m: float,
    hz: float = 10.0,
    s_start_m: float | None = None,
    lane_d_m: float | None = None,
    direction: int = 1,
) -> Drive:
    """A drive of ``n_frames`` at ``hz`` along the world's ego lane, speed 8-14 m/s (gently varying).

    ``lane_d_m`` drives another lane (its centre's ``d``; default the ego lane's). ``direction``
    -1 drives the same stretch the other way, towards decreasing ``s``: from its far end back to
    ``s_start_m``, so that a drive of either direction from one ``s_start_m`` covers
    ``[s_start_m, s_start_m + length]``.
    """
    t = np.arange(n_frames) / hz
    v0 = rng.uniform(8.0, 14.0)
    dv = rng.uniform(0.0, 1.5)
    phase = rng.uniform(0, 2 * np.pi)
    # s(t) = s0 + v0 t + dv/w (sin(w t + phase) - sin(phase)): speed v0 + dv cos(w t + phase).
    w = 2 * np.pi / 20.0
    s0 = 30.0 if s_start_m is None else s_start_m
    s = s0 + v0 * t + dv / w * (np.sin(w * t + phase) - np.sin(phase))
    if direction < 0:
        s = s[-1] + s0 - s
    d = world.section.lane_center_m(world.ego_lane) if lane_d_m is None else lane_d_m
    T, _ = pose_on_road(world, s, np.full(n_frames, d), t, Wobble.random(rng), imu_height_m, direction)
    return Drive(t, T, s, 1 if direction > 0 else -1)


@dataclass(frozen=True)
class PoseNoise:
    """White noise on the pose an OXTS unit reports, per frame (standard deviations).

    ``pos_m`` on east, north and up; ``yaw_rad`` on yaw, a tenth of it on roll and pitch (an
    INS knows its attitude better than its heading); ``vel_mps`` on the velocities, which an
    INS measures much better than its position.
    """

    pos_m: float
    yaw_rad: float
    vel_mps: float = 0.02

    def apply(self, T_world_from_imu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The reported poses ``(n, 4, 4)``: each true pose with its position and angles perturbed."""
        n = len(T_world_from_imu)
        d_pos = rng.normal(0.0, self.pos_m, (n, 3))
        d_rpy = rng.normal(0.0, 1.0, (n, 3)) * [0.1 * self.yaw_rad, 0.1 * self.yaw_rad, self.yaw_rad]
        out = np.empty_like(T_world_from_imu)
        for k, T in enumerate(T_world_from_imu):
            roll, pitch, yaw = rpy_from_rotation(T[:3, :3])
            R = rotation_from_rpy(roll + d_rpy[k, 0], pitch + d_rpy[k, 1], yaw + d_rpy[k, 2])
            out[k] = make_transform(R, T[:3, 3] + d_pos[k])
        return out


def oxts_packets(
    frame: LocalFrame, drive: Drive, noise: PoseNoise | None = None, rng: np.random.Generator | None = None
) -> list[OxtsPacket]:
    """All 30 OXTS fields of every pose, with KITTI's meanings (``oxts/dataformat.txt``).

    Velocities, accelerations and angular rates are the poses' time derivatives (central
    differences): ``vn/ve/vu`` in the world (north, east, up), ``vf/vl`` and ``af/al/au``,
    ``wf/wl/wu`` in the level frame turned by yaw, ``ax/ay/az`` and ``wx/wy/wz`` in the vehicle
    frame; the accelerometer channels include gravity (``az`` reads about +9.81 at rest), as
    on KITTI.

    With ``noise`` (drawn from ``rng``), the packets report what a real unit would: the noisy
    pose (lat, lon, alt, roll, pitch, yaw) and ``pos_accuracy = noise.pos_m``; velocities are
    the true motion's plus ``noise.vel_mps``; accelerations and rates stay true.
    """
    t = drive.t_s
    T = drive.T_world_from_imu
    pos = T[:, :3, 3]
    vel = np.gradient(pos, t, axis=0) if len(t) > 1 else np.zeros_like(pos)
    acc = np.gradient(vel, t, axis=0) if len(t) > 1 else np.zeros_like(pos)
    T_reported, pos_accuracy = T, 0.02
    vel_reported = vel
    if noise is not None:
        if rng is None:
            raise ValueError("pose noise needs its random stream")
        T_reported, pos_accuracy = noise.apply(T, rng), noise.pos_m
        vel_reported = vel + rng.normal(0.0, noise.vel_mps, vel.shape)
    acc_specific = acc + [0.0, 0.0, GRAVITY_MPS2]
    R = T[:, :3, :3]
    # Angular velocity in the world frame from dR/dt R^T (skew-symmetric).
    dR = np.gradient(R, t, axis=0) if len(t) > 1 else np.zeros_like(R)
    Omega = dR @ np.transpose(R, (0, 2, 1))
    omega_w = np.column_stack([Omega[:, 2, 1], Omega[:, 0, 2], Omega[:, 1, 0]])
    packets = []
    for i in range(len(t)):
        pose = oxts_pose_from_T(frame, T_reported[i])
        yaw_grid = np.arctan2(R[i, 1, 0], R[i, 0, 0])
        R_level = rotation_from_rpy(0.0, 0.0, yaw_grid)  # level frame: x forward, y left, z up
        v_level = R_level.T @ vel_reported[i]
        a_level = R_level.T @ acc_specific[i]
        a_body = R[i].T @ acc_specific[i]
        w_body = R[i].T @ omega_w[i]
        w_level = R_level.T @ omega_w[i]
        packets.append(
            OxtsPacket(
                lat=pose["lat"],
                lon=pose["lon"],
                alt=pose["alt"],
                roll=pose["roll"],
                pitch=pose["pitch"],
                yaw=pose["yaw"],
                vn=float(vel_reported[i, 1]),
                ve=float(vel_reported[i, 0]),
                vf=float(v_level[0]),
                vl=float(v_level[1]),
                vu=float(vel_reported[i, 2]),
                ax=float(a_body[0]),
                ay=float(a_body[1]),
                az=float(a_body[2]),
                af=float(a_level[0]),
                al=float(a_level[1]),
                au=float(a_level[2]),
                wx=float(w_body[0]),
                wy=float(w_body[1]),
                wz=float(w_body[2]),
                wf=float(w_level[0]),
                wl=float(w_level[1]),
                wu=float(w_level[2]),
                pos_accuracy=pos_accuracy,
                vel_accuracy=0.01,
                navstat=4,
                numsats=11,
                posmode=6,
                velmode=6,
                orimode=6,
            )
        )
    return packets
