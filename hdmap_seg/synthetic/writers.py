"""Write what the synthetic world makes: a training data set, KITTI-raw drive logs with ground truth.

Layouts are those of docs/conventions.md; docs/synthetic.md describes the files in full.

Determinism: every world and every frame draws from its own ``numpy`` seed sequence, derived
from the user's seed, the split and the index, so the output does not depend on the number of
workers or on the order frames are made in, and a rerun skips frames already on disk (every
file is written atomically) and finishes with the same bytes.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from shapely.geometry import LineString, Point, Polygon

from hdmap_seg.data.classes import ROAD_CLASSES, save_classes
from hdmap_seg.errors import HdmapError
from hdmap_seg.export.geojson import write_geojson
from hdmap_seg.geo.frames import LocalFrame, invert_transform
from hdmap_seg.geo.kitti import write_oxts, write_timestamps
from hdmap_seg.io import encode_image, write_bytes_atomic, write_image_atomic, write_text_atomic
from hdmap_seg.maplayers import CENTERLINE, FOOTPRINT, LANE_MARKINGS, MEDIANS, POLES, SIGNS, Feature
from hdmap_seg.synthetic.camera import CameraRig, rig_by_name
from hdmap_seg.synthetic.drive import Drive, PoseNoise, Wobble, make_drive, oxts_packets, pose_on_road
from hdmap_seg.synthetic.render import POLE, SIGN, Renderer
from hdmap_seg.synthetic.world import World, make_world

_SPLIT_CODE = {"train": 1, "val": 2, "log": 3}
_MANIFEST = "synthetic.json"
#: Where a drive starts, and how far past its last frame the world goes on (metres).
_RUN_IN_M, _RUN_OUT_M = 30.0, 150.0


@dataclass(frozen=True)
class SynthConfig:
    """What ``tools/make_synthetic.py`` makes; stored as ``synthetic.json`` in the output folder."""

    seed: int = 0
    camera: str = "kitti"
    scale: float = 1.0
    train: int = 300
    val: int = 60
    frames_per_world: int = 25
    world_length_m: float = 600.0
    logs: int = 1
    frames_per_log: int = 200
    lat0: float = 49.0
    lon0: float = 8.4
    alt0: float = 110.0
    gt_range_m: float = 30.0
    terrain: str = "hills"
    pose_noise_pos_m: float = 0.0
    pose_noise_yaw_deg: float = 0.0

    def rig(self) -> CameraRig:
        return _renderer(self.camera, self.scale).rig

    def pose_noise(self) -> PoseNoise | None:
        """The OXTS pose noise of the logs, or None when off."""
        if self.pose_noise_pos_m < 0 or self.pose_noise_yaw_deg < 0:
            raise HdmapError(
                f"pose noise must not be negative, got {self.pose_noise_pos_m} m, {self.pose_noise_yaw_deg} deg"
            )
        if self.pose_noise_pos_m == 0 and self.pose_noise_yaw_deg == 0:
            return None
        return PoseNoise(self.pose_noise_pos_m, float(np.radians(self.pose_noise_yaw_deg)))


def world_seed(seed: int, split: str, index: int) -> int:
    """The seed of world ``index`` of ``split``: train, val and logs never share a world."""
    return int(np.random.SeedSequence([seed, _SPLIT_CODE[split], index]).generate_state(1)[0])


def frame_rng(seed: int, split: str, index: int, sub: int = 0) -> np.random.Generator:
    """The random stream of item ``index`` of ``split`` (``sub`` numbers streams within a log)."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], index, sub, 0xF00D]))


@functools.lru_cache(maxsize=8)
def _world(seed: int, length_m: float, terrain: str) -> World:
    return make_world(seed, length_m, terrain=terrain)


@functools.lru_cache(maxsize=2)
def _renderer(camera: str, scale: float) -> Renderer:
    return Renderer(rig_by_name(camera, scale))


def png_bytes(img: np.ndarray) -> bytes:
    return encode_image(img, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1])


def rgb_png_bytes(rgb: np.ndarray) -> bytes:
    return png_bytes(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


# ------------------------------------------------------------------------------ training data


def _dataset_frame(cfg: SynthConfig, split: str, index: int, root: str) -> str:
    """Render and write frame ``index`` of ``split`` unless it exists; returns its stem."""
    stem = f"{index:06d}"
    img_path = Path(root) / "images" / split / f"{stem}.jpg"
    mask_path = Path(root) / "masks" / split / f"{stem}.png"
    if img_path.is_file() and mask_path.is_file():
        return stem
    world = _world(
        world_seed(cfg.seed, split, index // cfg.frames_per_world), cfg.world_length_m, cfg.terrain
    )
    rng = frame_rng(cfg.seed, split, index)
    rig = cfg.rig()
    s = rng.uniform(20.0, world.road.total_length_m - 200.0)
    d = world.section.lane_center_m(world.ego_lane) + rng.uniform(-0.5, 0.5)
    t = rng.uniform(0.0, 40.0)
    T, _ = pose_on_road(world, [s], [d], [t], Wobble.random(rng), rig.imu_height_m)
    frame = _renderer(cfg.camera, cfg.scale).render(world, T[0], t, rng)
    write_bytes_atomic(mask_path, png_bytes(frame.label))
    write_bytes_atomic(img_path, frame.jpeg)  # the image last: its presence means "done"
    return stem


def write_dataset(cfg: SynthConfig, root: str | os.PathLike, workers: int = 1, progress=None) -> Path:
    """The training data set: ``classes.yaml``, ``images/{train,val}``, ``masks/{train,val}``, contact sheet."""
    root = Path(root)
    _check_manifest(cfg, root)
    save_classes(ROAD_CLASSES, root / "classes.yaml")
    jobs = [("train", i) for i in range(cfg.train)] + [("val", i) for i in range(cfg.val)]
    _run(functools.partial(_dataset_job, cfg, str(root)), jobs, workers, progress, "data set")
    if cfg.train:
        stems = [f"{i:06d}" for i in np.linspace(0, cfg.train - 1, min(8, cfg.train)).astype(int)]
        write_contact_sheet(
            root / "contact_sheet.png",
            [root / "images" / "train" / f"{s}.jpg" for s in stems],
            [root / "masks" / "train" / f"{s}.png" for s in stems],
        )
    return root


def _dataset_job(cfg: SynthConfig, root: str, job: tuple[str, int]):
    return _dataset_frame(cfg, job[0], job[1], root)


# ---------------------------------------------------------------------------------- drive logs


def log_name(index: int) -> str:
    return f"synthetic_drive_{index:04d}"


def pose_noise_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of log ``index``'s OXTS pose noise (apart from every other draw)."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE["log"], index, 0x0A15E]))


@functools.lru_cache(maxsize=4)
def _log_setup(cfg: SynthConfig, index: int) -> tuple[World, Drive, LocalFrame]:
    length = _RUN_IN_M + 14.5 * cfg.frames_per_log / 10.0 + _RUN_OUT_M  # 14.5 m/s is the top speed
    world = _world(world_seed(cfg.seed, "log", index), max(length, cfg.world_length_m), cfg.terrain)
    rig = cfg.rig()
    drive = make_drive(
        world, cfg.frames_per_log, frame_rng(cfg.seed, "log", index), rig.imu_height_m, s_start_m=_RUN_IN_M
    )
    return world, drive, LocalFrame(cfg.lat0, cfg.lon0, cfg.alt0)


def _log_frame(cfg: SynthConfig, log_index: int, log_dir: str, i: int) -> dict[str, list[int]]:
    """Render frame ``i`` of a log (or read its label back if done); returns the GT objects it sees."""
    world, drive, _ = _log_setup(cfg, log_index)
    rig = cfg.rig()
    stem = f"{i:010d}"
    img_path = Path(log_dir) / "image_02" / "data" / f"{stem}.png"
    mask_path = Path(log_dir) / "label_02" / "data" / f"{stem}.png"
    if img_path.is_file() and mask_path.is_file():
        label = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    else:
        rng = frame_rng(cfg.seed, "log", log_index, sub=i + 1)
        frame = _renderer(cfg.camera, cfg.scale).render(world, drive.T_world_from_imu[i], drive.t_s[i], rng)
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
    _check_manifest(cfg, log_dir)
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
    seen = _run(
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


def _log_job(cfg: SynthConfig, index: int, log_dir: str, i: int):
    return _log_frame(cfg, index, log_dir, i)


# ------------------------------------------------------------------------------- ground truth


def write_ground_truth(
    gt_dir: str | os.PathLike,
    world: World,
    drive: Drive,
    origin: LocalFrame,
    rig: CameraRig,
    seen_counts: dict[str, dict[int, int]],
    range_m: float,
    min_frames: int = 2,
) -> None:
    """The drive's map layers as GeoJSON (RFC 7946) in ``gt_dir``: what the drive saw.

    Poles and signs seen (:func:`seen_objects`) in at least ``min_frames`` frames; medians and
    lane markings over the stretch of road the camera saw, from 5 m ahead of its first position
    to ``range_m`` ahead of its last. Written with the export stage's GeoJSON writer, so the
    truth and the predictions share their format (properties: docs/synthetic.md).

    Altitudes are true: a pole's Point is its base on the ground, a sign's its plate's centre;
    on a terrain (not ``flat``) the line strings carry the ground's height too (3-D), while the
    median footprints stay 2-D (the map metrics are horizontal).
    """
    gt_dir = Path(gt_dir)
    s_cam0 = float(drive.s_m[0]) + float(invert_transform(rig.T_cam_from_imu)[0, 3])
    s_lo, s_hi = s_cam0 + 5.0, float(drive.s_m[-1]) + range_m

    poles = []
    for p in world.poles:
        n = seen_counts[POLES].get(p.id, 0)
        if n >= min_frames:
            props = {
                "id": p.id,
                "type": "pole",
                "kind": p.kind,
                "height_m": round(p.height_m, 3),
                "diameter_m": round(2 * p.radius_m, 3),
                "n_frames_seen": n,
            }
            poles.append(Feature(Point(p.x_m, p.y_m, p.z0_m), props))
    signs = []
    for sg in world.signs:
        n = seen_counts[SIGNS].get(sg.id, 0)
        if n >= min_frames:
            props = {
                "id": sg.id,
                "type": "sign",
                "shape": sg.shape,
                "height_m": round(sg.height_m, 3),
                "facing_deg": round(sg.bearing_deg, 2),
                "width_m": round(sg.size_m, 3),
                "height_plate_m": round(sg.plate_height_m, 3),
                "mount": "pole" if sg.pole_id >= 0 else "post",
                "pole_id": sg.pole_id,
                "n_frames_seen": n,
            }
            signs.append(Feature(Point(sg.x_m, sg.y_m, sg.centre_z_m), props))

    sec = world.section
    terrain = world.terrain

    def line(s: np.ndarray, d: np.ndarray) -> LineString:
        xy = np.column_stack(world.road.point_at(s, d))
        return LineString(xy if terrain.is_flat else np.column_stack([xy, terrain.height_m(s, d)]))

    medians = []
    for k, (a, b) in enumerate(world.median_pieces_m(s_lo, s_hi)):
        if b - a < 1.0:
            continue
        s = _samples(a, b)
        left = np.column_stack(world.road.point_at(s, np.full_like(s, sec.half_median_m)))
        right = np.column_stack(world.road.point_at(s, np.full_like(s, -sec.half_median_m)))
        props = {
            "median_id": k,
            "width_m": round(sec.median_width_m, 3),
            "s_start_m": round(a, 2),
            "s_end_m": round(b, 2),
        }
        medians.append(Feature(Polygon(np.vstack([left, right[::-1]])), {"kind": FOOTPRINT, **props}))
        medians.append(Feature(line(s, np.zeros_like(s)), {"kind": CENTERLINE, **props}))

    markings = []
    for side, sign in (("ego", -1.0), ("opposite", 1.0)):
        for k, (c, style) in enumerate(sec.marking_lines()):
            pieces = world.median_pieces_m(s_lo, s_hi) if k == 0 else [(s_lo, s_hi)]
            for a, b in pieces:
                if b - a < 1.0:
                    continue
                s = _samples(a, b)
                props = {
                    "style": style,
                    "side": side,
                    "line": k,
                    "offset_m": round(sign * c, 3),
                    "width_m": round(sec.marking_width_m, 3),
                }
                markings.append(Feature(line(s, np.full_like(s, sign * c)), props))

    for name, feats in ((POLES, poles), (SIGNS, signs), (MEDIANS, medians), (LANE_MARKINGS, markings)):
        write_geojson(gt_dir / f"{name}.geojson", feats, origin)


def _samples(a: float, b: float, step_m: float = 1.0) -> np.ndarray:
    return np.linspace(a, b, max(int(np.ceil((b - a) / step_m)) + 1, 2))


# ------------------------------------------------------------------------------ contact sheet


def write_contact_sheet(
    path: str | os.PathLike, images: Iterable[Path], masks: Iterable[Path], width: int = 1600
) -> None:
    """A PNG grid: each frame beside itself with its label mask overlaid in the class colours."""
    lut = ROAD_CLASSES.palette()[:, ::-1]  # BGR
    rows = []
    for ip, mp_ in zip(images, masks, strict=True):
        img = cv2.imread(str(ip), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(mp_), cv2.IMREAD_UNCHANGED)
        if img is None or mask is None:
            continue
        overlay = img.copy()
        labelled = mask > 0
        overlay[labelled] = (0.45 * img[labelled] + 0.55 * lut[mask[labelled]]).astype(np.uint8)
        rows.append(np.hstack([img, overlay]))
    if not rows:
        return
    sheet = np.vstack(rows)
    scale = min(1.0, width / sheet.shape[1])
    sheet = cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    write_image_atomic(path, sheet)


# ---------------------------------------------------------------------------------- plumbing


#: Settings recorded only when they differ from these (what folders made before they existed hold),
#: so that a flat, noise-free run writes the same manifest as then.
_MANIFEST_IMPLIED = {"terrain": "flat", "pose_noise_pos_m": 0.0, "pose_noise_yaw_deg": 0.0}


def _check_manifest(cfg: SynthConfig, root: Path) -> None:
    """Refuse to mix frames of different settings in one folder; record the settings otherwise."""
    path = root / _MANIFEST
    mine = {k: v for k, v in asdict(cfg).items() if _MANIFEST_IMPLIED.get(k, object()) != v}
    if path.is_file():
        try:
            theirs = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise HdmapError(f"{path}: not valid JSON ({err})") from None
        keys = (
            "seed",
            "camera",
            "scale",
            "frames_per_world",
            "world_length_m",
            "lat0",
            "lon0",
            "alt0",
            "frames_per_log",
            "gt_range_m",
            *_MANIFEST_IMPLIED,
        )
        diff = [k for k in keys if theirs.get(k, _MANIFEST_IMPLIED.get(k)) != getattr(cfg, k)]
        if diff:
            raise HdmapError(
                f"{root} holds synthetic data made with other settings ({', '.join(diff)}); "
                "choose another --out or delete it"
            )
    write_text_atomic(path, json.dumps(mine, indent=2) + "\n")


def _run(fn: Callable, jobs: list, workers: int, progress, description: str) -> list:
    """``[fn(j) for j in jobs]``, over ``workers`` processes, advancing ``progress`` (rich) per job."""
    task = progress.add_task(description, total=len(jobs)) if progress is not None else None
    results = []
    if workers <= 1 or len(jobs) < 4:
        for j in jobs:
            results.append(fn(j))
            if task is not None:
                progress.advance(task)
        return results
    # spawn, not fork: forking a process that runs threads (rich's refresh, OpenCV's pool) can
    # copy a held lock into the child and hang it.
    with mp.get_context("spawn").Pool(workers, initializer=_single_thread) as pool:
        for r in pool.imap(fn, jobs, chunksize=2):
            results.append(r)
            if task is not None:
                progress.advance(task)
    return results


def _single_thread() -> None:
    cv2.setNumThreads(1)


def make_all(
    cfg: SynthConfig,
    out: str | os.PathLike,
    logs_out: str | os.PathLike | None = None,
    workers: int = 1,
    progress=None,
) -> dict[str, object]:
    """Everything ``cfg`` asks for: the data set in ``out`` and the logs in ``logs_out`` (default ``out/logs``)."""
    out = Path(out)
    logs_root = Path(logs_out) if logs_out is not None else out / "logs"
    start = dt.datetime.now()
    write_dataset(cfg, out, workers, progress)
    logs = [write_drive_log(cfg, i, logs_root, workers, progress) for i in range(cfg.logs)]
    return {"root": out, "logs": logs, "seconds": (dt.datetime.now() - start).total_seconds()}
