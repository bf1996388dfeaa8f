"""Albumentations pipelines built from YAML lists of ``_target_`` entries."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import torch
from albumentations.pytorch import ToTensorV2
from hydra.utils import instantiate

#: ImageNet statistics, as timm's Twins checkpoints were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(steps: Sequence) -> A.Compose:
    """Compose the configured augmentation ``steps`` (dicts with ``_target_`` or ready transforms),
    then normalise and convert to tensors, which every pipeline needs."""
    # Hydra may have built the steps already (nested ones such as OneOf included).
    augment = [s if isinstance(s, A.BasicTransform | A.BaseCompose) else instantiate(s) for s in steps]
    return A.Compose([*augment, A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()])


def pad_collate(batch: list[dict], ignore_index: int) -> dict:
    """Stack samples of different sizes: pad images with 0 and masks with ``ignore_index`` to the
    largest size in the batch, so that padding never counts in loss or metrics."""
    h = max(b["image"].shape[1] for b in batch)
    w = max(b["image"].shape[2] for b in batch)
    images = torch.zeros(len(batch), 3, h, w, dtype=batch[0]["image"].dtype)
    masks = torch.full((len(batch), h, w), ignore_index, dtype=torch.long)
    for i, b in enumerate(batch):
        _, bh, bw = b["image"].shape
        images[i, :, :bh, :bw] = b["image"]
        masks[i, :bh, :bw] = b["mask"]
    return {"image": images, "mask": masks, "name": [b["name"] for b in batch]}
