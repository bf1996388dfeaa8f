"""Lane markings: painted pixels voted on a fine ground grid, their strokes chained into lines.

Each frame's marking pixels become polygons in the image (the medians' :func:`mask_polygons`),
whose rings are projected onto the road surface vertex by vertex and filled even-odd (a marking's
straight edges stay straight on the ground within range, and its parts do not overlap: polygon
operations on the ground, half of the layer's time, are not needed). They are voted on a grid
of their own (:class:`LaneVotes`, ``cell_m`` 0.05 m: a marking is 0.10-0.20 m wide) against the
frame's visible ground within ``max_range_m``;
a cell is paint when enough of the frames that saw it say so, so that a car passing over a line
does not cut it. Tiles retire behind the car as the medians' do; a retired tile keeps its paint
as *nodes*: the painted cells pooled into ``_NODE_M`` squares, each the centroid of its cells (on
the marking's centre line, since a marking is narrower than a square), their count and vote
fractions.

After the last frame, nodes closer than ``_LINK_M`` are one *stroke* (a dash, or a stretch of solid
line). Its centre line follows the longest path through its nodes (two Dijkstra sweeps), the nodes
pooled again every ``_NODE_M`` along that path, and is run out at both ends by half the end step's
length of paint; its width is its painted area over that length. Strokes up to ``max_dash_m`` long
are dashes: they are chained end to start across gaps up to ``max_gap_m`` when the next one lies
ahead on the line of the last (within ``max_offset_m`` beside it beyond what a curve explains,
turning at most ``max_turn_deg``), nearest gaps first. A chain is one dashed line; a longer stroke
is one solid line; a dash that joins no other is left out (a stop line, an arrow's stem, a dash
seen once).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.spatial import cKDTree
from shapely.geometry import LineString

from hdmap_seg.maplayers import LANE_MARKINGS, Feature
from hdmap_seg.vectorize.config import LaneMarkingConfig
from hdmap_seg.vectorize.frame import FrameGeometry
from hdmap_seg.vectorize.layer_builder import FrameStamp, LayerMasks
from hdmap_seg.vectorize.medians import GroundVotes, _Tile, mask_polygons

SOLID, DASHED = "solid", "dashed"
# Paint is pooled in squares this size: wider than a marking (so a square's centroid lies on its
# centre line), shorter than the shortest dash (so a dash keeps its ends).
_NODE_M = 0.5
# Nodes this close are one stroke: neighbours along a marking are at most a diagonal apart, and
# parallel markings are 1.5 m apart or more.
_LINK_M = 2.0 * _NODE_M
# An end's direction is taken over this much of the stroke (a dash's whole length when shorter).
_END_TANGENT_M = 1.0


class LaneVotes(GroundVotes):
    """The markings' vote grid: a retired tile leaves its painted cells as nodes (see the module)."""

    def __init__(self, cfg: LaneMarkingConfig) -> None:
        super().__init__(cfg)
        # (k, 4) per retired tile: x, y, painted cells, sum of their vote fractions
        self.nodes: list[np.ndarray] = []

    def _polygonize(self, key: tuple[int, int], tile: _Tile) -> None:
        """A tile leaving the grid: its paint as nodes (no coverage: the medians' grid keeps that)."""
        rows, cols = np.nonzero(self._voted(tile))
        if not len(rows):
            return
        cell = self.cfg.cell_m
        x = key[0] * self._tile_m + (cols + 0.5) * cell
        y = key[1] * self._tile_m + (rows + 0.5) * cell
        fraction = tile.votes[rows, cols] / np.maximum(tile.seen[rows, cols], 1)
        square = np.stack([np.floor(x / _NODE_M), np.floor(y / _NODE_M)], axis=1)
        _, node = np.unique(square, axis=0, return_inverse=True)
        node = node.ravel()
        n = np.bincount(node).astype(float)
        self.nodes.append(
            np.stack(
                [np.bincount(node, x) / n, np.bincount(node, y) / n, n, np.bincount(node, fraction)], axis=1
            )
        )


@dataclass
class _Stroke:
    """One painted stretch: its centre line (world xy, in drawing order), width, area and vote fraction."""

    coords: np.ndarray  # (n, 2)
    width_m: float
    area_m2: float
    confidence: float

    @property
    def length_m(self) -> float:
        return float(np.linalg.norm(np.diff(self.coords, axis=0), axis=1).sum())


class LaneMarkingBuilder:
    """The lane_markings layer: LineStrings with their style, width and dash pattern."""

    layer = LANE_MARKINGS

    def __init__(self, cfg: LaneMarkingConfig) -> None:
        self.cfg = cfg
        self.votes = LaneVotes(cfg)

    def add(self, frame: FrameStamp, masks: LayerMasks, geometry: FrameGeometry) -> None:
        # Paint beyond max_range_m is left out (the grid keeps only what a frame saw): a far line
        # lands wherever the ground model's height error moves it along the ray, and paints the
        # road between the far side's lines.
        near = shapely.Point(geometry.center[:2]).buffer(self.cfg.max_range_m)
        self.votes.see(frame.index, geometry.visible_ground.intersection(near))
        # Rows above the ground within range hold only paint that is left out: not outlined at all.
        top = geometry.ground_row_px(self.cfg.max_range_m)
        polygons = mask_polygons(masks[LANE_MARKINGS][top:], self.cfg.min_pixels)
        rings_px = [np.asarray(r.coords) + (0.0, top) for p in polygons for r in (p.exterior, *p.interiors)]
        self.votes.vote_rings(geometry.image_rings_to_ground(rings_px))

    def finish(self) -> list[Feature]:
        self.votes.close()
        cfg = self.cfg
        nodes = np.concatenate(self.votes.nodes) if self.votes.nodes else np.zeros((0, 4))
        strokes = [s for s in strokes_of(nodes, cfg.cell_m) if s.length_m >= cfg.min_length_m]
        features = []
        for chain in chain_strokes(strokes, cfg):
            if len(chain) == 1 and chain[0].length_m <= cfg.max_dash_m:
                continue
            line = LineString(np.concatenate([s.coords for s in chain])).simplify(cfg.simplify_m)
            features.append(Feature(line, {"id": len(features), **line_properties(chain)}))
        return features

    def state_size(self) -> dict[str, int]:
        return {"lane_tiles": self.votes.n_tiles, "lane_nodes": sum(len(n) for n in self.votes.nodes)}


def strokes_of(nodes: np.ndarray, cell_m: float) -> list[_Stroke]:
    """The strokes of ``(N, 4)`` nodes (x, y, cells, sum of vote fractions): see the module."""
    if len(nodes) < 2:
        return []
    xy = nodes[:, :2]
    a, b = cKDTree(xy).query_pairs(_LINK_M, output_type="ndarray").T
    length = np.linalg.norm(xy[a] - xy[b], axis=1)
    graph = coo_matrix((length, (a, b)), shape=(len(xy), len(xy))).tocsr()
    _, label = connected_components(graph, directed=False)
    order = np.argsort(label, kind="stable")
    out = []
    for idx in np.split(order, np.flatnonzero(np.diff(label[order])) + 1):
        if len(idx) < 2:
            continue
        sub = graph[idx][:, idx]
        dist = dijkstra(sub, directed=False, indices=0)
        first = int(np.argmax(dist))
        dist, pred = dijkstra(sub, directed=False, indices=first, return_predecessors=True)
        path = [int(np.argmax(dist))]
        while path[-1] != first:
            path.append(int(pred[path[-1]]))
        # A square's edge may run along a marking and split it into two rows of nodes, which the path
        # zigzags through: the nodes are pooled again in steps of _NODE_M along the path.
        along = shapely.line_locate_point(LineString(xy[idx[path]]), shapely.points(xy[idx]))
        step = np.floor(along / _NODE_M).astype(np.int64)
        _, step = np.unique(step, return_inverse=True)
        cells = nodes[idx, 2]
        n = np.bincount(step, cells)
        pts = (
            np.stack([np.bincount(step, cells * xy[idx, 0]), np.bincount(step, cells * xy[idx, 1])], 1)
            / n[:, None]
        )
        if len(pts) < 2:
            continue
        area_m2 = float(cells.sum()) * cell_m**2
        # The end steps' centroids lie half their paint's length inside the stroke's ends.
        ends_m2 = 0.5 * (n[0] + n[-1]) * cell_m**2
        inner_m = float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())
        painted_width_m = area_m2 * max(1.0 - ends_m2 / area_m2, 0.5) / max(inner_m, cell_m)
        coords = pts
        for at_start in (True, False):
            end, out_dir = _end(coords, at_start)
            # The grid paints every cell a footprint's edge touches: half a cell beyond each edge.
            reach = 0.5 * (n[0] if at_start else n[-1]) * cell_m**2 / painted_width_m
            moved = end + (reach - 0.5 * cell_m) * out_dir
            coords = np.vstack([moved, coords]) if at_start else np.vstack([coords, moved])
        width_m = max(painted_width_m - cell_m, cell_m)
        out.append(_Stroke(coords, width_m, area_m2, float(nodes[idx, 3].sum() / cells.sum())))
    return out


def _end(coords: np.ndarray, at_start: bool) -> tuple[np.ndarray, np.ndarray]:
    """A stroke's end point and its outward unit direction (over ``_END_TANGENT_M`` of the stroke)."""
    pts = coords if at_start else coords[::-1]
    line = LineString(pts)
    inner = np.asarray(line.interpolate(min(_END_TANGENT_M, line.length)).coords[0])
    out = pts[0] - inner
    return pts[0], out / max(float(np.linalg.norm(out)), 1e-12)


def chain_strokes(strokes: list[_Stroke], cfg: LaneMarkingConfig) -> list[list[_Stroke]]:
    """The strokes in chains, each oriented end to start (a stroke longer than ``max_dash_m`` alone)."""
    dashes = [i for i, s in enumerate(strokes) if s.length_m <= cfg.max_dash_m]
    # Ends of dashes: index 2k is dash k's first end, 2k + 1 its last.
    ends = [_end(strokes[i].coords, at_start) for i in dashes for at_start in (True, False)]
    link: dict[int, int] = {}
    if len(ends) > 2:
        pts = np.array([p for p, _ in ends])
        dirs = np.array([u for _, u in ends])
        pairs = cKDTree(pts).query_pairs(cfg.max_gap_m, output_type="ndarray")
        pairs = pairs[pairs[:, 0] // 2 != pairs[:, 1] // 2]
        a, b = pairs[:, 0], pairs[:, 1]
        gap = pts[b] - pts[a]
        along = np.einsum("ij,ij->i", gap, dirs[a])
        back = -np.einsum("ij,ij->i", gap, dirs[b])  # the gap as seen from b's side
        facing = -np.einsum("ij,ij->i", dirs[a], dirs[b])
        # On a curve the chord leaves each end's tangent by half the turn between them: the offset
        # beside the line is what is left after that, so that a long gap on a curve still links
        # and the next line over (a lane width beside it) does not.
        turn = np.arcsin(np.clip(_cross(dirs[a], -dirs[b]), -1.0, 1.0))
        span = np.linalg.norm(gap, axis=1) * np.sin(0.5 * turn)
        offset = np.maximum(np.abs(_cross(dirs[a], gap) - span), np.abs(_cross(-dirs[b], gap) + span))
        ok = (
            (along > 0)
            & (back > 0)
            & (offset <= cfg.max_offset_m)
            & (facing >= np.cos(np.radians(cfg.max_turn_deg)))
        )
        parent = list(range(len(dashes)))

        def root(k: int) -> int:
            while parent[k] != k:
                parent[k] = parent[parent[k]]
                k = parent[k]
            return k

        for k in np.flatnonzero(ok)[np.argsort(along[ok], kind="stable")]:
            ea, eb = int(a[k]), int(b[k])
            ra, rb = root(ea // 2), root(eb // 2)
            if ea in link or eb in link or ra == rb:  # an end takes one link; chains never close
                continue
            link[ea], link[eb] = eb, ea
            parent[ra] = rb
    chains = [[s] for s in strokes if s.length_m > cfg.max_dash_m]
    walked = set()
    for k in range(len(dashes)):
        # A chain is walked from one of its two free ends (chains never close).
        free = [e for e in (2 * k, 2 * k + 1) if e not in link]
        if not free or k in walked:
            continue
        chain, e = [], free[0]
        while True:
            walked.add(e // 2)
            s = strokes[dashes[e // 2]]
            chain.append(replace(s, coords=s.coords if e % 2 == 0 else s.coords[::-1]))
            if (e ^ 1) not in link:
                break
            e = link[e ^ 1]
        chains.append(chain)
    return chains


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """z of the cross products of rows of 2-D vectors: how far ``v`` runs beside the unit ``u``."""
    return u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]


def line_properties(chain: list[_Stroke]) -> dict:
    """``style``, ``width_m``, ``length_m``, ``confidence`` of a chain; for a dashed one also ``dash_m``,
    ``gap_m`` (medians: the first and last dashes may be cut by the edge of what was seen) and ``n_dashes``."""
    lengths = np.array([s.length_m for s in chain])
    areas = np.array([s.area_m2 for s in chain])
    gaps = [float(np.linalg.norm(b.coords[0] - a.coords[-1])) for a, b in zip(chain, chain[1:], strict=False)]
    props: dict = {
        "style": DASHED if len(chain) > 1 else SOLID,
        "width_m": round(float(np.average([s.width_m for s in chain], weights=lengths)), 3),
        "length_m": round(float(lengths.sum() + sum(gaps)), 1),
        "confidence": round(float(np.average([s.confidence for s in chain], weights=areas)), 3),
    }
    if len(chain) > 1:
        inner = lengths[1:-1] if len(chain) > 2 else lengths
        props.update(
            dash_m=round(float(np.median(inner)), 2),
            gap_m=round(float(np.median(gaps)), 2),
            n_dashes=len(chain),
        )
    return props
