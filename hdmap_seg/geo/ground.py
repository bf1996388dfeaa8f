"""The road surface under a drive, and rays that meet it.

The vehicle rides on the road, so its poses sample the surface: each gives a contact point (the
reference point less ``ground_offset_m`` along the vehicle's up axis) and the road's cross slope
(the vehicle's lateral axis, i.e. its roll). :class:`TrajectoryGround` resamples the contact
points by arc length along the driven path and models the ground near the path in path
coordinates ``(s, n)`` (``s`` along the path, ``n`` to its left, metres)::

    z(s, n) = z_path(s) + cross_slope(s) * n

with ``z_path`` and the cross slope smoothed along the path (a real car pitches and rolls on its
springs). Past the ends of the drive the surface goes on with the local grade. Each frame uses
the stretch of path around its own position (:meth:`TrajectoryGround.near`), so a drive that
comes back over a bridge or under itself never mixes the two levels.

:class:`LevelPlane` is the old model (``ground: plane``): a level plane ``ground_offset_m`` under
the car at each frame. Both are :class:`Surface` s; :func:`intersect_rays` meets rays with either
by Newton steps, vectorised over rays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.signal import savgol_filter
from scipy.spatial import cKDTree
from shapely.geometry import Polygon

log = logging.getLogger(__name__)

_NEWTON_STEPS = 8
_HIT_TOL_M = 1e-3
# Shorter paths cannot tell a grade from noise: the ground falls back to the level plane.
MIN_PATH_M = 5.0


class Surface(Protocol):
    """A height field ``z(x, y)`` in the world frame."""

    def height_m(self, xy_m: np.ndarray) -> np.ndarray:
        """``(N, 2)`` world points -> ``(N,)`` ground heights."""
        ...

    def height_and_gradient(self, xy_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, 2)`` -> ``(N,)`` heights and ``(N, 2)`` gradients ``(dz/dx, dz/dy)``."""
        ...


@dataclass(frozen=True)
class LevelPlane:
    """The level plane ``z = z_m``."""

    z_m: float

    def height_m(self, xy_m: np.ndarray) -> np.ndarray:
        return np.full(len(np.asarray(xy_m).reshape(-1, 2)), self.z_m)

    def height_and_gradient(self, xy_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(np.asarray(xy_m).reshape(-1, 2))
        return np.full(n, self.z_m), np.zeros((n, 2))


@dataclass(frozen=True)
class Raised:
    """A surface ``dz_m`` above another (the top of a kerbed median above the road)."""

    base: Surface
    dz_m: float

    def height_m(self, xy_m: np.ndarray) -> np.ndarray:
        return self.base.height_m(xy_m) + self.dz_m

    def height_and_gradient(self, xy_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z, g = self.base.height_and_gradient(xy_m)
        return z + self.dz_m, g


def intersect_rays(
    surface: Surface,
    origin_m: np.ndarray,
    dirs: np.ndarray,
    max_horizontal_m: float,
    start_z_m: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rays ``origin_m + t * dirs`` (``(3,)``, ``(N, 3)`` world) against ``surface``.

    Returns ``(N, 3)`` points and ``(N,)`` hit flags: True where the ray meets the surface ahead
    (``t > 0``) within ``max_horizontal_m`` of the origin horizontally. Newton's method on
    ``g(t) = ray_z(t) - z(ray_xy(t))`` from the level plane ``start_z_m`` (default: the surface
    under the origin): exact in one step on a plane, a few on a road's grades and crests. A ray
    that rises against the surface (above the horizon, or grazing over a crest) does not hit.
    """
    o = np.asarray(origin_m, np.float64).reshape(3)
    d = np.asarray(dirs, np.float64).reshape(-1, 3)
    r_xy = np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-12)
    t_far = max_horizontal_m / r_xy
    z0 = float(surface.height_m(o[None, :2])[0]) if start_z_m is None else start_z_m
    down = d[:, 2] < -1e-12
    t = np.clip(np.where(down, (z0 - o[2]) / np.where(down, d[:, 2], -1.0), t_far), 0.0, t_far)
    hit = np.zeros(len(d), bool)
    alive = down.copy()
    for _ in range(_NEWTON_STEPS):
        idx = np.flatnonzero(alive)
        if idx.size == 0:
            break
        p = o + t[idx, None] * d[idx]
        z, grad = surface.height_and_gradient(p[:, :2])
        g = p[:, 2] - z
        # Converged on height, not on t: near the horizon a millimetre of height is metres of t.
        on_it = np.abs(g) < _HIT_TOL_M
        hit[idx[on_it]] = True
        di = d[idx]
        dg = di[:, 2] - grad[:, 0] * di[:, 0] - grad[:, 1] * di[:, 1]
        converging = dg < -1e-9  # the ray descends relative to the surface
        step = np.where(converging & ~on_it, -g / np.where(converging, dg, -1.0), 0.0)
        t_new = t[idx] + step
        beyond = t_new >= t_far[idx]  # meets the ground past the far limit, if at all: no hit
        t[idx] = np.minimum(np.maximum(t_new, 0.0), t_far[idx])
        alive[idx[~converging | on_it | beyond]] = False
    hit &= (t > 0) & (t < t_far)
    return o + t[:, None] * d, hit


@dataclass(frozen=True)
class PathSurface:
    """The surface near a stretch of path: samples ``(M,)`` along it, every ``step_m`` metres.

    ``xy_m (M, 2)`` the path, ``z_m (M,)`` its height, ``tangent (M, 2)`` unit direction,
    ``grade (M,)`` dz/ds, ``cross_slope (M,)`` dz/dn (rise per metre to the left). The cross slope
    holds up to ``cross_reach_m`` from the path; beyond, the ground is level across (the car's roll
    says nothing of the far side of a crown or of the verge).
    """

    xy_m: np.ndarray
    z_m: np.ndarray
    tangent: np.ndarray
    grade: np.ndarray
    cross_slope: np.ndarray
    cross_reach_m: float = np.inf

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tree", cKDTree(self.xy_m))

    def height_and_gradient(self, xy_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy = np.asarray(xy_m, np.float64).reshape(-1, 2)
        _, k = self._tree.query(xy)
        # Written out per axis: this runs for every Newton step of every frame's rays.
        tx, ty = self.tangent[k, 0], self.tangent[k, 1]  # along the path; (-ty, tx) is its left
        rx, ry = xy[:, 0] - self.xy_m[k, 0], xy[:, 1] - self.xy_m[k, 1]
        ds, dn = rx * tx + ry * ty, ry * tx - rx * ty
        grade, cross = self.grade[k], self.cross_slope[k]
        reach = self.cross_reach_m
        z = self.z_m[k] + grade * ds + cross * np.minimum(np.maximum(dn, -reach), reach)
        cross = np.where(np.abs(dn) < reach, cross, 0.0)
        grad = np.empty((len(xy), 2))
        grad[:, 0] = grade * tx - cross * ty
        grad[:, 1] = grade * ty + cross * tx
        return z, grad

    def height_m(self, xy_m: np.ndarray) -> np.ndarray:
        return self.height_and_gradient(xy_m)[0]


class TrajectoryGround:
    """The road surface of a whole drive, from its poses (module docstring).

    ``s_of_frame_m (F,)`` is each frame's arc length along the path; :meth:`near` gives the
    :class:`PathSurface` a frame sees.
    """

    def __init__(
        self,
        s_m: np.ndarray,
        surface: PathSurface,
        s_of_frame_m: np.ndarray,
        reach_m: float,
        extrapolate_m: float = np.inf,
    ) -> None:
        self._s_m = s_m
        self._all = surface
        self.s_of_frame_m = s_of_frame_m
        self.reach_m = reach_m
        self.extrapolate_m = extrapolate_m
        self._cache: tuple[tuple[int, int], PathSurface] | None = None
        self._known: Polygon | None = None

    def known_area(self, frame: int) -> Polygon | None:
        """Where frame ``frame`` may map the ground: up to ``extrapolate_m`` past the path's ends; None: anywhere.

        Past the last contact point the surface is the last grade carried on, a guess that a crest or a
        sag just beyond the drive's end belies; what lies farther is left unmapped rather than misplaced.
        """
        s = self.s_of_frame_m[frame]
        far = self.reach_m + self.extrapolate_m
        if not np.isfinite(self.extrapolate_m) or (s - self._s_m[0] > far and self._s_m[-1] - s > far):
            return None
        if self._known is None:
            a = self._all
            big = 1e4

            def side(end: np.ndarray, outward: np.ndarray) -> Polygon:
                # the half-plane "at most extrapolate_m past ``end`` along ``outward``", as a big box
                left = np.array([-outward[1], outward[0]])
                edge = end + self.extrapolate_m * outward
                back = edge - big * outward
                return Polygon([edge + big * left, edge - big * left, back - big * left, back + big * left])

            self._known = side(a.xy_m[-1], a.tangent[-1]).intersection(side(a.xy_m[0], -a.tangent[0]))
        return self._known

    @property
    def length_m(self) -> float:
        return float(self._s_m[-1] - self._s_m[0])

    def near(self, frame: int) -> PathSurface:
        """The path within ``reach_m`` of frame ``frame``'s position along it."""
        s = self.s_of_frame_m[frame]
        lo, hi = np.searchsorted(self._s_m, [s - self.reach_m, s + self.reach_m])
        key = (int(lo), int(max(hi, lo + 1)))
        if self._cache is None or self._cache[0] != key:
            a = self._all
            sl = slice(*key)
            self._cache = (
                key,
                PathSurface(
                    a.xy_m[sl], a.z_m[sl], a.tangent[sl], a.grade[sl], a.cross_slope[sl], a.cross_reach_m
                ),
            )
        return self._cache[1]

    @classmethod
    def from_poses(
        cls,
        T_world_from_vehicle: np.ndarray,
        ground_offset_m: float,
        good: np.ndarray | None = None,
        step_m: float = 1.0,
        height_window_m: float = 9.0,
        cross_window_m: float = 31.0,
        cross_reach_m: float = np.inf,
        extrapolate_m: float = np.inf,
        reach_m: float = 80.0,
        source: str = "drive",
    ) -> TrajectoryGround | None:
        """The surface of a drive from its ``(F, 4, 4)`` poses; None (with a warning) when too short.

        ``good (F,)`` leaves frames out (GNSS jumps). Heights are smoothed along the path with a
        quadratic Savitzky-Golay window of ``height_window_m`` (exact on grades and on the
        parabolas of crests and sags), cross slopes with a linear one of ``cross_window_m`` (the
        body's roll on its springs is not the road's) that holds up to ``cross_reach_m`` from the
        path. Ground more than ``extrapolate_m`` past the path's ends is not mapped (:meth:`known_area`).
        ``reach_m`` is how far along the path a frame's surface goes.
        """
        T = np.asarray(T_world_from_vehicle, np.float64)
        keep = np.ones(len(T), bool) if good is None else np.asarray(good, bool)
        up, left = T[:, :3, 2], T[:, :3, 1]
        contact = T[:, :3, 3] - ground_offset_m * up
        # Rise per metre to the vehicle's left, along the level: the road's cross slope under the wheels.
        cross = left[:, 2] / np.maximum(np.hypot(left[:, 0], left[:, 1]), 1e-9)
        xy, z, cross = contact[keep, :2], contact[keep, 2], cross[keep]
        if len(xy) >= 2:
            s_frames = np.r_[0.0, np.cumsum(np.hypot(*np.diff(xy, axis=0).T))]
            s_frames, first = np.unique(s_frames, return_index=True)  # a car standing still adds nothing
            xy, z, cross = xy[first], z[first], cross[first]
        length = float(s_frames[-1]) if len(xy) >= 2 else 0.0
        if length < MIN_PATH_M:
            log.warning(
                "%s: the drive covers %.1f m, too short to build a ground surface (needs %.0f m): "
                "using a level plane under the car at each frame",
                source,
                length,
                MIN_PATH_M,
            )
            return None
        n = max(2, int(np.floor(length / step_m)) + 1)
        s = np.linspace(0.0, length, n)
        step = s[1] - s[0]
        xs, ys = np.interp(s, s_frames, xy[:, 0]), np.interp(s, s_frames, xy[:, 1])
        zs, cs = np.interp(s, s_frames, z), np.interp(s, s_frames, cross)
        zs, grade = _smooth(zs, height_window_m / step, 2, step)
        cs, _ = _smooth(cs, cross_window_m / step, 1, step)
        tangent = np.stack([np.gradient(xs, step), np.gradient(ys, step)], axis=1)
        tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-12)
        surface = PathSurface(np.stack([xs, ys], axis=1), zs, tangent, grade, cs, cross_reach_m)
        # Every frame's place along the path, the left-out ones included (they still need a surface).
        all_xy = T[:, :2, 3] - ground_offset_m * up[:, :2]
        _, k = cKDTree(surface.xy_m).query(all_xy)
        return cls(s, surface, s[k], reach_m, extrapolate_m)


def _smooth(values: np.ndarray, window: float, order: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Savitzky-Golay smoothing and first derivative of samples ``step`` apart; windows shrink to fit."""
    n = len(values)
    w = int(round(window)) | 1
    w = min(w, n if n % 2 else n - 1)
    if w <= order:
        grad = np.gradient(values, step) if n > 1 else np.zeros(n)
        return values, grad
    smooth = savgol_filter(values, w, order, mode="interp")
    grad = savgol_filter(values, w, order, deriv=1, delta=step, mode="interp")
    return smooth, grad
