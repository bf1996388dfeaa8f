"""The class taxonomy of a data set: names, ids, colours and the ignore index (``classes.yaml``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import yaml

from hdmap_seg.errors import HdmapError
from hdmap_seg.io import read_yaml_mapping, write_text_atomic

IGNORE_INDEX = 255


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class ClassSet:
    """The classes of one data set, with contiguous ids ``0..n-1`` and one ignore index."""

    classes: tuple[ClassInfo, ...]
    ignore_index: int = IGNORE_INDEX
    _by_name: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise HdmapError(f"class ids must be 0..{len(ids) - 1} in order, got {ids}")
        if 0 <= self.ignore_index < len(ids):
            raise HdmapError(f"ignore_index {self.ignore_index} collides with a class id")
        object.__setattr__(self, "_by_name", {c.name: c.id for c in self.classes})

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def id_of(self, name: str) -> int:
        """The id of class ``name``; a clear error names the classes that exist."""
        try:
            return self._by_name[name]
        except KeyError:
            raise HdmapError(f"no class named {name!r}; classes are {self.names}") from None

    def palette(self) -> np.ndarray:
        """``(256, 3)`` uint8 RGB lookup table: class colours, ignore and unused ids black."""
        lut = np.zeros((256, 3), np.uint8)
        for c in self.classes:
            lut[c.id] = c.color
        return lut

    def to_dict(self) -> dict:
        return {
            "ignore_index": self.ignore_index,
            "classes": [{"id": c.id, "name": c.name, "color": list(c.color)} for c in self.classes],
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> ClassSet:
        try:
            classes = tuple(
                ClassInfo(int(c["id"]), str(c["name"]), tuple(int(v) for v in c["color"]))
                for c in data["classes"]
            )
            ignore = int(data.get("ignore_index", IGNORE_INDEX))
        except (KeyError, TypeError, ValueError) as err:
            raise HdmapError(
                f"{source}: not a valid classes file ({err!r}); see docs/conventions.md"
            ) from None
        try:
            return cls(classes, ignore)
        except HdmapError as err:
            raise HdmapError(f"{source}: {err}") from None


def load_classes(path: str | os.PathLike) -> ClassSet:
    """Read a ``classes.yaml``."""
    data = read_yaml_mapping(path, "classes file (with 'classes' and 'ignore_index')")
    return ClassSet.from_dict(data, source=str(path))


def save_classes(classes: ClassSet, path: str | os.PathLike) -> None:
    """Write ``classes.yaml`` atomically."""
    write_text_atomic(path, yaml.safe_dump(classes.to_dict(), sort_keys=False))


#: The project's own taxonomy (docs/conventions.md); the synthetic world renders these ids.
ROAD_CLASSES = ClassSet(
    (
        ClassInfo(0, "background", (0, 0, 0)),
        ClassInfo(1, "road", (128, 64, 128)),
        ClassInfo(2, "lane_marking", (255, 255, 255)),
        ClassInfo(3, "median", (107, 142, 35)),
        ClassInfo(4, "pole", (153, 153, 153)),
        ClassInfo(5, "sign", (220, 220, 0)),
    )
)
