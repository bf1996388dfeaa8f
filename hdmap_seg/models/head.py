"""The light decoder: project every stage to one width, upsample to the finest stage, fuse, classify."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import nn


class LightHead(nn.Module):
    """SegFormer-style all-linear head over a feature pyramid.

    For stage i with C_i channels at (H_i, W_i): a 1x1 projection to E channels, bilinear resize to
    the finest stage's size (H_0, W_0) = (H / 4, W / 4) for Twins; concatenation (B, n*E, H_0, W_0);
    a 1x1 convolution with BatchNorm and ReLU to E channels; dropout; a 1x1 classifier to K classes;
    a bilinear resize to ``out_size``.

    At 512x512 with E = 256 on Twins-SVT-S it holds about 0.5 M parameters.
    """

    def __init__(
        self, in_channels: Sequence[int], num_classes: int, embed_dim: int = 256, dropout: float = 0.1
    ):
        super().__init__()
        self.proj = nn.ModuleList([nn.Conv2d(c, embed_dim, kernel_size=1) for c in in_channels])
        self.fuse = ConvNormAct(len(in_channels) * embed_dim, embed_dim, kernel_size=1)  # conv, BN, ReLU
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        """[(B, C_i, H_i, W_i)], finest first -> logits (B, K, *out_size)."""
        size = features[0].shape[-2:]
        x = torch.cat(
            [
                F.interpolate(proj(f), size=size, mode="bilinear", align_corners=False)
                for proj, f in zip(self.proj, features, strict=True)
            ],
            dim=1,
        )
        x = self.classifier(self.dropout(self.fuse(x)))
        return F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
