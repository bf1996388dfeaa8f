"""Pixel losses for segmentation: cross-entropy with ignore index, class weights and OHEM."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationLoss(nn.Module):
    """Cross-entropy over pixels, optionally weighted per class and restricted to hard pixels (OHEM).

    OHEM follows mmsegmentation's OHEMPixelSampler: keep the pixels whose predicted probability of
    their true class is below ``ohem_thresh``, and at least the ``ohem_min_kept`` hardest ones, so
    thin classes (poles, signs) are not drowned by easy road and sky pixels.

    Args:
        ignore_index: label value that never counts.
        class_weights: one weight per class, or None.
        ohem_thresh: probability threshold; None switches OHEM off.
        ohem_min_kept: pixels kept per batch at least, when OHEM is on.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        ohem_thresh: float | None = None,
        ohem_min_kept: int = 100_000,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        weight = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weight, persistent=False)
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits (B, C, H, W)``, ``target (B, H, W)`` int64 -> scalar loss."""
        if self.ohem_thresh is None:
            return F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index)
        pixel_loss = F.cross_entropy(
            logits, target, weight=self.class_weights, ignore_index=self.ignore_index, reduction="none"
        )
        valid = target != self.ignore_index
        with torch.no_grad():
            prob = logits.softmax(1).gather(1, target.clamp_max(logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
            prob_valid = prob[valid]
            if prob_valid.numel() <= self.ohem_min_kept:
                thresh = 1.0
            else:
                thresh = max(self.ohem_thresh, prob_valid.kthvalue(self.ohem_min_kept).values.item())
            keep = valid & (prob <= thresh)
        if not keep.any():
            return pixel_loss.sum() * 0.0
        return pixel_loss[keep].mean()
