"""Segmentation metrics of a trained model on one split of a labelled data set (``eval.py`` / ``hdmap-eval``).

Frames go through the inference path itself (:class:`~hdmap_seg.inference.InferenceModule` under
``trainer.predict``: the same scale, sliding window, flip and argmax as ``tools/infer.py``, on any
backend of :func:`~hdmap_seg.runtime.load_model`), and predictions at each label's own size feed the
metric training validates with: torchmetrics' ``MulticlassConfusionMatrix`` (ignore index left out),
per-class IoU from it (:func:`~hdmap_seg.module.iou_from_confusion`), their mean over the classes
present in truth or prediction (mIoU), and pixel accuracy. Under DDP Lightning gives every frame to
exactly one process and torchmetrics sums the confusion matrices of all processes.

Outputs in ``out_dir`` (each written to a temporary name, then renamed): ``metrics.json``,
``confusion.csv`` (rows = truth, columns = prediction, pixel counts), ``confusion.png`` (rows
normalised), ``frames.csv`` (per-frame mIoU and pixel accuracy, worst first) and with ``overlays=N``
the N worst frames as ``overlays/<rank>_<frame>.png`` (image | truth | prediction).
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.functional.classification import multiclass_confusion_matrix

from hdmap_seg.checks import instantiate_configured
from hdmap_seg.data.classes import ClassSet
from hdmap_seg.data.datamodule import SegDataModule
from hdmap_seg.data.dataset import Sample
from hdmap_seg.data.layouts import require_split
from hdmap_seg.errors import HdmapError
from hdmap_seg.imageio import read_image, read_mask, write_image_atomic
from hdmap_seg.inference import (
    FrameDataset,
    FramesPerSecondBar,
    InferenceModule,
    colour_overlay,
    stack_frames,
)
from hdmap_seg.io import atomic_path, write_text_atomic
from hdmap_seg.module import iou_from_confusion
from hdmap_seg.runtime import load_model


class LabelledFrames(FrameDataset):
    """:class:`FrameDataset` (same reading, scaling and normalisation as inference) plus each frame's
    label: ``"mask": (H, W) int64`` training ids at the frame's own size, ``lut`` applied.

    ``samples`` stand in for inference's jobs: both carry ``image_path``.
    """

    def __init__(self, samples: Sequence[Sample], lut: np.ndarray, scale: float = 1.0) -> None:
        super().__init__(samples, scale)
        self.lut = lut

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        # int64: torchmetrics indexes its bincount by truth * C + prediction, which overflows uint8.
        item["mask"] = torch.from_numpy(self.lut[read_mask(self.jobs[index].mask_path)].astype(np.int64))
        return item


def _collate(batch: list[dict]) -> dict:
    # Masks have their frame's size (checked when the split is read), so they stack when frames do.
    return {**stack_frames(batch), "mask": torch.stack([b["mask"] for b in batch])}


def frame_scores(confusion: torch.Tensor) -> tuple[float, float]:
    """``(mIoU, pixel accuracy)`` of one ``(C, C)`` confusion matrix; NaN for no labelled pixel."""
    total = int(confusion.sum())
    if total == 0:
        return math.nan, math.nan
    return float(iou_from_confusion(confusion).nanmean()), int(confusion.diag().sum()) / total


class EvalModule(InferenceModule):
    """:class:`InferenceModule` whose predictions are scored against ``batch["mask"]`` instead of written.

    After ``trainer.predict`` every process holds in :attr:`result` the confusion matrix of all frames
    (torchmetrics' sync), every frame's ``(index, mIoU, pixel accuracy)`` and the ``worst`` frames'
    predicted masks (each process keeps its own ``keep_worst``, which together hold the overall worst).

    Args:
        model, flip, window, stride: as :class:`InferenceModule`.
        num_classes, ignore_index: of the data's labels.
        keep_worst: how many of the lowest-scoring frames' masks to keep for overlays.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        ignore_index: int,
        flip: bool = False,
        window: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        keep_worst: int = 0,
    ) -> None:
        super().__init__(model, flip=flip, window=window, stride=stride)
        self.num_classes, self.ignore_index, self.keep_worst = num_classes, ignore_index, keep_worst
        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)
        self.frames: list[tuple[int, float, float]] = []
        # A min-heap of negated scores: its root is the best of the worst frames kept, the first to go.
        self._worst: list[tuple[float, float, int, np.ndarray]] = []
        self.result: dict = {}

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        out = super().predict_step(batch, batch_idx)
        truth = batch["mask"]
        pred = torch.from_numpy(np.stack(out["mask"])).to(truth.device, torch.long)
        self.confusion.update(pred, truth)
        for index, p, t, mask in zip(out["index"], pred, truth, out["mask"], strict=True):
            conf = multiclass_confusion_matrix(
                p, t, self.num_classes, ignore_index=self.ignore_index, validate_args=False
            )
            miou, acc = frame_scores(conf)
            self.frames.append((index, miou, acc))
            if self.keep_worst and not math.isnan(miou):
                item = (-miou, -acc, -index, mask)
                if len(self._worst) < self.keep_worst:
                    heapq.heappush(self._worst, item)
                elif item[:3] > self._worst[0][:3]:
                    heapq.heapreplace(self._worst, item)
        return out  # not kept (return_predictions=False); Lightning warns about a step returning None

    def on_predict_epoch_end(self) -> None:
        confusion = self.confusion.compute().cpu()  # summed over every process
        self.confusion.reset()
        frames = [f for part in _all_gather(self.frames) for f in part]
        worst = {-i: m for part in _all_gather(self._worst) for _, _, i, m in part}
        self.result = {"confusion": confusion, "frames": sorted(frames), "worst_masks": worst}


def _all_gather(obj: object) -> list:
    """``obj`` of every process, in rank order (``[obj]`` without torch.distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, obj)
    return parts


def segmentation_metrics(confusion: torch.Tensor | np.ndarray, names: Sequence[str]) -> dict:
    """mIoU, pixel accuracy and per-class IoU (None for a class in neither truth nor prediction) of a
    ``(C, C)`` confusion matrix of pixel counts (rows = truth)."""
    confusion = torch.as_tensor(confusion)
    iou = iou_from_confusion(confusion)
    total = int(confusion.sum())
    return {
        "mIoU": float(iou.nanmean()) if total else None,
        "pixel_accuracy": int(confusion.diag().sum()) / total if total else None,
        "IoU": {n: None if math.isnan(v) else v for n, v in zip(names, iou.tolist(), strict=True)},
    }


def confusion_csv(confusion: np.ndarray, names: Sequence[str]) -> str:
    """Pixel counts as CSV: a header of predicted class names, one row per true class."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["truth\\prediction", *names])
    for name, row in zip(names, confusion.tolist(), strict=True):
        writer.writerow([name, *row])
    return buf.getvalue()


def plot_confusion(confusion: np.ndarray, names: Sequence[str], path: Path) -> Path:
    """Heatmap PNG of ``confusion`` with every row divided by its sum (recall on the diagonal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = confusion.sum(1, keepdims=True).astype(float)
    norm = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    n = len(names)
    side = min(max(4.0, 0.45 * n + 2.0), 30.0)  # readable labels up to ~60 classes, capped beyond
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fontsize = 8 if n <= 30 else 5
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(n), names, fontsize=fontsize)
    ax.set(xlabel="prediction", ylabel="truth", title="confusion (each row divided by its pixels)")
    if n <= 30:
        for (i, j), v in np.ndenumerate(norm):
            if v >= 0.005:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v > 0.5 else "k")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def overlay_panel(
    rgb: np.ndarray, truth: np.ndarray, pred: np.ndarray, classes: ClassSet, caption: str
) -> np.ndarray:
    """``image | truth | prediction`` side by side under a caption strip; ``(H + 22, 3W, 3)`` RGB uint8."""
    panels = np.concatenate(
        [rgb, colour_overlay(rgb, truth, classes, 0.6), colour_overlay(rgb, pred, classes, 0.6)], axis=1
    )
    strip = np.full((22, panels.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, panels], axis=0)


def _data_classes(datamodule: SegDataModule, model_classes: ClassSet, ckpt_path: str) -> ClassSet:
    data = datamodule.classes
    if model_classes.names != data.names:
        where = str(datamodule.root) + (
            f" through {datamodule.class_map_path}" if datamodule.class_map_path else ""
        )
        raise HdmapError(
            f"{ckpt_path}: the model's {model_classes.num_classes} classes ({', '.join(model_classes.names)}) "
            f"are not the data's {data.num_classes} ({', '.join(data.names)}) of {where}; evaluate on the "
            f"data set (and data.class_map) the model was trained for"
        )
    return data


def evaluate(cfg: DictConfig) -> dict:
    """Score ``cfg.ckpt_path`` on ``cfg.split`` of ``cfg.data`` and write the outputs to ``cfg.out_dir``.

    Returns the contents of ``metrics.json`` on global rank 0; other ranks return an empty dict.
    """
    overlays = cfg.get("overlays") or 0
    if isinstance(overlays, bool) or not isinstance(overlays, int) or overlays < 0:
        raise HdmapError(f"overlays={overlays}: how many of the worst frames to draw, an integer >= 0")
    # _convert_="all" as in training: plain lists and dicts reach the layout and transforms.
    datamodule: SegDataModule = instantiate(cfg.data, _convert_="all")
    require_split(datamodule.layout, datamodule.root, cfg.split)  # before the model loads: cheap
    model, model_classes = load_model(cfg.ckpt_path, cfg.backend, threads=torch.get_num_threads())
    classes = _data_classes(datamodule, model_classes, cfg.ckpt_path)
    samples = datamodule.samples(cfg.split)  # reads and checks every mask once
    lut = datamodule.dataset(cfg.split).lut  # file value -> training id, what validation reads with

    module = EvalModule(
        model,
        classes.num_classes,
        classes.ignore_index,
        flip=cfg.flip,
        window=cfg.window,
        stride=cfg.stride,
        keep_worst=overlays,
    )
    trainer: L.Trainer = instantiate_configured(
        cfg.trainer, "trainer", logger=False, enable_checkpointing=False, callbacks=[FramesPerSecondBar()]
    )
    loader = DataLoader(
        LabelledFrames(samples, lut, scale=cfg.scale),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        collate_fn=_collate,
    )
    start = time.perf_counter()
    trainer.predict(module, loader, return_predictions=False)
    seconds = time.perf_counter() - start
    if not trainer.is_global_zero:
        return {}

    result = module.result
    confusion = result["confusion"].numpy()
    names = classes.names
    out_dir = Path(cfg.out_dir)
    frames = result["frames"]
    # Worst first: lowest mIoU, then lowest pixel accuracy; frames without labelled pixels last.
    ranked = sorted(frames, key=lambda f: (math.isnan(f[1]), f[1], f[2], f[0]))
    worst = [f for f in ranked if not math.isnan(f[1])][:overlays]
    metrics = {
        **segmentation_metrics(confusion, names),
        "frames": len(frames),
        "checkpoint": str(cfg.ckpt_path),
        "backend": cfg.backend,
        "data_root": str(datamodule.root),
        "layout": type(datamodule.layout).__name__,
        "class_map": str(datamodule.class_map_path) if datamodule.class_map_path else None,
        "split": cfg.split,
        "options": {
            "scale": cfg.scale,
            "flip": cfg.flip,
            "window": OmegaConf.to_container(cfg.window) if cfg.window else None,
            "stride": list(module.stride) if module.stride else None,
            "precision": str(trainer.precision),
            "batch_size": cfg.batch_size,
        },
        "world_size": trainer.world_size,
        "seconds": round(seconds, 2),
        "frames_per_s": round(len(frames) / seconds, 2) if seconds > 0 else None,
        "worst_frames": [samples[i].image_path.stem for i, _, _ in worst],
    }
    write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_text_atomic(out_dir / "confusion.csv", confusion_csv(confusion, names))
    plot_confusion(confusion, names, out_dir / "confusion.png")
    rows = ["rank,frame,mIoU,pixel_accuracy"]
    rows += [f"{r},{samples[i].image_path.stem},{m:.6f},{a:.6f}" for r, (i, m, a) in enumerate(ranked, 1)]
    write_text_atomic(out_dir / "frames.csv", "\n".join(rows) + "\n")

    overlay_dir = out_dir / "overlays"
    for stale in overlay_dir.glob("*.png"):  # a previous run's worst frames are not this run's
        stale.unlink()
    for rank, (index, miou, acc) in enumerate(worst, 1):
        sample = samples[index]
        rgb = read_image(sample.image_path)
        caption = f"#{rank} {sample.image_path.stem}  mIoU {miou:.3f}  pixel acc {acc:.3f}  (image | truth | prediction)"
        panel = overlay_panel(
            rgb, lut[read_mask(sample.mask_path)], result["worst_masks"][index], classes, caption
        )
        write_image_atomic(
            overlay_dir / f"{rank:03d}_{sample.image_path.stem}.png", cv2.cvtColor(panel, cv2.COLOR_RGB2BGR)
        )
    return metrics


def format_table(metrics: dict) -> str:
    """Per-class IoU, mIoU and pixel accuracy as a plain-text table."""
    width = max(len("pixel_accuracy"), *(len(n) for n in metrics["IoU"]))
    lines = [f"{'class':<{width}}  {'IoU':>6}"]
    for name, iou in metrics["IoU"].items():
        lines.append(f"{name:<{width}}  {'-' if iou is None else f'{iou:.4f}':>6}")
    for key in ("mIoU", "pixel_accuracy"):
        value = metrics[key]
        lines.append(f"{key:<{width}}  {'-' if value is None else f'{value:.4f}':>6}")
    return "\n".join(lines)
