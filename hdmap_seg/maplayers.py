"""The map's shared types: features in the world frame, grouped by layer, and the layers' names.

They sit below every stage that makes, writes or reads map layers (:mod:`hdmap_seg.vectorize`,
:mod:`hdmap_seg.export`, :mod:`hdmap_seg.evaluate`, the ground truth of :mod:`hdmap_seg.synthetic`),
so that none of those imports another for them.

A layer has one name, plural: its key in :data:`MapLayers` and its file ``<name>.geojson``. The
vectorize config names what feeds a layer by the class of the taxonomy whose pixels do
(docs/conventions.md, singular: ``classes: {pole: [4]}``, and the builder's settings under
``pole:``); :data:`LAYER_CLASS` relates the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shapely.geometry.base import BaseGeometry

POLES = "poles"
SIGNS = "signs"
MEDIANS = "medians"
#: The ground the drive saw within range: written beside the layers, fed by no class.
COVERAGE = "coverage"
LANE_MARKINGS = "lane_markings"
#: The class whose pixels feed each layer, in file order.
LAYER_CLASS = {POLES: "pole", SIGNS: "sign", MEDIANS: "median", LANE_MARKINGS: "lane_marking"}

#: A median is two features, told apart by their ``kind`` property: its footprint (Polygon) and its
#: centre line (LineString).
FOOTPRINT = "footprint"
CENTERLINE = "centerline"


@dataclass
class Feature:
    """One map feature: a shapely geometry in the ``world`` frame (metres) and its properties."""

    geometry: BaseGeometry
    properties: dict = field(default_factory=dict)


#: ``{layer name: features}``; layers a config does not feed are absent.
MapLayers = dict[str, list[Feature]]


def count_features(layers: MapLayers) -> dict[str, int]:
    """Features per layer as a map holds them: a median is one, its footprint and centre line together."""
    return {
        name: sum(1 for f in feats if f.properties.get("kind") != CENTERLINE)
        if name == MEDIANS
        else len(feats)
        for name, feats in layers.items()
    }
