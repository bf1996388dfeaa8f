"""What every layer builder implements, and what it is given of each frame.

A layer builder turns the pixels of its layer, frame by frame, into that layer's features (as
robosat has one handler per feature type). :class:`~hdmap_seg.vectorize.builder.MapBuilder` makes one
for each layer the config feeds and hands every frame to each in turn; a new layer (lane markings)
is one more builder::

    class LaneMarkingBuilder:
        layer = LANE_MARKINGS
        def add(self, frame: FrameStamp, masks: LayerMasks, geometry: FrameGeometry) -> None: ...
        def finish(self) -> list[Feature]: ...
        def state_size(self) -> dict[str, int]: ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol

import numpy as np

from hdmap_seg.maplayers import Feature
from hdmap_seg.vectorize.frame import FrameGeometry


class FrameStamp(NamedTuple):
    """Which frame: its index in the drive (frames come in increasing order) and its time, if known."""

    index: int
    time: np.datetime64 | None = None


class LayerMasks:
    """One frame's pixels of each layer, ``(H, W)`` bool, from the frame's layer bits.

    The :class:`~hdmap_seg.vectorize.builder.MapBuilder` looks every pixel's class id up once, into
    one bit per layer; each layer's pixels are taken from those bits the first time a builder asks.
    A builder reads its own layer, and another where that one hides it (a sign in front of a
    pole's base).
    """

    def __init__(self, bits: np.ndarray, bit_of: Mapping[str, int]) -> None:
        """``bits``: ``(H, W)`` uint8 layer bits; ``bit_of``: the bit of each layer that is built."""
        self._bits = bits
        self._bit_of = bit_of
        self._masks: dict[str, np.ndarray] = {}

    def get(self, layer: str) -> np.ndarray | None:
        """The layer's pixels; None when no builder makes the layer (no class feeds it)."""
        if layer not in self._bit_of:
            return None
        if layer not in self._masks:
            self._masks[layer] = (self._bits & self._bit_of[layer]) > 0
        return self._masks[layer]

    def __getitem__(self, layer: str) -> np.ndarray:
        mask = self.get(layer)
        if mask is None:
            raise KeyError(f"no class feeds the {layer} layer")
        return mask


class LayerBuilder(Protocol):
    """Builds one map layer from its pixels, streaming: state bounded by what the camera sees."""

    #: the layer it builds (:mod:`hdmap_seg.maplayers`)
    layer: str

    def add(self, frame: FrameStamp, masks: LayerMasks, geometry: FrameGeometry) -> None:
        """Take in one frame: its layers' pixels and where they lie in the world."""

    def finish(self) -> list[Feature]:
        """The layer's features, in the world frame; called once, after the last frame."""

    def state_size(self) -> dict[str, int]:
        """Sizes of the fusion state (the memory benchmark's columns)."""
