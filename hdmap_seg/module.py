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


def state_dict_mismatch(expected: dict, found: dict, limit: int = 3) -> str | None:
    """How the state dict ``found`` (a checkpoint's) does not fit ``expected`` (a model's), in one line:
    the first ``limit`` missing, unexpected and differently shaped parameters; None if it fits."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} is {tuple(found[k].shape)} there but {tuple(expected[k].shape)} here"
        for k in expected
        if k in found and hasattr(found[k], "shape") and tuple(found[k].shape) != tuple(expected[k].shape)
    ]

    def first(items: list[str]) -> str:
        more = f" and {len(items) - limit} more" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more

    parts = []
    if shapes:
        parts.append(f"{len(shapes)} parameters differ in shape ({first(shapes)})")
    if missing:
        parts.append(f"{len(missing)} missing ({first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({first(unexpected)})")
    return "; ".join(parts) or None


def config_differences(theirs: dict, ours: dict, limit: int = 3, prefix: str = "") -> list[str]:
    """``"key: A there, B here"`` for the first ``limit`` keys (nested dotted) in which two model
    configs differ."""
    out: list[str] = []
    for key in [*theirs, *(k for k in ours if k not in theirs)]:
        a, b = theirs.get(key, "unset"), ours.get(key, "unset")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, limit, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} there, {b} here")
    return out[:limit]


def read_checkpoint(ckpt_path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """A training checkpoint's contents (``weights_only=True``), checked to hold what
    :func:`segmenter_from_checkpoint` rebuilds the network from, with as many classes as outputs."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise HdmapError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a file that is no checkpoint
        raise HdmapError(f"{path}: not a loadable checkpoint ({type(err).__name__}: {err})") from None
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if not hparams.get("model_config") or "classes" not in hparams or "state_dict" not in ckpt:
        raise HdmapError(
            f"{path}: not a hdmap_seg training checkpoint (no state_dict, or no model_config/classes "
            "hyper-parameters)"
        )
    classes = ClassSet.from_dict(hparams["classes"], source=str(path))
    outputs = hparams["model_config"].get("num_classes")
    if outputs is not None and outputs != classes.num_classes:
        # Masks would hold ids past the class list: the layers of the missing names would silently vanish.
        raise HdmapError(
            f"{path}: its class list has {classes.num_classes} classes ({', '.join(classes.names)}) but "
            f"its model has {outputs} outputs (model_config.num_classes); the checkpoint is inconsistent"
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
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise HdmapError(f"{source}: its weights do not fit the model of its own model_config: {mismatch}")
    model.load_state_dict(state)
    return model.eval(), ClassSet.from_dict(hparams["classes"], source=source)


def load_segmenter(ckpt_path: str | os.PathLike, map_location: str = "cpu") -> tuple[nn.Module, ClassSet]:
    """Rebuild the trained network and its classes from a training checkpoint."""
    return segmenter_from_checkpoint(read_checkpoint(ckpt_path, map_location), str(ckpt_path))


def check_resume(ckpt_path: str | os.PathLike, module: SegmentationModule, model_config: dict) -> None:
    """Before ``trainer.fit(ckpt_path=...)``: the checkpoint exists, is a training checkpoint, and its
    weights fit ``module`` (Lightning would otherwise stop inside ``fit`` with a RuntimeError from
    ``load_state_dict``). Lightning's special paths (``last``, ``best``, ``hpc``, URLs) are left to it."""
    if str(ckpt_path).split(":")[0] in ("last", "best", "hpc", "registry") or "://" in str(ckpt_path):
        return
    if not Path(ckpt_path).is_file():
        raise HdmapError(f"ckpt_path={ckpt_path}: checkpoint not found (the run to resume from)")
    ckpt = read_checkpoint(ckpt_path)
    mismatch = state_dict_mismatch(module.state_dict(), ckpt["state_dict"], limit=2)
    if mismatch:
        differences = config_differences(ckpt["hyper_parameters"]["model_config"], model_config, limit=2)
        other = f" ({'; '.join(differences)})" if differences else ""
        raise HdmapError(
            f"{ckpt_path}: cannot resume: it was trained with another model config{other}; its weights do "
            f"not fit this one: {mismatch}"
        )
