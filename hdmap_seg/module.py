"""The LightningModule: loss, optimiser with the official Twins recipe, and IoU metrics."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from hdmap_seg.data.classes import ClassSet
from hdmap_seg.errors import HdmapError
from hdmap_seg.losses import SegmentationLoss

#: Parameter-name fragments that get no weight decay besides norms and biases (Twins' positional
#: encoding generator, as in the official recipe).
NO_DECAY_NAMES = ("pos_block",)


def iou_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class IoU from a ``(C, C)`` confusion matrix (rows = truth); NaN for a class that is in
    neither truth nor prediction, so that it does not count in the mean."""
    confusion = confusion.double()
    tp = confusion.diag()
    denom = confusion.sum(0) + confusion.sum(1) - tp
    return torch.where(denom > 0, tp / denom.clamp_min(1), torch.full_like(tp, float("nan")))


def warmup_poly_factor(
    step: int, total_steps: float, warmup_steps: int, warmup_ratio: float, power: float
) -> float:
    """Learning-rate factor: linear warm-up from ``warmup_ratio`` to 1, then ``(1 - t/T)^power``.

    Like mmsegmentation's poly policy with linear warm-up; with an unknown ``total_steps`` (training by
    time alone) the factor stays at 1 after warm-up.
    """
    poly = 1.0 if not math.isfinite(total_steps) else max(0.0, 1.0 - step / max(total_steps, 1)) ** power
    if step < warmup_steps:
        return poly * (warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps)
    return poly


class SegmentationModule(L.LightningModule):
    """Trains a :class:`hdmap_seg.models.Segmenter` (anything with ``backbone`` and ``decode_head``).

    Args:
        model: the network; ``forward(x (B,3,H,W)) -> logits (B,C,H,W)``.
        classes: the data set's ``classes.yaml`` content (names for ``val/IoU/<name>``; kept in the
            checkpoint so that inference knows the taxonomy).
        model_config: the Hydra config that built ``model``, kept in the checkpoint so that
            :func:`load_segmenter` can rebuild it.
        lr, weight_decay, betas: AdamW; no decay on norms, biases and ``pos_block``.
        head_lr_mult: learning-rate multiplier of ``model.decode_head``.
        warmup_steps, warmup_ratio, poly_power: the schedule (see :func:`warmup_poly_factor`).
        class_weights, ohem_thresh, ohem_min_kept: see :class:`hdmap_seg.losses.SegmentationLoss`.
    """

    def __init__(
        self,
        model: nn.Module,
        classes: dict,
        model_config: dict | None = None,
        lr: float = 6e-5,
        weight_decay: float = 0.01,
        betas: Sequence[float] = (0.9, 0.999),
        head_lr_mult: float = 1.0,
        warmup_steps: int = 1500,
        warmup_ratio: float = 1e-6,
        poly_power: float = 1.0,
        class_weights: Sequence[float] | None = None,
        ohem_thresh: float | None = None,
        ohem_min_kept: int = 100_000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.classes = ClassSet.from_dict(classes, source="module.classes")
        ignore = self.classes.ignore_index
        self.criterion = SegmentationLoss(ignore, class_weights, ohem_thresh, ohem_min_kept)
        self.val_confusion = MulticlassConfusionMatrix(self.classes.num_classes, ignore_index=ignore)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["mask"])
        self.log("val/loss", loss, sync_dist=True, batch_size=len(batch["image"]))
        self.val_confusion.update(logits.argmax(1), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        iou = iou_from_confusion(self.val_confusion.compute())
        self.val_confusion.reset()
        self.log("val/mIoU", iou.nanmean().float(), prog_bar=True)
        for name, value in zip(self.classes.names, iou.tolist(), strict=True):
            if not math.isnan(value):
                self.log(f"val/IoU/{name}", value)

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self(batch["image"]).argmax(1)

    def param_groups(self) -> list[dict]:
        """AdamW groups: (backbone | head) x (decay | no decay)."""
        hp = self.hparams
        head_ids = {id(p) for p in self.model.decode_head.parameters()}
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = p.ndim <= 1 or any(k in name for k in NO_DECAY_NAMES)
            groups.setdefault((id(p) in head_ids, no_decay), []).append(p)
        return [
            {
                "params": params,
                "lr": hp.lr * (hp.head_lr_mult if is_head else 1.0),
                "weight_decay": 0.0 if no_decay else hp.weight_decay,
            }
            for (is_head, no_decay), params in sorted(groups.items())
        ]

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.param_groups(), lr=hp.lr, betas=tuple(hp.betas))
        total = float(self.trainer.estimated_stepping_batches) if self._trainer is not None else math.inf
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_poly_factor(step, total, hp.warmup_steps, hp.warmup_ratio, hp.poly_power),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def read_checkpoint(ckpt_path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """A training checkpoint's contents (``weights_only=True``), checked to hold what
    :func:`segmenter_from_checkpoint` rebuilds the network from."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise HdmapError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a file that is no checkpoint
        raise HdmapError(f"{path}: not a loadable checkpoint ({type(err).__name__}: {err})") from None
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if not hparams.get("model_config") or "classes" not in hparams:
        raise HdmapError(
            f"{path}: not a hdmap_seg training checkpoint (no model_config/classes hyper-parameters)"
        )
    return ckpt


def segmenter_from_checkpoint(ckpt: dict, source: str) -> tuple[nn.Module, ClassSet]:
    """The trained network (eval mode) and its classes from :func:`read_checkpoint`'s contents.

    Pretrained-weight options of the recorded model config are switched off: the checkpoint holds
    every weight already.
    """
    hparams = ckpt["hyper_parameters"]
    model = instantiate({**hparams["model_config"], "pretrained": False, "weights": None})
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval(), ClassSet.from_dict(hparams["classes"], source=source)


def load_segmenter(ckpt_path: str | os.PathLike, map_location: str = "cpu") -> tuple[nn.Module, ClassSet]:
    """Rebuild the trained network and its classes from a training checkpoint."""
    return segmenter_from_checkpoint(read_checkpoint(ckpt_path, map_location), str(ckpt_path))
