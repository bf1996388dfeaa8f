"""Batch inference: frames stream through a DataLoader, ``trainer.predict`` runs the model, a
prediction writer saves one mask PNG per frame. Under DDP Lightning shards the frames; each frame
is written once, by the process that predicted it."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from torch import nn
from torch.utils.data import Dataset

from hdmap_seg.data.classes import ClassSet
from hdmap_seg.data.roads import read_image
from hdmap_seg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hdmap_seg.io import atomic_path


class FrameDataset(Dataset):
    """Frames of a drive log, normalised as in training and optionally rescaled.

    Returns ``{"image": (3, h, w) float, "name": str, "size": (H, W)}`` where ``(H, W)`` is the frame's
    own size, to which the mask is resized back.
    """

    def __init__(self, image_paths: Sequence[Path], scale: float = 1.0) -> None:
        self.image_paths = list(image_paths)
        self.scale = scale
        self.mean = np.array(IMAGENET_MEAN, np.float32) * 255
        self.std = np.array(IMAGENET_STD, np.float32) * 255

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> dict:
        path = self.image_paths[index]
        rgb = read_image(path)
        size = rgb.shape[:2]
        if self.scale != 1.0:
            rgb = cv2.resize(rgb, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_LINEAR)
        image = torch.from_numpy(((rgb - self.mean) / self.std).transpose(2, 0, 1).copy())
        return {"image": image, "name": path.stem, "size": torch.tensor(size)}


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
        probs = self.logits(images).float().softmax(1)
        if self.flip:
            probs = probs + self.logits(images.flip(-1)).float().softmax(1).flip(-1)
        masks = []
        for prob, (h, w) in zip(probs, batch["size"].tolist(), strict=True):
            if prob.shape[-2:] != (h, w):
                prob = F.interpolate(prob[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            masks.append(prob.argmax(0).to(torch.uint8).cpu().numpy())
        return {"name": batch["name"], "mask": masks}


def colour_overlay(rgb: np.ndarray, mask: np.ndarray, classes: ClassSet, alpha: float = 0.5) -> np.ndarray:
    """Blend the class colours of ``mask`` over ``rgb`` (both ``(H, W[, 3])``); background stays clear."""
    colours = classes.palette()[mask]
    painted = (mask > 0) & (mask != classes.ignore_index)
    out = rgb.copy()
    out[painted] = (rgb[painted] * (1 - alpha) + colours[painted] * alpha).astype(np.uint8)
    return out


class MaskWriter(BasePredictionWriter):
    """Writes ``<out>/<name>.png`` (class ids) per frame, atomically, and optionally a colour overlay
    ``<overlay_dir>/<name>.jpg``. Nothing is kept in memory between batches."""

    def __init__(
        self,
        mask_dir: str | os.PathLike,
        overlay_dir: str | os.PathLike | None = None,
        classes: ClassSet | None = None,
        image_paths: dict[str, Path] | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        self.mask_dir = Path(mask_dir)
        self.overlay_dir = Path(overlay_dir) if overlay_dir else None
        self.classes = classes
        self.image_paths = image_paths or {}
        self.written = 0

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):
        for name, mask in zip(prediction["name"], prediction["mask"], strict=True):
            with atomic_path(self.mask_dir / f"{name}.png") as tmp:
                cv2.imwrite(str(tmp), mask)
            if self.overlay_dir is not None:
                rgb = read_image(self.image_paths[name])
                overlay = colour_overlay(rgb, mask, self.classes)
                with atomic_path(self.overlay_dir / f"{name}.jpg") as tmp:
                    cv2.imwrite(
                        str(tmp), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
                    )
            self.written += 1


class FramesPerSecondBar(TQDMProgressBar):
    """Lightning's progress bar, counting frames per second rather than batches."""

    def on_predict_start(self, trainer, pl_module) -> None:
        super().on_predict_start(trainer, pl_module)
        self._start, self._frames = time.perf_counter(), 0

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._frames += len(batch["name"])
        fps = self._frames / max(time.perf_counter() - self._start, 1e-9)
        self.predict_progress_bar.set_postfix({"frames/s": f"{fps:.1f}"})
