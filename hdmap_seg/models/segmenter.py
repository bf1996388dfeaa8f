"""The segmenter: backbone + light head, for frames of any size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hdmap_seg.models.backbone import Backbone
from hdmap_seg.models.head import LightHead


class Segmenter(nn.Module):
    """A timm backbone (``features_only``) with the light decoder; built by Hydra from ``conf/model/*.yaml``.

    ``forward``: (B, 3, H, W) normalised images, any H and W -> logits (B, num_classes, H, W).
    The input is zero-padded on the right and bottom to a multiple of the backbone's largest stride
    (32), so that no strided patch embedding drops pixels and stage i covers exactly (H / r_i, W / r_i);
    the logits are cropped back.

    Args:
        backbone: a timm model name, e.g. ``twins_svt_small``.
        num_classes: number of output classes.
        embed_dim: width E of the light head.
        dropout: dropout before the classifier.
        extra_norm: a LayerNorm on every backbone stage output (the official segmentation Twins).
        pretrained: load timm's hub weights (needs the internet).
        weights: a local .pth / .pt / .safetensors file to load into the backbone.
        backbone_kwargs: passed to ``timm.create_model`` (e.g. ``embed_dims``, ``depths``, ``out_indices``).

    Attributes ``backbone`` and ``decode_head`` let the optimiser treat the two differently.
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        embed_dim: int = 256,
        dropout: float = 0.1,
        extra_norm: bool = False,
        pretrained: bool = False,
        weights: str | Path | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = Backbone(
            backbone, extra_norm=extra_norm, pretrained=pretrained, weights=weights, **(backbone_kwargs or {})
        )
        self.decode_head = LightHead(
            self.backbone.channels, num_classes, embed_dim=embed_dim, dropout=dropout
        )
        self.num_classes = num_classes
        self.size_divisor = max(self.backbone.reductions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        x = F.pad(x, (0, -W % self.size_divisor, 0, -H % self.size_divisor))
        logits = self.decode_head(self.backbone(x), out_size=x.shape[-2:])
        return logits[..., :H, :W]
