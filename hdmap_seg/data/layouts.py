"""Data-set layouts: where a format keeps its frames and masks, its native classes, and how its mask
file values become training ids.

A layout answers three questions about a data-set folder ``root``:

- ``native_classes(root)``: the classes a model learns when no class map is given (ids ``0..n-1``);
- ``label_lut(root)``: ``(256,)`` int16, mask file value -> native id, the ignore index (255), or
  :data:`~hdmap_seg.data.dataset.INVALID` for a value the format does not have (a bad mask);
- ``list_split(root, split)``: the (frame, mask) pairs of one split;
- ``splits(root)``: the names of the splits that have both a frame and a mask folder.

:class:`~hdmap_seg.data.datamodule.SegDataModule` takes one (``conf/data/<name>.yaml``, ``layout:``)
and composes its table with a class map. docs/real_data.md describes each format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from hdmap_seg.data.classes import IGNORE_INDEX, ClassInfo, ClassSet, load_classes
from hdmap_seg.data.dataset import INVALID, Sample, image_files, list_split, pair_samples
from hdmap_seg.errors import HdmapError


class Layout(Protocol):
    def native_classes(self, root: Path) -> ClassSet: ...

    def label_lut(self, root: Path) -> np.ndarray: ...

    def list_split(self, root: Path, split: str) -> list[Sample]: ...

    def splits(self, root: Path) -> list[str]: ...


def lut_from_pairs(pairs: dict[int, int]) -> np.ndarray:
    """``{file value: training id}`` -> ``(256,)`` int16 table, :data:`INVALID` elsewhere."""
    lut = np.full(256, INVALID, np.int16)
    for value, train_id in pairs.items():
        lut[value] = train_id
    return lut


def folders(path: Path) -> list[str]:
    """Sorted names of the sub-folders of ``path`` (none when it is not a folder)."""
    return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def require_split(layout: Layout, root: str | os.PathLike, split: str) -> None:
    """Stop with a one-line error naming the splits there are when ``root`` has no ``split``."""
    root = Path(root)
    if not root.is_dir():
        raise HdmapError(f"{root}: data set folder not found")
    found = layout.splits(root)
    if split not in found:
        raise HdmapError(
            f"{root}: no split {split!r} in this {type(layout).__name__} data set; "
            f"its splits: {', '.join(found) or 'none'}"
        )


def classes_from(table: list[tuple[str, tuple[int, int, int]]]) -> ClassSet:
    return ClassSet(tuple(ClassInfo(i, name, color) for i, (name, color) in enumerate(table)), IGNORE_INDEX)


class RoadsLayout:
    """The project's format (docs/conventions.md): ``classes.yaml``, ``images/<split>``, ``masks/<split>``."""

    def native_classes(self, root: Path) -> ClassSet:
        return load_classes(Path(root) / "classes.yaml")

    def label_lut(self, root: Path) -> np.ndarray:
        classes = self.native_classes(root)
        ids = [*range(classes.num_classes), classes.ignore_index]
        return lut_from_pairs({i: i for i in ids})

    def list_split(self, root: Path, split: str) -> list[Sample]:
        return list_split(root, split)

    def splits(self, root: Path) -> list[str]:
        masks = set(folders(Path(root) / "masks"))
        return [s for s in folders(Path(root) / "images") if s in masks]


#: CamVid as the SegNet tutorial ships it (../shared/data/camvid/README.md); file value 11 is Unlabelled.
CAMVID_CLASSES = classes_from(
    [
        ("Sky", (128, 128, 128)),
        ("Building", (128, 0, 0)),
        ("Pole", (192, 192, 128)),
        ("Road", (128, 64, 128)),
        ("Pavement", (60, 40, 222)),
        ("Tree", (128, 128, 0)),
        ("SignSymbol", (192, 128, 128)),
        ("Fence", (64, 64, 128)),
        ("Car", (64, 0, 128)),
        ("Pedestrian", (64, 64, 0)),
        ("Bicyclist", (0, 128, 192)),
    ]
)
CAMVID_UNLABELLED = 11


class CamVidLayout:
    """SegNet's CamVid: ``<split>/<name>.png`` frames, ``<split>annot/<name>.png`` masks (values 0..11,
    11 = Unlabelled, ignored)."""

    def native_classes(self, root: Path) -> ClassSet:
        return CAMVID_CLASSES

    def label_lut(self, root: Path) -> np.ndarray:
        return lut_from_pairs({**{i: i for i in range(11)}, CAMVID_UNLABELLED: IGNORE_INDEX})

    def list_split(self, root: Path, split: str) -> list[Sample]:
        image_dir, mask_dir = Path(root) / split, Path(root) / f"{split}annot"
        return pair_samples(image_dir, split, image_files(image_dir, split), lambda p: mask_dir / p.name)

    def splits(self, root: Path) -> list[str]:
        # Every folder beside its ``annot`` twin: train, val and test in the SegNet release.
        names = set(folders(Path(root)))
        return sorted(n for n in names if f"{n}annot" in names)


#: Cityscapes' 19 training classes (cityscapesScripts' labels.py: name, trainId order, colour).
CITYSCAPES_CLASSES = classes_from(
    [
        ("road", (128, 64, 128)),
        ("sidewalk", (244, 35, 232)),
        ("building", (70, 70, 70)),
        ("wall", (102, 102, 156)),
        ("fence", (190, 153, 153)),
        ("pole", (153, 153, 153)),
        ("traffic light", (250, 170, 30)),
        ("traffic sign", (220, 220, 0)),
        ("vegetation", (107, 142, 35)),
        ("terrain", (152, 251, 152)),
        ("sky", (70, 130, 180)),
        ("person", (220, 20, 60)),
        ("rider", (255, 0, 0)),
        ("car", (0, 0, 142)),
        ("truck", (0, 0, 70)),
        ("bus", (0, 60, 100)),
        ("train", (0, 80, 100)),
        ("motorcycle", (0, 0, 230)),
        ("bicycle", (119, 11, 32)),
    ]
)
#: labelIds -> trainIds of the 19 evaluated classes; the other ids 0..33 are ignored.
CITYSCAPES_LABEL_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_NUM_LABEL_IDS = 34


class CityscapesLayout:
    """``leftImg8bit/<split>/<city>/<x>_leftImg8bit.png`` with ``gtFine/<split>/<city>/<x>_gtFine_labelIds.png``;
    label ids (0..33) become the official 19 train ids, the others are ignored."""

    def native_classes(self, root: Path) -> ClassSet:
        return CITYSCAPES_CLASSES

    def label_lut(self, root: Path) -> np.ndarray:
        pairs = {i: IGNORE_INDEX for i in range(CITYSCAPES_NUM_LABEL_IDS)}
        return lut_from_pairs({**pairs, **CITYSCAPES_LABEL_TO_TRAIN})

    def list_split(self, root: Path, split: str) -> list[Sample]:
        image_dir = Path(root) / "leftImg8bit" / split
        gt_dir = Path(root) / "gtFine" / split

        def mask_of(p: Path) -> Path:
            stem = p.name.removesuffix("_leftImg8bit.png")
            return gt_dir / p.parent.name / f"{stem}_gtFine_labelIds.png"

        return pair_samples(image_dir, split, image_files(image_dir, split, "*/*_leftImg8bit.png"), mask_of)

    def splits(self, root: Path) -> list[str]:
        gt = set(folders(Path(root) / "gtFine"))
        return [s for s in folders(Path(root) / "leftImg8bit") if s in gt]


class VistasLayout:
    """Mapillary Vistas v1.2 / v2.0: ``config_<version>.json`` (its ``labels`` list, in id order),
    ``<split>/images/<x>.jpg`` and ``<split>/<version>/labels/<x>.png`` (palette PNG of label ids).

    The native classes are the labels marked ``evaluate`` (65 of v1.2's 66, as its benchmark); the
    others (unlabeled, ambiguous classes) are ignored. Splits are named ``training`` and ``validation``.

    Args:
        version: ``"v1.2"`` or ``"v2.0"``: which config and which label folder.
    """

    def __init__(self, version: str = "v2.0") -> None:
        self.version = version

    def _labels(self, root: Path) -> list[dict]:
        path = Path(root) / f"config_{self.version}.json"
        if not path.is_file():
            raise HdmapError(
                f"{path}: Mapillary Vistas config not found (data.layout.version={self.version})"
            )
        try:
            labels = [
                {
                    "name": str(lb["name"]),
                    "color": tuple(int(c) for c in lb["color"]),
                    "evaluate": bool(lb.get("evaluate", True)),
                }
                for lb in json.loads(path.read_text())["labels"]
            ]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise HdmapError(f"{path}: not a Vistas config with a 'labels' list ({err!r})") from None
        if len(labels) > 255:
            raise HdmapError(f"{path}: {len(labels)} labels do not fit 8-bit label PNGs")
        return labels

    def native_classes(self, root: Path) -> ClassSet:
        labels = self._labels(root)
        return classes_from([(lb["name"], lb["color"]) for lb in labels if lb["evaluate"]])

    def label_lut(self, root: Path) -> np.ndarray:
        pairs, next_id = {}, 0
        for value, label in enumerate(self._labels(root)):
            if label["evaluate"]:
                pairs[value], next_id = next_id, next_id + 1
            else:
                pairs[value] = IGNORE_INDEX
        return lut_from_pairs(pairs)

    def list_split(self, root: Path, split: str) -> list[Sample]:
        image_dir = Path(root) / split / "images"
        label_dir = Path(root) / split / self.version / "labels"
        return pair_samples(
            image_dir, split, image_files(image_dir, split), lambda p: label_dir / f"{p.stem}.png"
        )

    def splits(self, root: Path) -> list[str]:
        # "testing" has images but no labels: not a split to evaluate on.
        return [
            s
            for s in folders(Path(root))
            if (Path(root) / s / "images").is_dir() and (Path(root) / s / self.version / "labels").is_dir()
        ]
