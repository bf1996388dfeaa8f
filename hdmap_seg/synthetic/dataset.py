"""The training data set of the synthetic world: ``classes.yaml``, ``images/`` and ``masks/`` per split
(docs/conventions.md), and a contact sheet."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from hdmap_seg.data.classes import ROAD_CLASSES, save_classes
from hdmap_seg.io import write_bytes_atomic
from hdmap_seg.synthetic.base import (
    SynthConfig,
    cached_renderer,
    cached_world,
    check_manifest,
    frame_rng,
    png_bytes,
    run_jobs,
    world_seed,
)
from hdmap_seg.synthetic.drive import Wobble, pose_on_road
from hdmap_seg.synthetic.sheet import write_contact_sheet


def _dataset_frame(cfg: SynthConfig, split: str, index: int, root: str) -> str:
    """Render and write frame ``index`` of ``split`` unless it exists; returns its stem."""
    stem = f"{index:06d}"
    img_path = Path(root) / "images" / split / f"{stem}.jpg"
    mask_path = Path(root) / "masks" / split / f"{stem}.png"
    if img_path.is_file() and mask_path.is_file():
        return stem
    world = cached_world(
        world_seed(cfg.seed, split, index // cfg.frames_per_world), cfg.world_length_m, cfg.terrain
    )
    rng = frame_rng(cfg.seed, split, index)
    rig = cfg.rig()
    s = rng.uniform(20.0, world.road.total_length_m - 200.0)
    d = world.section.lane_center_m(world.ego_lane) + rng.uniform(-0.5, 0.5)
    t = rng.uniform(0.0, 40.0)
    T, _ = pose_on_road(world, [s], [d], [t], Wobble.random(rng), rig.imu_height_m)
    frame = cached_renderer(cfg.camera, cfg.scale).render(world, T[0], t, rng)
    write_bytes_atomic(mask_path, png_bytes(frame.label))
    write_bytes_atomic(img_path, frame.jpeg)  # the image last: its presence means "done"
    return stem


def write_dataset(cfg: SynthConfig, root: str | os.PathLike, workers: int = 1, progress=None) -> Path:
    """The training data set: ``classes.yaml``, ``images/{train,val}``, ``masks/{train,val}``, contact sheet."""
    root = Path(root)
    check_manifest(cfg, root)
    save_classes(ROAD_CLASSES, root / "classes.yaml")
    jobs = [("train", i) for i in range(cfg.train)] + [("val", i) for i in range(cfg.val)]
    run_jobs(functools.partial(_dataset_job, cfg, str(root)), jobs, workers, progress, "data set")
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
