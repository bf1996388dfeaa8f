"""One frame's geometry: rays of pixels in the world, and image regions projected to the ground.

Image polygons are projected to the ground through a homography of the undistorted, normalised
image plane. Only ground within ``max_range_m`` of the camera counts: the polygon is first clipped
in the image to the half-plane "at most ``max_range_m`` ahead on the ground" (a straight line in
the undistorted image, so this also cuts away everything at or above the horizon), then
projected, then cut to the disc of radius ``max_range_m`` around the camera.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from hdmap_seg.geo.camera import CameraModel, apply_homography, ground_homography

# Vertices per image edge when the image border is mapped through the distortion model.
_BORDER_POINTS = 16
_DISC_SEGMENTS = 16  # per quarter circle


@dataclass
class FrameGeometry:
    """A camera at one pose over level ground. ``ground_z_m`` is the road surface's world height."""

    camera: CameraModel
    T_world_from_cam: np.ndarray
    ground_z_m: float
    max_range_m: float

    @property
    def center(self) -> np.ndarray:
        """Camera centre in the world, ``(3,)``."""
        return self.T_world_from_cam[:3, 3]

    @property
    def height_above_ground_m(self) -> float:
        return float(self.center[2] - self.ground_z_m)

    def rays_world(self, uv: np.ndarray) -> np.ndarray:
        """``(N, 2)`` pixels -> ``(N, 3)`` unit ray directions in the world."""
        return self.camera.rays_cam(uv) @ self.T_world_from_cam[:3, :3].T

    @cached_property
    def _heading_xy(self) -> np.ndarray:
        axis = self.T_world_from_cam[:2, 2]  # optical axis, horizontal part
        return axis / max(np.linalg.norm(axis), 1e-9)

    @cached_property
    def clip_region_norm(self) -> BaseGeometry:
        """The image (undistorted, normalised coordinates) cut to ground at most ``max_range_m`` ahead.

        With ``d = R m`` the ray of ``m = (x, y, 1)``, ``h`` the heading and ``Hc`` the camera height,
        the ground point lies ahead by ``Hc (d . h) / -d_z``; ``<= R`` is ``Hc (d.h) + R d_z <= 0``.
        """
        w, h = self.camera.size
        t = np.linspace(0.0, 1.0, _BORDER_POINTS, endpoint=False)
        border_px = np.concatenate(
            [
                np.stack([-0.5 + t * w, np.full_like(t, -0.5)], 1),
                np.stack([np.full_like(t, w - 0.5), -0.5 + t * h], 1),
                np.stack([w - 0.5 - t * w, np.full_like(t, h - 0.5)], 1),
                np.stack([np.full_like(t, -0.5), h - 0.5 - t * h], 1),
            ]
        )
        image = Polygon(self.camera.normalized_from_pixels(border_px))
        return image.intersection(_half_plane(self._range_coef, image.bounds))

    @cached_property
    def _range_coef(self) -> np.ndarray:
        R = self.T_world_from_cam[:3, :3]
        return self.height_above_ground_m * (self._heading_xy @ R[:2]) + self.max_range_m * R[2]

    def top_ground_row_px(self) -> int:
        """The highest image row (smallest ``v``) that shows ground within range; rows above cannot.

        Found along the image of the "``max_range_m`` ahead" line, sampled across the image width.
        """
        a, b, c = self._range_coef
        w, _ = self.camera.size
        x = self.camera.normalized_from_pixels(np.stack([np.linspace(0, w - 1, 9), np.zeros(9)], 1))[:, 0]
        if abs(b) < 1e-12:
            return 0
        line = np.stack([x, -(a * x + c) / b], 1)
        return max(0, int(np.floor(self.camera.pixels_from_normalized(line)[:, 1].min())) - 2)

    def _disc(self) -> Polygon:
        return shapely.Point(self.center[:2]).buffer(self.max_range_m, quad_segs=_DISC_SEGMENTS)

    def ground_polygons(self, region_norm: BaseGeometry, plane_z_m: float) -> BaseGeometry:
        """Project a region of the normalised image (already within :attr:`clip_region_norm`) to ``z = plane_z_m``."""
        if region_norm.is_empty:
            return region_norm
        H = ground_homography(self.T_world_from_cam, plane_z_m)
        on_ground = shapely.transform(region_norm, lambda xy: apply_homography(H, xy))
        if not on_ground.is_valid:  # far vertices crowd together; rounding can pinch a ring
            on_ground = shapely.union_all(_polygonal(shapely.make_valid(on_ground)))
        return on_ground.intersection(self._disc())

    def visible_ground(self) -> BaseGeometry:
        """The ground this frame sees within range (its footprint)."""
        return self.ground_polygons(self.clip_region_norm, self.ground_z_m)

    def image_polygons_to_ground(self, polygons_px: list[Polygon], plane_z_m: float) -> BaseGeometry:
        """Pixel-space polygons (with holes) -> their ground footprint within range."""
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
        region = shapely.intersection(region, self.clip_region_norm)
        region = shapely.union_all(_polygonal(region))  # no stray lines or points from the repair
        return self.ground_polygons(region, plane_z_m)


def _half_plane(coef: np.ndarray, bounds: tuple[float, float, float, float]) -> Polygon:
    """The part of the box ``bounds`` (grown) where ``coef @ (x, y, 1) <= 0`` (Sutherland-Hodgman on 4 corners)."""
    x0, y0, x1, y1 = bounds
    pad = 1.0 + max(x1 - x0, y1 - y0)
    box = [(x0 - pad, y0 - pad), (x1 + pad, y0 - pad), (x1 + pad, y1 + pad), (x0 - pad, y1 + pad)]
    f = [coef[0] * x + coef[1] * y + coef[2] for x, y in box]
    out = []
    for i in range(4):
        j = (i + 1) % 4
        if f[i] <= 0:
            out.append(box[i])
        if (f[i] <= 0) != (f[j] <= 0):
            s = f[i] / (f[i] - f[j])
            out.append((box[i][0] + s * (box[j][0] - box[i][0]), box[i][1] + s * (box[j][1] - box[i][1])))
    return Polygon(out) if len(out) >= 3 else Polygon()


def _polygonal(geom: BaseGeometry) -> list[Polygon]:
    """The polygons of any geometry (a repaired ring can leave lines and points beside them)."""
    return [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
