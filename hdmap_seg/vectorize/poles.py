"""Poles: per-frame instances, their ground-contact points, fused over frames into one Point each.

Per frame, connected components of the pole classes are split into instances: columns with few
pixels (a gap, a thin arm) and jumps of the bottom row between neighbouring columns (two poles at
different distances touching in the image) separate them. The base is the lowest row of an
instance at its axis's column there. The lowest point of a round pole's image is the point of its
base circle nearest the image plane (``r`` less deep than the axis, not ``r`` nearer along the ray),
so the ray meets the ground ``r / cos(b)`` in front of the axis, ``b`` the ray's angle from the
optical axis; the radius comes from the width in pixels, ``2 r f / (range cos^2 b)`` off the optical
axis. Taking the front edge along the ray, and the width as ``2 r f / range``, put a pole seen
25-32 deg aside 2-3 cm too far.

An observation's uncertainty is anisotropic: along the viewing direction a pixel of the base row
is ``(r^2 + Hc^2) / (Hc f)`` metres (``r`` range, ``Hc`` camera height, ``f`` focal length in px),
across it only ``r / f``. Tracks sum the information of their observations
(:mod:`hdmap_seg.vectorize.tracks`), so near views, and the bearings of many views, dominate.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from shapely.geometry import Point

from hdmap_seg.maplayers import POLES, SIGNS, Feature
from hdmap_seg.vectorize.components import components
from hdmap_seg.vectorize.config import PoleConfig, PoseConfig
from hdmap_seg.vectorize.frame import FrameGeometry
from hdmap_seg.vectorize.layer_builder import FrameStamp, LayerMasks
from hdmap_seg.vectorize.tracks import (
    CHI2_1D_99,
    CHI2_2D_99,
    GroundAt,
    Track,
    TrackSet,
    assign,
    keep_best,
    mean_ground,
    sighting_properties,
)

# Residuals beyond this many sigmas get Huber's linear weight in the final fit.
_HUBER_K = 2.0
_REFINE_ITERATIONS = 10
# Rows below a pole's base that must not be sign pixels (else the pole continues behind the sign).
_BELOW_CHECK_PX = 3
# The base's column is measured over the lowest rows of an instance: this fraction of its height, at least this many.
_BASE_ROWS_FRACTION = 0.1
_BASE_ROWS_MIN = 3


def pole_instances(
    pole_mask: np.ndarray,
    cfg: PoleConfig,
    blocked: np.ndarray | None = None,
    min_base_row: int = 0,
    up_vanishing_px: np.ndarray | None = None,
) -> np.ndarray:
    """Pole instances of one frame: ``(K, 4)`` float ``[u_px, v_base_px, width_px, grounded]``.

    ``pole_mask`` is a ``(H, W)`` uint8/bool mask of pole pixels. ``v_base_px`` is the lower edge of
    the lowest pole pixel (pixel centres on integers), ``u_px`` the axis's column there: the centroid
    of the lowest rows carried down along the pole's image, the line towards ``up_vanishing_px``
    (homogeneous ``(3,)``, :attr:`FrameGeometry.up_vanishing_px`; default: upright in the image).
    A rolled camera leans poles by 1-2 px per metre of pole within 20 m, and the lowest rows'
    centroid lies half a metre up; its column, taken as the base's, moved every pole seen with the
    same roll (the same lane's drives, a crowned road's) the same way. ``width_px`` is the lowest
    rows' mean width. An instance cut by the image's bottom has ``grounded`` 0 and, for
    ``(u_px, v_base_px)``, the centroid of its lowest rows: a point of its axis, whose bearing
    still places it (a pole passed close by leaves the image's bottom while its bearing turns
    fastest). Instances whose base rests on a ``blocked`` pixel (a sign in front of the pole) are
    left out, as are components ending above ``min_base_row`` (their base would be out of range)
    and instances cut by the image's left or right side (their axis is not seen).
    """
    height, width = pole_mask.shape
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
            if v_bottom - int(top[cols].min()) + 1 < cfg.min_height_px:
                continue
            grounded = y + v_bottom < height - 1
            if x + cols[0] == 0 or x + cols[-1] == width - 1:  # cut by the image's side: its axis is not seen
                continue
            if grounded and blocked is not None:
                below = blocked[
                    y + v_bottom + 1 : y + v_bottom + 1 + _BELOW_CHECK_PX, x + cols[0] : x + cols[-1] + 1
                ]
                if below.any():
                    continue
            # The axis from the lowest rows only (a crossbar or an arm higher up is not the axis).
            seg_height = v_bottom - int(top[cols].min()) + 1
            row0 = max(0, v_bottom + 1 - max(_BASE_ROWS_MIN, int(_BASE_ROWS_FRACTION * seg_height)))
            # A leaning pole's lowest rows reach past its strong columns (those run its whole height):
            # each row's pixels joined to the strong span are the row's, on either side, up to
            # another pole's strong columns.
            lean = _lean(up_vanishing_px, x + float(cols.mean()), y + 0.5 * (row0 + v_bottom))
            band = sub[row0 : v_bottom + 1]
            weak = band & ~strong
            reach = int(np.ceil(abs(lean) * len(band))) + 1
            c0, c1 = cols[0], cols[-1] + 1
            left = np.cumprod(weak[:, max(0, c0 - reach) : c0][:, ::-1], axis=1)[:, ::-1]
            right = np.cumprod(weak[:, c1 : c1 + reach], axis=1)
            rr, cc = np.nonzero(np.concatenate([left, band[:, c0:c1], right], axis=1))
            u_c = x + max(0, c0 - reach) + float(cc.mean())
            v_c = y + row0 + float(rr.mean())
            v_base = y + v_bottom + 0.5
            width_px = len(cc) / len(np.unique(rr))  # the rows' own: a leaning pole has few strong columns
            if grounded:
                out.append((u_c + _lean(up_vanishing_px, u_c, v_c) * (v_base - v_c), v_base, width_px, 1.0))
            else:
                out.append((u_c, v_c, width_px, 0.0))
    return np.array(out, dtype=float).reshape(-1, 4)


def _lean(up_vanishing_px: np.ndarray | None, u_px: float, v_px: float) -> float:
    """Columns per row of a world-vertical line through pixel ``(u_px, v_px)``: towards the vanishing point."""
    if up_vanishing_px is None:
        return 0.0
    du, dv = up_vanishing_px[:2] - up_vanishing_px[2] * np.array([u_px, v_px])
    return float(du / dv) if abs(dv) > 1e-9 * max(abs(du), 1.0) else 0.0


class PoleView(NamedTuple):
    """What the final fit (:func:`refine_pole`) needs of one observation of a pole.

    An array of views has these as its columns, in this order; ``PoleView(*views.T)`` names them.
    """

    cx_m: float  # the camera's horizontal position
    cy_m: float
    drop_m: float  # the camera's height above the base's ground point
    azimuth_rad: float  # bearing of that point from the camera
    front_range_m: float  # its horizontal distance
    radius_m: float  # the pole's radius, from its width in pixels
    focal_px: float
    slope: float  # the ground's rise per metre away from the camera there
    optical_azimuth_rad: float  # bearing of the camera's optical axis


class PoleObservations(NamedTuple):
    """One frame's pole observations, ``K`` of them."""

    xy: np.ndarray  # (K, 2) ground positions of the axes
    info: np.ndarray  # (K, 2, 2) information matrices
    views: np.ndarray  # (K, 9) PoleView rows
    ground: np.ndarray  # (K,) the ground's height at each position


def pole_observations(
    instances: np.ndarray, geom: FrameGeometry, cfg: PoleConfig, pose: PoseConfig | None = None
) -> PoleObservations:
    """Grounded instances (:func:`pole_instances`' first three columns) -> where the poles stand, how
    certain, and their views (:class:`PoleObservations`).

    ``pose`` adds the noise of the pose: its position error as it is, its heading error times the
    range across the ray.
    """
    pose = pose or PoseConfig()
    if len(instances) == 0:
        return PoleObservations(
            np.zeros((0, 2)), np.zeros((0, 2, 2)), np.zeros((0, len(PoleView._fields))), np.zeros(0)
        )
    dirs = geom.rays_world(instances[:, :2])
    C = geom.center
    hits, ok = geom.intersect(dirs)
    offset = hits[:, :2] - C[:2]
    r = np.linalg.norm(offset, axis=1)
    keep = ok & (r > 1e-6)
    hits, offset, r, width = hits[keep], offset[keep], r[keep], instances[keep, 2]
    f = geom.camera.focal_px
    u_hat = offset / r[:, None]
    cos_b = _cos_off_axis(np.arctan2(u_hat[:, 1], u_hat[:, 0]), geom.optical_azimuth_rad)
    radius = 0.5 * width * r * cos_b**2 / f
    xy = hits[:, :2] + (radius / cos_b)[:, None] * u_hat
    z, grad = geom.surface.height_and_gradient(xy)
    drop = C[2] - hits[:, 2]
    slope = np.einsum("ij,ij->i", grad, u_hat)
    # Range per pixel of the base row: the depression angle changes by (drop + slope r) / (r^2 + drop^2)
    # per metre; a ground rising away resolves range better, one falling away worse.
    rate = np.maximum(drop + slope * r, 0.1 * drop)
    sig_r = np.hypot((r**2 + drop**2) / (rate * f) * cfg.sigma_row_px, pose.floor_m(cfg.sigma_floor_m))
    sig_l = pose.across_ray_sigma_m(r, f, cfg.sigma_col_px, cfg.sigma_floor_m)
    n_hat = np.stack([-u_hat[:, 1], u_hat[:, 0]], axis=1)
    info = (u_hat[:, :, None] * u_hat[:, None, :]) / sig_r[:, None, None] ** 2 + (
        n_hat[:, :, None] * n_hat[:, None, :]
    ) / sig_l[:, None, None] ** 2
    n = len(r)
    views = np.c_[
        np.full(n, C[0]),
        np.full(n, C[1]),
        drop,
        np.arctan2(u_hat[:, 1], u_hat[:, 0]),
        r,
        radius,
        np.full(n, f),
        slope,
        np.full(n, geom.optical_azimuth_rad),
    ]
    return PoleObservations(xy, info, views, z)


def _cos_off_axis(azimuth_rad: np.ndarray, optical_azimuth_rad: float | np.ndarray) -> np.ndarray:
    """Cosine of a bearing's angle from the optical axis's, floored (no pole is seen 80 deg aside)."""
    return np.maximum(np.cos(azimuth_rad - optical_azimuth_rad), 0.2)


def refine_pole(
    xy0: np.ndarray,
    views: np.ndarray,  # (N, 9) PoleView rows
    cfg: PoleConfig,
    pose: PoseConfig | None = None,
    cov0: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood ground point of a pole from its views: position ``(2,)`` and covariance ``(2, 2)``.

    Minimises the views' pixel residuals, of the bearing (column) and of the base's depression
    angle (row), each over its own noise, with Huber weights for rows far off. A model's masks may
    end a few px low in every frame alike (the blur of its decoder), so the rows share an unknown
    offset ``b`` (px, prior ``base_bias_px``) fitted with the point: where the bearings of many
    views fix the point they fix ``b`` too; where they cannot (a short baseline), the rows place it.
    A view's ground is the plane through its base point with the view's slope, so on a grade the
    depression follows the ground as the point moves. The base's height above that ground is fitted
    too (``dz``, prior ``base_height_sigma_m``): beside the path the drive's surface is a guess (a
    kerb, a level sidewalk past the cross slope), and a height error moves near views' rows more
    than far ones', which the bearings tell apart. Pose noise (``pose``) widens each view's
    pixel noise: its heading error turns the bearing, its position error moves the point, which
    near views feel most.

    The tracks' information sums weigh each view by the range it measured: a base that bled low
    looks near, hence certain, and pulls the sum towards the camera. Here every view is weighed at
    the fitted point.

    Views that contradict one another (a mask's stray blob taken for a base, seen from a few metres)
    can send the iterations away; a fit that ends farther from every view than twice the farthest
    range it measured, or without a positive covariance, is none: ``xy0`` comes back with ``cov0``
    (default: the covariance of the fit's first step).
    """
    v = PoleView(*np.asarray(views).T)
    C = np.stack([v.cx_m, v.cy_m], axis=1)
    has_row = np.isfinite(v.drop_m)  # bearing-only views (base below the image) have no row
    drop0 = np.where(has_row, v.drop_m, 1.0)
    radius, slope = np.where(has_row, v.radius_m, 0.0), np.where(has_row, v.slope, 0.0)
    az_obs, r_front, f = v.azimuth_rad, v.front_range_m, v.focal_px
    dep_obs = np.arctan2(drop0, r_front)
    pose = pose or PoseConfig()
    sig_col = np.hypot(np.hypot(cfg.sigma_col_px, f * pose.sigma_yaw_rad), f * pose.sigma_m / r_front)
    sig_row = np.hypot(
        cfg.sigma_row_px, f * pose.sigma_m * np.abs(drop0 + slope * r_front) / (r_front**2 + drop0**2)
    )
    prior = np.diag([0.0, 0.0, 1.0 / cfg.base_bias_px**2, 1.0 / cfg.base_height_sigma_m**2])
    theta = np.r_[np.asarray(xy0, dtype=float), 0.0, 0.0]  # x_m, y_m, b_px, dz_m
    A0 = None
    for _ in range(_REFINE_ITERATIONS):
        d = theta[:2] - C
        az = np.arctan2(d[:, 1], d[:, 0])
        ahead = radius / _cos_off_axis(az, v.optical_azimuth_rad)
        rho = np.maximum(np.linalg.norm(d, axis=1), ahead + 1e-3)
        front = rho - ahead
        drop = drop0 - slope * (front - r_front) - theta[3]
        az_err = (az - az_obs + np.pi) % (2 * np.pi) - np.pi
        res = np.stack(
            [f * az_err / sig_col, (f * (np.arctan2(drop, front) - dep_obs) + theta[2]) / sig_row], axis=1
        )
        res[:, 1] *= has_row
        J = np.zeros((len(views), 2, 4))
        J[:, 0, :2] = (f / sig_col)[:, None] * np.stack([-d[:, 1], d[:, 0]], axis=1) / rho[:, None] ** 2
        J[:, 1, :2] = (
            (-f * (drop + slope * front) / (front**2 + drop**2) / sig_row)[:, None] * d / rho[:, None]
        )
        J[:, 1, 2] = 1.0 / sig_row
        J[:, 1, 3] = -f * front / (front**2 + drop**2) / sig_row
        J[:, 1] *= has_row[:, None]
        w = np.minimum(1.0, _HUBER_K / np.maximum(np.abs(res), 1e-12))
        A = np.einsum("nk,nki,nkj->ij", w, J, J) + prior
        A0 = A if A0 is None else A0
        g = np.einsum("nk,nki,nk->i", w, J, res) + prior @ theta
        try:
            step = np.linalg.solve(A, -g)
        except np.linalg.LinAlgError:
            break
        theta = theta + step
        if np.linalg.norm(step[:2]) < 1e-4:
            break
    # The point's covariance, the row offset marginalised out.
    cov = _covariance(A)
    far = np.min(np.linalg.norm(theta[:2] - C, axis=1)) > 2.0 * np.max(r_front) + 1.0
    if cov is None or not np.all(np.isfinite(theta)) or far:
        fallback = cov0 if cov0 is not None else _covariance(A0)
        return np.asarray(xy0, dtype=float), fallback if fallback is not None else np.eye(2) * np.max(
            r_front
        ) ** 2
    return theta[:2], cov


def _covariance(A: np.ndarray) -> np.ndarray | None:
    """The x, y block of ``A``'s inverse if that is a covariance (finite, positive definite), else None."""
    try:
        cov = np.linalg.inv(A)[:2, :2]
    except np.linalg.LinAlgError:
        return None
    return cov if np.all(np.isfinite(cov)) and np.all(np.linalg.eigvalsh(cov) > 0) else None


class PoleBuilder(TrackSet):
    """The poles layer: fuses pole observations frame by frame into tracks; :meth:`finish` gives Point
    features at the poles' bases, on the ground that ``ground_at`` gives."""

    layer = POLES

    def __init__(
        self, cfg: PoleConfig, pose: PoseConfig | None = None, ground_at: GroundAt = mean_ground
    ) -> None:
        super().__init__(cfg.min_obs, cfg.retire_after_frames, cfg.merge_radius_m)
        self.cfg = cfg
        self.pose = pose or PoseConfig()
        self.ground_at = ground_at

    def add(self, frame: FrameStamp, masks: LayerMasks, geometry: FrameGeometry) -> None:
        """The frame's pole instances, grounded where no sign hides their base, fused into the tracks."""
        inst = pole_instances(
            masks[POLES],
            self.cfg,
            blocked=masks.get(SIGNS),
            min_base_row=geometry.top_ground_row_px,
            up_vanishing_px=geometry.up_vanishing_px,
        )
        grounded = inst[:, 3] > 0
        self.fuse(frame, pole_observations(inst[grounded, :3], geometry, self.cfg, self.pose))
        cut = inst[~grounded]
        if len(cut):
            dirs = geometry.rays_world(cut[:, :2])
            # Its base lies below the image: nearer than the ground the image's last row shows there.
            bottom = np.c_[cut[:, 0], np.full(len(cut), geometry.camera.size[1] - 0.5)]
            hits, ok = geometry.intersect(geometry.rays_world(bottom))
            reach = np.where(ok, np.linalg.norm(hits[:, :2] - geometry.center[:2], axis=1), np.inf)
            self.fuse_bearings(frame, geometry, np.arctan2(dirs[:, 1], dirs[:, 0]), reach)

    def fuse_bearings(
        self, frame: FrameStamp, geometry: FrameGeometry, azimuth_rad: np.ndarray, reach_m: np.ndarray
    ) -> None:
        """Add the bearings ``(B,)`` of poles whose base is below the image to the tracks they point at.

        A bearing places a pole across its ray only. It joins a track on the ray within the 99 % gate
        of one degree of freedom (the column noise at the track's range, its covariance) and nearer
        than ``reach_m`` (the ground at the image's bottom; a pole farther along the same line of
        sight is another), never one this frame saw grounded; one that joins none is dropped. It
        joins the track's views for the final fit (:func:`refine_pole`) only: it is no sighting of
        a base (``n_obs``, ``min_obs``) and leaves the information sums that associate the next
        frames as they were.
        """
        tracks = [t for t in self.active if t.last_frame != frame.index]
        if not tracks:
            return
        C = geometry.center[:2]
        f = geometry.camera.focal_px
        u_hat = np.stack([np.cos(azimuth_rad), np.sin(azimuth_rad)], axis=1)
        n_hat = np.stack([-u_hat[:, 1], u_hat[:, 0]], axis=1)
        est = np.array([t.estimate for t in tracks]) - C
        cov_t = np.array([t.covariance for t in tracks])
        along, across = u_hat @ est.T, n_hat @ est.T  # (B, T)
        sig = self.pose.across_ray_sigma_m(along, f, self.cfg.sigma_col_px, self.cfg.sigma_floor_m)
        var = np.einsum("bi,tij,bj->bt", n_hat, cov_t, n_hat) + sig**2 + self.cfg.gate_m**2
        near = (along > 1.0) & (along < 1.1 * reach_m[:, None] + 0.5)
        cost = np.where(near, across**2 / var, np.inf)
        for b, t in assign(cost, CHI2_1D_99):
            view = PoleView(
                C[0],
                C[1],
                np.nan,
                azimuth_rad[b],
                along[b, t],
                np.nan,
                f,
                np.nan,
                geometry.optical_azimuth_rad,
            )
            keep_best(tracks[t].kept, view, self.cfg.max_obs_kept, score=lambda v: -v.front_range_m)

    def fuse(self, frame: FrameStamp, obs: PoleObservations) -> None:
        """Associate one frame's observations with the tracks (Hungarian, Mahalanobis gate) and add them."""
        self.retire(frame.index)
        tracks = self.active
        pairs: list[tuple[int, int]] = []
        if tracks and len(obs.xy):
            est = np.array([t.estimate for t in tracks])
            cov_t = np.array([t.covariance for t in tracks])
            cov_o = np.linalg.inv(obs.info)
            S = cov_o[:, None] + cov_t[None] + self.cfg.gate_m**2 * np.eye(2)
            d = obs.xy[:, None, :] - est[None]
            cost = np.einsum("oti,otij,otj->ot", d, np.linalg.inv(S), d)
            pairs = assign(cost, CHI2_2D_99)
        matched = set()
        for o, t in pairs:
            tracks[t].add(obs.info[o], obs.xy[o], frame.index, frame.time, obs.ground[o])
            # The nearest views: their base rows resolve the range best.
            view = PoleView(*obs.views[o])
            keep_best(tracks[t].kept, view, self.cfg.max_obs_kept, score=lambda v: -v.front_range_m)
            matched.add(o)
        for o in range(len(obs.xy)):
            if o not in matched:
                view = PoleView(*obs.views[o])
                track = Track.start(obs.info[o], obs.xy[o], frame.index, frame.time, obs.ground[o], [view])
                self.active.append(track)

    def finish(self) -> list[Feature]:
        features = []
        for i, t in enumerate(self.close()):
            (x, y), cov = refine_pole(t.estimate, np.array(t.kept), self.cfg, self.pose, t.covariance)
            props = {"id": i, "type": "pole", **sighting_properties(t, cov)}
            features.append(Feature(Point(x, y, self.ground_at(t, np.array([x, y]))), props))
        return features

    def state_size(self) -> dict[str, int]:
        return {"pole_tracks": self.n_tracks}
