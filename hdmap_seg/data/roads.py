"""Samples of a segmentation data set: pairing frames with masks, reading them, and the checks.

The project's own layout (docs/conventions.md) is :func:`list_split`::

    <root>/classes.yaml
    <root>/images/<split>/<stem>.png|.jpg
    <root>/masks/<split>/<stem>.png      single-channel class ids, 255 = ignore

Other layouts (CamVid, Cityscapes, Mapillary Vistas) live in :mod:`hdmap_seg.data.layouts`; they all
pair files with :func:`pair_samples` and read masks through a label lookup table (native file value ->
training id), checked by :func:`check_split`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import torch
from rich.progress import track
from torch.utils.data import Dataset

from hdmap_seg.errors import HdmapError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: Value of a label lookup table for a file value that no class has: such a mask is an error.
INVALID = -1


@dataclass(frozen=True)
class Sample:
    image_path: Path
    mask_path: Path


def pair_samples(
    image_dir: Path, split: str, images: Iterable[Path], mask_of: Callable[[Path], Path]
) -> list[Sample]:
    """Pair every frame with the mask ``mask_of(frame)``; errors name an empty split or a missing mask."""
    images = sorted(images)
    if not images:
        raise HdmapError(f"{image_dir}: split {split!r} is empty (no .png/.jpg frames)")
    samples = []
    for image_path in images:
        mask_path = mask_of(image_path)
        if not mask_path.is_file():
            raise HdmapError(f"{mask_path}: mask missing for frame {image_path}")
        samples.append(Sample(image_path, mask_path))
    return samples


def image_files(folder: Path, split: str, pattern: str = "*") -> list[Path]:
    """Frames (``IMAGE_SUFFIXES``) in ``folder`` matching ``pattern``; the folder must exist."""
    if not folder.is_dir():
        raise HdmapError(f"{folder}: image folder of split {split!r} not found")
    return [p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES]


def list_split(root: str | os.PathLike, split: str) -> list[Sample]:
    """Pair every frame of ``<root>/images/<split>`` with ``<root>/masks/<split>/<stem>.png``."""
    root = Path(root)
    image_dir, mask_dir = root / "images" / split, root / "masks" / split
    return pair_samples(image_dir, split, image_files(image_dir, split), lambda p: mask_dir / f"{p.stem}.png")


def read_image(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise HdmapError(f"{path}: cannot be read as an image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_mask(path: Path) -> np.ndarray:
    """``(H, W)`` uint8 label values of a grey or palette PNG.

    PIL, not OpenCV: OpenCV expands palette PNGs (Mapillary Vistas) to colours, PIL keeps the indices.
    """
    try:
        with PIL.Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise HdmapError(
                    f"{path}: a mask must be a single-channel 8-bit PNG of class ids, got PIL mode {img.mode}"
                )
            return np.asarray(img)
    except (OSError, PIL.UnidentifiedImageError):
        raise HdmapError(f"{path}: cannot be read as a mask") from None


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file, from its header alone."""
    try:
        with PIL.Image.open(path) as img:
            width, height = img.size
    except (OSError, PIL.UnidentifiedImageError):
        raise HdmapError(f"{path}: cannot be read as an image") from None
    return height, width


def describe_values(values: np.ndarray) -> str:
    """``[0, 1, 2, 5, 255]`` -> ``"0..2, 5, 255"``."""
    runs: list[str] = []
    values = np.sort(values)
    start = prev = None
    for v in [*values.tolist(), None]:
        if v is not None and prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            runs.append(str(start) if start == prev else f"{start}..{prev}")
        start = prev = v
    return ", ".join(runs)


def _check_sample(sample: Sample, lut: np.ndarray) -> str | None:
    try:
        mask = read_mask(sample.mask_path)
        hw = image_size(sample.image_path)
    except HdmapError as err:
        return str(err)
    if hw != mask.shape:
        return (
            f"{sample.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
            f"{sample.image_path.name} is {hw[1]}x{hw[0]}"
        )
    bad = np.unique(mask[lut[mask] == INVALID])
    if bad.size:
        return (
            f"{sample.mask_path}: label values {bad.tolist()} are outside the classes "
            f"(valid values: {describe_values(np.flatnonzero(lut != INVALID))})"
        )
    return None


def check_split(samples: list[Sample], lut: np.ndarray, description: str = "checking masks") -> None:
    """Stop on the first bad pair: unreadable files, size mismatch, or label values that ``lut``
    (``(256,)``, file value -> training id or :data:`INVALID`) does not accept.

    Reads every mask once, in threads (decoding releases the GIL), with a progress bar.
    """
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        results = pool.map(lambda s: _check_sample(s, lut), samples)
        for error in track(results, description=description, total=len(samples), transient=True):
            if error is not None:
                raise HdmapError(error)
    finally:
        pool.shutdown(cancel_futures=True)


class SegmentationDataset(Dataset):
    """Frames and masks through an albumentations pipeline; mask values go through ``lut``
    (``(256,)`` uint8, file value -> training id).

    Returns ``{"image": (3, H, W) float, "mask": (H, W) int64, "name": str}``.
    """

    def __init__(self, samples: list[Sample], transform, lut: np.ndarray) -> None:
        self.samples = samples
        self.transform = transform
        self.lut = lut
        self._seeded_with: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        # albumentations (>= 2) draws from its own generator, which seed_everything does not reach: seed
        # it from torch's seed of this process, which Lightning derives per DataLoader worker and rank.
        seed = torch.initial_seed()
        if seed != self._seeded_with:
            self.transform.set_random_seed(seed % 2**32)
            self._seeded_with = seed
        s = self.samples[index]
        out = self.transform(image=read_image(s.image_path), mask=self.lut[read_mask(s.mask_path)])
        return {
            "image": out["image"],
            "mask": torch.as_tensor(out["mask"], dtype=torch.long),
            "name": s.image_path.stem,
        }
