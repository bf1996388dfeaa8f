"""Samples of a segmentation data set: pairing frames with masks, the checks of a split, and the
training ``Dataset`` (the files themselves are read through :mod:`hdmap_seg.imageio`).

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from rich.progress import track
from torch.utils.data import DataLoader, Dataset

from hdmap_seg.errors import HdmapError
from hdmap_seg.imageio import IMAGE_SUFFIXES, decoded_image_size, read_image, read_mask

if TYPE_CHECKING:
    import albumentations as A

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
        hw = decoded_image_size(sample.image_path)
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


class _SampleCheck(Dataset):
    """Item ``i``: what is wrong with sample ``i`` (decoded in full), or None."""

    def __init__(self, samples: list[Sample], lut: np.ndarray) -> None:
        self.samples, self.lut = samples, lut

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> str | None:
        return _check_sample(self.samples[index], self.lut)


#: Problems named in the error of :func:`check_split`; the rest are counted.
MAX_NAMED_PROBLEMS = 10

#: Below this many samples the check decodes in the calling process (starting workers costs more).
_MIN_SAMPLES_FOR_WORKERS = 32


def find_problems(
    samples: list[Sample], lut: np.ndarray, description: str = "checking masks", num_workers: int = 0
) -> list[str]:
    """What is wrong with each bad pair of ``samples``, decoding every frame and mask in full:
    unreadable or truncated files, size mismatch, or label values that ``lut`` (``(256,)``, file value
    -> training id or :data:`INVALID`) does not accept.

    Decodes in ``num_workers`` DataLoader worker processes (as training reads), with a progress bar.
    """
    workers = num_workers if len(samples) >= _MIN_SAMPLES_FOR_WORKERS else 0
    # A generator of its own: the loader draws its workers' base seed from it, not from torch's global
    # generator, so that the check leaves a seeded run's model initialisation and data order as they were.
    loader = DataLoader(
        _SampleCheck(samples, lut), batch_size=None, num_workers=workers, generator=torch.Generator()
    )
    return [p for p in track(loader, description=description, total=len(samples), transient=True) if p]


def problems_error(problems: list[str], total: int, where: str = "") -> HdmapError:
    """One error for all ``problems`` of ``total`` samples: the first :data:`MAX_NAMED_PROBLEMS`
    named, the rest counted."""
    if len(problems) == 1:
        return HdmapError(problems[0])
    named = "; ".join(problems[:MAX_NAMED_PROBLEMS])
    more = f"; and {len(problems) - MAX_NAMED_PROBLEMS} more" if len(problems) > MAX_NAMED_PROBLEMS else ""
    return HdmapError(f"{len(problems)} of {total} samples{where} are bad: {named}{more}")


def check_split(
    samples: list[Sample],
    lut: np.ndarray,
    description: str = "checking masks",
    num_workers: int = 0,
    split: str | None = None,
) -> None:
    """:func:`find_problems`, raised as one :class:`HdmapError` (:func:`problems_error`)."""
    problems = find_problems(samples, lut, description, num_workers)
    if problems:
        raise problems_error(problems, len(samples), f" of split {split!r}" if split else "")


class SegmentationDataset(Dataset):
    """Frames and masks through an albumentations pipeline; mask values go through ``lut``
    (``(256,)`` uint8, file value -> training id).

    Returns ``{"image": (3, H, W) float, "mask": (H, W) int64, "name": str}``.
    """

    def __init__(self, samples: list[Sample], transform: A.Compose, lut: np.ndarray) -> None:
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
