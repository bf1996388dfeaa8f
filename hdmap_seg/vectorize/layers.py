"""What vectorization produces: map features in the world frame, grouped by layer."""

from __future__ import annotations

from dataclasses import dataclass, field

from shapely.geometry.base import BaseGeometry

#: Output layers, in file order. ``coverage`` is the ground the drive saw within range.
LAYER_NAMES = ("poles", "signs", "medians", "coverage")


@dataclass
class Feature:
    """One map feature: a shapely geometry in the ``world`` frame (metres) and its properties."""

    geometry: BaseGeometry
    properties: dict = field(default_factory=dict)


#: ``{layer name: features}``; layers a config does not feed are absent.
MapLayers = dict[str, list[Feature]]
