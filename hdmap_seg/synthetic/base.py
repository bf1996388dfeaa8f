"""What every writer of the synthetic world shares: the settings, the seeds, the cached world and renderer,
the folder manifest, the worker pool and PNG encoding.

Determinism: every world and every frame draws from its own ``numpy`` seed sequence, derived
from the user's seed, the split and the index, so the output does not depend on the number of
workers or on the order frames are made in, and a rerun skips frames already on disk (every
file is written atomically) and finishes with the same bytes.
"""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from hdmap_seg.errors import HdmapError
from hdmap_seg.imageio import encode_image
from hdmap_seg.io import write_text_atomic
from hdmap_seg.synthetic.camera import CameraRig, rig_by_name
from hdmap_seg.synthetic.drive import PoseNoise
from hdmap_seg.synthetic.render import Renderer
from hdmap_seg.synthetic.world import World, make_world

_SPLIT_CODE = {"train": 1, "val": 2, "log": 3}
_MANIFEST = "synthetic.json"


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
    #: All logs drive the world of log 0 (each in its own lane, direction, light, start and speed).
    one_world: bool = False
    #: Edits of that world seen by drives ``edit_from_drive`` on (docs/synthetic.md).
    edit_remove_poles: int = 0
    edit_add_signs: int = 0
    edit_move_signs: int = 0
    edit_from_drive: int = 1

    def rig(self) -> CameraRig:
        return cached_renderer(self.camera, self.scale).rig

    def pose_noise(self) -> PoseNoise | None:
        """The OXTS pose noise of the logs, or None when off."""
        if self.pose_noise_pos_m < 0 or self.pose_noise_yaw_deg < 0:
            raise HdmapError(
                f"pose noise must not be negative, got {self.pose_noise_pos_m} m, {self.pose_noise_yaw_deg} deg"
            )
        if self.pose_noise_pos_m == 0 and self.pose_noise_yaw_deg == 0:
            return None
        return PoseNoise(self.pose_noise_pos_m, float(np.radians(self.pose_noise_yaw_deg)))

    @property
    def has_edits(self) -> bool:
        return self.edit_remove_poles + self.edit_add_signs + self.edit_move_signs > 0

    def check_drives(self) -> None:
        """HdmapError unless the multi-drive settings make sense together."""
        counts = (self.edit_remove_poles, self.edit_add_signs, self.edit_move_signs)
        if min(counts) < 0:
            raise HdmapError(f"--edits must not be negative, got {' '.join(map(str, counts))}")
        if not self.has_edits:
            return
        if not self.one_world or self.logs < 2:
            raise HdmapError(
                "--edits needs --drives N with N >= 2: the edits change the world between drives"
            )
        if not 1 <= self.edit_from_drive < self.logs:
            raise HdmapError(f"--edit-from-drive must be 1..{self.logs - 1} with {self.logs} drives")


def world_seed(seed: int, split: str, index: int) -> int:
    """The seed of world ``index`` of ``split``: train, val and logs never share a world."""
    return int(np.random.SeedSequence([seed, _SPLIT_CODE[split], index]).generate_state(1)[0])


def frame_rng(seed: int, split: str, index: int, sub: int = 0) -> np.random.Generator:
    """The random stream of item ``index`` of ``split`` (``sub`` numbers streams within a log)."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], index, sub, 0xF00D]))


def pose_noise_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of log ``index``'s OXTS pose noise (apart from every other draw)."""
    return _log_stream(seed, index, 0x0A15E)


def drive_plan_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of drive ``index``'s start and light in a world driven several times."""
    return _log_stream(seed, index, 0xD21E)


def world_edit_rng(seed: int) -> np.random.Generator:
    """The random stream of the edits of a world driven several times."""
    return _log_stream(seed, 0, 0xED17)


def _log_stream(seed: int, index: int, tag: int) -> np.random.Generator:
    # A tag of its own per purpose, so that a new kind of draw never shifts an existing one.
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE["log"], index, tag]))


@functools.lru_cache(maxsize=8)
def cached_world(seed: int, length_m: float, terrain: str) -> World:
    return make_world(seed, length_m, terrain=terrain)


@functools.lru_cache(maxsize=2)
def cached_renderer(camera: str, scale: float) -> Renderer:
    return Renderer(rig_by_name(camera, scale))


def png_bytes(img: np.ndarray) -> bytes:
    return encode_image(img, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1])


def rgb_png_bytes(rgb: np.ndarray) -> bytes:
    return png_bytes(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


#: Settings recorded only when they differ from these (what folders made before they existed hold),
#: so that a flat, noise-free run writes the same manifest as then.
_MANIFEST_IMPLIED = {
    "terrain": "flat",
    "pose_noise_pos_m": 0.0,
    "pose_noise_yaw_deg": 0.0,
    "one_world": False,
    "edit_remove_poles": 0,
    "edit_add_signs": 0,
    "edit_move_signs": 0,
    "edit_from_drive": 1,
}


def check_manifest(cfg: SynthConfig, root: Path) -> None:
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


def run_jobs(fn: Callable, jobs: list, workers: int, progress, description: str) -> list:
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
