"""Peer segmenters for bench_camvid.py, wrapped so that the project's LightningModule trains them exactly
as it trains our Twins (same data, loss, optimiser groups and schedule): ``forward(x) -> logits`` at the
input size, and ``backbone`` / ``decode_head`` for the optimiser's parameter groups.

No pretrained weights: none can be downloaded on the benchmark machine, and the comparison is from scratch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmpSegformer(nn.Module):
    """segmentation_models_pytorch's SegFormer as its documentation builds it,
    ``smp.Segformer(encoder_name="tu-twins_svt_small", encoder_weights=None, classes=C)``.

    smp refuses inputs that are not multiples of the encoder's output stride (32), so frames are
    zero-padded right and bottom (like our ``Segmenter``) and the logits cropped back.
    ``(B, 3, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, num_classes: int, encoder_name: str = "tu-twins_svt_small") -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.Segformer(encoder_name=encoder_name, encoder_weights=None, classes=num_classes)

    @property
    def backbone(self) -> nn.Module:
        return self.net.encoder

    @property
    def decode_head(self) -> nn.Module:
        return nn.ModuleList([self.net.decoder, self.net.segmentation_head])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        x = F.pad(x, (0, -W % 32, 0, -H % 32))
        return self.net(x)[..., :H, :W]


class DeepLabV3ResNet50(nn.Module):
    """torchvision's ``deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=C)``, no
    auxiliary head. Any input size; ``(B, 3, H, W) -> (B, C, H, W)``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        from torchvision.models.segmentation import deeplabv3_resnet50

        self.net = deeplabv3_resnet50(
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
        )

    @property
    def backbone(self) -> nn.Module:
        return self.net.backbone

    @property
    def decode_head(self) -> nn.Module:
        return self.net.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]
