"""The project's road data-set format and its checks.

Layout (docs/conventions.md)::

    <root>/classes.yaml
    <root>/images/<split>/<stem>.png|.jpg
    <root>/masks/<split>/<stem>.png      single-channel class ids, 255 = ignore
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset

from hdmap_seg.data.classes import ClassSet, load_classes
from hdmap_seg.errors import HdmapError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Sample:
    image_path: Path
    mask_path: Path


def list_split(root: str | os.PathLike, split: str) -> list[Sample]:
    """Pair every frame of ``<root>/images/<split>`` with its mask; errors name what is missing."""
    root = Path(root)
    image_dir, mask_dir = root / "images" / split, root / "masks" / split
    if not image_dir.is_dir():
        raise HdmapError(f"{image_dir}: image folder of split {split!r} not found")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise HdmapError(f"{image_dir}: split {split!r} is empty (no .png/.jpg frames)")
    samples = []
    for image_path in images:
        mask_path = mask_dir / f"{image_path.stem}.png"
        if not mask_path.is_file():
            raise HdmapError(f"{mask_path}: mask missing for frame {image_path}")
        samples.append(Sample(image_path, mask_path))
    return samples


def read_image(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise HdmapError(f"{path}: cannot be read as an image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_mask(path: Path) -> np.ndarray:
    """``(H, W)`` uint8 class ids."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise HdmapError(f"{path}: cannot be read as a mask")
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise HdmapError(
            f"{path}: a mask must be a single-channel 8-bit PNG of class ids, got shape {mask.shape}"
        )
    return mask


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file, from its header alone."""
    try:
        with PIL.Image.open(path) as img:
            width, height = img.size
    except (OSError, PIL.UnidentifiedImageError):
        raise HdmapError(f"{path}: cannot be read as an image") from None
    return height, width


def check_split(samples: list[Sample], classes: ClassSet) -> None:
    """Stop on the first bad pair: unreadable files, size mismatch, or label values outside the classes."""
    allowed = np.zeros(256, bool)
    allowed[: classes.num_classes] = True
    allowed[classes.ignore_index] = True
    for s in samples:
        mask = read_mask(s.mask_path)
        hw = image_size(s.image_path)
        if hw != mask.shape:
            raise HdmapError(
                f"{s.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {s.image_path.name} "
                f"is {hw[1]}x{hw[0]}"
            )
        bad = np.unique(mask[~allowed[mask]])
        if bad.size:
            raise HdmapError(
                f"{s.mask_path}: label values {bad.tolist()} are not classes 0..{classes.num_classes - 1} "
                f"nor the ignore index {classes.ignore_index}"
            )


def load_road_dataset_classes(root: str | os.PathLike) -> ClassSet:
    return load_classes(Path(root) / "classes.yaml")


class SegmentationDataset(Dataset):
    """Frames and masks through an albumentations pipeline.

    Returns ``{"image": (3, H, W) float, "mask": (H, W) int64, "name": str}``.
    """

    def __init__(self, samples: list[Sample], transform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        out = self.transform(image=read_image(s.image_path), mask=read_mask(s.mask_path))
        return {
            "image": out["image"],
            "mask": torch.as_tensor(out["mask"], dtype=torch.long),
            "name": s.image_path.stem,
        }
