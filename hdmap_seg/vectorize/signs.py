"""Signs: per-frame instances, associated across frames, triangulated from their rays.

Each instance (a connected component of the sign classes not cut by the image border) gives a
ray through its centroid. A track's position is the least-squares point of its rays: observation
``i`` adds ``(I - d d^T) / s_perp^2`` (the ray, ``s_perp = depth * sigma_px / f``) and a weak
prior along the ray, ``d d^T / s_depth^2`` at the depth its pixel size suggests for a plate of
``size_prior_m`` (``s_depth`` = half that depth), so one ray already has a finite estimate and
two rays from a short baseline are not singular; with any parallax the rays dominate.

Association projects each track's estimate, with its covariance, into the new frame and matches
centroids (Hungarian) by Mahalanobis distance, where distance and apparent size agree
(:meth:`SignTracker._association_cost`).

The facing is fitted from the plate's apparent aspect over the views: ``w/h = a |cos(theta - phi_i)|``
with ``phi_i`` the bearing from the sign to camera ``i``. A class mask cannot tell a plate's face
from its back, so the facing is that of the side the drive saw.

A sign's height is above the ground where its support stands. Near the path the drive's own surface
(:mod:`hdmap_seg.geo.ground`) is measured; farther out (across a median, a crown falling the other way) it
only extrapolates. There, where a pole's pixels run down from under the plate to a base in the image
(:func:`support_bases`), each view's base ray meets the vertical through the sign: the ground is observed.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
from shapely.geometry import Point

from hdmap_seg.maplayers import POLES, SIGNS, Feature
from hdmap_seg.vectorize.components import components
from hdmap_seg.vectorize.config import PoseConfig, SignConfig
from hdmap_seg.vectorize.frame import FrameGeometry
from hdmap_seg.vectorize.layer_builder import FrameStamp, LayerMasks
from hdmap_seg.vectorize.tracks import (
    CHI2_2D_99,
    GroundAt,
    Track,
    TrackSet,
    assign,
    keep_best,
    mean_ground,
    position_sigma_m,
    sighting_properties,
)

# A detection's size-based depth and a track's depth differ by at most this factor.
_DEPTH_RATIO_GATE = 2.5
# A detection's angular size over the track's last one scaled by the change of distance: within this factor.
_SIZE_GROWTH_GATE = 1.6
# A finished sign's distances over its pixel-size distances: within this factor (plates of 0.45 to
# 1.8 m for the 0.9 m prior); association allows more, while the track still learns its distance.
_SIZE_RATIO_FINAL = 2.0
_REFINE_ITERATIONS = 4
_HEIGHT_CONSISTENCY = 1.25  # a view's plate height (m) over the sign's median: within this factor
_MIN_FACING_SPAN_RAD = np.radians(10.0)  # views closer in bearing cannot fit a facing: use their mean
_NOTCH_FRACTION = 0.07  # notches of overlapping plates: deeper than this x the component's smaller side
_MAX_SPLITS = 2  # overlapping plates split at most this many times per component (up to 4 pieces)
_SCALAR_SEARCH = 16  # up to this many parts within reach, a component's left part is searched for in Python
_POLE_GAP_FILL = 0.8  # a pole cuts a plate in two: its pixels fill this share of the gap's columns
# ... and the joined plate is at most this many times as wide as it is tall (plates of a cluster, side by
# side with poles between them, are not one plate)
_JOIN_MAX_ASPECT = 2.0
_SUPPORT_GAP_PX = 3  # a support's pixels below a plate: gaps of up to this many rows are bridged
_SUPPORT_MIN_VIEWS = 3  # views that saw the support's base, for the ground under a sign
_SUPPORT_SPREAD_M = 0.15  # their base heights' interquartile range: at most this (else occluded bases)
_SUPPORT_MISS_M = 0.5  # a support's base lies this close to the sign (a bracket's offset; else another pole)
_SUPPORT_GATE_M = 0.75  # a support's ground within this of the drive's surface there (else a wrong pole)


class SignView(NamedTuple):
    """What a finished sign needs of one view: its refit, facing and size.

    An array of views has these as its columns, in this order; ``SignView(*views.T)`` names them.
    """

    cx_m: float  # the camera's position
    cy_m: float
    width_rad: float  # the plate's angular width and height about its centroid
    height_rad: float
    cz_m: float
    dx: float  # the unit ray through the plate's centroid, world frame
    dy: float
    dz: float
    prior_depth_m: float  # the depth its pixel size gives a plate of ``size_prior_m``
    bx: float  # the unit ray through the base of the plate's support, world frame (NaN: none seen)
    by: float
    bz: float

    @property
    def camera_m(self) -> np.ndarray:
        """The camera's position: ``(3,)``, or ``(N, 3)`` for columns."""
        return np.stack([self.cx_m, self.cy_m, self.cz_m], axis=-1)

    @property
    def ray(self) -> np.ndarray:
        """The ray's direction: ``(3,)``, or ``(N, 3)`` for columns."""
        return np.stack([self.dx, self.dy, self.dz], axis=-1)


class _Sighting(NamedTuple):
    """What association needs of a track's latest view."""

    camera_m: np.ndarray  # (3,) the camera's position
    size_rad: float  # the plate's larger angular side


def sign_instances(sign_mask: np.ndarray, cfg: SignConfig, pole_mask: np.ndarray | None = None) -> np.ndarray:
    """Sign instances of one frame: ``(K, 4)`` float ``[u_px, v_px, width_px, height_px]``.

    ``(u, v)`` is the pixel centroid, ``width/height`` the bounding box. Plates that overlap in the
    image (one in front of the other) are split apart (:func:`_split_overlapping`); parts of one plate
    that a post or pole in front of it cuts apart (side by side, rows that mostly coincide, a narrow
    gap) are joined; with the frame's ``pole_mask``, also across a wider gap that pole pixels fill (a pole in
    front can cut a plate off its centre: :func:`_continues`). Plates cut by the image border are left out
    (their centroid would be off).
    """
    H, W = sign_mask.shape
    comps = sorted(components(sign_mask, 1), key=lambda c: c[0])
    merged: list[tuple[int, int, np.ndarray, bool]] = []  # x, y, sub, joined from parts
    boxes: list[tuple[int, int, int, int]] = []  # x, y, width, height of merged[k]
    table = np.zeros((len(comps), 4), np.int64)  # the same, to search many parts at once
    # Components come left to right: a part whose right edge lies farther left than the widest gap a
    # join may bridge can take no more (a noisy mask has thousands of specks; don't try them all).
    reach = max([2.0] + [(1.0 if pole_mask is not None else 0.6) * sub.shape[0] for _, _, sub in comps])
    live: list[int] = []  # indices of merged parts still within reach
    for i, (x, y, sub) in enumerate(comps):
        if i % 64 == 0 and len(live) > _SCALAR_SEARCH:
            kept = np.asarray(live)
            live = kept[table[kept, 0] + table[kept, 2] >= x - reach].tolist()
        # The left part may be any earlier one: a small blob (a sign behind) can sit in the gap.
        if len(live) <= _SCALAR_SEARCH:
            j = _left_part([boxes[k] for k in live], x, y, sub.shape, pole_mask)
        else:
            j = _left_part_among_many(table[live], x, y, sub.shape, pole_mask)
        if j < 0:
            k = len(merged)
            merged.append((x, y, sub, False))
            boxes.append((x, y, sub.shape[1], sub.shape[0]))
            live.append(k)
        else:
            k = live[j]
            px, py, psub, _ = merged[k]
            merged[k] = (*_union(px, py, psub, x, y, sub), True)
            boxes[k] = merged[k][0], merged[k][1], merged[k][2].shape[1], merged[k][2].shape[0]
        table[k] = boxes[k]
    # A joined plate has notches at its gap; only whole components can be overlapping plates.
    pieces = [
        p
        for x, y, sub, joined in merged
        for p in ([(x, y, sub)] if joined else _split_overlapping(x, y, sub))
    ]
    out = []
    for x, y, sub in pieces:
        h, w = sub.shape
        if sub.sum() < cfg.min_pixels or x == 0 or y == 0 or x + w == W or y + h == H:
            continue
        rows, cols = np.nonzero(sub)
        out.append((x + cols.mean(), y + rows.mean(), w, h))
    return np.array(out, dtype=float).reshape(-1, 4)


def support_bases(pole_mask: np.ndarray | None, instances: np.ndarray) -> np.ndarray:
    """Where each sign's support stands in the image: ``(K, 2)`` ``[u_px, v_px]`` of the base, NaN where none.

    A support is pole pixels that start just under the plate (``instances`` as :func:`sign_instances`
    gives them), within its columns, and run down at least the plate's height, gaps of up to
    ``_SUPPORT_GAP_PX`` rows bridged; its base is the lower edge of the lowest such row (pixel centres on
    integers). A run that reaches the image's bottom has no base in view.
    """
    out = np.full((len(instances), 2), np.nan)
    if pole_mask is None or len(instances) == 0:
        return out
    H, W = pole_mask.shape
    for k, (u, v, w, h) in enumerate(instances):
        c0, c1 = max(0, int(u - w / 2)), min(W, int(np.ceil(u + w / 2)) + 1)
        r0 = min(H, int(v + h / 2))
        rows = np.flatnonzero(pole_mask[r0:, c0:c1].any(axis=1))
        if rows.size == 0 or rows[0] > max(_SUPPORT_GAP_PX, h / 3):
            continue
        breaks = np.flatnonzero(np.diff(rows) > _SUPPORT_GAP_PX + 1)
        last = int(rows[breaks[0]] if breaks.size else rows[-1])
        if last - rows[0] + 1 < h or r0 + last >= H - 1:
            continue
        cols = np.flatnonzero(pole_mask[r0 + last, c0:c1])
        out[k] = c0 + cols.mean(), r0 + last + 0.5
    return out


def _support_ground_z(p: np.ndarray, kept: np.ndarray, min_parallax_deg: float) -> float | None:
    """The ground's height under the sign at ``p`` from its views' support bases, or None: too few, rays
    too parallel to place the base, a pole that stands elsewhere (the base, triangulated from its rays,
    farther from the sign than a bracket's offset: a pole down the same sidewalk lines up with a sign in
    every view from the road), or bases that disagree. Each base ray is then followed to the vertical
    through ``p``, so the height does not depend on how well the base's distance is known."""
    views = SignView(*kept.T)
    seen = np.isfinite(views.bz)
    if seen.sum() < _SUPPORT_MIN_VIEWS:
        return None
    C = views.camera_m[seen]
    d = np.stack([views.bx[seen], views.by[seen], views.bz[seen]], axis=1)
    if _parallax_deg(d) < min_parallax_deg:
        return None
    across = np.eye(3)[None] - d[:, :, None] * d[:, None, :]
    base = np.linalg.solve(across.sum(0), np.einsum("nij,nj->i", across, C))
    if np.hypot(*(base[:2] - p[:2])) > _SUPPORT_MISS_M:
        return None
    ex, ey = p[0] - C[:, 0], p[1] - C[:, 1]
    z = C[:, 2] + (ex * d[:, 0] + ey * d[:, 1]) / (d[:, 0] ** 2 + d[:, 1] ** 2) * d[:, 2]
    q1, q3 = np.percentile(z, [25, 75])
    return float(np.median(z)) if q3 - q1 <= _SUPPORT_SPREAD_M else None


def _off_path_m(p: np.ndarray, kept: np.ndarray) -> float:
    """How far the sign at ``p`` stands beside the path its views were taken from: the distance from the
    line of their cameras' positions (their principal axis); inf where they are all at one place."""
    views = SignView(*kept.T)
    xy = np.stack([views.cx_m, views.cy_m], axis=1)
    centred = xy - xy.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    if sv[0] < 1e-3:
        return np.inf
    along = vt[0]
    rel = p[:2] - xy.mean(axis=0)
    return float(abs(rel[0] * along[1] - rel[1] * along[0]))


def _left_part(
    boxes: list[tuple[int, int, int, int]],
    x: int,
    y: int,
    shape: tuple[int, int],
    pole_mask: np.ndarray | None,
) -> int:
    """The latest of the earlier parts ``boxes`` (``x, y, width, height``) that the component at ``(x, y)``
    of ``shape`` (rows, columns) continues (:func:`_continues`); -1: none."""
    for k in range(len(boxes) - 1, -1, -1):
        if _continues(boxes[k], x, y, shape, pole_mask):
            return k
    return -1


def _left_part_among_many(
    boxes: np.ndarray, x: int, y: int, shape: tuple[int, int], pole_mask: np.ndarray | None
) -> int:
    """:func:`_left_part` of ``(N, 4)`` parts: those within reach found in one pass of NumPy (a noisy mask's
    specks), then tried from the latest."""
    h = shape[0]
    px, py, pw, ph = boxes.T
    gap = x - (px + pw)
    reach = np.maximum(
        np.maximum(2, 0.6 * np.minimum(ph, h)), np.maximum(ph, h) if pole_mask is not None else 0
    )
    for k in np.flatnonzero((gap >= 0) & (gap <= reach))[::-1]:
        if _continues(tuple(boxes[k]), x, y, shape, pole_mask):
            return int(k)
    return -1


def _continues(
    box: tuple[int, int, int, int], x: int, y: int, shape: tuple[int, int], pole_mask: np.ndarray | None
) -> bool:
    """Whether the component at ``(x, y)`` of ``shape`` is the right part of the plate whose left part is
    ``box``: across a narrow gap (a post in front), its rows mostly the same; or, with the frame's
    ``pole_mask``, across a gap that pole pixels fill (a pole in front, up to the plate's height wide),
    the smaller part's rows within the other's (a plate cut off its centre leaves a short slice), if
    the two together are no wider than ``_JOIN_MAX_ASPECT`` times their height."""
    px, py, pw, ph = (int(v) for v in box)
    h = shape[0]
    overlap = min(py + ph, y + h) - max(py, y)
    gap = x - (px + pw)
    if gap < 0:
        return False
    if gap <= max(2, 0.6 * min(ph, h)) and overlap >= 0.7 * max(ph, h):
        return True
    if pole_mask is None or gap > max(ph, h) or overlap < 0.7 * min(ph, h):
        return False
    if x + shape[1] - px > _JOIN_MAX_ASPECT * max(ph, h):  # wider than a plate: plates side by side
        return False
    occluder = pole_mask[max(py, y) : min(py + ph, y + h), px + pw : x]
    return bool(occluder.size) and float(occluder.any(axis=0).mean()) >= _POLE_GAP_FILL


def _split_overlapping(x: int, y: int, sub: np.ndarray, depth: int = 0) -> list[tuple[int, int, np.ndarray]]:
    """Split a component made of overlapping plates along the line through its two deepest notches.

    Plates are convex (discs, triangles, rectangles), so the union of two that overlap in the image
    has two notches where their outlines cross; a single plate, partly hidden behind a pole, has at
    most one. A notch counts when it is deeper than ``_NOTCH_FRACTION`` of the component's smaller
    side (and 2 px). Pieces are split again, up to ``_MAX_SPLITS`` levels.
    """
    h, w = sub.shape
    min_depth_px = max(2.0, _NOTCH_FRACTION * min(h, w))
    if depth >= _MAX_SPLITS or min(h, w) < 3 * min_depth_px:
        return [(x, y, sub)]
    contours, _ = cv2.findContours(sub.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=len)
    if len(contour) < 8:
        return [(x, y, sub)]
    hull = cv2.convexHull(contour, returnPoints=False)
    try:
        defects = cv2.convexityDefects(contour, hull)
    except cv2.error:  # self-intersecting contour of a degenerate (one-pixel-wide) shape
        return [(x, y, sub)]
    if defects is None:
        return [(x, y, sub)]
    defects = defects.reshape(-1, 4)
    deep = defects[defects[:, 3] / 256.0 >= min_depth_px]
    if len(deep) < 2:
        return [(x, y, sub)]
    a, b = deep[np.argsort(-deep[:, 3])[:2], 2]
    p, q = contour[a, 0].astype(float), contour[b, 0].astype(float)
    rows, cols = np.mgrid[:h, :w]
    side = (q[0] - p[0]) * (rows - p[1]) - (q[1] - p[1]) * (cols - p[0]) > 0
    pieces = []
    for half in (sub & side, sub & ~side):
        if half.any():
            r, c = np.nonzero(half)
            r0, c0 = r.min(), c.min()
            pieces += _split_overlapping(
                x + int(c0), y + int(r0), half[r0 : r.max() + 1, c0 : c.max() + 1], depth + 1
            )
    return pieces


def _union(x1: int, y1: int, a: np.ndarray, x2: int, y2: int, b: np.ndarray) -> tuple[int, int, np.ndarray]:
    x0, y0 = min(x1, x2), min(y1, y2)
    x_end, y_end = max(x1 + a.shape[1], x2 + b.shape[1]), max(y1 + a.shape[0], y2 + b.shape[0])
    out = np.zeros((y_end - y0, x_end - x0), bool)
    out[y1 - y0 : y1 - y0 + a.shape[0], x1 - x0 : x1 - x0 + a.shape[1]] |= a
    out[y2 - y0 : y2 - y0 + b.shape[0], x2 - x0 : x2 - x0 + b.shape[1]] |= b
    return x0, y0, out


class SignBuilder(TrackSet):
    """The signs layer: associates sign rays over frames and triangulates them; :meth:`finish` gives
    Point features at the plates' centres, their heights above the ground that ``ground_at`` gives."""

    layer = SIGNS

    def __init__(
        self,
        cfg: SignConfig,
        max_range_m: float,
        pose: PoseConfig | None = None,
        ground_at: GroundAt = mean_ground,
        measured_reach_m: float = 0.0,
    ) -> None:
        """``measured_reach_m``: how far beside the path ``ground_at`` is measured, not extrapolated; signs
        farther out are measured above their support's base where one is seen."""
        super().__init__(cfg.min_obs, cfg.retire_after_frames, cfg.merge_radius_m)
        self.cfg = cfg
        self.pose = pose or PoseConfig()
        self.max_range_m = max_range_m
        self.ground_at = ground_at
        self.measured_reach_m = measured_reach_m
        self._focal_px = 1.0

    def add(self, frame: FrameStamp, masks: LayerMasks, geometry: FrameGeometry) -> None:
        """The frame's sign instances, associated with the tracks and added as rays."""
        poles = masks.get(POLES)
        instances = sign_instances(masks[SIGNS], self.cfg, poles)
        self.fuse(frame, instances, geometry, support_bases(poles, instances))

    def fuse(
        self,
        frame: FrameStamp,
        instances: np.ndarray,
        geom: FrameGeometry,
        bases_px: np.ndarray | None = None,
    ) -> None:
        """Associate one frame's instances (:func:`sign_instances`) with the tracks and add their rays;
        ``bases_px`` their supports' bases (:func:`support_bases`), if known."""
        self._focal_px = geom.camera.focal_px
        self.retire(frame.index)
        if len(instances) == 0:
            return
        cam = geom.camera
        f = cam.focal_px
        prior_depth = f * self.cfg.size_prior_m / instances[:, 2:4].max(axis=1)
        near = prior_depth <= self.max_range_m
        instances, prior_depth = instances[near], prior_depth[near]
        if len(instances) == 0:
            return
        dirs = geom.rays_world(instances[:, :2])
        base_dirs = np.full((len(instances), 3), np.nan)
        if bases_px is not None:
            bases_px = bases_px[near]
            seen = np.isfinite(bases_px[:, 1])
            base_dirs[seen] = geom.rays_world(bases_px[seen])
        C = geom.center
        track_depth = np.full(len(self.active), np.nan)
        pairs: list[tuple[int, int]] = []
        if self.active:
            cost, track_depth = self._association_cost(instances, prior_depth, geom)
            pairs = assign(cost, CHI2_2D_99)
        matched = dict(pairs)
        # The ground under each plate where its size puts it: the track's height above ground comes from these.
        guess = C + dirs * prior_depth[:, None]
        ground_z = geom.surface.height_m(guess[:, :2])
        for o in range(len(instances)):
            t = matched.get(o)
            depth = track_depth[t] if t is not None and self.active[t].n_obs >= 2 else prior_depth[o]
            d = dirs[o]
            s_perp = self.pose.across_ray_sigma_m(depth, f, self.cfg.sigma_px, self.cfg.sigma_floor_m)
            s_depth = 0.5 * prior_depth[o]
            outer = np.outer(d, d)
            info = (np.eye(3) - outer) / s_perp**2 + outer / s_depth**2
            x = C + d * prior_depth[o]
            w_rad, h_rad = _angular_size(cam, instances[o])
            view = SignView(C[0], C[1], w_rad, h_rad, C[2], *d, prior_depth[o], *base_dirs[o])
            if t is None:
                track = Track.start(info, x, frame.index, frame.time, ground_z[o], [view])
                self.active.append(track)
            else:
                track = self.active[t]
                track.add(info, x, frame.index, frame.time, ground_z[o])
                # The largest (nearest) views.
                keep_best(
                    track.kept, view, self.cfg.max_obs_kept, score=lambda v: max(v.width_rad, v.height_rad)
                )
            track.last = _Sighting(C.copy(), max(w_rad, h_rad))

    def _association_cost(
        self, instances: np.ndarray, prior_depth: np.ndarray, geom: FrameGeometry
    ) -> tuple[np.ndarray, np.ndarray]:
        """Squared Mahalanobis distances ``(detections, tracks)`` in the image, inf where gated out.

        A track's predicted centroid carries its position's covariance through the projection's
        Jacobian, plus centroid noise (``sigma_px``, and a quarter of the plate's size for partial
        views). Gated out as well: tracks behind the camera, depths that disagree with the plate's
        pixel size by more than ``_DEPTH_RATIO_GATE``, and apparent sizes that disagree by more than
        ``_SIZE_GROWTH_GATE`` with the size at the last sighting scaled by the change in distance.
        """
        cam = geom.camera
        est = np.array([t.estimate for t in self.active])
        cov = np.array([t.covariance for t in self.active])
        T_cam_from_world = np.linalg.inv(geom.T_world_from_cam)
        R = T_cam_from_world[:3, :3]
        p_cam = est @ R.T + T_cam_from_world[:3, 3]
        uv, in_front = cam.project(p_cam)
        z = np.where(in_front, p_cam[:, 2], 1.0)
        f = cam.focal_px
        J = np.zeros((len(est), 2, 3))
        J[:, 0, 0] = J[:, 1, 1] = f / z
        J[:, 0, 2] = -f * p_cam[:, 0] / z**2
        J[:, 1, 2] = -f * p_cam[:, 1] / z**2
        J = J @ R
        S_track = J @ cov @ J.transpose(0, 2, 1)
        size_px = np.hypot(instances[:, 2], instances[:, 3])
        noise = self.cfg.sigma_px**2 + (0.25 * size_px) ** 2
        S = S_track[None] + noise[:, None, None, None] * np.eye(2)
        d = instances[:, None, :2] - uv[None]
        cost = np.einsum("dti,dtij,dtj->dt", d, np.linalg.inv(S), d)
        track_depth = np.linalg.norm(est - geom.center, axis=1)
        depth_ratio = track_depth[None] / prior_depth[:, None]
        last_c = np.array([t.last.camera_m for t in self.active])
        last_size = np.array([t.last.size_rad for t in self.active])
        expected = last_size * np.linalg.norm(est - last_c, axis=1) / track_depth
        size = np.array([max(_angular_size(cam, inst)) for inst in instances])
        growth = size[:, None] / expected[None]
        ok = (
            in_front[None]
            & (depth_ratio < _DEPTH_RATIO_GATE)
            & (depth_ratio > 1 / _DEPTH_RATIO_GATE)
            & (growth < _SIZE_GROWTH_GATE)
            & (growth > 1 / _SIZE_GROWTH_GATE)
        )
        return np.where(ok, cost, np.inf), track_depth

    def finish(self) -> list[Feature]:
        features = []
        for t in self.close():
            kept = np.array(t.kept)
            depth = SignView(*kept.T).prior_depth_m
            # Plates merged with another in the image are mostly seen either far off or close by:
            # the height taken from all views, or from the nearest half; the better fit wins.
            near = depth <= np.median(depth)
            refs = (np.ones_like(near), near)
            fits = [_refine(t.estimate, kept, self._focal_px, self.cfg, self.pose, ref) for ref in refs]
            fits = [f for f in fits if f.inliers.sum() >= self.cfg.min_obs] or fits
            p, cov, inliers, chi2 = min(fits, key=lambda f: f.chi2)
            if (
                inliers.sum() < self.cfg.min_obs
                or chi2 > self.cfg.max_rms_sigma**2
                or not _well_triangulated(p, kept[inliers], self.cfg.min_parallax_deg)
                or position_sigma_m(cov) > self.cfg.max_sigma_m
            ):
                continue
            facing_rad, width_m, height_m = _facing_and_size(p, kept[inliers])
            ground_z = self.ground_at(t, p[:2])
            if _off_path_m(p, kept) > self.measured_reach_m:
                support_z = _support_ground_z(p, kept[inliers], self.cfg.min_parallax_deg)
                if support_z is not None and abs(support_z - ground_z) <= _SUPPORT_GATE_M:
                    ground_z = support_z
            props = {
                "id": len(features),
                "type": "sign",
                "height_m": round(float(p[2] - ground_z), 3),
                "facing_deg": round(float(np.degrees(np.pi / 2 - facing_rad) % 360.0), 1),
                "width_m": round(width_m, 2),
                "height_plate_m": round(height_m, 2),
                **sighting_properties(t, cov),
            }
            features.append(Feature(Point(*p), props))
        return features

    def state_size(self) -> dict[str, int]:
        return {"sign_tracks": self.n_tracks}


class _Fit(NamedTuple):
    """A sign's point refitted from its views (:func:`_refine`)."""

    point: np.ndarray  # (3,)
    covariance: np.ndarray  # (3, 3)
    inliers: np.ndarray  # (N,) bool: the views the point rests on
    chi2: float  # their mean squared residual, in sigmas


def _refine(
    p0: np.ndarray,
    kept: np.ndarray,
    focal_px: float,
    cfg: SignConfig,
    pose: PoseConfig,
    reference: np.ndarray,
) -> _Fit:
    """Re-triangulate a sign from its kept (nearest) views, dropping views off its point.

    The streaming sums weigh every view, far ones and those of a plate whose halves were not yet
    joined included; the nearest views place it best. Iterates: least squares (rays and the weak
    size prior, as in :class:`SignBuilder`), then views farther than ``max_rms_sigma`` sigmas from
    the point are left out, and so are views whose plate height differs by more than
    ``_HEIGHT_CONSISTENCY`` from the median over the ``reference`` views (a mask).
    """
    views = SignView(*kept.T)
    C, d, prior = views.camera_m, views.ray, views.prior_depth_m
    outer = d[:, :, None] * d[:, None, :]
    inliers = np.ones(len(kept), bool)
    p = p0
    for _ in range(_REFINE_ITERATIONS):
        s_perp = pose.across_ray_sigma_m(
            np.linalg.norm(p - C, axis=1), focal_px, cfg.sigma_px, cfg.sigma_floor_m
        )
        info = (np.eye(3) - outer) / s_perp[:, None, None] ** 2 + outer / (0.5 * prior[:, None, None]) ** 2
        x = C + d * prior[:, None]
        A = info[inliers].sum(0)
        p = np.linalg.solve(A, np.einsum("nij,nj->i", info[inliers], x[inliers]))
        v = p - C
        r = np.linalg.norm(v - (v * d).sum(1)[:, None] * d, axis=1) / s_perp
        keep = r <= cfg.max_rms_sigma
        # A plate's height is the same from every side; views where it is not saw the plate merged
        # with another one, or partly hidden, and their centroids are off.
        height_m = views.height_rad * np.linalg.norm(v, axis=1)
        ref = inliers & reference if (inliers & reference).any() else inliers
        keep &= np.abs(np.log(height_m / np.median(height_m[ref]))) <= np.log(_HEIGHT_CONSISTENCY)
        if keep.sum() < 2 or np.array_equal(keep, inliers):
            break
        inliers = keep
    return _Fit(p, np.linalg.inv(A), inliers, float(np.mean(r[inliers] ** 2)))


def _angular_size(cam, inst: np.ndarray) -> tuple[float, float]:
    """Angular width and height (rad) of a bounding box ``[u, v, w, h]`` about its centroid.

    Angles, not pixels: off the optical axis perspective stretches pixel sizes, which would bias
    the facing fit towards the views at the image edge.
    """
    u, v, w, h = inst
    rays = cam.rays_cam(np.array([[u - w / 2, v], [u + w / 2, v], [u, v - h / 2], [u, v + h / 2]]))
    return float(np.arccos(np.clip(rays[0] @ rays[1], -1, 1))), float(
        np.arccos(np.clip(rays[2] @ rays[3], -1, 1))
    )


def _well_triangulated(p: np.ndarray, kept: np.ndarray, min_parallax_deg: float) -> bool:
    """Rays far enough apart (parallax), and a position whose distances agree with the plate's pixel size.

    Nearly parallel rays (a sign seen only far ahead) fix the direction but not the distance; noise
    then puts the least-squares point anywhere along the rays.
    """
    views = SignView(*kept.T)
    parallax = _parallax_deg(views.ray)
    dist = np.linalg.norm(views.camera_m - p, axis=1)
    ratio = float(np.median(dist / views.prior_depth_m))
    return parallax >= min_parallax_deg and 1 / _SIZE_RATIO_FINAL <= ratio <= _SIZE_RATIO_FINAL


def _parallax_deg(dirs: np.ndarray) -> float:
    """The widest angle between any two of the ``(N, 3)`` unit rays, degrees."""
    return float(np.degrees(np.arccos(np.clip((dirs @ dirs.T).min(), -1.0, 1.0))))


def _facing_and_size(p: np.ndarray, kept: np.ndarray) -> tuple[float, float, float]:
    """Facing (world yaw, rad), plate width and height (m) from ``(N, 9)`` :class:`SignView` rows."""
    views = SignView(*kept.T)
    dx, dy = views.cx_m - p[0], views.cy_m - p[1]
    phi = np.arctan2(dy, dx)
    dist = np.hypot(dx, dy)
    ratio = views.width_rad / views.height_rad
    mean_phi = float(np.arctan2(np.sin(phi).mean(), np.cos(phi).mean()))
    span = np.ptp(np.angle(np.exp(1j * (phi - mean_phi))))
    theta = mean_phi
    if span >= _MIN_FACING_SPAN_RAD:
        grid = np.radians(np.arange(0.0, 360.0, 1.0))
        c = np.clip(np.cos(grid[:, None] - phi[None]), 0.0, None)
        a = (c * ratio).sum(1) / np.maximum((c * c).sum(1), 1e-9)
        resid = ((ratio[None] - a[:, None] * c) ** 2).sum(1)
        resid[(c > 0).mean(1) < 1.0] = np.inf  # the face must point towards every view
        if np.isfinite(resid).any():
            theta = float(grid[np.argmin(resid)])
    cos_view = np.clip(np.cos(theta - phi), 0.3, 1.0)
    width_m = float(np.median(views.width_rad * dist / cos_view))
    height_m = float(np.median(views.height_rad * dist))
    return theta, width_m, height_m
