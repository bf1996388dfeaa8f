"""Batch inference: frames stream through a DataLoader, ``trainer.predict`` runs the model, a
prediction writer saves one mask PNG per frame. Under DDP Lightning shards the frames; each frame
is written once, by the process that predicted it."""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hdmap_seg.data.class_map import load_class_map
from hdmap_seg.data.classes import ClassSet
from hdmap_seg.data.roads import Sample, read_image
from hdmap_seg.data.transforms import build_transform
from hdmap_seg.errors import HdmapError
from hdmap_seg.export import write_layers
from hdmap_seg.geo.drivelog import DriveLog, open_drive_log
from hdmap_seg.io import atomic_path, write_text_atomic
from hdmap_seg.runtime import load_model
from hdmap_seg.vectorize.builder import vectorize_log
from hdmap_seg.vectorize.config import VectorizeConfig, layer_classes


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


class MaskWriter(BasePredictionWriter):
    """Writes each frame's mask PNG (class ids) and optional colour overlay JPEG, atomically, as soon
    as its batch is done. At the end every process records which frames it wrote in
    ``<manifest_dir>/rank<N>.json``, so a cluster run can be audited."""

    def __init__(self, jobs: Sequence[FrameJob], classes: ClassSet, manifest_dir: Path) -> None:
        super().__init__(write_interval="batch")
        self.jobs = list(jobs)
        self.classes = classes
        self.manifest_dir = Path(manifest_dir)
        self.written: list[str] = []

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):
        for index, mask in zip(prediction["index"], prediction["mask"], strict=True):
            job = self.jobs[index]
            with atomic_path(job.mask_path) as tmp:
                # Class-id masks compress well at the fastest level; level 3 costs a third more time.
                cv2.imwrite(str(tmp), mask, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            if job.overlay_path is not None:
                overlay = colour_overlay(read_image(job.image_path), mask, self.classes)
                with atomic_path(job.overlay_path) as tmp:
                    cv2.imwrite(
                        str(tmp), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
                    )
            self.written.append(str(job.mask_path))

    def on_predict_end(self, trainer, pl_module) -> None:
        manifest = {"rank": trainer.global_rank, "world_size": trainer.world_size, "frames": self.written}
        write_text_atomic(
            self.manifest_dir / f"rank{trainer.global_rank}.json", json.dumps(manifest, indent=1) + "\n"
        )


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


def plan_jobs(log: DriveLog, out_dir: Path, overlays: bool) -> tuple[list[FrameJob], int]:
    """The frames of ``log`` whose mask is not written yet (a rerun resumes), and how many are done."""
    jobs, done = [], 0
    for frame in log.frames:
        mask_path = out_dir / "masks" / f"{frame.stem}.png"
        if mask_path.is_file():
            done += 1
            continue
        overlay = out_dir / "overlays" / f"{frame.stem}.jpg" if overlays else None
        jobs.append(FrameJob(frame.image_path, mask_path, overlay))
    return jobs, done


def run_inference(cfg: DictConfig) -> dict:
    """Segment every frame of every log with ``trainer.predict``, then vectorize each log's masks.

    Outputs per log under ``cfg.out_dir/<log name>/``: ``masks/``, ``overlays/`` (optional), ``map/``
    (GeoJSON layers + GeoPackage) and ``summary.json``. Returns the run summary (on global rank 0;
    other ranks return an empty dict once their frames are written).
    """
    out_root = Path(cfg.out_dir)
    # An exported model's runtime gets as many threads as PyTorch would (one process per core group under DDP).
    model, classes = load_model(cfg.ckpt_path, cfg.backend, threads=torch.get_num_threads())
    vectorize_keys = OmegaConf.to_container(cfg.vectorize, resolve=True)
    if vectorize_keys.pop("classes", None) is not None:
        raise HdmapError(
            "vectorize.classes: inference takes the layers' class ids from the checkpoint's class names; "
            "for a model of a data set's own classes set class_map_path (its class map) instead"
        )
    vectorize_config = VectorizeConfig.from_dict(vectorize_keys, source="vectorize")
    # The checkpoint's class names say which mask ids feed which layer (through the class map when
    # the model was trained on a data set's own classes).
    class_map = load_class_map(cfg.class_map_path, source=classes.names) if cfg.class_map_path else None
    vectorize_config = replace(vectorize_config, classes=layer_classes(classes.names, class_map))
    logs = [open_drive_log(p, camera=cfg.camera) for p in expand_logs(cfg.logs)]
    names = [log.root.name for log in logs]
    if len(set(names)) != len(names):
        raise HdmapError(f"drive logs must have distinct folder names, got {names}")

    jobs, done = [], {}
    for log in logs:
        log_jobs, done[log.root.name] = plan_jobs(log, out_root / log.root.name, cfg.overlays)
        jobs += log_jobs

    module = InferenceModule(model, flip=cfg.flip, window=cfg.window, stride=cfg.stride)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
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
        start = time.perf_counter()
        layers = vectorize_log(log, log_out / "masks", vectorize_config, progress=True)
        paths = write_layers(layers, log_out / "map", log.origin)
        log_summary = {
            "log": str(log.root),
            "frames": len(log),
            "frames_resumed": done[log.root.name],
            "vectorize_s": round(time.perf_counter() - start, 2),
            "features": {name: len(features) for name, features in layers.items()},
            "outputs": [str(p) for p in paths],
            "run": {k: summary[k] for k in ("frames_predicted", "predict_s", "frames_per_s", "world_size")},
        }
        write_text_atomic(log_out / "summary.json", json.dumps(log_summary, indent=2) + "\n")
        summary["logs"][log.root.name] = log_summary
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
