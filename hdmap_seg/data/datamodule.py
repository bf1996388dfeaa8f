"""LightningDataModule over the road data-set format (hdmap_seg/data/roads.py)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import lightning as L
from torch.utils.data import DataLoader

from hdmap_seg.data.classes import ClassSet
from hdmap_seg.data.roads import SegmentationDataset, check_split, list_split, load_road_dataset_classes
from hdmap_seg.data.transforms import build_transform, pad_collate
from hdmap_seg.errors import HdmapError


class RoadsDataModule(L.LightningDataModule):
    """Train and val splits of a data set in the project's format.

    Args:
        root: the data set's folder (holds ``classes.yaml``, ``images/``, ``masks/``).
        num_classes: what the model is built for; must equal the classes in ``classes.yaml``.
        train_transforms / val_transforms: albumentations steps (``_target_`` dicts) before normalisation.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        num_classes: int,
        train_transforms: Sequence = (),
        val_transforms: Sequence = (),
        train_split: str = "train",
        val_split: str = "val",
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int = 2,
    ) -> None:
        super().__init__()
        self.root = root
        self.num_classes = num_classes
        self.train_transforms = list(train_transforms)
        self.val_transforms = list(val_transforms)
        self.train_split, self.val_split = train_split, val_split
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers = num_workers
        self._classes: ClassSet | None = None
        self._samples: dict[str, list] = {}

    @property
    def classes(self) -> ClassSet:
        if self._classes is None:
            self._classes = load_road_dataset_classes(self.root)
            if self._classes.num_classes != self.num_classes:
                raise HdmapError(
                    f"{self.root}/classes.yaml has {self._classes.num_classes} classes but the config says "
                    f"data.num_classes={self.num_classes}"
                )
        return self._classes

    def check(self) -> None:
        """Read every split once and stop on the first bad file, before any training starts."""
        for split in (self.train_split, self.val_split):
            if split not in self._samples:
                samples = list_split(self.root, split)
                check_split(samples, self.classes)
                self._samples[split] = samples

    def setup(self, stage: str | None = None) -> None:
        self.check()

    def _loader(self, split: str, steps: Sequence, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = SegmentationDataset(self._samples[split], build_transform(steps))
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
