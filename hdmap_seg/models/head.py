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

    The forward computes the same function in another order. The fuse convolution is linear, so its slice
    for stage i folds into that stage's projection; and a 1x1 convolution commutes with bilinear
    resizing (whose weights sum to one, so biases commute too). Each stage is therefore mapped to E
    channels at its own resolution, resized, and the stages are summed: no (B, n*E, H_0, W_0) concatenation,
    and the n*E x E fuse matmul (a fifth of Twins-SVT-S's FLOPs before) runs on the coarse maps. The
    parameters are those of the plain order, so checkpoints load unchanged.
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
        # (E, n*E) -> one (E, E) slice per stage, in the concatenation's order
        fuse_slices = self.fuse.conv.weight.flatten(1).chunk(len(self.proj), dim=1)
        x = None
        for proj, fuse_slice, f in zip(self.proj, fuse_slices, features, strict=True):
            weight = fuse_slice @ proj.weight.flatten(1)  # (E, C_i)
            y = F.conv2d(f, weight[:, :, None, None], fuse_slice @ proj.bias)  # (B, E, H_i, W_i)
            if x is None:  # the finest stage is already at `size`
                x = y
            else:
                # in place: conv2d's backward does not need its output, and the maps are large
                x += F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        x = self.classifier(self.dropout(self.fuse.bn(x)))
        return F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
