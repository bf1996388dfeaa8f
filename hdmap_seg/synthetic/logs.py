"""Drive logs of the synthetic world in the KITTI raw layout: frames, label masks, OXTS packets,
calibration, the ground truth of what the drive saw (``gt/``) and a contact sheet. Each log drives a
world of its own, or (``one_world``) all drive one world, edited between drives (:mod:`.multidrive`)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from hdmap_seg.geo.frames import LocalFrame, invert_transform
from hdmap_seg.geo.kitti import write_oxts, write_timestamps
from hdmap_seg.imageio import read_mask
from hdmap_seg.io import write_bytes_atomic
from hdmap_seg.maplayers import POLES, SIGNS
from hdmap_seg.synthetic.base import (
    SynthConfig,
    cached_renderer,
    cached_world,
    check_manifest,
    drive_plan_rng,
    frame_rng,
    png_bytes,
    pose_noise_rng,
    rgb_png_bytes,
    run_jobs,
    world_edit_rng,
    world_seed,
)
from hdmap_seg.synthetic.camera import CameraRig
from hdmap_seg.synthetic.drive import Drive, make_drive, oxts_packets
from hdmap_seg.synthetic.multidrive import (
    START_OFFSET_M,
    DrivePlan,
    WorldEdit,
    drive_plan,
    drive_world,
    edit_world,
    write_edits,
)
from hdmap_seg.synthetic.render import POLE, SIGN
from hdmap_seg.synthetic.sheet import write_contact_sheet
from hdmap_seg.synthetic.truth import write_ground_truth
from hdmap_seg.synthetic.world import World

#: Where a drive starts, and how far past its last frame the world goes on (metres).
_RUN_IN_M, _RUN_OUT_M = 30.0, 150.0


def log_name(index: int) -> str:
    return f"synthetic_drive_{index:04d}"


@functools.lru_cache(maxsize=4)
def _log_setup(cfg: SynthConfig, index: int) -> tuple[World, Drive, LocalFrame]:
    if cfg.one_world:
        world, plan = _drive_of_one_world(cfg, index)
        how = {
            "s_start_m": _RUN_IN_M + plan.start_offset_m,
            "lane_d_m": plan.lane_d_m,
            "direction": plan.direction,
        }
    else:
        world, how = _log_world(cfg, index), {"s_start_m": _RUN_IN_M}
    drive = make_drive(
        world, cfg.frames_per_log, frame_rng(cfg.seed, "log", index), cfg.rig().imu_height_m, **how
    )
    return world, drive, LocalFrame(cfg.lat0, cfg.lon0, cfg.alt0)


def _log_world(cfg: SynthConfig, index: int) -> World:
    length = _RUN_IN_M + 14.5 * cfg.frames_per_log / 10.0 + _RUN_OUT_M  # 14.5 m/s is the top speed
    return cached_world(world_seed(cfg.seed, "log", index), max(length, cfg.world_length_m), cfg.terrain)


@functools.lru_cache(maxsize=1)
def world_versions(cfg: SynthConfig) -> tuple[World, World, list[WorldEdit]]:
    """The world all drives of ``cfg`` drive (``one_world``): as drive 0 sees it, as drives from
    ``cfg.edit_from_drive`` on see it, and the edits between the two."""
    cfg.check_drives()
    world = _log_world(cfg, 0)
    if not cfg.has_edits:
        return world, world, []
    # The stretch every drive passes, whatever its start, speed (8 m/s at the least) and direction,
    # with 5 m to spare at its ends (an object right beside a drive's first or last pose is out of
    # its view): objects there are edited, so that drives before and after the edits can tell.
    s_lo = _RUN_IN_M + START_OFFSET_M[1] + 5.0
    s_hi = _RUN_IN_M + START_OFFSET_M[0] + 8.0 * cfg.frames_per_log / 10.0 - 5.0
    edited, edits = edit_world(
        world,
        cfg.edit_remove_poles,
        cfg.edit_add_signs,
        cfg.edit_move_signs,
        (s_lo, max(s_hi, s_lo + 20.0)),
        world_edit_rng(cfg.seed),
    )
    return world, edited, edits


def _drive_of_one_world(cfg: SynthConfig, index: int) -> tuple[World, DrivePlan]:
    """Drive ``index``'s version of the one world of ``cfg``, and how it drives it."""
    before, after, _ = world_versions(cfg)
    world = after if cfg.has_edits and index >= cfg.edit_from_drive else before
    rng = drive_plan_rng(cfg.seed, index)
    plan = drive_plan(world, index, rng)
    return drive_world(world, plan, index, rng), plan


def _log_frame(cfg: SynthConfig, log_index: int, log_dir: str, i: int) -> dict[str, list[int]]:
    """Render frame ``i`` of a log (or read its label back if done); returns the GT objects it sees."""
    world, drive, _ = _log_setup(cfg, log_index)
    rig = cfg.rig()
    stem = f"{i:010d}"
    img_path = Path(log_dir) / "image_02" / "data" / f"{stem}.png"
    mask_path = Path(log_dir) / "label_02" / "data" / f"{stem}.png"
    if img_path.is_file() and mask_path.is_file():
        label = read_mask(mask_path)
    else:
        rng = frame_rng(cfg.seed, "log", log_index, sub=i + 1)
        frame = cached_renderer(cfg.camera, cfg.scale).render(
            world, drive.T_world_from_imu[i], drive.t_s[i], rng
        )
        label = frame.label
        write_bytes_atomic(mask_path, png_bytes(label))
        write_bytes_atomic(img_path, rgb_png_bytes(frame.rgb))
    return seen_objects(world, rig, drive.T_world_from_imu[i], label, cfg.gt_range_m)


def seen_objects(
    world: World, rig: CameraRig, T_world_from_imu: np.ndarray, label: np.ndarray, range_m: float
) -> dict[str, list[int]]:
    """Ids of the poles and signs this frame shows: within ``range_m`` (ground distance from the
    camera), in the image, and with their own class at the probe pixels (not hidden).

    A pole is probed on its axis 1 m above its base (where the base is found from). A sign is
    probed at 9 points spread over its plate (a 3x3 grid at +-1/4 of its width and height) and
    counts when 3 of them are sign: seen from behind, its post hides the plate's centre column.
    Both at their true 3-D places, on the terrain.
    """
    T_cam_from_world = invert_transform(T_world_from_imu @ invert_transform(rig.T_cam_from_imu))
    cam_xy = invert_transform(T_cam_from_world)[:2, 3]
    grid = np.array([(a, b) for a in (-0.25, 0.0, 0.25) for b in (-0.25, 0.0, 0.25)])
    probes = {
        POLES: (POLE, 1, np.array([[p.x_m, p.y_m, p.z0_m + 1.0] for p in world.poles]).reshape(-1, 3)),
        SIGNS: (
            SIGN,
            3,
            np.array(
                [
                    [
                        s.x_m - a * s.size_m * np.sin(s.facing_rad),
                        s.y_m + a * s.size_m * np.cos(s.facing_rad),
                        s.centre_z_m + b * s.plate_height_m,
                    ]
                    for s in world.signs
                    for a, b in grid
                ]
            ).reshape(-1, len(grid), 3),
        ),
    }
    out: dict[str, list[int]] = {}
    objects = {POLES: world.poles, SIGNS: world.signs}
    for key, (cls, need, P) in probes.items():
        P = P.reshape(len(objects[key]), -1, 3)
        flat = P.reshape(-1, 3)
        Pc = flat @ T_cam_from_world[:3, :3].T + T_cam_from_world[:3, 3]
        uv = Pc @ rig.K.T
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.round(uv[:, 0] / uv[:, 2])
            v = np.round(uv[:, 1] / uv[:, 2])
        ok = (Pc[:, 2] > 0.5) & (u >= 0) & (u < label.shape[1]) & (v >= 0) & (v < label.shape[0])
        hit = np.zeros(len(flat), bool)
        hit[ok] = label[v[ok].astype(np.int64), u[ok].astype(np.int64)] == cls
        near = np.hypot(P[:, 0, 0] - cam_xy[0], P[:, 0, 1] - cam_xy[1]) <= range_m
        seen = near & (hit.reshape(len(P), -1).sum(axis=1) >= need)
        out[key] = [objects[key][k].id for k in np.flatnonzero(seen)]
    return out


def write_drive_log(
    cfg: SynthConfig, index: int, logs_root: str | os.PathLike, workers: int = 1, progress=None
) -> Path:
    """Drive log ``index`` in the KITTI raw layout, with label masks and ground truth (``gt/``)."""
    log_dir = Path(logs_root) / log_name(index)
    check_manifest(cfg, log_dir)
    world, drive, origin = _log_setup(cfg, index)
    rig = cfg.rig()
    rig.calib.write(log_dir)
    start = np.datetime64("2026-01-01T12:00:00", "ns") + np.timedelta64(index, "h")
    stamps = start + (drive.t_s * 1e9).astype("timedelta64[ns]")
    write_timestamps(log_dir / "image_02" / "timestamps.txt", stamps)
    write_timestamps(log_dir / "oxts" / "timestamps.txt", stamps)
    noise = cfg.pose_noise()
    noise_rng = pose_noise_rng(cfg.seed, index) if noise is not None else None
    # Frames are rendered from the true poses; the packets report what the (noisy) unit says.
    for i, packet in enumerate(oxts_packets(origin, drive, noise, noise_rng)):
        write_oxts(log_dir / "oxts" / "data" / f"{i:010d}.txt", packet)
    seen = run_jobs(
        functools.partial(_log_job, cfg, index, str(log_dir)),
        list(range(cfg.frames_per_log)),
        workers,
        progress,
        log_name(index),
    )
    counts = {POLES: {}, SIGNS: {}}
    for frame_seen in seen:
        for key, ids in frame_seen.items():
            for k in ids:
                counts[key][k] = counts[key].get(k, 0) + 1
    write_ground_truth(log_dir / "gt", world, drive, origin, rig, counts, cfg.gt_range_m)
    stems = [
        f"{i:010d}" for i in np.linspace(0, cfg.frames_per_log - 1, min(8, cfg.frames_per_log)).astype(int)
    ]
    write_contact_sheet(
        log_dir / "contact_sheet.png",
        [log_dir / "image_02" / "data" / f"{s}.png" for s in stems],
        [log_dir / "label_02" / "data" / f"{s}.png" for s in stems],
    )
    return log_dir


def write_world_edits(cfg: SynthConfig, logs_root: str | os.PathLike) -> Path:
    """``logs_root/edits.geojson``: what changed in the one world of ``cfg`` between its drives."""
    _, _, edits = world_versions(cfg)
    return write_edits(
        Path(logs_root) / "edits.geojson",
        edits,
        cfg.edit_from_drive,
        LocalFrame(cfg.lat0, cfg.lon0, cfg.alt0),
    )


def _log_job(cfg: SynthConfig, index: int, log_dir: str, i: int):
    return _log_frame(cfg, index, log_dir, i)
