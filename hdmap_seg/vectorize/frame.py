"""One frame's geometry: rays of pixels in the world, and image regions projected to the ground.

The ground is a :class:`~hdmap_seg.geo.ground.Surface` (the drive's road surface, or a level plane
under the car). Image regions are projected vertex by vertex: each ring is densified in the
undistorted, normalised image (so that the curve a straight image edge draws on a crest or a sag
is followed), every vertex's ray meets the surface (:func:`~hdmap_seg.geo.ground.intersect_rays`),
and rays that meet it beyond ``_FAR_FACTOR * max_range_m``, or not at all (sky, or over a crest),
are pinned on that far circle along their bearing. The far circle lies well outside the disc of
``max_range_m`` around the camera that the result is cut to, so the pinned vertices only close
the polygon there.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from hdmap_seg.geo.camera import CameraModel
from hdmap_seg.geo.ground import Surface, intersect_rays

# The image border's vertices (px apart) for the footprint of a frame: its sides on the ground are
# straight on a plane and bend only gently over a crest.
_BORDER_STEP_PX = 24.0
_UNIT_CIRCLE = np.stack(  # 16 segments per quarter, as shapely's buffer draws a circle
    [np.cos(np.linspace(0, 2 * np.pi, 65)), np.sin(np.linspace(0, 2 * np.pi, 65))], axis=1
)
# Rays meeting the ground farther than this x max_range_m are pinned there (outside the kept disc).
_FAR_FACTOR = 2.0
# Longest image edge (px) between projected vertices: at 30 m a pixel row spans about 0.8 m of road.
_DENSIFY_PX = 6.0
_ARC_STEP_RAD = np.radians(10.0)  # pinned runs follow the far circle in steps this fine


@dataclass
class FrameGeometry:
    """A camera at one pose over the ground ``surface``; only ground within ``max_range_m`` counts,
    and within ``known_area`` where the surface is known only there."""

    camera: CameraModel
    T_world_from_cam: np.ndarray
    surface: Surface
    max_range_m: float
    known_area: BaseGeometry | None = None

    @property
    def center(self) -> np.ndarray:
        """Camera centre in the world, ``(3,)``."""
        return self.T_world_from_cam[:3, 3]

    @cached_property
    def ground_z_m(self) -> float:
        """Height of the ground under the camera."""
        return float(self.surface.height_m(self.center[None, :2])[0])

    def rays_world(self, uv: np.ndarray) -> np.ndarray:
        """``(N, 2)`` pixels -> ``(N, 3)`` unit ray directions in the world."""
        return self.camera.rays_cam(uv) @ self.T_world_from_cam[:3, :3].T

    def intersect(self, dirs: np.ndarray, surface: Surface | None = None) -> tuple[np.ndarray, np.ndarray]:
        """World rays from the camera -> ``(N, 3)`` ground points and ``(N,)`` flags (hit within range)."""
        return intersect_rays(surface or self.surface, self.center, dirs, self.max_range_m, self.ground_z_m)

    def image_rings_to_ground(self, rings_px: list[np.ndarray]) -> list[np.ndarray]:
        """Closed pixel rings -> their closed ground rings (world xy) on the frame's surface, not
        densified and not cut to range (for regions already within it; see :meth:`_rings_to_ground`)."""
        if not rings_px:
            return []
        cuts = np.cumsum([len(r) for r in rings_px])[:-1]
        norm = np.split(self.camera.normalized_from_pixels(np.concatenate(rings_px)), cuts)
        return self._rings_to_ground(norm, self.surface)

    def _rings_to_ground(self, rings_norm: list[np.ndarray], surface: Surface) -> list[np.ndarray]:
        """Closed rings of normalised image points -> their ground rings (world xy, closed).

        One intersection for all rings' vertices. Vertices whose rays meet the ground past
        ``far_m`` (or never) are pinned on the circle of that radius; each run of them becomes the
        arc between its ends (every ``_ARC_STEP_RAD``), since the run's own path along the circle
        doubles back and would only make the ring invalid. A ring with no hit at all is empty.
        """
        pts = [r[:-1] for r in rings_norm]
        m = np.concatenate([np.concatenate(pts), np.ones((sum(map(len, pts)), 1))], axis=1)
        dirs = m @ self.T_world_from_cam[:3, :3].T
        far_m = _FAR_FACTOR * self.max_range_m
        p_all, hit_all = intersect_rays(surface, self.center, dirs, far_m, self.ground_z_m)
        bearing_all = np.arctan2(dirs[:, 1], dirs[:, 0])
        out = []
        for start, end in zip(
            np.cumsum([0, *map(len, pts)])[:-1], np.cumsum(list(map(len, pts))), strict=True
        ):
            p, hit, bearing = p_all[start:end, :2], hit_all[start:end], bearing_all[start:end]
            if hit.all():
                out.append(np.vstack([p, p[:1]]))
            elif not hit.any():
                out.append(np.zeros((0, 2)))
            else:
                out.append(self._pin_runs(p, hit, bearing, far_m))
        return out

    def _pin_runs(self, p: np.ndarray, hit: np.ndarray, bearing: np.ndarray, far_m: float) -> np.ndarray:
        """One ring's ground points with its runs of misses replaced by arcs of the far circle (closed)."""
        order = np.roll(np.arange(len(p)), -int(np.flatnonzero(hit)[0]))  # from a hit: no run wraps
        runs = np.split(order, np.flatnonzero(np.diff(hit[order].astype(np.int8))) + 1)
        pieces: list[np.ndarray] = []
        for run in runs:
            if hit[run[0]]:
                pieces.append(p[run])
                continue
            a, b = bearing[run[0]], bearing[run[-1]]
            sweep = (b - a + np.pi) % (2 * np.pi) - np.pi
            n = max(1, int(np.ceil(abs(sweep) / _ARC_STEP_RAD)))
            ang = a + sweep * np.linspace(0.0, 1.0, n + 1)
            pieces.append(self.center[:2] + far_m * np.stack([np.cos(ang), np.sin(ang)], axis=1))
        ring = np.concatenate(pieces)
        return np.vstack([ring, ring[:1]])

    @cached_property
    def up_vanishing_px(self) -> np.ndarray:
        """``(3,)`` homogeneous image point where the world's verticals meet (``K R_cam_from_world e_z``;
        at infinity, ``[du, dv, 0]``, when the camera's image plane is vertical). The lens's
        distortion is left out: it bends a vertical little over the few dozen rows it is used on."""
        return self.camera.K @ self.T_world_from_cam[2, :3]

    @cached_property
    def optical_azimuth_rad(self) -> float:
        """Bearing of the camera's optical axis in the world's horizontal plane."""
        return float(np.arctan2(self.T_world_from_cam[1, 2], self.T_world_from_cam[0, 2]))

    @cached_property
    def top_ground_row_px(self) -> int:
        """The highest image row (smallest ``v``) that shows ground within range; rows above cannot."""
        return self.ground_row_px(self.max_range_m)

    def ground_row_px(self, range_m: float) -> int:
        """The highest image row that shows ground within ``range_m`` of the camera.

        Found by projecting the ground ``range_m`` away along the bearings of the image's columns.
        """
        w, _ = self.camera.size
        cols = np.stack([np.linspace(0, w - 1, 9), np.full(9, self.camera.K[1, 2])], 1)
        dirs = self.rays_world(cols)[:, :2]
        bearing = dirs / np.maximum(np.linalg.norm(dirs, axis=1, keepdims=True), 1e-12)
        xy = self.center[:2] + range_m * bearing
        p_world = np.concatenate([xy, self.surface.height_m(xy)[:, None]], axis=1)
        R, C = self.T_world_from_cam[:3, :3], self.center
        uv, in_front = self.camera.project((p_world - C) @ R)
        if not in_front.any():
            return 0
        return max(0, int(np.floor(uv[in_front, 1].min())) - 2)

    def _disc(self) -> BaseGeometry:
        disc = Polygon(self.center[:2] + self.max_range_m * _UNIT_CIRCLE)
        return disc if self.known_area is None else disc.intersection(self.known_area)

    def ground_polygons(
        self, region_norm: BaseGeometry, surface: Surface | None = None, step_px: float = _DENSIFY_PX
    ) -> BaseGeometry:
        """Project a region of the normalised image onto the ground (default: the frame's surface),
        a vertex at least every ``step_px`` along its edges."""
        if region_norm.is_empty:
            return region_norm
        surface = surface or self.surface
        dense = shapely.segmentize(region_norm, step_px / self.camera.focal_px)
        polys = _polygonal(dense)
        rings = [np.asarray(r.coords) for poly in polys for r in (poly.exterior, *poly.interiors)]
        ground = iter(self._rings_to_ground(rings, surface))
        parts = []
        for poly in polys:
            exterior, holes = next(ground), [next(ground) for _ in poly.interiors]
            if len(exterior) >= 4:
                parts.append(Polygon(exterior, [r for r in holes if len(r) >= 4]))
        # Far vertices crowd together and rounding can pinch a ring: repair before the union.
        parts = [p if p.is_valid else shapely.union_all(_polygonal(shapely.make_valid(p))) for p in parts]
        on_ground = shapely.union_all(parts) if len(parts) > 1 else (parts[0] if parts else Polygon())
        return on_ground.intersection(self._disc())

    @cached_property
    def visible_ground(self) -> BaseGeometry:
        """The ground this frame sees within range (its footprint; computed once, for every grid
        that counts what the frame saw).

        The image below :attr:`top_ground_row_px` (the rest shows no ground within range), its
        border mapped through the distortion model. Its sides are the only edges that are not
        pinned on the far circle: ``_BORDER_STEP_PX`` follows a crest's bend there.
        """
        w, h = self.camera.size
        top = min(self.top_ground_row_px, h - 2) - 0.5
        across = np.linspace(-0.5, w - 0.5, int(np.ceil(w / _BORDER_STEP_PX)) + 1)
        down = np.linspace(top, h - 0.5, int(np.ceil((h - 0.5 - top) / _BORDER_STEP_PX)) + 1)
        border_px = np.concatenate(
            [
                np.stack([across, np.full_like(across, top)], 1)[:-1],
                np.stack([np.full_like(down, w - 0.5), down], 1)[:-1],
                np.stack([across[::-1], np.full_like(across, h - 0.5)], 1)[:-1],
                np.stack([np.full_like(down, -0.5), down[::-1]], 1)[:-1],
            ]
        )
        region = Polygon(self.camera.normalized_from_pixels(border_px))
        return self.ground_polygons(region, step_px=_BORDER_STEP_PX)

    def image_polygons_to_ground(
        self, polygons_px: list[Polygon], surface: Surface | None = None
    ) -> BaseGeometry:
        """Pixel-space polygons (with holes) -> their footprint on ``surface`` (default: the ground) within range."""
        if not polygons_px:
            return Polygon()
        norm = [
            Polygon(
                self.camera.normalized_from_pixels(np.asarray(p.exterior.coords)),
                [self.camera.normalized_from_pixels(np.asarray(r.coords)) for r in p.interiors],
            )
            for p in polygons_px
        ]
        # Contours of ragged masks touch themselves (rings pinched at a pixel): repair before the union.
        norm = [p if p.is_valid else shapely.make_valid(p) for p in norm]
        region = norm[0] if len(norm) == 1 else shapely.union_all(norm)
        region = shapely.union_all(_polygonal(region))  # no stray lines or points from the repair
        return self.ground_polygons(region, surface)


def _polygonal(geom: BaseGeometry) -> list[Polygon]:
    """The polygons of any geometry (a repaired ring can leave lines and points beside them)."""
    return [g for g in shapely.get_parts(geom) if g.geom_type == "Polygon"] + [
        p for g in shapely.get_parts(geom) if g.geom_type == "MultiPolygon" for p in g.geoms
    ]
