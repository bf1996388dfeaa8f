"""Batch inference: frames stream through a DataLoader, ``trainer.predict`` runs the model, a
prediction writer saves one mask PNG per frame. Under DDP Lightning shards the frames; each frame
is written once, by the process that predicted it."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.metadata
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hdmap_seg.checks import check_window, instantiate_configured
from hdmap_seg.data.classes import ClassSet
from hdmap_seg.data.dataset import Sample
from hdmap_seg.data.transforms import build_transform
from hdmap_seg.errors import HdmapError
from hdmap_seg.geo.drivelog import DriveLog, open_drive_log
from hdmap_seg.imageio import image_size, read_image, read_mask, write_image_atomic
from hdmap_seg.io import exclusive_lock, remove_stale_temps, write_text_atomic
from hdmap_seg.mapping import map_log
from hdmap_seg.runtime import load_model
from hdmap_seg.vectorize.config import VectorizeConfig, model_vectorize_config


@dataclass(frozen=True)
class FrameJob:
    """One frame to segment and where its outputs go."""

    image_path: Path
    mask_path: Path
    overlay_path: Path | None = None


class FrameDataset(Dataset):
    """Frames normalised as in training and optionally rescaled by ``scale``.

    Returns ``{"image": (3, h, w) float, "index": int, "size": (H, W)}``; ``(H, W)`` is the frame's own
    size, to which its mask is resized back, and ``index`` points into ``jobs`` (anything with an
    ``image_path``: inference's jobs, or a data set's samples for evaluation).
    """

    def __init__(self, jobs: Sequence[FrameJob | Sample], scale: float = 1.0) -> None:
        self.jobs = list(jobs)
        self.scale = scale
        self.normalize = build_transform([])  # the training pipeline's normalisation, nothing else

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> dict:
        rgb = read_image(self.jobs[index].image_path)
        size = rgb.shape[:2]
        if self.scale != 1.0:
            rgb = cv2.resize(rgb, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_LINEAR)
        return {"image": self.normalize(image=rgb)["image"], "index": index, "size": torch.tensor(size)}


def sliding_window_logits(
    model: nn.Module, images: torch.Tensor, window: Sequence[int], stride: Sequence[int]
) -> torch.Tensor:
    """Average the logits of overlapping ``window`` crops (mmsegmentation's slide inference).

    ``images (B, 3, H, W)`` -> ``(B, C, H, W)``. Windows at the border are shifted inwards so that
    every crop has the full window size, as the model saw in training.
    """
    _, _, H, W = images.shape
    wh, ww = min(window[0], H), min(window[1], W)
    sh, sw = stride
    rows = range(0, max(H - wh, 0) + sh, sh)
    cols = range(0, max(W - ww, 0) + sw, sw)
    total, count = None, images.new_zeros(1, 1, H, W)
    for y in rows:
        for x in cols:
            y0, x0 = min(y, H - wh), min(x, W - ww)
            logits = model(images[:, :, y0 : y0 + wh, x0 : x0 + ww])
            if total is None:
                total = images.new_zeros(images.shape[0], logits.shape[1], H, W, dtype=logits.dtype)
            total[:, :, y0 : y0 + wh, x0 : x0 + ww] += logits
            count[:, :, y0 : y0 + wh, x0 : x0 + ww] += 1
    return total / count


class InferenceModule(L.LightningModule):
    """Wraps a trained network for ``trainer.predict``: whole image (or sliding window), optional
    horizontal-flip test-time augmentation; returns uint8 masks at each frame's own size.

    Mixed precision comes from the trainer (``precision=16-mixed`` / ``bf16-mixed``).
    """

    def __init__(
        self,
        model: nn.Module,
        flip: bool = False,
        window: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_window(window, stride, getattr(model, "size_divisor", 1))
        self.model = model.eval()
        self.flip = flip
        self.window = tuple(window) if window else None
        self.stride = tuple(stride) if stride else (tuple(w * 2 // 3 for w in window) if window else None)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.window:
            return sliding_window_logits(self.model, images, self.window, self.stride)
        return self.model(images)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        images = batch["image"]
        scores = self.logits(images).float()
        if self.flip:  # average probabilities; without TTA the logits' argmax is the same and cheaper
            scores = scores.softmax(1) + self.logits(images.flip(-1)).float().softmax(1).flip(-1)
        masks = []
        for prob, (h, w) in zip(scores, batch["size"].tolist(), strict=True):
            if prob.shape[-2:] != (h, w):
                prob = F.interpolate(prob[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            # max(0).indices, not argmax(0): the same first-maximum labels, but argmax's reduction over
            # the outer (class) dimension is ~8x slower on CPU (10 ms a 621x188 frame, a third of the forward).
            masks.append(prob.max(0).indices.to(torch.uint8).cpu().numpy())
        return {"index": batch["index"].tolist(), "mask": masks}


def colour_overlay(rgb: np.ndarray, mask: np.ndarray, classes: ClassSet, alpha: float = 0.5) -> np.ndarray:
    """Blend the class colours of ``mask`` over ``rgb`` (both ``(H, W[, 3])``); background stays clear."""
    colours = classes.palette()[mask]
    painted = (mask > 0) & (mask != classes.ignore_index)
    out = rgb.copy()
    out[painted] = (rgb[painted] * (1 - alpha) + colours[painted] * alpha).astype(np.uint8)
    return out


def write_overlay(job: FrameJob, mask: np.ndarray, classes: ClassSet) -> None:
    """The colour overlay JPEG of ``job``'s frame and its ``mask``."""
    overlay = colour_overlay(read_image(job.image_path), mask, classes)
    write_image_atomic(
        job.overlay_path, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
    )


class MaskWriter(BasePredictionWriter):
    """Writes each frame's mask PNG (class ids) and optional colour overlay JPEG, atomically, as soon
    as its batch is done. At the end every process adds a record of the frames it wrote to
    ``<manifest_dir>/rank<N>.json`` (one record per run), so a cluster run can be audited."""

    def __init__(self, jobs: Sequence[FrameJob], classes: ClassSet, manifest_dir: Path) -> None:
        super().__init__(write_interval="batch")
        self.jobs = list(jobs)
        self.classes = classes
        self.manifest_dir = Path(manifest_dir)
        self.written: list[str] = []
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S")

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):
        for index, mask in zip(prediction["index"], prediction["mask"], strict=True):
            job = self.jobs[index]
            # Class-id masks compress well at the fastest level; level 3 costs a third more time.
            write_image_atomic(job.mask_path, mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            if job.overlay_path is not None:
                write_overlay(job, mask, self.classes)
            self.written.append(str(job.mask_path))

    def on_predict_end(self, trainer, pl_module) -> None:
        path = self.manifest_dir / f"rank{trainer.global_rank}.json"
        try:
            runs = json.loads(path.read_text())["runs"]
        except (OSError, ValueError, KeyError, TypeError):
            runs = []  # none yet, or one from a version that kept a single run: start the record afresh
        runs.append({"started": self.started, "world_size": trainer.world_size, "frames": self.written})
        write_text_atomic(path, json.dumps({"rank": trainer.global_rank, "runs": runs}, indent=1) + "\n")


class FramesPerSecondBar(TQDMProgressBar):
    """Lightning's progress bar, counting frames per second rather than batches."""

    def on_predict_start(self, trainer, pl_module) -> None:
        super().on_predict_start(trainer, pl_module)
        self._start, self._frames = time.perf_counter(), 0

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._frames += len(batch["index"])
        fps = self._frames / max(time.perf_counter() - self._start, 1e-9)
        self.predict_progress_bar.set_postfix({"frames/s": f"{fps:.1f}"})


def expand_logs(logs: str | Sequence[str]) -> list[Path]:
    """Drive-log folders from paths and globs, in sorted order, each once."""
    patterns = [logs] if isinstance(logs, str | os.PathLike) else list(logs)
    found: dict[Path, None] = {}
    for pattern in patterns:
        matches = (
            sorted(Path(p) for p in glob.glob(str(pattern)))
            if glob.has_magic(str(pattern))
            else [Path(pattern)]
        )
        if not matches:
            raise HdmapError(f"{pattern}: no drive log matches")
        for m in matches:
            found.setdefault(m.resolve(), None)
    return list(found)


#: Frames larger than this (after ``scale``) are refused before any prediction: the logits of a
#: 36-megapixel frame alone take about a gigabyte. Resize them with ``scale=`` (README, "Failure behaviour").
MAX_FRAME_PIXELS = 4096 * 4096
#: The smallest frame side the network can segment (its coarsest stage is 1/32 of the input).
MIN_FRAME_SIDE_PX = 32


def check_frame_sizes(log: DriveLog, scale: float) -> None:
    """Every frame of ``log`` has its camera's size, within the limits above: checked from the image
    headers, before any frame is predicted."""
    expected = (log.camera.width, log.camera.height)
    for frame in log.frames:
        height, width = image_size(frame.image_path)
        if (width, height) != expected:
            raise HdmapError(
                f"{frame.image_path}: the frame is {width}x{height} pixels but its camera is "
                f"{expected[0]}x{expected[1]} (the log's calibration)"
            )
    w, h = round(expected[0] * scale), round(expected[1] * scale)
    if min(w, h) < MIN_FRAME_SIDE_PX or w * h > MAX_FRAME_PIXELS:
        raise HdmapError(
            f"{log.root}: frames of {w}x{h} pixels (scale={scale}) are outside what inference takes: "
            f"sides of at least {MIN_FRAME_SIDE_PX} px, at most {MAX_FRAME_PIXELS / 1e6:.1f} megapixels; set scale="
        )


def mask_is_good(path: Path, size_hw: tuple[int, int], num_classes: int) -> bool:
    """Whether a mask written earlier decodes completely, has the frame's size and holds only class ids."""
    try:
        mask = read_mask(path)
    except HdmapError:
        return False
    return mask.shape == size_hw and int(mask.max(initial=0)) < num_classes


def overlay_is_good(path: Path, size_hw: tuple[int, int]) -> bool:
    """Whether an overlay JPEG written earlier is complete (ends with the end-of-image marker) and has
    the frame's size."""
    try:
        with open(path, "rb") as f:
            f.seek(-2, os.SEEK_END)
            if f.read(2) != b"\xff\xd9":
                return False
        return image_size(path) == size_hw
    except (OSError, HdmapError):
        return False


@dataclass
class LogPlan:
    """What a run does for one log: frames to predict, and overlays to draw from masks already written."""

    predict: list[FrameJob]
    overlays_only: list[FrameJob]
    resumed: int
    redone: int


def plan_jobs(
    log: DriveLog, out_dir: Path, overlays: bool, num_classes: int, overwrite: bool = False
) -> LogPlan:
    """The frames of ``log`` to predict. A rerun keeps each mask that decodes to the frame's size and
    redoes the rest (absent, torn or foreign); overlays are checked on their own, and a missing one
    of a good mask is drawn from that mask without predicting again. ``overwrite`` redoes everything."""
    size_hw = (log.camera.height, log.camera.width)
    plan = LogPlan([], [], 0, 0)
    for frame in log.frames:
        mask_path = out_dir / "masks" / f"{frame.stem}.png"
        overlay = out_dir / "overlays" / f"{frame.stem}.jpg" if overlays else None
        job = FrameJob(frame.image_path, mask_path, overlay)
        if overwrite or not mask_path.exists():
            plan.predict.append(job)
        elif not mask_is_good(mask_path, size_hw, num_classes):
            plan.predict.append(job)
            plan.redone += 1
        else:
            plan.resumed += 1
            if overlay is not None and not overlay_is_good(overlay, size_hw):
                plan.overlays_only.append(job)
    return plan


def run_manifest(cfg: DictConfig, classes: ClassSet) -> dict:
    """What decides the masks of a run: a rerun into the same ``out_dir`` must match it to reuse them."""
    digest = hashlib.sha256()
    with open(cfg.ckpt_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {
        "model_sha256": digest.hexdigest(),
        "backend": cfg.backend,
        "classes": list(classes.names),
        "options": {
            "scale": cfg.scale,
            "flip": cfg.flip,
            "window": None if cfg.window is None else list(cfg.window),
            "stride": None if cfg.stride is None else list(cfg.stride),
            "camera": cfg.camera,
            "precision": str(cfg.trainer.get("precision")),
        },
        "hdmap_seg": importlib.metadata.version("hdmap_seg"),
    }


def check_manifest(out_root: Path, manifest: dict, model_path: str) -> None:
    """Refuse to mix masks of two runs: one line naming what differs from ``out_root/run.json``."""
    path = out_root / "run.json"
    if not path.is_file():
        return
    try:
        before = json.loads(path.read_text())
    except ValueError:
        raise HdmapError(
            f"{path}: not valid JSON; rerun with overwrite=true to start this out_dir clean"
        ) from None
    differ = []
    for key, now in manifest.items():
        if key == "options":
            differ += [
                f"{k}: {before.get('options', {}).get(k)!r} -> {v!r}"
                for k, v in now.items()
                if before.get("options", {}).get(k) != v
            ]
        elif before.get(key) != now:
            differ.append(
                f"model: {before.get('model_path')} -> {model_path} (another file content)"
                if key == "model_sha256"
                else f"{key}: {before.get(key)!r} -> {now!r}"
            )
    if differ:
        raise HdmapError(
            f"{out_root}: holds the outputs of another run ({'; '.join(differ)}); "
            "rerun with overwrite=true to redo them, or choose another out_dir"
        )


def run_inference(cfg: DictConfig) -> dict:
    """Segment every frame of every log with ``trainer.predict``, then vectorize each log's masks.

    Outputs per log under ``cfg.out_dir/<log name>/``: ``masks/``, ``overlays/`` (optional), ``map/``
    (GeoJSON layers + GeoPackage) and ``summary.json``; ``cfg.out_dir/run.json`` records what made
    the masks (:func:`run_manifest`) and ``.lock`` keeps a second run out. Returns the run summary
    (on global rank 0; other ranks return an empty dict once their frames are written).
    """
    out_root = Path(cfg.out_dir)
    # An exported model's runtime gets as many threads as PyTorch would (one process per core group under DDP).
    model, classes = load_model(cfg.ckpt_path, cfg.backend, threads=torch.get_num_threads())
    vectorize_config = model_vectorize_config(
        OmegaConf.to_container(cfg.vectorize, resolve=True), classes.names, cfg.class_map_path
    )
    logs = [open_drive_log(p, camera=cfg.camera) for p in expand_logs(cfg.logs)]
    names = [log.root.name for log in logs]
    if len(set(names)) != len(names):
        raise HdmapError(f"drive logs must have distinct folder names, got {names}")
    for log in logs:
        check_frame_sizes(log, cfg.scale)
    module = InferenceModule(model, flip=cfg.flip, window=cfg.window, stride=cfg.stride)

    with contextlib.ExitStack() as held:
        # One run per out_dir at a time. Under DDP the launching process (global rank 0) holds the
        # lock for all ranks; the others run only inside its run.
        if rank_zero_only.rank == 0:
            held.enter_context(exclusive_lock(out_root, "hdmap-infer"))
        return _run_locked(cfg, module, classes, vectorize_config, logs)


def _run_locked(
    cfg: DictConfig,
    module: InferenceModule,
    classes: ClassSet,
    vectorize_config: VectorizeConfig,
    logs: list[DriveLog],
) -> dict:
    out_root = Path(cfg.out_dir)
    manifest = run_manifest(cfg, classes)
    if not cfg.overwrite:
        check_manifest(out_root, manifest, str(cfg.ckpt_path))
    plans = {
        log.root.name: plan_jobs(
            log, out_root / log.root.name, cfg.overlays, classes.num_classes, cfg.overwrite
        )
        for log in logs
    }
    if rank_zero_only.rank == 0:
        for log in logs:
            log_out = out_root / log.root.name
            for folder in ("masks", "overlays", "map"):
                remove_stale_temps(log_out / folder)  # of a killed run; the lock says none is live
            if cfg.overwrite and not cfg.overlays:
                shutil.rmtree(log_out / "overlays", ignore_errors=True)  # no longer of these masks
        write_text_atomic(
            out_root / "run.json", json.dumps({**manifest, "model_path": str(cfg.ckpt_path)}, indent=2) + "\n"
        )
    jobs = [job for plan in plans.values() for job in plan.predict]

    trainer: L.Trainer = instantiate_configured(
        cfg.trainer,
        "trainer",
        logger=False,
        enable_checkpointing=False,
        callbacks=[MaskWriter(jobs, classes, out_root / "ranks"), FramesPerSecondBar()],
    )
    start = time.perf_counter()
    if jobs:
        loader = DataLoader(
            FrameDataset(jobs, scale=cfg.scale),
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            collate_fn=stack_frames,
        )
        trainer.predict(module, loader, return_predictions=False)
    predict_s = time.perf_counter() - start
    trainer.strategy.barrier()  # every rank's masks are on disk before anyone vectorizes
    if not trainer.is_global_zero:
        return {}

    summary = {
        "checkpoint": str(cfg.ckpt_path),
        "backend": cfg.backend,
        "frames_predicted": len(jobs),
        "predict_s": round(predict_s, 2),
        "frames_per_s": round(len(jobs) / predict_s, 2) if jobs and predict_s > 0 else None,
        "world_size": trainer.world_size,
        "logs": {},
    }
    for log in logs:
        log_out = out_root / log.root.name
        plan = plans[log.root.name]
        for job in plan.overlays_only:
            write_overlay(job, read_mask(job.mask_path), classes)
        about = {
            "frames_resumed": plan.resumed,
            "frames_redone": plan.redone,
            "overlays_redrawn": len(plan.overlays_only),
            "run": {k: summary[k] for k in ("frames_predicted", "predict_s", "frames_per_s", "world_size")},
        }
        summary["logs"][log.root.name] = map_log(
            log, log_out / "masks", vectorize_config, log_out / "map", log_out / "summary.json", about
        )
    write_text_atomic(out_root / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def stack_frames(batch: list[dict]) -> dict:
    """Frames of one batch share a size when they come from one camera; stack them."""
    sizes = {tuple(b["image"].shape) for b in batch}
    if len(sizes) > 1:
        raise HdmapError(f"frames of different sizes {sorted(sizes)} in one batch: use batch_size=1")
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "index": torch.tensor([b["index"] for b in batch]),
        "size": torch.stack([b["size"] for b in batch]),
    }
