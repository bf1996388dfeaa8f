"""Tiles of a merged map: poles and signs merged tile by tile, on Dask (docs/map.md, "Tiles and Dask").

The map is cut into web-mercator tiles (``mercantile``, zoom ``MergeConfig.tile_zoom``). A run adds
its drives to each tile they reach as one Dask task: the tile's features within ``HALO_M`` around it,
and the drives' points and coverage within ``HALO_M + INPUT_MARGIN_M``, folded drive by drive with
the merge's own rules (:func:`hdmap_seg.mapmerge.add_points`), change detection included. A feature
that lies near a border is so computed in both tiles from the same inputs; each tile keeps only the
features (and changes) whose final position lies inside it, so none is lost or kept twice. Tiles no
drive of the run reaches are not touched. New features get their ids once all tasks are back, in tile
order, so a run gives the same map on any scheduler: Dask's local threads by default, or a
``distributed`` cluster by its scheduler's address.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import dask
import mercantile
import numpy as np
import shapely
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from hdmap_seg.errors import HdmapError
from hdmap_seg.geo.frames import LocalFrame

#: Features this close to a tile are computed with it: more than any reach of one feature's inputs
#: (the gate, a move) plus that of the features competing for them.
HALO_M = 20.0
#: Drive points and coverage are taken this much further out, so that every input of a halo feature is there.
INPUT_MARGIN_M = 10.0

Tile = tuple[int, int, int]  # (x, y, zoom), as mercantile orders them
#: How long to wait for a cluster's scheduler to answer.
SCHEDULER_TIMEOUT_S = 10


@dataclass
class TileDrive:
    """One drive's part of a tile: its points (layer -> [(xyz, props)]) and coverage near the tile."""

    drive_id: str
    points: dict[str, list[tuple[np.ndarray, dict]]]
    coverage: BaseGeometry


def tile_of(origin: LocalFrame, xy_m: np.ndarray, zoom: int) -> list[Tile]:
    """The tile of each world point ``(N, 2)``."""
    xy_m = np.asarray(xy_m, float).reshape(-1, 2)
    lonlat = origin.wgs84_from_world_points(np.c_[xy_m, np.zeros(len(xy_m))])
    return [tuple(mercantile.tile(lon, lat, zoom)) for lon, lat, _ in lonlat]


def tile_box(origin: LocalFrame, tile: Tile) -> BaseGeometry:
    """A tile's bounds in the world frame (the box around its corners: a tile of a few hundred metres
    is a rectangle there to a millimetre)."""
    b = mercantile.bounds(*tile)
    corners = np.array(
        [[b.west, b.south, 0.0], [b.east, b.north, 0.0], [b.west, b.north, 0.0], [b.east, b.south, 0.0]]
    )
    xy = origin.world_from_wgs84_points(corners)[:, :2]
    return box(*xy.min(axis=0), *xy.max(axis=0))


def tiles_reached(origin: LocalFrame, region: BaseGeometry, zoom: int) -> list[Tile]:
    """The tiles whose box, grown by the halo and the input margin, meets ``region`` (world)."""
    if region.is_empty:
        return []
    grown = region.buffer(HALO_M + INPUT_MARGIN_M)
    x0, y0, x1, y1 = grown.bounds
    lonlat = origin.wgs84_from_world_points(np.array([[x0, y0, 0.0], [x1, y1, 0.0]]))
    west, south = lonlat[:, 0].min(), lonlat[:, 1].min()
    east, north = lonlat[:, 0].max(), lonlat[:, 1].max()
    return sorted(
        tuple(t)
        for t in mercantile.tiles(west, south, east, north, zoom)
        if tile_box(origin, tuple(t)).intersects(grown)
    )


def run_tiles(tasks: list, scheduler: str | None):
    """Compute ``dask.delayed`` tasks: on the local threads, or on the cluster at ``scheduler``."""
    if scheduler is None:
        return list(dask.compute(*tasks, scheduler="threads"))
    from distributed import Client  # only a cluster run needs it started

    try:
        client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as err:
        raise HdmapError(
            f"--scheduler {scheduler}: no Dask scheduler answered ({type(err).__name__}: {err})"
        ) from None
    with client:
        return client.gather(client.compute(tasks))


def features_near(feats: list[dict], xy: np.ndarray, region: BaseGeometry) -> list[dict]:
    """Copies of the features (positions ``xy``) inside ``region``: a task changes its own."""
    if not len(xy):
        return []
    return [
        copy.deepcopy(f)
        for f, k in zip(feats, shapely.contains_xy(region, xy[:, 0], xy[:, 1]), strict=True)
        if k
    ]
