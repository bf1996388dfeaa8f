"""Poles: per-frame instances, their ground-contact points, fused over frames into one Point each.

Per frame, connected components of the pole classes are split into instances: columns with few
pixels (a gap, a thin arm) and jumps of the bottom row between neighbouring columns (two poles at
different distances touching in the image) separate them. The base is the lowest row of an
instance at its axis's column there; its ray meets the ground in the pole's front edge, moved back by the
pole's radius (from its width in pixels) to the axis.

An observation's uncertainty is anisotropic: along the viewing direction a pixel of the base row
is ``(r^2 + Hc^2) / (Hc f)`` metres (``r`` range, ``Hc`` camera height, ``f`` focal length in px),
across it only ``r / f``. Tracks sum the information of their observations
(:mod:`hdmap_seg.vectorize.tracks`), so near views, and the bearings of many views, dominate.
"""

from __future__ import annotations

import numpy as np
from shapely.geometry import Point

from hdmap_seg.vectorize.components import components
from hdmap_seg.vectorize.config import PoleConfig
from hdmap_seg.vectorize.frame import FrameGeometry
from hdmap_seg.vectorize.layers import Feature
from hdmap_seg.vectorize.tracks import Track, TrackSet, assign, sighting_properties

# 99% of a chi-square with 2 degrees of freedom: the squared Mahalanobis gate of association.
_CHI2_2D_99 = 9.21
# Rows below a pole's base that must not be sign pixels (else the pole continues behind the sign).
_BELOW_CHECK_PX = 3
# The base's column is measured over the lowest rows of an instance: this fraction of its height, at least this many.
_BASE_ROWS_FRACTION = 0.1
_BASE_ROWS_MIN = 3


def pole_instances(
    pole_mask: np.ndarray, cfg: PoleConfig, blocked: np.ndarray | None = None, min_base_row: int = 0
) -> np.ndarray:
    """Pole instances of one frame: ``(K, 3)`` float ``[u_px, v_base_px, width_px]``.

    ``pole_mask`` is a ``(H, W)`` uint8/bool mask of pole pixels. ``v_base_px`` is the lower edge of
    the lowest pole pixel (pixel centres on integers). Instances whose base touches the bottom of
    the image, or rests on a ``blocked`` pixel (a sign in front of the pole), are not grounded and
    left out, as are components ending above ``min_base_row`` (their base would be out of range).
    """
    height = pole_mask.shape[0]
    out = []
    for x, y, sub in components(pole_mask, cfg.min_pixels, min_base_row):
        h = sub.shape[0]
        if h < cfg.min_height_px:
            continue
        counts = sub.sum(0)
        bottom = h - 1 - np.argmax(sub[::-1], axis=0)
        top = np.argmax(sub, axis=0)
        strong = counts >= max(1, cfg.split_fraction * counts.max())
        jump = np.abs(np.diff(bottom)) > cfg.split_base_jump_px
        starts = strong & ~np.concatenate([[False], strong[:-1] & ~jump])
        seg = np.cumsum(starts)
        for s in np.unique(seg[strong]):
            cols = np.flatnonzero(strong & (seg == s))
            if len(cols) < cfg.min_width_px:  # a slanted pole's edge column, not a pole
                continue
            v_bottom = int(bottom[cols].max())
            if v_bottom - int(top[cols].min()) + 1 < cfg.min_height_px or y + v_bottom >= height - 1:
                continue
            if blocked is not None:
                below = blocked[
                    y + v_bottom + 1 : y + v_bottom + 1 + _BELOW_CHECK_PX, x + cols[0] : x + cols[-1] + 1
                ]
                if below.any():
                    continue
            # The axis at the base, from the lowest rows only: a rolled camera leans poles in the image,
            # and the mean column of the whole pole would sit half its height's lean away.
            seg_height = v_bottom - int(top[cols].min()) + 1
            low = sub[
                max(0, v_bottom + 1 - max(_BASE_ROWS_MIN, int(_BASE_ROWS_FRACTION * seg_height))) : v_bottom
                + 1
            ]
            low_counts = low[:, cols].sum(0)
            u = (
                x + float(np.average(cols, weights=low_counts))
                if low_counts.any()
                else x + float(cols.mean())
            )
            out.append((u, y + v_bottom + 0.5, float(len(cols))))
    return np.array(out, dtype=float).reshape(-1, 3)


def pole_observations(
    instances: np.ndarray, geom: FrameGeometry, cfg: PoleConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Instances -> ground positions ``(K, 2)`` and information matrices ``(K, 2, 2)`` within range."""
    if len(instances) == 0:
        return np.zeros((0, 2)), np.zeros((0, 2, 2))
    dirs = geom.rays_world(instances[:, :2])
    C = geom.center
    hc = geom.height_above_ground_m
    down = dirs[:, 2] < -1e-9
    t = np.where(down, -hc / np.where(down, dirs[:, 2], -1.0), 0.0)
    front = C[:2] + t[:, None] * dirs[:, :2]
    offset = front - C[:2]
    r = np.linalg.norm(offset, axis=1)
    keep = down & (r <= geom.max_range_m) & (r > 1e-6)
    front, offset, r, width = front[keep], offset[keep], r[keep], instances[keep, 2]
    f = geom.camera.focal_px
    u_hat = offset / r[:, None]
    radius = 0.5 * width * r / f
    xy = front + radius[:, None] * u_hat
    sig_r = np.hypot((r**2 + hc**2) / (hc * f) * cfg.sigma_px, cfg.sigma_floor_m)
    sig_l = np.hypot(r / f * cfg.sigma_px, cfg.sigma_floor_m)
    n_hat = np.stack([-u_hat[:, 1], u_hat[:, 0]], axis=1)
    info = (u_hat[:, :, None] * u_hat[:, None, :]) / sig_r[:, None, None] ** 2 + (
        n_hat[:, :, None] * n_hat[:, None, :]
    ) / sig_l[:, None, None] ** 2
    return xy, info


class PoleFuser(TrackSet):
    """Fuses pole observations frame by frame into tracks; :meth:`finish` gives Point features."""

    def __init__(self, cfg: PoleConfig) -> None:
        super().__init__(cfg.min_obs, cfg.retire_after_frames, cfg.merge_radius_m)
        self.cfg = cfg

    def add(self, frame: int, time, xy: np.ndarray, info: np.ndarray, ground_z_m: float) -> None:
        self.retire(frame)
        tracks = self.active
        pairs: list[tuple[int, int]] = []
        if tracks and len(xy):
            est = np.array([t.estimate for t in tracks])
            cov_t = np.array([t.covariance for t in tracks])
            cov_o = np.linalg.inv(info)
            S = cov_o[:, None] + cov_t[None] + self.cfg.gate_m**2 * np.eye(2)
            d = xy[:, None, :] - est[None]
            cost = np.einsum("oti,otij,otj->ot", d, np.linalg.inv(S), d)
            pairs = assign(cost, _CHI2_2D_99)
        matched = set()
        for o, t in pairs:
            tracks[t].add(info[o], xy[o], frame, time, ground_z_m)
            matched.add(o)
        for o in range(len(xy)):
            if o not in matched:
                self.active.append(
                    Track(info[o].copy(), info[o] @ xy[o], frame, frame, time, time, 1, ground_z_m)
                )

    def finish(self) -> list[Feature]:
        features = []
        for i, t in enumerate(self.close()):
            x, y = t.estimate
            props = {"id": i, "type": "pole", **sighting_properties(t, t.covariance)}
            features.append(Feature(Point(x, y, t.ground_z_m), props))
        return features
