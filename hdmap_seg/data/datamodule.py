"""LightningDataModule over any supported data-set layout (hdmap_seg/data/layouts.py), optionally
through a class map (hdmap_seg/data/class_map.py)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from hdmap_seg.data.class_map import ClassMap, load_class_map
from hdmap_seg.data.classes import ClassSet
from hdmap_seg.data.dataset import INVALID, Sample, SegmentationDataset, find_problems, problems_error
from hdmap_seg.data.layouts import Layout, RoadsLayout
from hdmap_seg.data.transforms import build_transform, pad_collate
from hdmap_seg.errors import HdmapError


class SegDataModule(L.LightningDataModule):
    """Train and val splits of a data set, in the classes a model learns.

    Args:
        root: the data set's folder.
        num_classes: what the model is built for; must equal the classes after the class map.
        layout: the format (:mod:`hdmap_seg.data.layouts`); the project's own by default.
        class_map: a class-map YAML file (``conf/class_map/*.yaml``) onto another taxonomy, or None
            to learn the layout's native classes.
        train_transforms / val_transforms: albumentations steps (``_target_`` dicts) before normalisation.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        num_classes: int,
        layout: Layout | None = None,
        class_map: str | os.PathLike | None = None,
        train_transforms: Sequence = (),
        val_transforms: Sequence = (),
        train_split: str = "train",
        val_split: str = "val",
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int = 2,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.num_classes = num_classes
        self.layout = layout if layout is not None else RoadsLayout()
        self.class_map_path = class_map
        self.train_transforms = list(train_transforms)
        self.val_transforms = list(val_transforms)
        self.train_split, self.val_split = train_split, val_split
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers = num_workers
        self._classes: ClassSet | None = None
        self._lut: np.ndarray | None = None
        self._samples: dict[str, list[Sample]] = {}

    def _resolve(self) -> None:
        native = self.layout.native_classes(self.root)
        lut = self.layout.label_lut(self.root)
        classes, where = native, f"{self.root} ({type(self.layout).__name__})"
        if self.class_map_path is not None:
            class_map: ClassMap = load_class_map(self.class_map_path, source=native.names)
            mapped = class_map.lut.astype(np.int16)[lut.clip(0, 255)]
            lut = np.where(lut == INVALID, np.int16(INVALID), mapped)
            classes, where = class_map.target, f"{where} through the class map {self.class_map_path}"
        if classes.num_classes != self.num_classes:
            raise HdmapError(
                f"{where} has {classes.num_classes} classes but the config says "
                f"data.num_classes={self.num_classes}"
            )
        self._classes, self._lut = classes, lut

    @property
    def classes(self) -> ClassSet:
        """The classes a model learns (after the class map, if any)."""
        if self._classes is None:
            self._resolve()
        return self._classes

    @property
    def label_lut(self) -> np.ndarray:
        """``(256,)`` int16: mask file value -> training id, ignore index, or ``INVALID``."""
        if self._lut is None:
            self._resolve()
        return self._lut

    def samples(self, split: str) -> list[Sample]:
        """The checked (frame, mask) pairs of ``split``; the first call decodes and checks every frame
        and mask, in ``num_workers`` processes."""
        if split not in self._samples:
            samples, problems = self._check_split(split)
            if problems:
                raise problems_error(problems, len(samples), f" of split {split!r}")
        return self._samples[split]

    def _check_split(self, split: str) -> tuple[list[Sample], list[str]]:
        lut = self.label_lut  # first: a missing classes file or config is the more basic error
        samples = self.layout.list_split(self.root, split)
        problems = find_problems(samples, lut, f"checking {split} frames and masks", self.num_workers)
        if not problems:
            self._samples[split] = samples
        return samples, problems

    def check(self) -> None:
        """Decode every frame and mask of the train and val splits once, before any training starts;
        one error reports the bad files of both."""
        problems, total, bad_splits = [], 0, []
        for split in dict.fromkeys((self.train_split, self.val_split)):
            if split in self._samples:
                continue
            samples, found = self._check_split(split)
            if found:
                problems += found
                total += len(samples)
                bad_splits.append(repr(split))
        if problems:
            where = f" of split{'s' if len(bad_splits) > 1 else ''} {' and '.join(bad_splits)}"
            raise problems_error(problems, total, where)

    def setup(self, stage: str | None = None) -> None:
        self.check()

    def dataset(self, split: str, steps: Sequence = ()) -> SegmentationDataset:
        """One split with the augmentation ``steps``, masks in training ids."""
        lut = np.where(self.label_lut == INVALID, self.classes.ignore_index, self.label_lut).astype(np.uint8)
        return SegmentationDataset(self.samples(split), build_transform(steps), lut)

    def _loader(self, split: str, steps: Sequence, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split, steps)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(dataset) >= batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=functools.partial(pad_collate, ignore_index=self.classes.ignore_index),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_split, self.train_transforms, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_split, self.val_transforms, self.val_batch_size, shuffle=False)
