"""The synthetic road world: a road of straight and circular pieces, and what stands beside it.

Everything lives in the ``world`` frame (docs/conventions.md: x east, y north, z up, metres).
The ground's height is a :class:`Terrain` over road coordinates (grades, crests and sags, a
crowned cross-fall, banked curves), or the plane ``z = 0`` (``flat``). The road is described in its own curvilinear frame:
``s_m`` is the arc length along the centre line (the middle of the median), ``d_m`` the signed
lateral offset, positive to the left of the direction of increasing ``s``. Traffic keeps right,
so the lanes at ``d < 0`` drive towards increasing ``s`` (the ego car drives there), those at
``d > 0`` the other way.

Cross-section, from the centre line outwards on each side::

    |d| < median/2           median (kerb band + grass or paving), except in its gaps: road
    median/2 .. road edge    lanes_per_direction lanes; solid lines along the median and the
                             outer edge, dashed lines between lanes
    road edge .. + sidewalk  sidewalk (background), where poles and signs stand
    beyond                   verge, trees, buildings (background)

A :class:`World` is pure data (arrays and small dataclasses) made by :func:`make_world` from a
seed; the same seed gives the same world. Its ``poles`` and ``signs`` are the ground truth.
Everything stands on the ground: objects carry the ground's height under them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from hdmap_seg.errors import HdmapError

# ------------------------------------------------------------------------------------ the road


@dataclass(frozen=True)
class RoadGeometry:
    """A centre line of ``n`` pieces, each straight (curvature 0) or a circular arc.

    Arrays of shape ``(n,)``: ``s0_m`` arc length at the piece's start, ``length_m``,
    ``x0_m``/``y0_m``/``heading0_rad`` its start pose (heading 0 = east, counter-clockwise),
    ``curvature_1pm`` (1/radius, positive = turning left).
    """

    s0_m: np.ndarray
    length_m: np.ndarray
    x0_m: np.ndarray
    y0_m: np.ndarray
    heading0_rad: np.ndarray
    curvature_1pm: np.ndarray

    @property
    def total_length_m(self) -> float:
        return float(self.s0_m[-1] + self.length_m[-1])

    @classmethod
    def from_pieces(cls, lengths_m, curvatures_1pm, x0_m=0.0, y0_m=0.0, heading0_rad=0.0) -> RoadGeometry:
        """Chain pieces end to end from a start pose."""
        lengths = np.asarray(lengths_m, float)
        curv = np.asarray(curvatures_1pm, float)
        n = len(lengths)
        s0, xs, ys, hs = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
        x, y, h, s = float(x0_m), float(y0_m), float(heading0_rad), 0.0
        for i in range(n):
            s0[i], xs[i], ys[i], hs[i] = s, x, y, h
            x, y, h = _advance(x, y, h, curv[i], lengths[i])
            s += lengths[i]
        return cls(s0, lengths, xs, ys, hs, curv)

    def pose_at(self, s_m) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centre-line ``(x_m, y_m, heading_rad)`` at arc lengths ``s_m`` (extrapolated past the ends)."""
        s = np.asarray(s_m, float)
        i = np.clip(np.searchsorted(self.s0_m, s, side="right") - 1, 0, len(self.s0_m) - 1)
        return _advance(
            self.x0_m[i], self.y0_m[i], self.heading0_rad[i], self.curvature_1pm[i], s - self.s0_m[i]
        )

    def point_at(self, s_m, d_m) -> tuple[np.ndarray, np.ndarray]:
        """World ``(x_m, y_m)`` of road coordinates ``(s_m, d_m)``."""
        x, y, h = self.pose_at(s_m)
        d = np.asarray(d_m, float)
        return x - d * np.sin(h), y + d * np.cos(h)

    def road_coords(
        self, x_m: np.ndarray, y_m: np.ndarray, pieces=None, settle_m: float = 25.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Closed-form ``(s_m, d_m)`` of world points, against the pieces ``pieces`` (default all).

        Each point takes the piece whose span contains its projection and that is nearest
        laterally; points beyond the first or last piece extend it. Pieces are tried in the
        given order, and a point within ``settle_m`` of a piece's span is settled there (roads
        of :func:`make_world` never come back within twice that distance), so that most points
        are evaluated once. Valid while ``|d|`` stays below the smallest radius (>= 120 m).
        Works in the dtype of ``x_m`` (float32 is fine for a few km).
        """
        x = np.asarray(x_m)
        y = np.asarray(y_m)
        if x.dtype != np.float32:
            x, y = x.astype(float), y.astype(float)
        idx = range(len(self.s0_m)) if pieces is None else pieces
        best_s = np.zeros(x.shape, x.dtype)  # stays 0 (with d = inf) where no piece applies
        best_d = np.full(x.shape, np.inf, x.dtype)
        pending = np.arange(x.size)
        xf, yf = x.ravel(), y.ravel()
        bs, bd = best_s.reshape(-1), best_d.reshape(-1)
        last = len(self.s0_m) - 1
        for i in idx:
            if pending.size == 0:
                break
            px, py = xf[pending], yf[pending]
            s_loc, d = _piece_coords(
                px,
                py,
                float(self.x0_m[i]),
                float(self.y0_m[i]),
                float(self.heading0_rad[i]),
                float(self.curvature_1pm[i]),
            )
            lo = -np.inf if i == 0 else -1e-3
            hi = np.inf if i == last else float(self.length_m[i]) + 1e-3
            in_span = (s_loc >= lo) & (s_loc <= hi)
            take = in_span & (np.abs(d) < np.abs(bd[pending]))
            sel = pending[take]
            bs[sel] = float(self.s0_m[i]) + s_loc[take]
            bd[sel] = d[take]
            pending = pending[~(in_span & (np.abs(d) < settle_m))]
        return best_s, best_d

    def pieces_near(self, s_m: float, behind_m: float, ahead_m: float) -> list[int]:
        """Indices of the pieces overlapping ``[s_m - behind_m, s_m + ahead_m]``, nearest to ``s_m`` first."""
        ends = self.s0_m + self.length_m
        near = [
            i for i in range(len(self.s0_m)) if ends[i] >= s_m - behind_m and self.s0_m[i] <= s_m + ahead_m
        ]
        gap = np.maximum(self.s0_m - s_m, s_m - ends).clip(0)
        return sorted(near, key=lambda i: gap[i])


def _advance(x, y, h, k, ds):
    """Pose after driving ``ds`` from ``(x, y, h)`` with constant curvature ``k`` (vectorized)."""
    x, y, h, k, ds = (np.asarray(v, float) for v in (x, y, h, k, ds))
    straight = np.abs(k) < 1e-12
    k_safe = np.where(straight, 1.0, k)
    h1 = h + k * ds
    xa = x + (np.sin(h1) - np.sin(h)) / k_safe
    ya = y - (np.cos(h1) - np.cos(h)) / k_safe
    xs = x + ds * np.cos(h)
    ys = y + ds * np.sin(h)
    return np.where(straight, xs, xa), np.where(straight, ys, ya), h1


def _piece_coords(x, y, x0, y0, h0, k):
    """``(s_local, d)`` of points relative to one piece starting at ``(x0, y0, h0)``."""
    c, s = float(np.cos(h0)), float(np.sin(h0))
    if abs(k) < 1e-12:
        dx, dy = x - x0, y - y0
        return dx * c + dy * s, dy * c - dx * s
    r = 1.0 / abs(k)
    sign = float(np.sign(k))
    # Centre of the circle: to the left of the start pose for a left turn, to the right otherwise.
    cx, cy = x0 - s / k, y0 + c / k
    vx, vy = x - cx, y - cy
    ux, uy = (x0 - cx) / r, (y0 - cy) / r
    ang = np.arctan2(ux * vy - uy * vx, ux * vx + uy * vy)
    return (sign * r) * ang, sign * (r - np.hypot(vx, vy))


# ----------------------------------------------------------------------- cross-section, markings


@dataclass(frozen=True)
class CrossSection:
    """Lateral layout of the road (metres), the same along the whole road."""

    median_width_m: float
    lanes_per_direction: int
    lane_width_m: float
    sidewalk_width_m: float
    marking_width_m: float = 0.15
    kerb_band_m: float = 0.2
    dash_length_m: float = 3.0
    dash_gap_m: float = 6.0

    @property
    def half_median_m(self) -> float:
        return 0.5 * self.median_width_m

    @property
    def road_edge_m(self) -> float:
        """``|d|`` of the kerb between carriageway and sidewalk."""
        return self.half_median_m + self.lanes_per_direction * self.lane_width_m

    def lane_center_m(self, lane: int) -> float:
        """``d`` of the centre of ego-direction lane ``lane`` (0 = next to the median)."""
        return -(self.half_median_m + (lane + 0.5) * self.lane_width_m)

    def marking_lines(self) -> list[tuple[float, str]]:
        """``(|d| of the line's centre, 'solid' | 'dashed')`` on one side; mirrored on the other."""
        inset = 0.3
        lines = [(self.half_median_m + inset, "solid")]
        lines += [
            (self.half_median_m + k * self.lane_width_m, "dashed") for k in range(1, self.lanes_per_direction)
        ]
        lines.append((self.road_edge_m - inset, "solid"))
        return lines


# ---------------------------------------------------------------------------------- the terrain

#: Cross-fall of the crowned carriageways (2 %), and superelevation of curves (3-5 %, sharper
#: curves more), with its linear run-in/run-out centred on the curve's ends.
CROSS_FALL = 0.02
_BANK_MIN, _BANK_MAX = 0.03, 0.05
_BANK_RAMP_M = 30.0
MAX_GRADE_PCT = 8.0
TERRAIN_FORMS = "flat, hills (= hills:4), hills:P (0 < P <= 8) or grade:P (-8 <= P <= 8), P in percent"


@dataclass(frozen=True)
class Terrain:
    """The ground's height in road coordinates: a vertical profile of the centre line, a crown
    on the carriageways, and banked curves.

    Vertical profile, ``(m,)`` arrays, one entry per piece starting at ``profile_s0_m`` (the first
    at ``s = 0``, extended backwards; the first and last pieces have a constant grade):
    ``profile_z0_m`` height and ``profile_grade0`` grade (dz/ds) at the piece's start,
    ``profile_dgrade_1pm`` the grade's change per metre (0 on a constant grade, else the
    piece is a parabolic vertical curve: a crest when negative, a sag when positive).

    Cross-section: the carriageways fall by ``cross_fall`` from the median's edges
    (``|d| = half_median_m``) to the road edge (``road_edge_m``); the median is level at the
    crown; sidewalk and verge are level at the edge's height. On curve ``j`` (``(c,)`` arrays
    ``bank_s0_m``, ``bank_s1_m``, ``bank_slope``) the carriageways and the median are one plane
    of lateral slope ``bank_slope`` (dz/dd; negative on a left curve: the inside is low),
    replacing the crown; the change is linear in ``s`` over ``bank_ramp_m`` centred on each of
    the curve's ends, so the surface stays continuous.
    """

    spec: str
    profile_s0_m: np.ndarray
    profile_z0_m: np.ndarray
    profile_grade0: np.ndarray
    profile_dgrade_1pm: np.ndarray
    cross_fall: float
    half_median_m: float
    road_edge_m: float
    bank_s0_m: np.ndarray
    bank_s1_m: np.ndarray
    bank_slope: np.ndarray
    bank_ramp_m: float = _BANK_RAMP_M

    @classmethod
    def flat(cls) -> Terrain:
        """The plane ``z = 0``."""
        empty = np.zeros(0)
        return cls("flat", empty, empty, empty, empty, 0.0, 0.0, 0.0, empty, empty, empty)

    @property
    def is_flat(self) -> bool:
        return self.profile_s0_m.size == 0 and self.cross_fall == 0.0 and self.bank_slope.size == 0

    # -------------------------------------------------------------------- vertical profile

    def _piece(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.clip(np.searchsorted(self.profile_s0_m, s, side="right") - 1, 0, self.profile_s0_m.size - 1)
        return i, s - self.profile_s0_m[i].astype(s.dtype)

    def profile_z_m(self, s_m) -> np.ndarray:
        """Height of the centre line (the crown) at ``s_m``: the exact integral of the grade."""
        s = _as_float(s_m)
        if self.profile_s0_m.size == 0:
            return np.zeros(s.shape, s.dtype)
        i, u = self._piece(s)
        z0, g0, k = (a[i].astype(s.dtype) for a in self._profile)
        return z0 + u * (g0 + 0.5 * k * u)

    def grade(self, s_m) -> np.ndarray:
        """The centre line's grade dz/ds at ``s_m`` (0.05 = 5 % up towards increasing ``s``)."""
        s = _as_float(s_m)
        if self.profile_s0_m.size == 0:
            return np.zeros(s.shape, s.dtype)
        i, u = self._piece(s)
        _, g0, k = (a[i].astype(s.dtype) for a in self._profile)
        return g0 + k * u

    @property
    def _profile(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.profile_z0_m, self.profile_grade0, self.profile_dgrade_1pm

    # ----------------------------------------------------------------------- cross-section

    def _bank(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(weight, weight * slope, d(weight)/ds, d(weight * slope)/ds)`` of the banking at ``s``."""
        w = np.zeros(s.shape, s.dtype)
        ws = np.zeros(s.shape, s.dtype)
        dw = np.zeros(s.shape, s.dtype)
        dws = np.zeros(s.shape, s.dtype)
        if s.size == 0:
            return w, ws, dw, dws
        lo, hi = float(s.min()), float(s.max())
        half = 0.5 * self.bank_ramp_m
        for a, b, e in zip(
            self.bank_s0_m.tolist(), self.bank_s1_m.tolist(), self.bank_slope.tolist(), strict=True
        ):
            if hi < a - half or lo > b + half:
                continue
            up, down = (s - (a - half)) / self.bank_ramp_m, ((b + half) - s) / self.bank_ramp_m
            wj = np.clip(np.minimum(up, down), 0.0, 1.0)
            # The weight's slope: rising on the run-in, falling on the run-out, 0 where clipped.
            dwj = np.where((wj > 0) & (wj < 1), np.where(up < down, 1.0, -1.0) / self.bank_ramp_m, 0.0)
            w += wj
            ws += e * wj
            dw += dwj
            dws += e * dwj
        return w, ws, dw, dws

    def height_m(self, s_m, d_m) -> np.ndarray:
        """Ground height (world ``z``) at road coordinates ``(s_m, d_m)``, broadcast shapes.

        Computed in the dtype of ``s_m`` (float32 is exact enough for the renderer).
        """
        s = _as_float(s_m)
        d = np.asarray(d_m, s.dtype)
        if self.is_flat:
            return np.zeros(np.broadcast_shapes(s.shape, d.shape), s.dtype)
        z = self.profile_z_m(s)
        ad = np.abs(d)
        span = self.road_edge_m - self.half_median_m
        crown = -self.cross_fall * np.clip(ad - self.half_median_m, 0.0, span)
        w, ws, _, _ = self._bank(s)
        plane = np.clip(d, -self.road_edge_m, self.road_edge_m)
        return (z + (1.0 - w) * crown + ws * plane).astype(s.dtype, copy=False)

    def gradient(self, s_m, d_m) -> tuple[np.ndarray, np.ndarray]:
        """``(dz/ds, dz/dd)`` at road coordinates ``(s_m, d_m)`` (partial derivatives; zero on kinks' far side)."""
        s = _as_float(s_m)
        d = np.asarray(d_m, s.dtype)
        if self.is_flat:
            zero = np.zeros(np.broadcast_shapes(s.shape, d.shape), s.dtype)
            return zero, zero.copy()
        ad = np.abs(d)
        span = self.road_edge_m - self.half_median_m
        crown = -self.cross_fall * np.clip(ad - self.half_median_m, 0.0, span)
        on_fall = (ad > self.half_median_m) & (ad < self.road_edge_m)
        dcrown_dd = np.where(on_fall, -self.cross_fall * np.sign(d), 0.0)
        w, ws, dw, dws = self._bank(s)
        plane = np.clip(d, -self.road_edge_m, self.road_edge_m)
        dplane_dd = (ad < self.road_edge_m).astype(s.dtype)
        dz_ds = self.grade(s) - dw * crown + dws * plane
        dz_dd = (1.0 - w) * dcrown_dd + ws * dplane_dd
        return dz_ds.astype(s.dtype, copy=False), dz_dd.astype(s.dtype, copy=False)


def _as_float(a) -> np.ndarray:
    a = np.asarray(a)
    return a if a.dtype in (np.float32, np.float64) else a.astype(float)


def parse_terrain(spec: str) -> tuple[str, float]:
    """``(kind, percent)`` of a terrain spec (:data:`TERRAIN_FORMS`); HdmapError otherwise."""
    kind, _, arg = str(spec).partition(":")
    try:
        if kind == "flat" and not arg:
            return "flat", 0.0
        if kind == "hills":
            pct = float(arg) if arg else 4.0
            if 0.0 < pct <= MAX_GRADE_PCT:
                return "hills", pct
        if kind == "grade" and arg:
            pct = float(arg)
            if abs(pct) <= MAX_GRADE_PCT:
                return "grade", pct
    except ValueError:
        pass
    raise HdmapError(f"bad terrain {spec!r}: use {TERRAIN_FORMS}")


def make_terrain(spec: str, road: RoadGeometry, section: CrossSection, rng: np.random.Generator) -> Terrain:
    """The terrain ``spec`` asks for along ``road`` (``rng`` draws the hills' grades and lengths).

    ``hills:P``: grades uniform in +-P %, held for 60-200 m, joined by vertical curves of
    40-120 m (crests where the grade falls, sags where it rises), from ``s = 0`` past the
    road's end. ``grade:P``: one grade. Both have the crown and banked curves.
    """
    kind, pct = parse_terrain(spec)
    if kind == "flat":
        return Terrain.flat()
    if kind == "grade":
        pieces = [(0.0, 0.0, pct / 100.0, 0.0)]
    else:
        g_max = pct / 100.0
        pieces = []  # (s0, z0, grade0, dgrade/ds)
        s, z, g = 0.0, 0.0, float(rng.uniform(-g_max, g_max))
        while True:
            hold = float(rng.uniform(60.0, 200.0))
            pieces.append((s, z, g, 0.0))
            s, z = s + hold, z + g * hold
            if s >= road.total_length_m + 100.0:  # the last piece (a constant grade) runs on
                break
            g_next = float(rng.uniform(-g_max, g_max))
            length = float(rng.uniform(40.0, 120.0))
            dg = (g_next - g) / length
            pieces.append((s, z, g, dg))
            s, z, g = s + length, z + length * (g + 0.5 * dg * length), g_next
    s0, z0, g0, k = (np.array(c) for c in zip(*pieces, strict=True))
    curved = np.flatnonzero(road.curvature_1pm != 0.0)
    k_abs = np.abs(road.curvature_1pm[curved])
    # Sharper curves bank more: 3 % at radius 600 m up to 5 % at 120 m.
    frac = np.clip((k_abs - 1 / 600) / (1 / 120 - 1 / 600), 0.0, 1.0)
    e = _BANK_MIN + (_BANK_MAX - _BANK_MIN) * frac
    return Terrain(
        spec=str(spec),
        profile_s0_m=s0,
        profile_z0_m=z0,
        profile_grade0=g0,
        profile_dgrade_1pm=k,
        cross_fall=CROSS_FALL,
        half_median_m=section.half_median_m,
        road_edge_m=section.road_edge_m,
        bank_s0_m=road.s0_m[curved].astype(float),
        bank_s1_m=(road.s0_m[curved] + road.length_m[curved]).astype(float),
        bank_slope=-np.sign(road.curvature_1pm[curved]) * e,
    )


# ----------------------------------------------------------------------------- the objects


@dataclass(frozen=True)
class Pole:
    """A vertical cylinder standing on the ground; ``kind`` is ``lamp``, ``utility`` or ``plain``.

    Lamp poles carry an arm of ``arm_m`` towards the road (direction ``arm_dir``, a unit
    ``(x, y)``) and a lamp head at its end.
    """

    id: int
    x_m: float
    y_m: float
    height_m: float
    radius_m: float
    kind: str
    color: tuple[float, float, float]
    arm_m: float = 0.0
    arm_dir: tuple[float, float] = (0.0, 0.0)
    z0_m: float = 0.0  # world z of the base: the ground there


@dataclass(frozen=True)
class Sign:
    """A flat sign plate; its centre is at ``(x_m, y_m)``, ``height_m`` above the ground there
    (world z ``ground_z_m``, so the centre's world z is :attr:`centre_z_m`); ``size_m`` its width.

        ``facing_rad`` is the direction its face points (world yaw: 0 = east, counter-clockwise);
        ``pole_id`` is the pole it hangs on, or -1 for its own thin post (radius ``post_radius_m``),
        which is not a pole of the ground truth and is labelled background.
    """

    id: int
    x_m: float
    y_m: float
    height_m: float
    size_m: float
    shape: str  # circle | triangle | rectangle
    facing_rad: float
    rim_color: tuple[float, float, float]
    face_color: tuple[float, float, float]
    glyph_color: tuple[float, float, float]
    pole_id: int = -1
    post_radius_m: float = 0.025
    ground_z_m: float = 0.0

    @property
    def centre_z_m(self) -> float:
        """World z of the plate's centre."""
        return self.ground_z_m + self.height_m

    @property
    def plate_height_m(self) -> float:
        """Height of the plate: rectangles are 2/3 as tall as wide, the others as tall."""
        return self.size_m * (2.0 / 3.0 if self.shape == "rectangle" else 1.0)

    @property
    def bearing_deg(self) -> float:
        """Facing as a compass bearing: degrees clockwise from (grid) north, in [0, 360)."""
        return float(np.degrees(np.pi / 2 - self.facing_rad) % 360.0)


@dataclass(frozen=True)
class Box:
    """An upright box: footprint centre, yaw of its length axis, sizes, colour (0..1 RGB).

    ``z0_m``/``z1_m`` are world heights; ``ground_z_m`` is the ground at the footprint's centre
    (where its shadow is cast).
    """

    x_m: float
    y_m: float
    yaw_rad: float
    length_m: float
    width_m: float
    z0_m: float
    z1_m: float
    color: tuple[float, float, float]
    windows: bool = False
    ground_z_m: float = 0.0


@dataclass(frozen=True)
class Tree:
    x_m: float
    y_m: float
    trunk_radius_m: float
    trunk_height_m: float
    crown_radius_m: float
    trunk_color: tuple[float, float, float]
    crown_color: tuple[float, float, float]
    z0_m: float = 0.0  # world z of the trunk's base


@dataclass(frozen=True)
class Vehicle:
    """A car on the road at ``s0_m`` (time 0), lateral ``d_m``, moving at ``speed_mps`` along +s
    (negative: towards -s; 0: parked)."""

    s0_m: float
    d_m: float
    speed_mps: float
    length_m: float
    width_m: float
    height_m: float
    color: tuple[float, float, float]


@dataclass(frozen=True)
class Style:
    """The look of a world: materials, light and weather (colours are 0..1 RGB)."""

    asphalt: tuple[float, float, float]
    marking: tuple[float, float, float]
    median: tuple[float, float, float]
    median_grass: bool
    kerb: tuple[float, float, float]
    sidewalk: tuple[float, float, float]
    verge: tuple[float, float, float]
    sky_top: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    sun_azimuth_rad: float
    sun_elevation_rad: float
    sun_strength: float  # 0 overcast .. 1 hard sun
    exposure: float
    haze_m: float
    texture_amp: float


@dataclass(frozen=True)
class World:
    """A generated world; ``poles`` and ``signs`` are the ground truth, the rest dresses the scene."""

    seed: int
    road: RoadGeometry
    section: CrossSection
    median_gaps_m: np.ndarray  # (G, 2) s-intervals without median
    poles: tuple[Pole, ...]
    signs: tuple[Sign, ...]
    buildings: tuple[Box, ...]
    trees: tuple[Tree, ...]
    vehicles: tuple[Vehicle, ...]
    style: Style
    ego_lane: int
    extras: dict = field(default_factory=dict)
    terrain: Terrain = field(default_factory=Terrain.flat)

    def ground_z_m(self, x_m, y_m) -> np.ndarray:
        """World z of the ground at world points ``(x_m, y_m)`` (any shape), through their road coordinates."""
        s, d = self.road.road_coords(x_m, y_m)
        return self.terrain.height_m(s, d)

    def ground_slope_xy(self, s_m, d_m) -> tuple[np.ndarray, np.ndarray]:
        """The ground's world gradient ``(dz/dx, dz/dy)`` at road coordinates ``(s_m, d_m)``.

        ``s`` runs ``1 - curvature * d`` times faster than the distance along a line at offset
        ``d``, so ``dz/ds`` is scaled by that to become a slope in metres per metre.
        """
        s = np.asarray(s_m, float)
        d = np.asarray(d_m, float)
        dz_ds, dz_dd = self.terrain.gradient(s, d)
        _, _, h = self.road.pose_at(s)
        i = np.clip(np.searchsorted(self.road.s0_m, s, side="right") - 1, 0, len(self.road.s0_m) - 1)
        along = dz_ds / (1.0 - self.road.curvature_1pm[i] * d)
        return along * np.cos(h) - dz_dd * np.sin(h), along * np.sin(h) + dz_dd * np.cos(h)

    def in_median_gap(self, s_m: np.ndarray) -> np.ndarray:
        s = np.asarray(s_m, float)
        gap = np.zeros(s.shape, bool)
        for a, b in self.median_gaps_m:
            gap |= (s >= a) & (s < b)
        return gap

    def median_pieces_m(self, s_lo_m: float, s_hi_m: float) -> list[tuple[float, float]]:
        """The ``s``-intervals inside ``[s_lo_m, s_hi_m]`` where the median exists."""
        out, start = [], s_lo_m
        for a, b in sorted(map(tuple, self.median_gaps_m)):
            if b <= start or a >= s_hi_m:
                continue
            if a > start:
                out.append((start, a))
            start = max(start, b)
        if start < s_hi_m:
            out.append((start, s_hi_m))
        return out

    def vehicle_boxes(self, t_s: float) -> list[Box]:
        """The vehicles at time ``t_s`` as boxes (underbody, body, cabin), in world coordinates."""
        if not self.vehicles:
            return []
        speed = np.array([v.speed_mps for v in self.vehicles])
        s = np.array([v.s0_m for v in self.vehicles]) + speed * t_s
        d = np.array([v.d_m for v in self.vehicles])
        _, _, heading = self.road.pose_at(s)
        xs, ys = self.road.point_at(s, d)
        zs = self.terrain.height_m(s, d)
        yaws = heading + np.where(speed < 0, np.pi, 0.0)
        boxes = []
        glass = (0.12, 0.14, 0.17)
        for v, x, y, z, yaw in zip(
            self.vehicles, xs.tolist(), ys.tolist(), zs.tolist(), yaws.tolist(), strict=True
        ):
            # Upright boxes raised by the ground at the car's centre (they do not pitch with it).
            body_top = 0.55 * v.height_m
            back = -0.1 * v.length_m
            c, sn = np.cos(yaw), np.sin(yaw)
            boxes.append(
                Box(
                    x,
                    y,
                    yaw,
                    0.92 * v.length_m,
                    0.95 * v.width_m,
                    z + 0.0,
                    z + 0.25,
                    (0.05, 0.05, 0.05),
                    False,
                    z,
                )
            )
            boxes.append(Box(x, y, yaw, v.length_m, v.width_m, z + 0.25, z + body_top, v.color, False, z))
            boxes.append(
                Box(
                    x + back * c,
                    y + back * sn,
                    yaw,
                    0.55 * v.length_m,
                    0.9 * v.width_m,
                    z + body_top,
                    z + v.height_m,
                    glass,
                    False,
                    z,
                )
            )
        return boxes


# ------------------------------------------------------------------------------- generation

_SIGN_PALETTE = {
    # name: (rim, face, glyph)
    "red_white": ((0.78, 0.08, 0.08), (0.95, 0.95, 0.95), (0.1, 0.1, 0.1)),
    "blue": ((0.95, 0.95, 0.95), (0.08, 0.25, 0.7), (0.95, 0.95, 0.95)),
    "yellow": ((0.1, 0.1, 0.1), (0.95, 0.8, 0.1), (0.1, 0.1, 0.1)),
    "green": ((0.95, 0.95, 0.95), (0.05, 0.45, 0.2), (0.95, 0.95, 0.95)),
    "white": ((0.1, 0.1, 0.1), (0.93, 0.93, 0.93), (0.1, 0.1, 0.1)),
}


#: Paint of lamp and plain poles: darker than the bright galvanised posts of signs (SIGN_POST_COLOR),
#: which are background, so that the two stay tellable apart at a few pixels wide.
_POLE_PAINT = ((0.42, 0.44, 0.47), (0.2, 0.22, 0.25), (0.18, 0.3, 0.22), (0.45, 0.25, 0.2))
SIGN_POST_COLOR = (0.8, 0.82, 0.85)


def _jitter(rng: np.random.Generator, rgb, amp: float = 0.06) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.clip(np.asarray(rgb) + rng.uniform(-amp, amp, 3), 0.0, 1.0))


def _make_style(rng: np.random.Generator) -> Style:
    grey = rng.uniform(0.22, 0.42)
    median_grass = bool(rng.random() < 0.6)
    weather = _weather(rng)
    # Keyword arguments are evaluated in order: the light's draws come after the materials'.
    return Style(
        asphalt=_jitter(rng, (grey, grey, grey * 1.04), 0.02),
        marking=_jitter(rng, (0.92, 0.92, 0.88), 0.05),
        median=_jitter(rng, (0.3, 0.5, 0.18) if median_grass else (0.62, 0.6, 0.56), 0.06),
        median_grass=median_grass,
        kerb=_jitter(rng, (0.75, 0.75, 0.72), 0.05),
        sidewalk=_jitter(rng, rng.choice([(0.6, 0.55, 0.5), (0.5, 0.5, 0.52), (0.66, 0.45, 0.4)]), 0.05),
        verge=_jitter(rng, rng.choice([(0.45, 0.4, 0.3), (0.35, 0.42, 0.22), (0.5, 0.48, 0.42)]), 0.05),
        **_light(rng, weather),
        texture_amp=float(rng.uniform(0.05, 0.15)),
    )


def _weather(rng: np.random.Generator) -> tuple[tuple, tuple, float, float]:
    """``(sky_top, sky_horizon, sun_elevation_rad, sun_strength)`` of a sunny, overcast or evening sky."""
    weather = rng.choice(["sunny", "overcast", "evening"], p=[0.5, 0.3, 0.2])
    if weather == "sunny":
        return (0.25, 0.45, 0.85), (0.7, 0.8, 0.92), rng.uniform(0.5, 1.1), 1.0
    if weather == "overcast":
        return (0.6, 0.63, 0.68), (0.8, 0.8, 0.82), rng.uniform(0.6, 1.2), 0.25
    return (0.35, 0.35, 0.6), (0.95, 0.7, 0.45), rng.uniform(0.2, 0.4), 0.8


def _light(rng: np.random.Generator, weather: tuple[tuple, tuple, float, float]) -> dict[str, object]:
    """The light fields of a :class:`Style` under ``weather`` (:func:`_weather`), with their own jitter."""
    sky_top, sky_hor, sun_el, strength = weather
    return {
        "sky_top": _jitter(rng, sky_top, 0.05),
        "sky_horizon": _jitter(rng, sky_hor, 0.04),
        "sun_azimuth_rad": float(rng.uniform(-np.pi, np.pi)),
        "sun_elevation_rad": float(sun_el),
        "sun_strength": float(strength),
        "exposure": float(rng.uniform(0.85, 1.15)),
        "haze_m": float(rng.uniform(250.0, 1200.0)),
    }


def relight(style: Style, rng: np.random.Generator) -> Style:
    """``style`` under other light: weather, sky, sun, exposure and haze drawn anew from ``rng``.

    The materials stay: another drive through the same world on another day sees the same
    asphalt, paint and verges, under another sky.
    """
    return replace(style, **_light(rng, _weather(rng)))


def make_world(seed: int, length_m: float = 600.0, terrain: str = "flat") -> World:
    """Generate a world of a road ``length_m`` long (plus run-in), deterministic for ``seed``.

    The road starts at the origin heading in a random direction, then alternates straights and
    arcs of radius 120-600 m turning at most 60 degrees each, so it never crosses itself.
    ``terrain`` is a spec of :func:`parse_terrain`; its random draws come from a stream of their
    own, so the road and the objects are those of the flat world of the same seed. The parts are
    drawn in a fixed order from one stream (the road, its cross-section, the median's gaps, poles,
    signs, trees and buildings, vehicles, the style): a world of a seed stays that world.
    """
    if length_m < 50:
        raise HdmapError(f"world length must be at least 50 m, got {length_m}")
    parse_terrain(terrain)  # a bad spec fails before any work
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    road = _make_road(rng, length_m)
    section = _make_section(rng)
    ground = make_terrain(
        terrain, road, section, np.random.default_rng(np.random.SeedSequence([int(seed), 0x7E12]))
    )
    median_gaps = _make_median_gaps(rng, road.total_length_m)
    poles = _make_poles(rng, road, section, ground, median_gaps)
    signs = _make_signs(rng, road, section, ground, poles)
    trees, buildings = _make_trees_and_buildings(rng, road, section, ground)
    vehicles, ego_lane = _make_vehicles(rng, section, road.total_length_m)
    return World(
        seed=int(seed),
        road=road,
        section=section,
        median_gaps_m=median_gaps,
        poles=tuple(poles),
        signs=tuple(signs),
        buildings=tuple(buildings),
        trees=tuple(trees),
        vehicles=tuple(vehicles),
        style=_make_style(rng),
        ego_lane=ego_lane,
        terrain=ground,
    )


def _make_road(rng: np.random.Generator, length_m: float) -> RoadGeometry:
    """The road's centre line: a straight, then arcs and straights in turn, 200 m longer than asked."""
    lengths, curvs, total = [], [], 0.0
    heading_sum = 0.0
    lengths.append(rng.uniform(40, 120))
    curvs.append(0.0)
    total += lengths[-1]
    while total < length_m + 200:
        if len(lengths) % 2 == 1:
            radius = rng.uniform(120, 600)
            turn = rng.uniform(0.15, 1.0) * np.sign(rng.uniform(-1, 1))
            if abs(heading_sum + turn) > 1.4:  # keep the road going roughly one way
                turn = -turn
            heading_sum += turn
            curvs.append(np.sign(turn) / radius)
            lengths.append(abs(turn) * radius)
        else:
            curvs.append(0.0)
            lengths.append(rng.uniform(30, 200))
        total += lengths[-1]
    return RoadGeometry.from_pieces(lengths, curvs, heading0_rad=rng.uniform(-np.pi, np.pi))


def _make_section(rng: np.random.Generator) -> CrossSection:
    return CrossSection(
        median_width_m=float(rng.uniform(1.0, 4.0)),
        lanes_per_direction=int(rng.integers(1, 4)),
        lane_width_m=float(rng.uniform(3.0, 3.75)),
        sidewalk_width_m=float(rng.uniform(2.0, 4.0)),
        marking_width_m=float(rng.uniform(0.12, 0.2)),
        dash_length_m=float(rng.choice([3.0, 4.0, 6.0])),
        dash_gap_m=float(rng.choice([6.0, 8.0, 12.0])),
    )


def _make_median_gaps(rng: np.random.Generator, road_length_m: float) -> np.ndarray:
    """``(N, 2)`` arc-length spans where the median opens (8-20 m, every 60-180 m)."""
    gaps, s = [], rng.uniform(40, 120)
    while s < road_length_m:
        g = rng.uniform(8, 20)
        gaps.append((s, s + g))
        s += g + rng.uniform(60, 180)
    return np.array(gaps, float).reshape(-1, 2)


def _ground_z(ground: Terrain, s_m: float, d_m: float) -> float:
    return float(ground.height_m(s_m, d_m))


def _side_normal(road: RoadGeometry, s_m: float, side: int) -> tuple[float, float]:
    """Unit (x, y) pointing from the roadside at ``side`` (+1 left, -1 right) towards the road."""
    _, _, h = road.pose_at(s_m)
    return float(side * np.sin(h)), float(-side * np.cos(h))


def _make_poles(
    rng: np.random.Generator,
    road: RoadGeometry,
    section: CrossSection,
    ground: Terrain,
    median_gaps: np.ndarray,
) -> list[Pole]:
    """Poles along both sidewalks (lamp, utility, plain), and lamps on some wide medians."""
    L, edge = road.total_length_m, section.road_edge_m
    poles: list[Pole] = []
    for side in (-1, 1):
        s = rng.uniform(5, 30)
        while s < L - 5:
            kind = rng.choice(["lamp", "utility", "plain"], p=[0.5, 0.25, 0.25])
            d = side * (edge + rng.uniform(0.4, min(1.2, section.sidewalk_width_m - 0.3)))
            x, y = road.point_at(s, d)
            if kind == "lamp":
                h, r = rng.uniform(8, 12), rng.uniform(0.1, 0.15)
                color = _jitter(rng, _POLE_PAINT[rng.integers(len(_POLE_PAINT))], 0.04)
                arm = rng.uniform(1.0, 2.5)
            elif kind == "utility":
                h, r = rng.uniform(7, 11), rng.uniform(0.12, 0.15)
                color, arm = _jitter(rng, (0.4, 0.3, 0.2), 0.05), 0.0
            else:
                h, r = rng.uniform(5, 8), rng.uniform(0.06, 0.1)
                color, arm = _jitter(rng, _POLE_PAINT[rng.integers(len(_POLE_PAINT))], 0.04), 0.0
            poles.append(
                Pole(
                    len(poles),
                    float(x),
                    float(y),
                    float(h),
                    float(r),
                    str(kind),
                    color,
                    float(arm),
                    _side_normal(road, s, side),
                    _ground_z(ground, s, d),
                )
            )
            s += rng.uniform(15, 35)
    if section.median_width_m >= 2.0 and rng.random() < 0.5:
        s = rng.uniform(20, 60)
        while s < L - 5:
            in_gap = np.any((s >= median_gaps[:, 0] - 2.0) & (s < median_gaps[:, 1] + 2.0))
            if not in_gap:
                x, y = road.point_at(s, 0.0)
                side = 1 if rng.random() < 0.5 else -1
                poles.append(
                    Pole(
                        len(poles),
                        float(x),
                        float(y),
                        float(rng.uniform(8, 12)),
                        float(rng.uniform(0.1, 0.15)),
                        "lamp",
                        _jitter(rng, (0.45, 0.47, 0.5), 0.04),
                        float(rng.uniform(1.0, 2.0)),
                        _side_normal(road, s, side),
                        _ground_z(ground, s, 0.0),
                    )
                )
            s += rng.uniform(35, 70)
    return poles


def _make_signs(
    rng: np.random.Generator, road: RoadGeometry, section: CrossSection, ground: Terrain, poles: list[Pole]
) -> list[Sign]:
    """Signs on their own posts on the sidewalks, facing the traffic of their side, and on some poles."""
    L = road.total_length_m
    signs: list[Sign] = []
    for side in (-1, 1):
        s = rng.uniform(10, 40)
        while s < L - 5:
            sg = post_sign(rng, road, section, ground, poles, float(s), side, len(signs))
            if sg is not None:
                signs.append(sg)
            s += rng.uniform(15, 40)
    # Some signs hang on lamp and plain poles, on the road side of the pole.
    for p in poles:
        if p.kind == "utility" or rng.random() > 0.4:
            continue
        s_p, d_p = road.road_coords(np.array([p.x_m]), np.array([p.y_m]))
        _, _, h = road.pose_at(s_p[0])
        side = -1 if d_p[0] < 0 else 1
        facing = float(h) + (np.pi if side < 0 else 0.0)
        offset = p.radius_m + 0.04
        fx, fy = np.cos(facing), np.sin(facing)
        signs.append(
            _new_sign(
                rng,
                road,
                ground,
                len(signs),
                p.x_m + offset * fx,
                p.y_m + offset * fy,
                facing,
                float(rng.uniform(2.5, 4.5)),
                p.id,
            )
        )
    return signs


def post_sign(
    rng: np.random.Generator,
    road: RoadGeometry,
    section: CrossSection,
    ground: Terrain,
    poles: list[Pole] | tuple[Pole, ...],
    s_m: float,
    side: int,
    sign_id: int,
) -> Sign | None:
    """A sign on its own post on the sidewalk at ``s_m`` on ``side`` (-1 right, +1 left), facing
    the traffic of its side; None where a pole stands within 1.5 m (the sign would touch it)."""
    d = side * (section.road_edge_m + rng.uniform(0.3, min(1.5, section.sidewalk_width_m - 0.2)))
    x, y = road.point_at(s_m, d)
    _, _, h = road.pose_at(s_m)
    # Right side (ego lanes) faces back along -s, towards the cars; left side faces +s.
    facing = float(h) + (np.pi if side < 0 else 0.0) + rng.uniform(-0.2, 0.2)
    if any(np.hypot(p.x_m - x, p.y_m - y) < 1.5 for p in poles):
        return None
    return _new_sign(rng, road, ground, sign_id, float(x), float(y), facing, float(rng.uniform(2.0, 3.5)), -1)


def _new_sign(
    rng: np.random.Generator,
    road: RoadGeometry,
    ground: Terrain,
    sign_id: int,
    x_m: float,
    y_m: float,
    facing_rad: float,
    height_m: float,
    pole_id: int,
) -> Sign:
    """A sign plate of a random shape, colours and size at ``(x_m, y_m)``, on the ground there."""
    shape = str(rng.choice(["circle", "triangle", "rectangle"]))
    palette = {
        "circle": ["red_white", "blue", "white"],
        "triangle": ["red_white", "yellow"],
        "rectangle": ["blue", "green", "white", "yellow"],
    }[shape]
    rim, face, glyph = _SIGN_PALETTE[str(rng.choice(palette))]
    size = float(rng.uniform(0.7, 1.2) if shape != "rectangle" else rng.uniform(0.9, 1.5))
    s_g, d_g = road.road_coords(np.array([x_m]), np.array([y_m]))
    z = float(ground.height_m(s_g, d_g)[0])
    return Sign(sign_id, x_m, y_m, height_m, size, shape, facing_rad, rim, face, glyph, pole_id, ground_z_m=z)


def _make_trees_and_buildings(
    rng: np.random.Generator, road: RoadGeometry, section: CrossSection, ground: Terrain
) -> tuple[list[Tree], list[Box]]:
    """Trees and buildings behind both sidewalks."""
    L, edge = road.total_length_m, section.road_edge_m
    trees, buildings = [], []
    for side in (-1, 1):
        s = rng.uniform(0, 15)
        while s < L + 50:
            d = side * (edge + section.sidewalk_width_m + rng.uniform(1.5, 6.0))
            x, y = road.point_at(s, d)
            crown = rng.uniform(1.5, 3.2)
            trees.append(
                Tree(
                    float(x),
                    float(y),
                    float(rng.uniform(0.12, 0.25)),
                    float(rng.uniform(1.8, 3.5)),
                    float(crown),
                    _jitter(rng, (0.3, 0.22, 0.15), 0.05),
                    _jitter(rng, (0.2, 0.38, 0.12), 0.08),
                    _ground_z(ground, s, d),
                )
            )
            s += rng.uniform(8, 40)
        s = rng.uniform(-20, 10)
        while s < L + 80:
            length = rng.uniform(10, 35)
            depth = rng.uniform(8, 20)
            setback = rng.uniform(8, 25)
            d = side * (edge + section.sidewalk_width_m + setback + depth / 2)
            x, y = road.point_at(s + length / 2, d)
            _, _, h = road.pose_at(s + length / 2)
            color = _jitter(
                rng,
                rng.choice(
                    [
                        (0.7, 0.65, 0.55),
                        (0.55, 0.35, 0.3),
                        (0.8, 0.8, 0.78),
                        (0.45, 0.45, 0.5),
                        (0.65, 0.55, 0.4),
                    ]
                ),
                0.07,
            )
            # The foundation reaches down to the lowest ground along the facade, so that no
            # building floats on a slope; its height counts from the ground at its centre.
            z_mid = _ground_z(ground, s + length / 2, d)
            z_low = min(z_mid, _ground_z(ground, s, d), _ground_z(ground, s + length, d))
            buildings.append(
                Box(
                    float(x),
                    float(y),
                    float(h),
                    float(length),
                    float(depth),
                    z_low,
                    z_mid + float(rng.uniform(5, 25)),
                    color,
                    windows=True,
                    ground_z_m=z_mid,
                )
            )
            s += length + rng.uniform(2, 30)
    return trees, buildings


_CAR_COLORS = (
    (0.8, 0.1, 0.1),
    (0.1, 0.2, 0.6),
    (0.85, 0.85, 0.85),
    (0.1, 0.1, 0.1),
    (0.5, 0.5, 0.52),
    (0.9, 0.75, 0.2),
)


def _make_vehicles(
    rng: np.random.Generator, section: CrossSection, road_length_m: float
) -> tuple[list[Vehicle], int]:
    """Vehicles parked at the kerb of the far side and moving in the other lanes; and the ego car's lane."""
    L = road_length_m
    ego_lane = int(rng.integers(0, section.lanes_per_direction))
    vehicles = []

    def car(s0: float, d: float, speed: float) -> Vehicle:
        return Vehicle(
            float(s0),
            float(d),
            float(speed),
            float(rng.uniform(3.8, 4.8)),
            float(rng.uniform(1.7, 1.9)),
            float(rng.uniform(1.4, 1.7)),
            _jitter(rng, _CAR_COLORS[rng.integers(len(_CAR_COLORS))], 0.05),
        )

    n_lanes = section.lanes_per_direction
    if n_lanes >= 2:  # cars parked in the far side's outer lane, where nobody drives
        s = rng.uniform(10, 60)
        while s < L:
            vehicles.append(car(s, -section.lane_center_m(n_lanes - 1) + 0.4, 0.0))
            s += rng.uniform(15, 90)
    for lane in range(n_lanes):
        s = rng.uniform(0, 80)
        while s < L and not (n_lanes >= 2 and lane == n_lanes - 1):
            vehicles.append(car(s, -section.lane_center_m(lane), -rng.uniform(8, 15)))
            s += rng.uniform(60, 200)
        if lane != ego_lane:
            s = rng.uniform(0, 80)
            while s < L:
                vehicles.append(car(s, section.lane_center_m(lane), rng.uniform(6, 16)))
                s += rng.uniform(60, 200)
    return vehicles, ego_lane
