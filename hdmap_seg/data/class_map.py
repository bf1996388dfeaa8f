"""Class maps: one data set's classes onto another taxonomy (usually the project's), as a YAML file.

Training reads a class map to learn, say, CamVid in the project's six classes; vectorization reads the
same file to turn the output of a model trained on CamVid's own classes into the project's layers.
The file (``conf/class_map/*.yaml``, docs/real_data.md)::

    source: [Sky, Building, Pole, ...]     # optional: the native class names in id order
    target:                                # the taxonomy after mapping, as in classes.yaml
      ignore_index: 255
      classes: [{id: 0, name: background, color: [0, 0, 0]}, ...]
    map:                                   # target class (or "ignore") -> native names or patterns
      pole: [Pole]
      sign: [SignSymbol]
    unmapped: background                   # a target class name, or "ignore"

Names in ``map`` are shell-style patterns (``marking--*``), so that one file serves data-set versions
with finer classes (Mapillary Vistas v1.2 and v2.0). ``source`` may be left out when the data set
supplies its names at run time (Vistas reads them from its ``config_*.json``).
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hdmap_seg.data.classes import ClassSet
from hdmap_seg.errors import HdmapError
from hdmap_seg.io import read_yaml_mapping

log = logging.getLogger(__name__)

#: The pseudo target name of ``map`` and ``unmapped`` that sends native classes to the ignore index.
IGNORE = "ignore"


@dataclass(frozen=True)
class ClassMap:
    """A resolved class map.

    Attributes:
        source: native class names; native id ``i`` is ``source[i]``.
        target: the classes after mapping.
        lut: ``(256,)`` uint8 lookup table, native id -> target id; every id from ``len(source)`` up
            (the native ignore index included) goes to ``target.ignore_index``.
    """

    source: tuple[str, ...]
    target: ClassSet
    lut: np.ndarray

    def apply(self, ids: np.ndarray) -> np.ndarray:
        """Map an array of native uint8 ids (a mask, a model's argmax) to target ids."""
        return self.lut[ids]

    @classmethod
    def from_dict(cls, data: dict, source: Sequence[str] | None = None, origin: str = "<dict>") -> ClassMap:
        """Resolve a class-map mapping against the native class names.

        ``source`` (names in id order) comes from the data set or a checkpoint; when the file also
        lists ``source``, the two must agree, which catches a map applied to the wrong data set.
        """
        if not isinstance(data, dict) or not isinstance(data.get("map"), dict) or "target" not in data:
            raise HdmapError(f"{origin}: a class map needs 'target' and 'map' (see docs/real_data.md)")
        target = ClassSet.from_dict(data["target"], source=f"{origin} (target)")
        file_source = data.get("source")
        if source is None and file_source is None:
            raise HdmapError(
                f"{origin}: the native class names are unknown: list them under 'source' or pass them in"
            )
        if source is not None and file_source is not None and list(source) != list(file_source):
            raise HdmapError(
                f"{origin}: written for the classes {list(file_source)}, but the data set has {list(source)}"
            )
        names = tuple(str(n) for n in (source if source is not None else file_source))
        if len(names) > 255:
            raise HdmapError(f"{origin}: {len(names)} native classes do not fit 8-bit masks")

        def target_id(name: str) -> int:
            if name == IGNORE:
                return target.ignore_index
            try:
                return target.id_of(name)
            except HdmapError as err:
                raise HdmapError(f"{origin}: {err}") from None

        lut = np.full(256, target.ignore_index, np.uint8)
        lut[: len(names)] = target_id(str(data.get("unmapped", IGNORE)))
        mapped_by: dict[str, str] = {}
        for target_name, patterns in data["map"].items():
            tid = target_id(str(target_name))
            if isinstance(patterns, str):
                patterns = [patterns]
            for pattern in patterns:
                hits = [i for i, n in enumerate(names) if fnmatch.fnmatchcase(n, str(pattern))]
                if not hits:
                    log.warning("%s: %r matches none of the data set's classes", origin, pattern)
                for i in hits:
                    if names[i] in mapped_by and mapped_by[names[i]] != target_name:
                        raise HdmapError(
                            f"{origin}: native class {names[i]!r} is mapped to both "
                            f"{mapped_by[names[i]]!r} and {target_name!r}"
                        )
                    mapped_by[names[i]] = str(target_name)
                    lut[i] = tid
        return cls(names, target, lut)


def load_class_map(path: str | os.PathLike, source: Sequence[str] | None = None) -> ClassMap:
    """Read a class-map YAML file (``conf/class_map/*.yaml``); see :meth:`ClassMap.from_dict`.

    ``source``: the native class names in id order, needed when the file does not list them (e.g.
    ``ClassSet.names`` of the data set, or of the checkpoint whose outputs are to be mapped).
    """
    data = read_yaml_mapping(path, "class map")
    return ClassMap.from_dict(data, source=source, origin=str(path))
