"""Medians (and the drive's coverage): ground footprints voted on a grid, merged into polygons.

A frame's median pixels become polygons in the image (:func:`mask_polygons`), projected onto the
ground. Every frame adds one to the cells of the ground it sees within range (``seen``) and to the
cells of its median footprint (``votes``). A cell is median when ``votes >= min_votes`` and
``votes >= vote_fraction * seen``: a union of footprints that one wrong frame cannot grow. The
grid lives in square tiles; a tile that no frame has touched for ``retire_after_frames`` frames
is turned into polygons (OpenCV contours) and freed, so memory holds the tiles around the car
plus the polygons of the map. :meth:`GroundVotes.medians` merges the pieces (union, closing by
``close_m``, simplification, small parts dropped) and draws each polygon's centre line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from shapely.geometry import LineString, MultiPoint, Polygon
from shapely.geometry.base import BaseGeometry

from hdmap_seg.geo.ground import Raised
from hdmap_seg.maplayers import CENTERLINE, FOOTPRINT, MEDIANS, Feature
from hdmap_seg.vectorize.config import LaneMarkingConfig, MedianConfig
from hdmap_seg.vectorize.frame import FrameGeometry
from hdmap_seg.vectorize.layer_builder import FrameStamp, LayerMasks

_SHIFT = 4  # cv2.fillPoly fractional bits: vertices at 1/16 cell
# A straight edge drawn in pixels steps by half a pixel either side of its line.
_CONTOUR_TOLERANCE_PX = 0.75


@dataclass
class _Tile:
    seen: np.ndarray  # uint16 (n, n): frames that saw the cell
    votes: np.ndarray  # uint16 (n, n): frames whose median footprint covers the cell
    last_frame: int


@dataclass
class _Piece:
    polygon: BaseGeometry
    score_sum: float  # sum over its cells of votes / seen
    n_cells: int


@dataclass
class _Window:
    """The cells a frame saw: its bounding window on the grid (``[r0, r1) x [c0, c1)``) and mask there."""

    frame: int
    c0: int
    r0: int
    c1: int
    r1: int
    seen: np.ndarray  # uint8 (r1 - r0, c1 - c0)


class GroundVotes:
    """Vote grid over the ground: coverage and median footprints, streaming with bounded memory.

    Each frame is seen (:meth:`see`, its visible ground: the coverage, and what its median votes
    count against), then voted (:meth:`vote`, its median footprint) when medians are built. Lane
    markings vote on a grid of their own (:class:`~hdmap_seg.vectorize.lanes.LaneVotes`: finer cells,
    kept as points rather than polygons).
    """

    def __init__(self, cfg: MedianConfig | LaneMarkingConfig) -> None:
        self.cfg = cfg
        self.tiles: dict[tuple[int, int], _Tile] = {}
        self.median_pieces: list[_Piece] = []
        self.coverage_pieces: list[BaseGeometry] = []
        self._tile_m = cfg.cell_m * cfg.tile_cells
        self._window: _Window | None = None

    @property
    def n_tiles(self) -> int:
        return len(self.tiles)

    def see(self, frame: int, visible: BaseGeometry) -> None:
        """Count one frame's ``visible`` ground, world polygons (x, y)."""
        self._retire(frame)
        self._window = None
        if visible.is_empty:
            return
        cell = self.cfg.cell_m
        x0, y0, x1, y1 = visible.bounds
        c0, r0 = int(np.floor(x0 / cell)), int(np.floor(y0 / cell))
        c1, r1 = int(np.floor(x1 / cell)) + 1, int(np.floor(y1 / cell)) + 1
        seen = np.zeros((r1 - r0, c1 - c0), np.uint8)
        _fill(seen, visible, c0, r0, cell)
        self._window = _Window(frame, c0, r0, c1, r1, seen)
        for tile, tile_sl, win_sl in self._tiles_of(self._window):
            tile.last_frame = frame
            tile.seen[tile_sl] += seen[win_sl]

    def vote(self, median: BaseGeometry) -> None:
        """Vote the ``median`` footprint (world polygons) of the frame seen last, within what it saw."""
        w = self._window
        if w is None or median.is_empty:
            return
        votes = np.zeros_like(w.seen)
        _fill(votes, median, w.c0, w.r0, self.cfg.cell_m)
        self._add_votes(votes)

    def vote_rings(self, rings: list[np.ndarray]) -> None:
        """Vote the region inside closed world rings (even-odd: a ring inside another is a hole),
        within what the frame seen last saw."""
        w = self._window
        rings = [r for r in rings if len(r) >= 3]  # a ring no ray of which met the ground is empty
        if w is None or not rings:
            return
        votes = np.zeros_like(w.seen)
        cv2.fillPoly(votes, _grid_rings(rings, w.c0, w.r0, self.cfg.cell_m), 1, cv2.LINE_8, _SHIFT)
        self._add_votes(votes)

    def _add_votes(self, votes: np.ndarray) -> None:
        """Add one frame's votes (its window, 0/1) where the frame saw."""
        w = self._window
        votes &= w.seen
        for tile, tile_sl, win_sl in self._tiles_of(w):
            tile.votes[tile_sl] += votes[win_sl]

    def _tiles_of(self, w: _Window) -> Iterator[tuple[_Tile, tuple, tuple]]:
        """The tiles under the window (new ones made), each with its slice and the window's."""
        n = self.cfg.tile_cells
        for tr in range(w.r0 // n, (w.r1 - 1) // n + 1):
            for tc in range(w.c0 // n, (w.c1 - 1) // n + 1):
                tile = self.tiles.get((tc, tr))
                if tile is None:
                    tile = self.tiles[(tc, tr)] = _Tile(
                        np.zeros((n, n), np.uint16), np.zeros((n, n), np.uint16), w.frame
                    )
                # overlap of the window with the tile, in global cell indices
                ra, rb = max(w.r0, tr * n), min(w.r1, (tr + 1) * n)
                ca, cb = max(w.c0, tc * n), min(w.c1, (tc + 1) * n)
                tile_sl = (slice(ra - tr * n, rb - tr * n), slice(ca - tc * n, cb - tc * n))
                win_sl = (slice(ra - w.r0, rb - w.r0), slice(ca - w.c0, cb - w.c0))
                yield tile, tile_sl, win_sl

    def _retire(self, frame: int) -> None:
        for key in [k for k, t in self.tiles.items() if frame - t.last_frame > self.cfg.retire_after_frames]:
            self._polygonize(key, self.tiles.pop(key))

    def _polygonize(self, key: tuple[int, int], tile: _Tile) -> None:
        cfg = self.cfg
        ox, oy = key[0] * self._tile_m, key[1] * self._tile_m
        covered = (tile.seen > 0).astype(np.uint8)
        self.coverage_pieces.extend(_contours_to_polygons(covered, ox, oy, cfg.cell_m))
        is_median = self._voted(tile)
        if not is_median.any():
            return
        score = np.where(is_median, tile.votes / np.maximum(tile.seen, 1), 0.0)
        n_cells, labels = cv2.connectedComponents(is_median.astype(np.uint8), connectivity=8)
        sums = np.bincount(labels.ravel(), weights=score.ravel(), minlength=n_cells)
        counts = np.bincount(labels.ravel(), minlength=n_cells)
        for lab in range(1, n_cells):
            for poly in _contours_to_polygons((labels == lab).astype(np.uint8), ox, oy, cfg.cell_m):
                self.median_pieces.append(_Piece(poly, float(sums[lab]), int(counts[lab])))

    def _voted(self, tile: _Tile) -> np.ndarray:
        """``(n, n)`` bool: the tile's cells that enough of the frames that saw them voted for."""
        return (tile.votes >= self.cfg.min_votes) & (tile.votes >= self.cfg.vote_fraction * tile.seen)

    def close(self) -> None:
        """Polygonise every tile left: after the last frame."""
        for key in list(self.tiles):
            self._polygonize(key, self.tiles.pop(key))

    def coverage(self) -> list[Feature]:
        """The ground the drive saw within range, merged polygons (after :meth:`close`)."""
        # fillPoly marks every cell an edge touches, so contours through the marked cells' centres
        # run half a cell outside the footprint's edge: the closing shrinks that half cell back.
        half = 0.5 * self.cfg.cell_m
        coverage = _merge([p.buffer(0.5, quad_segs=2) for p in self.coverage_pieces], 0.5 + half, 0.25)
        return [Feature(p, {"area_m2": round(p.area, 1)}) for p in _polygons(coverage)]

    def medians(self) -> list[Feature]:
        """The median features (after :meth:`close`): each a footprint Polygon and its centre LineString."""
        cfg = self.cfg
        half = 0.5 * cfg.cell_m  # the contours' half cell outside the footprint (see coverage())
        grown = [p.polygon.buffer(cfg.close_m) for p in self.median_pieces]
        merged = _merge(grown, cfg.close_m + half, cfg.simplify_m)
        polys = [p for p in _polygons(merged) if p.area >= cfg.min_area_m2]
        features = []
        if polys:
            tree = shapely.STRtree([p.polygon for p in self.median_pieces])
            for i, poly in enumerate(sorted(polys, key=lambda p: (p.centroid.x, p.centroid.y))):
                hits = tree.query(poly, predicate="intersects")
                score = sum(self.median_pieces[h].score_sum for h in hits)
                cells = sum(self.median_pieces[h].n_cells for h in hits)
                props = {
                    "id": i,
                    "confidence": round(score / max(cells, 1), 3),
                    "area_m2": round(poly.area, 1),
                }
                features.append(Feature(poly, {**props, "kind": FOOTPRINT}))
                line = centerline(poly, cfg.simplify_m)
                if line is not None:
                    features.append(
                        Feature(line, {**props, "kind": CENTERLINE, "length_m": round(line.length, 1)})
                    )
        return features


class MedianBuilder:
    """The medians layer: each frame's median pixels, projected onto the ground (raised by
    ``surface_height_m``: a kerbed strip's top), voted on the grid that counts what the frames saw."""

    layer = MEDIANS

    def __init__(self, cfg: MedianConfig, votes: GroundVotes) -> None:
        """``votes``: the grid every frame's visible ground is seen on before the builders add it."""
        self.cfg = cfg
        self.votes = votes

    def add(self, frame: FrameStamp, masks: LayerMasks, geometry: FrameGeometry) -> None:
        surface = geometry.surface
        if self.cfg.surface_height_m:
            surface = Raised(surface, self.cfg.surface_height_m)
        self.votes.vote(
            geometry.image_polygons_to_ground(mask_polygons(masks[MEDIANS], self.cfg.min_pixels), surface)
        )

    def finish(self) -> list[Feature]:
        self.votes.close()
        return self.votes.medians()

    def state_size(self) -> dict[str, int]:
        return {"median_pieces": len(self.votes.median_pieces)}


def mask_polygons(binary: np.ndarray, min_pixels: int) -> list[Polygon]:
    """Pixel-space polygons (with holes) of a binary mask, along the region's edge.

    OpenCV's contours run through the boundary pixels' centres, in a staircase on slanted edges:
    the staircase is straightened (Douglas-Peucker, ``_CONTOUR_TOLERANCE_PX``; a fifteenth of the
    vertices, each a ray to cast) and the result grown by the half pixel between those centres
    and the region's edge. Parts and holes smaller than ``min_pixels`` are speckle: dropped before
    they cost a polygon operation each.
    """
    contours, hierarchy = cv2.findContours(binary.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]

    def ring(c: np.ndarray) -> np.ndarray:
        return cv2.approxPolyDP(c, _CONTOUR_TOLERANCE_PX, True).reshape(-1, 2).astype(float)

    polygons = []
    for i, c in enumerate(contours):
        if hierarchy[i][3] != -1 or len(c) < 3 or cv2.contourArea(c) < min_pixels:
            continue
        holes, child = [], hierarchy[i][2]
        while child != -1:
            h = contours[child]
            if len(h) >= 3 and cv2.contourArea(h) >= min_pixels:
                holes.append(ring(h))
            child = hierarchy[child][0]
        outer = ring(c)
        if len(outer) >= 3:
            polygons.append(Polygon(outer, [h for h in holes if len(h) >= 3]))
    if not polygons:
        return []
    polygons = np.array(polygons, dtype=object)
    # A ragged mask's contour touches itself where the region is a pixel wide. The "structure"
    # repair keeps such collapsed parts as lines (the buffer then gives them their pixel of width)
    # and is ten times faster than "linework".
    invalid = ~shapely.is_valid(polygons)
    polygons[invalid] = shapely.make_valid(polygons[invalid], method="structure", keep_collapsed=True)
    return list(shapely.get_parts(shapely.buffer(polygons, 0.5, join_style="mitre")))


def _fill(canvas: np.ndarray, geom: BaseGeometry, c0: int, r0: int, cell: float) -> None:
    """Rasterise polygons (with holes) into ``canvas`` (cell ``(r, c)`` centred at ``((c0+c+.5) cell, (r0+r+.5) cell)``)."""
    for poly in _polygons(geom):
        cv2.fillPoly(canvas, _grid_rings([poly.exterior.coords], c0, r0, cell), 1, cv2.LINE_8, _SHIFT)
        if poly.interiors:
            holes = _grid_rings([r.coords for r in poly.interiors], c0, r0, cell)
            cv2.fillPoly(canvas, holes, 0, cv2.LINE_8, _SHIFT)


def _grid_rings(rings, c0: int, r0: int, cell: float) -> list[np.ndarray]:
    """World rings -> cv2.fillPoly's fixed-point rings on a grid whose cell ``(r, c)`` is centred at
    ``((c0+c+.5) cell, (r0+r+.5) cell)``."""
    scale = (1 << _SHIFT) / cell
    off = np.array([c0 + 0.5, r0 + 0.5]) * (1 << _SHIFT)
    return [np.round(np.asarray(r)[:, :2] * scale - off).astype(np.int32) for r in rings]


def _contours_to_polygons(binary: np.ndarray, ox: float, oy: float, cell: float) -> list[Polygon]:
    """Outer contours with their holes -> world polygons through cell centres."""
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]

    def world(c: np.ndarray) -> np.ndarray:
        return (c.reshape(-1, 2) + 0.5) * cell + (ox, oy)

    out = []
    for i, c in enumerate(contours):
        if hierarchy[i][3] != -1:
            continue
        holes, child = [], hierarchy[i][2]
        while child != -1:
            if len(contours[child]) >= 3:
                holes.append(world(contours[child]))
            child = hierarchy[child][0]
        if len(c) >= 3:
            poly = shapely.make_valid(Polygon(world(c), holes))
        else:  # a one- or two-cell sliver: keep it as a cell-sized square so that the union stays whole
            poly = shapely.box(*(world(c).min(0) - 0.5 * cell), *(world(c).max(0) + 0.5 * cell))
        out.append(poly)
    return out


def _merge(parts: list[BaseGeometry], shrink_m: float, simplify_m: float) -> BaseGeometry:
    if not parts:
        return Polygon()
    merged = shapely.union_all(parts).buffer(-shrink_m)
    return shapely.make_valid(merged.simplify(simplify_m))


def _polygons(geom: BaseGeometry) -> list[Polygon]:
    """The non-empty polygons of any geometry (Polygon, MultiPolygon, GeometryCollection)."""
    if geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    return [g for part in getattr(geom, "geoms", []) for g in _polygons(part)]


def centerline(poly: Polygon, simplify_m: float, spacing_m: float = 0.5) -> LineString | None:
    """The longest path through the polygon's medial axis (Voronoi edges of its densified boundary);
    None where there is none (a footprint too small, or whose path shrinks to a point)."""
    boundary = shapely.segmentize(poly, spacing_m).boundary
    pts = shapely.get_coordinates(boundary)
    if len(pts) < 4:
        return None
    edges = shapely.voronoi_polygons(MultiPoint(pts), only_edges=True)
    segs = np.array(shapely.get_parts(edges))
    segs = segs[shapely.contains(poly, segs)]
    if len(segs) == 0:
        return None
    coords = np.array([shapely.get_coordinates(s)[[0, -1]] for s in segs])  # (E, 2, 2)
    keys, inverse = np.unique(np.round(coords.reshape(-1, 2), 6), axis=0, return_inverse=True)
    ends = inverse.reshape(-1, 2)
    length = np.linalg.norm(coords[:, 0] - coords[:, 1], axis=1)
    n = len(keys)
    graph = coo_matrix(
        (np.r_[length, length], (np.r_[ends[:, 0], ends[:, 1]], np.r_[ends[:, 1], ends[:, 0]])), (n, n)
    )
    graph = graph.tocsr()
    dist = dijkstra(graph, indices=0)
    a = int(np.argmax(np.where(np.isfinite(dist), dist, -1)))
    dist, pred = dijkstra(graph, indices=a, return_predecessors=True)
    b = int(np.argmax(np.where(np.isfinite(dist), dist, -1)))
    path = [b]
    while path[-1] != a:
        path.append(int(pred[path[-1]]))
    if len(path) < 2:
        return None
    line = _trim_and_extend(poly, keys[path[::-1]]).simplify(simplify_m)
    # A footprint too small for a medial path (its spurs trimmed to one point) has no centre line.
    return line if line.length > 0 else None


def _trim_and_extend(poly: Polygon, pts: np.ndarray) -> LineString:
    """Cut the medial path's end spurs into corners, then run its ends straight out to the boundary.

    Spurs are where the clearance to the boundary falls below 0.9 of the path's median clearance
    (along a spur into a corner it falls to zero; along the trunk it is the half-width).
    """
    clearance = shapely.distance(poly.boundary, shapely.points(pts))
    ok = np.flatnonzero(clearance >= 0.9 * np.median(clearance))
    pts = pts[ok[0] : ok[-1] + 1]
    if len(pts) < 2:
        return LineString(pts if len(pts) == 2 else np.repeat(pts, 2, axis=0))
    line = LineString(pts)
    reach = 2.0 * float(clearance.max()) + 1.0
    back = min(2.0, 0.3 * line.length)
    ends = []
    for end, inner in ((pts[0], line.interpolate(back)), (pts[-1], line.interpolate(line.length - back))):
        direction = end - np.array(inner.coords[0])
        norm = np.linalg.norm(direction)
        if norm < 1e-9:
            ends.append(end)
            continue
        ray = LineString([end, end + direction / norm * reach])
        hits = shapely.get_coordinates(ray.intersection(poly.boundary))
        ends.append(hits[np.argmin(np.linalg.norm(hits - end, axis=1))] if len(hits) else end)
    return LineString(np.vstack([ends[0], pts, ends[1]]))
