"""Render a :class:`~hdmap_seg.synthetic.world.World` into an RGB frame and its label mask.

How (all vectorized numpy/OpenCV, one core):

- Ground: every pixel's ray is intersected with the ground: the plane ``z = 0`` in closed form
  for a flat world; on a terrain, by marching along the rays through a height grid (first
  sign change of ``ray_z - ground_z``, then regula falsi) and one exact Newton step on the
  terrain itself. The hit point's road coordinates ``(s, d)`` come in closed form from the
  road's pieces (:meth:`RoadGeometry.road_coords`), and the cross-section gives class and material.
- Everything that stands up (poles, sign plates and posts, trees, buildings, cars) is a set of
  planar polygons: projected, filled with ``cv2.fillPoly`` (sub-pixel), and z-tested per pixel
  against a depth buffer whose depth is the exact plane depth at that pixel. Cylinders are
  camera-facing quads, tree crowns camera-facing ellipses. So near objects hide far ones, and
  everything hides the ground behind it.
- Shadows: each object's shadow polygon on the ground (on a terrain: on the level plane
  through the object's base), projected and filled; it darkens the pixels whose visible
  surface is the ground.
- Then light, haze, sky, and the camera's faults: blur, sensor noise, JPEG artefacts.

Labels (docs/conventions.md): 0 background, 1 road, 2 lane_marking, 3 median, 4 pole, 5 sign.
A pole's arm and lamp head are pole; a sign's own thin post is background (it is not a pole of
the ground truth), a pole that carries a sign stays pole. Sign plates are sign from both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from hdmap_seg.geo.frames import invert_transform
from hdmap_seg.synthetic.camera import CameraRig
from hdmap_seg.synthetic.world import SIGN_POST_COLOR, Box, World

BACKGROUND, ROAD, LANE_MARKING, MEDIAN, POLE, SIGN = 0, 1, 2, 3, 4, 5

_NEAR_M = 0.3  # near clipping plane
_MAX_GROUND_M = 400.0  # ground beyond this along the ray is left to the sky/haze
_CULL_SMALL_M = 130.0  # poles, signs, trees and cars farther than this are not drawn
_CULL_LARGE_M = 350.0
_BASE_ARC_POINTS = 9  # points of the near half of a pole's base circle (a few px wide when near)
_TEX = 512  # side of the tiling noise textures
_HEIGHT_GRID_M = 2.0  # spacing of the terrain's height grid the rays march through
_MARCH_STEPS = 32  # geometric steps of a ray's march through the slab of the terrain's heights
_GUESS_BAND = 0.02  # half-width of a pixel's bracket around its interpolated depth (relative)
_COARSE_ROWS, _COARSE_COLS = 4, 8  # the coarse march's pixel spacing


@dataclass
class Frame:
    """One rendered frame: ``rgb`` (H, W, 3) uint8, ``label`` (H, W) uint8 class ids,
    ``depth_m`` (H, W) float32 z-depth in the camera (inf for sky), and ``jpeg``: the JPEG file
    whose artefacts ``rgb`` carries (None when rendered without camera faults)."""

    rgb: np.ndarray
    label: np.ndarray
    depth_m: np.ndarray
    jpeg: bytes | None = None


def _value_noise(rng: np.random.Generator, size: int, octaves: int = 5) -> np.ndarray:
    """A tiling multi-octave noise texture in [-1, 1], ``(size, size)`` float32."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = 4 * 2**o
        coarse = rng.standard_normal((cells, cells)).astype(np.float32)
        # Tile-wrapped upsampling keeps the texture seamless.
        big = cv2.resize(np.tile(coarse, (3, 3)), (3 * size, 3 * size), interpolation=cv2.INTER_CUBIC)
        out += amp * big[size : 2 * size, size : 2 * size]
        total += amp
        amp *= 0.55
    out /= total
    return np.clip(out / (3 * out.std() + 1e-6), -1, 1)


class Renderer:
    """Renders worlds through one camera rig. Holds per-rig precomputed rays and textures.

    ``render(world, T_world_from_imu, t_s, rng)`` is deterministic for a given ``rng`` state.
    """

    def __init__(self, rig: CameraRig):
        self.rig = rig
        H, W = rig.height, rig.width
        K = rig.K
        self.fx, self.fy, self.cx, self.cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        u = (np.arange(W, dtype=np.float32) - self.cx) / self.fx
        v = (np.arange(H, dtype=np.float32) - self.cy) / self.fy
        self.ray_u = u  # x/z of each column's ray
        self.ray_v = v  # y/z of each row's ray
        self.sky_shape = (max(W // 4, 2), max(H // 4, 2))
        us = (np.linspace(0, W - 1, self.sky_shape[0], dtype=np.float32) - self.cx) / self.fx
        vs = (np.linspace(0, H - 1, self.sky_shape[1], dtype=np.float32) - self.cy) / self.fy
        self.rays_sky = np.stack(np.broadcast_arrays(us[None, :], vs[:, None], np.float32(1)), -1).reshape(
            -1, 3
        )
        self.T_imu_from_cam = invert_transform(rig.T_cam_from_imu)
        tex_rng = np.random.default_rng(12345)  # textures are fixed: part of the renderer, not the world
        self.ground_tex = _value_noise(tex_rng, _TEX)
        self.detail_tex = tex_rng.standard_normal((_TEX, _TEX)).astype(np.float32).clip(-2.5, 2.5) / 2.5
        self.sensor_noise = tex_rng.standard_normal((H + 64, W + 64, 3)).astype(np.float32)

    # ------------------------------------------------------------------------------- public

    def render(
        self,
        world: World,
        T_world_from_imu: np.ndarray,
        t_s: float = 0.0,
        rng: np.random.Generator | None = None,
        degrade: bool = True,
    ) -> Frame:
        """Render one frame of ``world`` seen from the vehicle pose ``T_world_from_imu`` at time ``t_s``.

        ``rng`` drives per-frame variation (exposure, blur, noise, JPEG quality); ``degrade=False``
        returns the clean image (tests).
        """
        rng = rng if rng is not None else np.random.default_rng(0)
        H, W = self.rig.height, self.rig.width
        style = world.style
        T_world_from_cam = T_world_from_imu @ self.T_imu_from_cam
        self.R_wc = T_world_from_cam[:3, :3]
        self.o = T_world_from_cam[:3, 3]
        self.T_cam_from_world = invert_transform(T_world_from_cam)
        sun = np.array(
            [
                np.cos(style.sun_elevation_rad) * np.cos(style.sun_azimuth_rad),
                np.cos(style.sun_elevation_rad) * np.sin(style.sun_azimuth_rad),
                np.sin(style.sun_elevation_rad),
            ]
        )
        self.sun = sun
        self.ambient = 0.55 + 0.3 * (1.0 - style.sun_strength)
        self.direct = 0.55 * style.sun_strength

        self.color = self._sky(world, self.R_wc)
        self.label = np.zeros((H, W), np.uint8)
        self.zbuf = np.full((H, W), np.inf, np.float32)
        is_ground = self._ground(world)
        self._covered = np.zeros((H, W), bool)  # pixels an object won

        self._objects(world, t_s)
        ground_visible = is_ground & ~self._covered

        # Shadows fall on the pixels whose visible surface is still the ground.
        light = np.ones((H, W), np.float32)
        if style.sun_strength > 0.3 and style.sun_elevation_rad > 0.15:
            light[self._shadows(world, t_s) & ground_visible] = 1.0 - 0.55 * style.sun_strength

        # Haze towards the horizon colour with distance (not on the sky, whose depth is inf).
        depth = self.zbuf
        fog = np.exp(depth * np.float32(-1.0 / style.haze_m))
        fog[~(is_ground | self._covered)] = 1.0
        horizon = np.asarray(style.sky_horizon, np.float32)
        img = self.color * (fog * light)[..., None]
        img += (1.0 - fog)[..., None] * horizon
        gain = 255.0 * style.exposure * rng.uniform(0.9, 1.1) * rng.uniform(0.95, 1.05, 3)
        rgb = cv2.convertScaleAbs(cv2.multiply(img, (*gain.tolist(), 0.0)))
        jpeg = None
        if degrade:
            rgb, jpeg = self._degrade(rgb, rng)
        return Frame(rgb, self.label.copy(), depth.copy(), jpeg)

    # ------------------------------------------------------------------------------- ground

    def _ground(self, world: World) -> np.ndarray:
        """Shade the pixels that see the ground; returns their ``(H, W)`` mask.

        Only the rows below the horizon are computed. The cross-section is a sorted list of
        ``|d|`` boundaries: one ``searchsorted`` gives every pixel its zone (median, kerb, lane,
        marking, sidewalk, verge); median gaps, dashes and paving joints then fix small subsets.
        """
        H, W = self.rig.height, self.rig.width
        style, sec = world.style, world.section
        hit = np.zeros((H, W), bool)
        found = self._flat_hits(world) if world.terrain.is_flat else self._terrain_hits(world)
        if found is None:
            return hit
        r0, hit_b, t_hit, gx, gy, s, d = found
        rows = slice(r0, H)
        ad = np.abs(d)

        # Zones: (upper |d| bound, label, material, kind). Materials index the palette below.
        VERGE, ASPHALT, PAINT, MEDIAN_M, SIDEWALK, KERB, JOINT = range(7)
        hm, edge, kb, hw = sec.half_median_m, sec.road_edge_m, sec.kerb_band_m, 0.5 * sec.marking_width_m
        zones = [(hm - kb, MEDIAN, MEDIAN_M, "median"), (hm, MEDIAN, KERB, "median")]
        for k, (c, line_style) in enumerate(sec.marking_lines()):
            zones.append((c - hw, ROAD, ASPHALT, "road"))
            zones.append((c + hw, LANE_MARKING, PAINT, "inner" if k == 0 else line_style))
        zones += [
            (edge, ROAD, ASPHALT, "road"),
            (edge + kb, BACKGROUND, KERB, "kerb"),
            (edge + sec.sidewalk_width_m, BACKGROUND, SIDEWALK, "sidewalk"),
            (np.inf, BACKGROUND, VERGE, "verge"),
        ]
        upper = np.array([z[0] for z in zones], np.float32)
        z_label = np.array([z[1] for z in zones], np.uint8)
        z_mat = np.array([z[2] for z in zones], np.uint8)
        kinds = [z[3] for z in zones]
        zone = np.minimum(np.searchsorted(upper, ad, side="right"), len(zones) - 1).astype(np.uint8)
        label = z_label[zone]
        mat = z_mat[zone]

        def subset(names: tuple[str, ...]) -> np.ndarray:
            ids = [i for i, k in enumerate(kinds) if k in names]
            return np.flatnonzero(np.isin(zone, ids)) if ids else np.zeros(0, np.int64)

        idx = subset(("median", "inner"))  # no median, and no line along it, in its gaps
        gap = idx[world.in_median_gap(s[idx])]
        label[gap], mat[gap] = ROAD, ASPHALT
        idx = subset(("dashed",))
        off = idx[np.mod(s[idx], sec.dash_length_m + sec.dash_gap_m) >= sec.dash_length_m]
        label[off], mat[off] = ROAD, ASPHALT
        idx = subset(("sidewalk",))
        joint = (np.mod(s[idx], 1.0) < 0.04) | (np.mod(ad[idx] - edge, 1.0) < 0.04)
        mat[idx[joint]] = JOINT

        # Materials: a colour per zone, modulated by world-fixed noise.
        m = _TEX - 1
        gxr, gyr = gx.ravel(), gy.ravel()
        tex = self.ground_tex[(gxr * 6).astype(np.int32) & m, (gyr * 6).astype(np.int32) & m]
        big = self.ground_tex[(gxr * 0.4).astype(np.int32) & m, (gyr * 0.4).astype(np.int32) & m]
        palette = np.array(
            [
                style.verge,
                style.asphalt,
                style.marking,
                style.median,
                style.sidewalk,
                style.kerb,
                np.asarray(style.sidewalk) * 0.8,
            ],
            np.float32,
        )
        rough = np.array([1.0, 1.0, 0.3, 1.6 if style.median_grass else 1.0, 1.0, 0.6, 1.0], np.float32)
        light = np.float32(self.ambient + self.direct * np.sin(style.sun_elevation_rad))
        shade = (1.0 + np.float32(style.texture_amp) * tex * rough[mat] + 0.08 * big) * light
        col = (palette[mat] * shade[:, None]).reshape(H - r0, W, 3)
        self.color[rows] = np.where(hit_b[..., None], col, self.color[rows])
        self.label[rows] = np.where(hit_b, label.reshape(H - r0, W), BACKGROUND)
        self.zbuf[rows] = np.where(hit_b, t_hit, np.inf)
        hit[rows] = hit_b
        return hit

    def _world_dir(self, k: int, rows: slice) -> np.ndarray:
        """Component ``k`` of the world directions of the rays of ``rows``, ``(h, W)`` float32."""
        R = self.R_wc.astype(np.float32)
        return R[k, 0] * self.ray_u[None, :] + (R[k, 1] * self.ray_v[rows, None] + R[k, 2])

    def _flat_hits(self, world: World):
        """Rays against the plane ``z = 0``: ``(r0, hit (h, W), t (h, W), x, y (h, W), s, d (h*W,))``
        over the rows ``r0:`` below the horizon, or None when no ray meets the ground."""
        H = self.rig.height
        R = self.R_wc.astype(np.float32)
        u, v = self.ray_u, self.ray_v
        # The ray meets z = 0 within _MAX_GROUND_M of depth where its world z is below thr; the
        # rays' z is linear in u, so a row's extreme is at its first or last column.
        thr = np.float32(-self.o[2] / _MAX_GROUND_M)
        ends = np.minimum(R[2, 0] * u[0], R[2, 0] * u[-1]) + R[2, 1] * v + R[2, 2]
        rows_hit = np.flatnonzero(ends < thr)
        if rows_hit.size == 0:
            return None
        r0 = int(rows_hit.min())
        rows = slice(r0, H)
        rz = self._world_dir(2, rows)
        hit_b = rz < thr
        t_hit = np.float32(-self.o[2]) / np.where(hit_b, rz, thr)  # z-depth: the rays have z = 1 in cam
        gx = np.float32(self.o[0]) + t_hit * self._world_dir(0, rows)
        gy = np.float32(self.o[1]) + t_hit * self._world_dir(1, rows)

        s_cam, _ = world.road.road_coords(np.array([self.o[0]]), np.array([self.o[1]]))
        pieces = world.road.pieces_near(float(s_cam[0]), 80.0, _MAX_GROUND_M + 80.0)
        s, d = world.road.road_coords(gx.ravel(), gy.ravel(), pieces)
        return r0, hit_b, t_hit, gx, gy, s, d

    def _terrain_hits(self, world: World):
        """Rays against the terrain; returns what :meth:`_flat_hits` does.

        A fixed-point iteration on local planes diverges where the road ahead is steeper than
        the ray, so the rays march instead, through a height grid (``_HEIGHT_GRID_M``,
        bilinear) over the view frustum. Each ray marches only through the slab of heights the
        grid holds (it cannot meet the ground above or below it), in ``_MARCH_STEPS``
        geometric steps, to its first sign change of ``ray_z - ground_z``. Only a coarse set
        of rays (every ``_COARSE_ROWS`` rows and ``_COARSE_COLS`` columns) marches; a pixel
        whose four coarse neighbours hit at similar depths starts from their depths
        interpolated (in ``1/depth``, which is exact on a plane) and checks a narrow bracket
        around it; the others (silhouettes of crests, the horizon) march themselves. A secant
        or regula falsi step on the grid, then one Newton step on the exact terrain, remove
        the grid's error (it bends at the crown's and the banking's kinks).
        """
        H, W = self.rig.height, self.rig.width
        o = self.o.astype(np.float32)
        heights = _HeightGrid.over_frustum(world, self.o, self.R_wc, self.ray_u, self.ray_v)
        z_lo, z_hi = heights.z_min - 0.01, heights.z_max + 0.01

        def f(t, rx, ry, rz):  # the ray's height above the ground at z-depth t
            return (o[2] + t * rz) - heights(o[0] + t * rx, o[1] + t * ry)

        def march(rx, ry, rz, t_start, steps):  # (n,) rays -> brackets (ta, fa, tb, fb), whether they hit
            with np.errstate(divide="ignore", invalid="ignore"):
                t_in = np.where(rz < 0, (o[2] - z_hi) / -rz, 0.0)
                t_out = np.where(rz < 0, (o[2] - z_lo) / -rz, np.where(rz > 0, (z_hi - o[2]) / rz, np.inf))
            t_in = np.maximum(t_in, t_start).astype(np.float32)
            t_out = np.minimum(t_out, _MAX_GROUND_M).astype(np.float32)
            live = np.flatnonzero(t_out > t_in)
            n = len(rx)
            ta, tb = np.zeros(n, np.float32), np.zeros(n, np.float32)
            fa, fb = np.ones(n, np.float32), np.ones(n, np.float32)
            hit = np.zeros(n, bool)
            if live.size == 0:
                return ta, fa, tb, fb, hit
            frac = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)[None, :]
            a, b = t_in[live, None], t_out[live, None]
            ts = a * (b / a) ** frac
            fs = f(ts, rx[live, None], ry[live, None], rz[live, None])
            below = fs <= 0
            k = np.maximum(np.argmax(below, axis=1), 1)
            i = np.arange(live.size)
            ta[live], fa[live], tb[live], fb[live] = ts[i, k - 1], fs[i, k - 1], ts[i, k], fs[i, k]
            hit[live] = below.any(axis=1)
            return ta, fa, tb, fb, hit

        rows_c = np.unique(np.r_[np.arange(0, H, _COARSE_ROWS), H - 1])
        cols_c = np.unique(np.r_[np.arange(0, W, _COARSE_COLS), W - 1])
        dirs_c = [self._world_dir(k, slice(None))[np.ix_(rows_c, cols_c)].ravel() for k in range(3)]
        ta, fa, tb, fb, hit_c = march(*dirs_c, _NEAR_M, _MARCH_STEPS)
        if not hit_c.any():
            return None
        t_c = _regula_falsi(lambda t, i: f(t, *(r[i] for r in dirs_c)), ta, fa, tb, fb, hit_c, 6)[0]
        t_c = np.where(hit_c, t_c, np.inf).reshape(len(rows_c), len(cols_c))

        # Each pixel's four coarse neighbours, and its place between them.
        r0 = int(rows_c[max(int(np.flatnonzero(np.isfinite(t_c).any(axis=1)).min()) - 1, 0)])
        rows = slice(r0, H)
        r_px, c_px = np.arange(r0, H), np.arange(W)
        i0 = np.clip(np.searchsorted(rows_c, r_px, side="right") - 1, 0, len(rows_c) - 2)
        j0 = np.clip(np.searchsorted(cols_c, c_px, side="right") - 1, 0, len(cols_c) - 2)
        wr = ((r_px - rows_c[i0]) / (rows_c[i0 + 1] - rows_c[i0])).astype(np.float32)[:, None]
        wc = ((c_px - cols_c[j0]) / (cols_c[j0 + 1] - cols_c[j0])).astype(np.float32)[None, :]
        q00, q01 = t_c[np.ix_(i0, j0)], t_c[np.ix_(i0, j0 + 1)]
        q10, q11 = t_c[np.ix_(i0 + 1, j0)], t_c[np.ix_(i0 + 1, j0 + 1)]
        t_lo = np.minimum(np.minimum(q00, q01), np.minimum(q10, q11)).ravel()
        t_hi = np.maximum(np.maximum(q00, q01), np.maximum(q10, q11)).ravel()
        inv = (1 - wr) * ((1 - wc) / q00 + wc / q01) + wr * ((1 - wc) / q10 + wc / q11)
        maybe = np.isfinite(t_lo)  # a pixel whose four neighbours all miss misses too
        dirs = [self._world_dir(k, rows).ravel() for k in range(3)]
        n_px = (H - r0) * W
        t_px, slope = np.full(n_px, np.inf, np.float32), np.zeros(n_px, np.float32)
        hit = np.zeros(n_px, bool)

        smooth = np.flatnonzero(maybe & np.isfinite(t_hi) & (t_hi <= 1.5 * t_lo))
        guess = 1.0 / inv.ravel()[smooth]
        lo, hi = guess * np.float32(1 - _GUESS_BAND), guess * np.float32(1 + _GUESS_BAND)
        sub = [r[smooth] for r in dirs]
        f_lo, f_hi = f(lo, *sub), f(hi, *sub)
        ok = (f_lo > 0) & (f_hi <= 0)
        good = smooth[ok]
        slope[good] = (f_hi[ok] - f_lo[ok]) / (hi[ok] - lo[ok])
        t_px[good] = lo[ok] - f_lo[ok] / slope[good]
        hit[good] = True
        rest = np.setdiff1d(np.flatnonzero(maybe), good, assume_unique=True)
        if rest.size:
            # A pixel on a silhouette sees ground at least as far as the nearest of its neighbours.
            t_start = np.maximum(0.9 * t_lo[rest], _NEAR_M)
            ta, fa, tb, fb, hit_r = march(*(r[rest] for r in dirs), t_start, _MARCH_STEPS // 2)
            rest = rest[hit_r]
            t_px[rest], slope[rest] = _regula_falsi(
                lambda t, i: f(t, *(r[rest[i]] for r in dirs)),
                ta[hit_r],
                fa[hit_r],
                tb[hit_r],
                fb[hit_r],
                None,
                5,
            )
            hit[rest] = True

        # One Newton step on the exact terrain, with the grid's slope along the ray.
        idx = np.flatnonzero(hit)
        t_px, slope = t_px[idx], slope[idx]
        pieces = heights.pieces
        rx, ry, rz = (r[idx] for r in dirs)
        s, d = world.road.road_coords(o[0] + t_px * rx, o[1] + t_px * ry, pieces)
        f_exact = (o[2] + t_px * rz) - world.terrain.height_m(s, d)
        step = np.where(slope < -1e-6, f_exact / np.minimum(slope, -1e-6), 0.0).astype(np.float32)
        t_px = np.clip(t_px - step, 0.5 * t_px, 2.0 * t_px)
        x_px, y_px = o[0] + t_px * rx, o[1] + t_px * ry
        s, d = world.road.road_coords(x_px, y_px, pieces)

        t_all = np.full(n_px, np.inf, np.float32)
        gx, gy = np.full(n_px, o[0], np.float32), np.full(n_px, o[1], np.float32)
        s_all, d_all = np.zeros(n_px, np.float32), np.zeros(n_px, np.float32)
        t_all[idx], gx[idx], gy[idx], s_all[idx], d_all[idx] = t_px, x_px, y_px, s, d
        shape = (H - r0, W)
        return (
            r0,
            hit.reshape(shape),
            t_all.reshape(shape),
            gx.reshape(shape),
            gy.reshape(shape),
            s_all,
            d_all,
        )

    def _sky(self, world: World, R_wc: np.ndarray) -> np.ndarray:
        """The sky for the whole frame, ``(H, W, 3)``: computed at 1/4 resolution (it is smooth)."""
        style = world.style
        r = self.rays_sky @ R_wc.T.astype(np.float32)
        elev = np.arctan2(r[:, 2], np.hypot(r[:, 0], r[:, 1]))
        az = np.arctan2(r[:, 1], r[:, 0])
        w = np.clip(elev / 0.6, 0, 1)[:, None]
        col = np.asarray(style.sky_horizon, np.float32) * (1 - w) + np.asarray(style.sky_top, np.float32) * w
        # Clouds: the noise texture stretched over the sky dome, fixed to the world.
        cu = ((az + np.pi) * 60).astype(np.int32) & (_TEX - 1)
        cv = (np.clip(elev, 0, 1.5) * 200).astype(np.int32) & (_TEX - 1)
        cloud = np.clip(self.ground_tex[cv, cu] * 1.5 - 0.2, 0, 1)[:, None] * (1 - 0.5 * style.sun_strength)
        sky = (col * (1 - cloud) + 0.9 * cloud).reshape(self.sky_shape[1], self.sky_shape[0], 3)
        return cv2.resize(sky, (self.rig.width, self.rig.height), interpolation=cv2.INTER_LINEAR)

    # ------------------------------------------------------------------------------ objects

    def _objects(self, world: World, t_s: float) -> None:
        o = self.o
        fwd = self.R_wc[:, 2]
        fwd_h = fwd[:2] / (np.linalg.norm(fwd[:2]) + 1e-9)

        def near(x: float, y: float, reach: float, radius: float) -> bool:
            dx, dy = x - o[0], y - o[1]
            return dx * dx + dy * dy < reach * reach and dx * fwd_h[0] + dy * fwd_h[1] > -radius

        for b in world.buildings:
            if near(b.x_m, b.y_m, _CULL_LARGE_M, 0.5 * (b.length_m + b.width_m)):
                self._box(b, BACKGROUND)
        for v in world.vehicle_boxes(t_s):
            if near(v.x_m, v.y_m, _CULL_SMALL_M, v.length_m):
                self._box(v, BACKGROUND)
        for tr in world.trees:
            if near(tr.x_m, tr.y_m, _CULL_SMALL_M, tr.crown_radius_m + 1):
                self._cylinder(
                    tr.x_m,
                    tr.y_m,
                    tr.z0_m,
                    tr.z0_m + tr.trunk_height_m + tr.crown_radius_m,
                    tr.trunk_radius_m,
                    tr.trunk_color,
                    BACKGROUND,
                )
                zc = tr.z0_m + tr.trunk_height_m + 0.8 * tr.crown_radius_m
                self._billboard_ellipse(
                    tr.x_m, tr.y_m, zc, tr.crown_radius_m, 0.9 * tr.crown_radius_m, tr.crown_color, BACKGROUND
                )
        for p in world.poles:
            if not near(p.x_m, p.y_m, _CULL_SMALL_M, p.height_m):
                continue
            self._cylinder(p.x_m, p.y_m, p.z0_m, p.z0_m + p.height_m, p.radius_m, p.color, POLE)
            if p.kind == "lamp" and p.arm_m > 0:
                ax, ay = p.arm_dir
                top = p.z0_m + p.height_m - 0.3
                x1, y1 = p.x_m + ax * p.arm_m, p.y_m + ay * p.arm_m
                arm = np.array(
                    [[p.x_m, p.y_m, top - 0.1], [x1, y1, top - 0.1], [x1, y1, top], [p.x_m, p.y_m, top]]
                )
                self._flat_polygon(arm, p.color, POLE)
                hx, hy = p.x_m + ax * (p.arm_m + 0.5), p.y_m + ay * (p.arm_m + 0.5)
                head = np.array(
                    [[x1, y1, top - 0.2], [hx, hy, top - 0.2], [hx, hy, top + 0.02], [x1, y1, top + 0.02]]
                )
                self._flat_polygon(head, (0.85, 0.85, 0.8), POLE)
        for sg in world.signs:
            if near(sg.x_m, sg.y_m, _CULL_SMALL_M, 2.0):
                self._sign(sg)

    def _to_cam(self, P_world: np.ndarray) -> np.ndarray:
        return P_world @ self.T_cam_from_world[:3, :3].T + self.T_cam_from_world[:3, 3]

    def _raster(self, P_cam: np.ndarray):
        """Clip a planar polygon (camera frame) to the near plane and fill it.

        Returns ``(y0, y1, x0, x1, mask, z)`` for the pixel box it covers, with the per-pixel
        plane depth ``z``, or None when nothing is visible.
        """
        P = _clip_near(P_cam, _NEAR_M)
        if P is None:
            return None
        H, W = self.rig.height, self.rig.width
        u = self.fx * P[:, 0] / P[:, 2] + self.cx
        v = self.fy * P[:, 1] / P[:, 2] + self.cy
        x0, x1 = max(int(np.floor(u.min())), 0), min(int(np.ceil(u.max())) + 1, W)
        y0, y1 = max(int(np.floor(v.min())), 0), min(int(np.ceil(v.max())) + 1, H)
        if x0 >= x1 or y0 >= y1:
            return None
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        pts = np.round(np.stack([u - x0, v - y0], 1) * 16).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
        if not mask.any():
            return None
        # Plane n . X = c through the polygon; along pixel ray X = z * (u', v', 1): z = c / (n . ray).
        n = _cross(P[1] - P[0], P[2] - P[0])
        if n @ n < 1e-20 and len(P) > 3:
            n = _cross(P[2] - P[0], P[3] - P[0])
        c = float(n @ P[0])
        denom = n[0] * self.ray_u[None, x0:x1] + n[1] * self.ray_v[y0:y1, None] + n[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            z = c / denom
        bad = ~np.isfinite(z) | (z <= 0)
        if bad.any():
            z[bad] = P[:, 2].mean()
        np.minimum(np.maximum(z, P[:, 2].min(), out=z), P[:, 2].max(), out=z)
        return y0, y1, x0, x1, mask.view(bool), z.astype(np.float32)

    def _write(self, r, color, label: int, bias_m: float = 0.0) -> None:
        """Depth-test a rasterized polygon and write its colour and ``label`` where it wins.

        ``color``: (3,), (h, w, 3) over the polygon's pixel box, or a function of the winning
        pixels' mask returning their (n, 3) colours (shaders that only pay for visible pixels).
        """
        y0, y1, x0, x1, mask, z = r
        if bias_m:
            z = z + np.float32(bias_m)
        zb = self.zbuf[y0:y1, x0:x1]
        sel = mask & (z < zb)
        if not sel.any():
            return
        np.copyto(zb, z, where=sel)
        c = self.color[y0:y1, x0:x1]
        if callable(color):
            c[sel] = color(sel)
        else:
            np.copyto(c, np.asarray(color, np.float32), where=sel[..., None])
        np.copyto(self.label[y0:y1, x0:x1], label, where=sel)
        np.copyto(self._covered[y0:y1, x0:x1], True, where=sel)

    def _lit(self, color, normal_w: np.ndarray) -> np.ndarray:
        lam = max(0.0, float(normal_w @ self.sun))
        return np.asarray(color, np.float32) * (self.ambient + self.direct * lam)

    def _flat_polygon(self, P_world: np.ndarray, color, label: int, bias_m: float = 0.0) -> None:
        r = self._raster(self._to_cam(P_world))
        if r is None:
            return
        n = _cross(P_world[1] - P_world[0], P_world[2] - P_world[0])
        n = n / (np.sqrt(n @ n) + 1e-12)
        if n @ (self.o - P_world[0]) < 0:
            n = -n
        self._write(r, self._lit(color, n), label, bias_m)

    def _box(self, b: Box, label: int) -> None:
        c, s = np.cos(b.yaw_rad), np.sin(b.yaw_rad)
        hl, hw = 0.5 * b.length_m, 0.5 * b.width_m
        corners = np.array([[hl, hw], [-hl, hw], [-hl, -hw], [hl, -hw]])
        xy = corners @ np.array([[c, s], [-s, c]]) + [b.x_m, b.y_m]
        for i in range(4):
            a, e = xy[i], xy[(i + 1) % 4]
            mid = 0.5 * (a + e)
            normal = np.array([e[1] - a[1], -(e[0] - a[0]), 0.0])  # outward for ccw corners
            normal /= np.linalg.norm(normal)
            if normal[:2] @ (self.o[:2] - mid) <= 0:
                continue  # back face
            P = np.array(
                [[a[0], a[1], b.z0_m], [e[0], e[1], b.z0_m], [e[0], e[1], b.z1_m], [a[0], a[1], b.z1_m]]
            )
            r = self._raster(self._to_cam(P))
            if r is None:
                continue
            col = self._lit(b.color, normal)
            if b.windows:
                col = self._windows(r, P, col, b.ground_z_m)
            self._write(r, col, label)
        if self.o[2] > b.z1_m:
            top = np.column_stack([xy, np.full(4, b.z1_m)])
            r = self._raster(self._to_cam(top))
            if r is not None:
                self._write(r, self._lit(b.color, np.array([0.0, 0.0, 1.0])), label)

    def _windows(self, r, P_world: np.ndarray, col: np.ndarray, ground_z_m: float):
        """A shader for :meth:`_write`: facade colour with a grid of windows, on the visible pixels.

        Face coordinates are linear in the camera point ``X = z * ray``: along the facade
        ``a = z * (alpha . ray) + beta``, height above ``ground_z_m`` ``h = z * (gamma . ray) + delta``.
        """
        y0, _, x0, _, _, z = r
        axis = np.array([*(P_world[1, :2] - P_world[0, :2]), 0.0])
        length = float(np.linalg.norm(axis))
        axis /= length
        alpha = (self.R_wc.T @ axis).astype(np.float32)
        beta = np.float32(axis @ (self.o - P_world[0]))
        gamma = self.R_wc[2].astype(np.float32)
        delta = np.float32(self.o[2] - ground_z_m)
        window = np.asarray((0.18, 0.22, 0.28), np.float32) * (self.ambient + 0.3)

        def shade(sel: np.ndarray) -> np.ndarray:
            rr, cc = np.nonzero(sel)
            zz, uu, vv = z[rr, cc], self.ray_u[x0 + cc], self.ray_v[y0 + rr]
            a = zz * (alpha[0] * uu + alpha[1] * vv + alpha[2]) + beta
            h = zz * (gamma[0] * uu + gamma[1] * vv + gamma[2]) + delta
            am, hm = np.mod(a, 3.5), np.mod(h, 3.2)
            win = (
                (am > 0.9) & (am < 2.6) & (hm > 1.0) & (hm < 2.4) & (h > 1.2) & (a > 0.5) & (a < length - 0.5)
            )
            out = np.empty((rr.size, 3), np.float32)
            out[:] = col
            out[win] = window
            return out

        return shade

    def _cylinder(self, x: float, y: float, z0: float, z1: float, radius: float, color, label: int) -> None:
        """A vertical cylinder: its outline (the sides, the near half of its base circle below) filled
        with the depth of the plane through its axis facing the camera, shaded across its width.

        The base is drawn round, not as a quad's straight edge: the lowest point of a real pole's image
        is its base circle's point nearest the image plane, which map building measures poles by.
        """
        dx, dy = x - self.o[0], y - self.o[1]
        dist = np.hypot(dx, dy)
        if dist < radius + 0.05:
            return
        px, py = -dy / dist * radius, dx / dist * radius  # half-width across the view direction
        # From one side round through the point facing the camera to the other (quad's plane first).
        a = np.arctan2(py, px) + np.linspace(0.0, np.pi, _BASE_ARC_POINTS)
        arc = np.c_[x + radius * np.cos(a), y + radius * np.sin(a), np.full(_BASE_ARC_POINTS, z0)]
        P = np.vstack([[[x - px, y - py, z1], [x + px, y + py, z1]], arc])
        r = self._raster(self._to_cam(P))
        if r is None:
            return
        y0, y1, x0, x1 = r[:4]
        # Shade by the column's position across the projected axis: lit side to dark side.
        u_axis = self.fx * self._to_cam(np.array([[x, y, 0.5 * (z0 + z1)]]))[0]
        uc = u_axis[0] / u_axis[2] + self.cx
        half_px = max(self.fx * radius / max(dist, 1e-3), 0.5)
        across = np.clip((np.arange(x0, x1) - uc) / half_px, -1, 1).astype(np.float32)
        side = np.sign(px * self.sun[0] + py * self.sun[1])
        lam = np.clip(0.5 + 0.5 * side * across, 0, 1) * np.hypot(self.sun[0], self.sun[1])
        shade = self.ambient + self.direct * lam
        col = np.asarray(color, np.float32)[None, None, :] * np.broadcast_to(
            shade[None, :, None], (1, x1 - x0, 1)
        )
        col = np.broadcast_to(col, (y1 - y0, x1 - x0, 3))
        self._write(r, col, label, bias_m=-radius)

    def _billboard_ellipse(self, x, y, z, rx, rz, color, label: int) -> None:
        dx, dy = x - self.o[0], y - self.o[1]
        dist = np.hypot(dx, dy)
        if dist < rx + 0.3:
            return
        px, py = -dy / dist, dx / dist
        ang = np.linspace(0, 2 * np.pi, 18, endpoint=False)
        P = np.column_stack([x + px * rx * np.cos(ang), y + py * rx * np.cos(ang), z + rz * np.sin(ang)])
        r = self._raster(self._to_cam(P))
        if r is None:
            return
        y0, y1, x0, x1 = r[:4]
        # Foliage: leafy noise fixed to the screen patch, darker at the bottom.
        leaf = self.sensor_noise[y0:y1, x0:x1, 0]
        vv = np.linspace(-1, 1, y1 - y0, dtype=np.float32)[:, None]
        shade = (self.ambient + self.direct * 0.6) * (0.85 + 0.25 * np.clip(leaf, -1.5, 1.5) - 0.15 * vv)
        col = np.asarray(color, np.float32) * shade[..., None]
        self._write(r, col, label, bias_m=-0.6 * rx)

    def _sign(self, sg) -> None:
        f = np.array([np.cos(sg.facing_rad), np.sin(sg.facing_rad), 0.0])
        a = np.array([-f[1], f[0], 0.0])  # plate's horizontal axis
        centre = np.array([sg.x_m, sg.y_m, sg.centre_z_m])
        ph = sg.plate_height_m
        if sg.pole_id < 0:
            back = centre - 0.03 * f
            self._cylinder(
                back[0], back[1], sg.ground_z_m, sg.centre_z_m, sg.post_radius_m, SIGN_POST_COLOR, BACKGROUND
            )
        outline = _sign_outline(sg.shape, sg.size_m, ph)
        P = centre + outline[:, :1] * a + outline[:, 1:] * np.array([0.0, 0.0, 1.0])
        front = f @ (self.o - centre) > 0
        if not front:
            self._flat_polygon(P, (0.55, 0.56, 0.58), SIGN)
            return
        self._flat_polygon(P, sg.rim_color, SIGN)
        inner = centre + 0.75 * (P - centre) + 0.004 * f
        self._flat_polygon(inner, sg.face_color, SIGN, bias_m=0.0)
        glyph = _sign_glyph(sg.shape, sg.size_m, ph)
        Pg = centre + glyph[:, :1] * a + glyph[:, 1:] * np.array([0.0, 0.0, 1.0]) + 0.008 * f
        self._flat_polygon(Pg, sg.glyph_color, SIGN)

    # ------------------------------------------------------------------------------ shadows

    def _shadows(self, world: World, t_s: float) -> np.ndarray:
        """Mask of pixels that lie in some object's shadow on the ground (ignoring what hides them)."""
        H, W = self.rig.height, self.rig.width
        mask = np.zeros((H, W), np.uint8)
        st = world.style
        k = 1.0 / np.tan(st.sun_elevation_rad)
        off = -k * np.array(
            [np.cos(st.sun_azimuth_rad), np.sin(st.sun_azimuth_rad)]
        )  # shadow per metre of height
        o = self.o

        def draw(points_xy: np.ndarray, ground_z_m: float) -> None:
            # On a terrain the shadow lies on the level plane through the object's base.
            hull = cv2.convexHull(points_xy.astype(np.float32)).reshape(-1, 2)
            P = np.column_stack([hull, np.full(len(hull), ground_z_m)])
            Pc = _clip_near(self._to_cam(P), _NEAR_M)
            if Pc is None:
                return
            u = self.fx * Pc[:, 0] / Pc[:, 2] + self.cx
            v = self.fy * Pc[:, 1] / Pc[:, 2] + self.cy
            pts = np.round(np.stack([u, v], 1) * 16).astype(np.int64)
            if np.abs(pts).max() > 2**28:
                return
            cv2.fillPoly(mask, [pts.astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)

        def close(x, y, reach=_CULL_SMALL_M) -> bool:
            return (x - o[0]) ** 2 + (y - o[1]) ** 2 < reach**2

        for p in world.poles:
            if close(p.x_m, p.y_m):
                d = np.array([-off[1], off[0]]) / (np.linalg.norm(off) + 1e-9) * p.radius_m
                base = np.array([p.x_m, p.y_m])
                draw(
                    np.array([base - d, base + d, base + d + off * p.height_m, base - d + off * p.height_m]),
                    p.z0_m,
                )
        for tr in world.trees:
            if close(tr.x_m, tr.y_m):
                zc = tr.trunk_height_m + 0.8 * tr.crown_radius_m
                ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
                ring = np.column_stack([np.cos(ang), np.sin(ang)]) * tr.crown_radius_m
                draw(np.array([tr.x_m, tr.y_m]) + off * zc + ring, tr.z0_m)
        for b in list(world.buildings) + world.vehicle_boxes(t_s):
            if close(b.x_m, b.y_m, _CULL_LARGE_M if b.windows else _CULL_SMALL_M):
                c, s = np.cos(b.yaw_rad), np.sin(b.yaw_rad)
                hl, hw = 0.5 * b.length_m, 0.5 * b.width_m
                xy = np.array([[hl, hw], [-hl, hw], [-hl, -hw], [hl, -hw]]) @ np.array([[c, s], [-s, c]])
                xy = xy + [b.x_m, b.y_m]
                g = b.ground_z_m
                draw(np.vstack([xy + off * (b.z0_m - g), xy + off * (b.z1_m - g)]), g)
        for sg in world.signs:
            if close(sg.x_m, sg.y_m):
                a = np.array([-np.sin(sg.facing_rad), np.cos(sg.facing_rad)])
                c = np.array([sg.x_m, sg.y_m])
                hs, ph = 0.5 * sg.size_m, 0.5 * sg.plate_height_m
                draw(
                    np.array(
                        [
                            c - a * hs + off * (sg.height_m - ph),
                            c + a * hs + off * (sg.height_m - ph),
                            c + a * hs + off * (sg.height_m + ph),
                            c - a * hs + off * (sg.height_m + ph),
                        ]
                    ),
                    sg.ground_z_m,
                )
        return mask.astype(bool)

    # ------------------------------------------------------------------------- camera faults

    def _degrade(self, rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bytes]:
        """Blur, sometimes motion blur, sensor noise, JPEG compression: the image and its JPEG file."""
        H, W = rgb.shape[:2]
        sigma = rng.uniform(0.3, 1.1)
        img = cv2.GaussianBlur(rgb, (0, 0), sigmaX=sigma)
        if rng.random() < 0.25:  # horizontal motion blur
            n = int(rng.integers(3, 7))
            img = cv2.blur(img, (n, 1))
        oy, ox = rng.integers(0, 64, 2)
        noise = self.sensor_noise[oy : oy + H, ox : ox + W] * rng.uniform(1.5, 5.0)
        img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        quality = int(rng.integers(45, 95))
        # OpenCV encodes BGR; swap so that the file's colours are right, and back after decoding.
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("OpenCV could not encode a JPEG")
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy(), buf.tobytes()


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross product of two 3-vectors (np.cross costs ten times more for one pair)."""
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _clip_near(P: np.ndarray, near: float) -> np.ndarray | None:
    """Sutherland-Hodgman clip of a polygon (camera frame) to ``z >= near``."""
    inside = P[:, 2] >= near
    if inside.all():
        return P
    if not inside.any():
        return None
    out = []
    n = len(P)
    for i in range(n):
        a, b = P[i], P[(i + 1) % n]
        ia, ib = a[2] >= near, b[2] >= near
        if ia:
            out.append(a)
        if ia != ib:
            t = (near - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out) if len(out) >= 3 else None


def _sign_outline(shape: str, size_m: float, plate_h_m: float) -> np.ndarray:
    """``(N, 2)`` plate outline, (horizontal, vertical) metres about the centre, counter-clockwise."""
    if shape == "circle":
        ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        return 0.5 * size_m * np.column_stack([np.cos(ang), np.sin(ang)])
    if shape == "triangle":
        h = plate_h_m * np.sqrt(3) / 2
        return np.array([[-0.5 * size_m, -h / 3], [0.5 * size_m, -h / 3], [0.0, 2 * h / 3]])
    return 0.5 * np.array(
        [[-size_m, -plate_h_m], [size_m, -plate_h_m], [size_m, plate_h_m], [-size_m, plate_h_m]]
    )


def _sign_glyph(shape: str, size_m: float, plate_h_m: float) -> np.ndarray:
    """A simple symbol on the face: a bar (circles, rectangles) or an exclamation stroke (triangles)."""
    if shape == "triangle":
        return np.array([[-0.04, -0.1], [0.04, -0.1], [0.04, 0.2], [-0.04, 0.2]]) * size_m
    if shape == "circle":
        return np.array([[-0.3, -0.07], [0.3, -0.07], [0.3, 0.07], [-0.3, 0.07]]) * size_m
    return np.array(
        [[-0.35 * size_m, -0.05], [0.35 * size_m, -0.05], [0.35 * size_m, 0.05], [-0.35 * size_m, 0.05]]
    ) + [0.0, 0.1 * plate_h_m]


class _HeightGrid:
    """The terrain's height on a square grid of the world, looked up bilinearly (float32).

    Points outside the grid take its border's heights. ``pieces``: the road's pieces, nearest
    to the camera first, for the exact road coordinates of points in it.
    """

    def __init__(self, x0_m: float, y0_m: float, step_m: float, z_m: np.ndarray, pieces: list[int]):
        self.x0, self.y0, self.inv = np.float32(x0_m), np.float32(y0_m), np.float32(1.0 / step_m)
        self.ny, self.nx = z_m.shape
        self.z = np.ascontiguousarray(z_m, np.float32).ravel()
        self.z_min, self.z_max = float(self.z.min()), float(self.z.max())
        self.pieces = pieces

    @classmethod
    def over_frustum(cls, world: World, o, R_wc, ray_u, ray_v, step_m: float = _HEIGHT_GRID_M) -> _HeightGrid:
        """The grid over the camera's view up to ``_MAX_GROUND_M`` of depth: the pyramid from the
        camera to its four corner rays at that depth, whose box in ``(x, y)`` bounds every ray."""
        corners = np.array([[u, v, 1.0] for u in (ray_u[0], ray_u[-1]) for v in (ray_v[0], ray_v[-1])])
        far = o[:2] + _MAX_GROUND_M * (corners @ R_wc.T)[:, :2]
        lo = np.minimum(far.min(axis=0), o[:2]) - 2 * step_m
        hi = np.maximum(far.max(axis=0), o[:2]) + 2 * step_m
        n = np.ceil((hi - lo) / step_m).astype(int) + 1
        gx, gy = np.meshgrid(lo[0] + step_m * np.arange(n[0]), lo[1] + step_m * np.arange(n[1]))
        s_cam, _ = world.road.road_coords(np.array([o[0]]), np.array([o[1]]))
        pieces = world.road.pieces_near(float(s_cam[0]), np.inf, np.inf)  # all, nearest first
        s, d = world.road.road_coords(gx, gy, pieces)
        return cls(lo[0], lo[1], step_m, world.terrain.height_m(s, d), pieces)

    def __call__(self, x_m: np.ndarray, y_m: np.ndarray) -> np.ndarray:
        fx = (x_m - self.x0) * self.inv
        fy = (y_m - self.y0) * self.inv
        np.minimum(np.maximum(fx, 0, out=fx), self.nx - 1.001, out=fx)
        np.minimum(np.maximum(fy, 0, out=fy), self.ny - 1.001, out=fy)
        ix, iy = fx.astype(np.int32), fy.astype(np.int32)
        tx, ty = fx - ix, fy - iy
        i = iy * self.nx + ix
        z = self.z
        z00, z01, z10, z11 = z[i], z[i + 1], z[i + self.nx], z[i + self.nx + 1]
        top = z00 + tx * (z01 - z00)
        return top + ty * ((z10 + tx * (z11 - z10)) - top)


def _regula_falsi(f, ta, fa, tb, fb, active, iters: int):
    """Narrow brackets ``[ta, tb]`` (``fa > 0 >= fb``) of roots of ``f(t, i)`` (``i`` indexes the
    brackets) by the Illinois variant of regula falsi; ``active`` (bool, or None for all) picks
    the brackets to work on. Returns the roots' estimates and ``f``'s slope over the last bracket.
    """
    ta, fa, tb, fb = (np.array(a, np.float32) for a in (ta, fa, tb, fb))
    idx = np.arange(len(ta)) if active is None else np.flatnonzero(active)
    a, fa_, b, fb_ = ta[idx], fa[idx], tb[idx], fb[idx]
    fa_true, fb_true = fa_, fb_  # the weights halve; the slope wants f's own values
    side = np.zeros(len(idx), np.int8)
    for _ in range(iters):
        denom = fa_ - fb_
        t = np.where(denom > 0, b + fb_ * (b - a) / np.where(denom > 0, denom, 1), 0.5 * (a + b))
        ft = f(t, idx)
        above = ft > 0
        # Illinois: halve the value kept at the end that stays twice in a row.
        fb_ = np.where(above & (side == 1), 0.5 * fb_, fb_)
        fa_ = np.where(~above & (side == -1), 0.5 * fa_, fa_)
        a, fa_, fa_true = np.where(above, t, a), np.where(above, ft, fa_), np.where(above, ft, fa_true)
        b, fb_, fb_true = np.where(above, b, t), np.where(above, fb_, ft), np.where(above, fb_true, ft)
        side = np.where(above, 1, -1).astype(np.int8)
    denom = fa_ - fb_
    t = np.where(denom > 0, b + fb_ * (b - a) / np.where(denom > 0, denom, 1), 0.5 * (a + b))
    slope = np.where(b > a, (fb_true - fa_true) / np.where(b > a, b - a, 1), 0.0)
    t_out = np.full(len(ta), np.inf, np.float32)
    s_out = np.zeros(len(ta), np.float32)
    t_out[idx], s_out[idx] = t, slope
    return t_out, s_out
