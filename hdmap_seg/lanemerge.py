"""Lane-marking lines of many drives fused into one per painted line (docs/map.md, "Merging drives").

A merged line is a polyline with a weight per vertex (``STEP_M`` apart when made). A drive's line is
the same painted line when, over at least ``min_overlap_m`` of the map line, the nearest point of the
drive's line lies within ``gate_m`` and not beyond its ends (parallel lines are 1.5 m apart or more);
it joins the map line it overlaps most. Fusing moves each overlapped vertex to the weighted mean of
where it was and the nearest point of the drive's line, and runs the map line out along the drive's
past either end it overlaps. Style, width, dash and gap are means over the drives, weighted by the
length each saw (style: the one most of the length says).
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import LineString
from shapely.ops import substring

STEP_M = 0.5


def resample(line: LineString, step_m: float = STEP_M) -> np.ndarray:
    """``(n, 2)`` points every ``step_m`` along ``line`` (both ends kept)."""
    n = max(int(np.ceil(line.length / step_m)), 1)
    pts = shapely.line_interpolate_point(line, np.linspace(0.0, line.length, n + 1))
    return shapely.get_coordinates(pts)


def nearest_on(line: LineString, xy: np.ndarray, gate_m: float) -> tuple[np.ndarray, np.ndarray]:
    """For ``(n, 2)`` points: the nearest points of ``line`` and flags: within ``gate_m`` and not at one
    of its ends (a point beyond the line's end is not beside it)."""
    pts = shapely.points(xy)
    s = shapely.line_locate_point(line, pts)
    near = shapely.get_coordinates(shapely.line_interpolate_point(line, s))
    inside = (s > 1e-6) & (s < line.length - 1e-6)
    return near, inside & (np.linalg.norm(near - xy, axis=1) <= gate_m)


def overlap_m(map_xy: np.ndarray, line: LineString, gate_m: float) -> float:
    """How much of the map line (its vertices' spacing) runs beside ``line``."""
    _, ok = nearest_on(line, map_xy, gate_m)
    seg = np.linalg.norm(np.diff(map_xy, axis=0), axis=1)
    return float(seg[ok[:-1] & ok[1:]].sum())


def fuse(
    map_xy: np.ndarray, map_w: np.ndarray, line: LineString, weight: float, gate_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """The map line after fusing ``line`` (module docstring): ``(xy (m, 2), w (m,))``."""
    near, ok = nearest_on(line, map_xy, gate_m)
    xy, w = map_xy.copy(), map_w.copy()
    xy[ok] = (w[ok, None] * xy[ok] + weight * near[ok]) / (w[ok] + weight)[:, None]
    w[ok] += weight
    # Run the line out past an end that lies beside the drive's line, along the drive's line.
    s_first, s_last = shapely.line_locate_point(line, shapely.points(map_xy[[0, -1]]))
    if s_first > s_last:
        line, s_first, s_last = line.reverse(), line.length - s_first, line.length - s_last
    parts = [xy]
    weights = [w]
    if ok[0] and s_first > STEP_M:
        head = resample(substring(line, 0.0, s_first - STEP_M))
        parts.insert(0, head)
        weights.insert(0, np.full(len(head), weight))
    if ok[-1] and line.length - s_last > STEP_M:
        tail = resample(substring(line, s_last + STEP_M, line.length))
        parts.append(tail)
        weights.append(np.full(len(tail), weight))
    return np.concatenate(parts), np.concatenate(weights)
