"""Change detection: what a drive added to a map says changed (docs/map.md, "Change detection").

A drive is compared with the map only where it could have seen: inside its ``coverage`` shrunk by
``ChangeConfig.inside_m`` (a pole at the edge of what a drive saw is often seen by too few frames to
be mapped, which is no evidence that it is gone). Poles and signs:

- **removed**: a map feature inside that the drive did not match;
- **added**: a drive feature that matches nothing, where the map's earlier drives had looked (inside
  their coverage, shrunk the same way); elsewhere it is new ground, mapped at once;
- **moved**: a removed and an added one of the same layer within ``max_move_m`` of each other (one to
  one, nearest first; signs also alike in facing and height, by the merge's rules): farther apart than their uncertainties
  allow a match (mapmerge's gate), close enough to be one object.

The map itself changes only when ``min_drives`` drives agree: a feature leaves the map when the last
``min_drives`` drives that covered it all missed it, and an added one (a *candidate*) enters it once
``min_drives`` drives have seen it. Every drive's view is reported (``changes.geojson``), agreeing
or not, with its evidence: the drive, its views of the feature (``n_obs``), the distance to the
nearest counterpart, ``sigma_m``, how many drives agree so far and whether the map changed.
Medians and lane markings are not checked for changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy.optimize import linear_sum_assignment
from shapely.geometry import LineString, Point
from shapely.geometry.base import BaseGeometry

from hdmap_seg.maplayers import SIGNS, Feature

REMOVED, ADDED, MOVED = "removed", "added", "moved"
#: A map feature's status: in the map, seen where the map had looked but not yet by enough drives,
#: or gone.
MAPPED, CANDIDATE, GONE = "mapped", "candidate", "removed"


@dataclass(frozen=True)
class ChangeConfig:
    """The rules of change detection (module docstring)."""

    min_drives: int = 2
    inside_m: float = 5.0
    max_move_m: float = 6.0


@dataclass
class Change:
    """One drive's evidence of one change of one feature (world xyz; ``old_xyz`` for removed and moved)."""

    change: str
    layer: str
    feature_id: int
    drive_id: str
    xyz: np.ndarray
    old_xyz: np.ndarray | None
    n_obs: int
    distance_m: float | None
    sigma_m: float
    n_agree: int
    applied: bool
    from_id: int | None = None  # a move's: the map feature it moved from

    def feature(self) -> Feature:
        geom = (
            LineString([self.old_xyz, self.xyz])
            if self.change == MOVED and self.old_xyz is not None
            else Point(*self.xyz)
        )
        return Feature(
            geom,
            {
                "change": self.change,
                "layer": self.layer,
                "feature_id": self.feature_id,
                "drive": self.drive_id,
                "n_obs": self.n_obs,
                "distance_m": None if self.distance_m is None else round(self.distance_m, 3),
                "sigma_m": round(self.sigma_m, 4),
                "n_agree": self.n_agree,
                "applied": self.applied,
                "from_feature_id": self.from_id,
            },
        )


def inside(coverage: BaseGeometry, margin_m: float) -> BaseGeometry:
    """Where a drive could have seen a feature: its coverage shrunk by ``margin_m`` (prepared)."""
    region = coverage.buffer(-margin_m) if margin_m > 0 else coverage
    shapely.prepare(region)
    return region


def covered(region: BaseGeometry, xy: np.ndarray) -> np.ndarray:
    """``(N, 2)`` world points -> ``(N,)`` flags: inside ``region``."""
    xy = np.asarray(xy, float).reshape(-1, 2)
    return shapely.contains_xy(region, xy[:, 0], xy[:, 1]) if len(xy) else np.zeros(0, bool)


def moved_pairs(
    layer: str,
    old_xyz: np.ndarray,
    old_sign: list[tuple[float, float | None]],
    new_xyz: np.ndarray,
    new_sign: list[tuple[float, float]],
    max_move_m: float,
    sign_alike,
) -> list[tuple[int, int]]:
    """One-to-one ``(old, new)`` pairs within ``max_move_m``, nearest first; signs (``*_sign``: facing,
    height) also ``sign_alike(old, new)`` (the merge's facing and height rules)."""
    if not len(old_xyz) or not len(new_xyz):
        return []
    d = np.linalg.norm(old_xyz[:, None, :2] - new_xyz[None, :, :2], axis=2)
    ok = d <= max_move_m
    if layer == SIGNS:
        for i, a in enumerate(old_sign):
            for j, b in enumerate(new_sign):
                ok[i, j] &= sign_alike(a, b)
    rows, cols = linear_sum_assignment(np.where(ok, d, 1e6))
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if ok[r, c]]


def nearest_m(xy: np.ndarray, others: np.ndarray) -> list[float | None]:
    """Each point's distance to the nearest of ``others`` (None when there are none)."""
    if not len(others):
        return [None] * len(xy)
    return [float(v) for v in np.linalg.norm(xy[:, None, :2] - others[None, :, :2], axis=2).min(axis=1)]
