"""Lightning callbacks and plugins of our own: the learning-curve picture, and checkpoints written
through a temporary file (a full disk or a crash never leaves a torn ``.ckpt`` under its name)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


def plot_learning_curve(metrics_csv: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Plot training loss, validation loss and mIoU from a Lightning ``metrics.csv`` into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from hdmap_seg.io import atomic_path

    df = pd.read_csv(metrics_csv)
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(11, 4))
    for column, label in (("train/loss", "train loss"), ("val/loss", "val loss")):
        if column in df:
            rows = df[["step", column]].dropna()
            ax_loss.plot(
                rows["step"], rows[column], label=label, marker="." if column.startswith("val") else None
            )
    ax_loss.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="loss")
    ax_loss.legend()
    iou_columns = [c for c in df.columns if c == "val/mIoU" or c.startswith("val/IoU/")]
    for column in iou_columns:
        rows = df[["step", column]].dropna()
        ax_iou.plot(
            rows["step"],
            rows[column],
            label=column.removeprefix("val/").removeprefix("IoU/"),
            linewidth=2.5 if column == "val/mIoU" else 1.0,
            marker=".",
        )
    ax_iou.set(xlabel="step", ylabel="IoU", ylim=(0, 1), title="validation IoU")
    if iou_columns:
        ax_iou.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out_png


class LearningCurvePlot(L.Callback):
    """At the end of fitting, draws the CSV logger's metrics as ``path`` (PNG)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        csv_loggers = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]
        if not csv_loggers:
            log.info("no CSV logger: learning curve not drawn")
            return
        csv_loggers[0].save()
        metrics_csv = Path(csv_loggers[0].log_dir) / "metrics.csv"
        if metrics_csv.is_file():
            log.info("learning curve: %s", plot_learning_curve(metrics_csv, self.path))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoints, written to a temporary file beside the target, flushed
    and fsynced, then renamed onto it (:func:`hdmap_seg.io.atomic_path`).

    Lightning's own IO truncates the target and writes it in place: a full disk or a kill half-way
    through leaves a torn ``last.ckpt`` that no run can resume from. Here the previous checkpoint
    stays whole until the new one is complete. Remote (fsspec URL) paths go through Lightning's IO.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        from hdmap_seg.io import atomic_path

        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
