"""Signs: per-frame instances, associated across frames, triangulated from their rays.

Each instance (a connected component of the sign classes not cut by the image border) gives a
ray through its centroid. A track's position is the least-squares point of its rays: observation
``i`` adds ``(I - d d^T) / s_perp^2`` (the ray, ``s_perp = depth * sigma_px / f``) and a weak
prior along the ray, ``d d^T / s_depth^2`` at the depth its pixel size suggests for a plate of
``size_prior_m`` (``s_depth`` = half that depth), so one ray already has a finite estimate and
two rays from a short baseline are not singular; with any parallax the rays dominate.

Association projects each track's estimate into the new frame and matches centroids (Hungarian)
within ``gate_px`` (or 0.75 x the detection's diagonal when larger) whose depths agree.

The facing is fitted from the plate's apparent aspect over the views: ``w/h = a |cos(theta - phi_i)|``
with ``phi_i`` the bearing from the sign to camera ``i``; masks cannot tell a plate's face from its
back, so the facing is the side the drive saw.
"""

from __future__ import annotations

import numpy as np
from shapely.geometry import Point

from hdmap_seg.vectorize.components import components
from hdmap_seg.vectorize.config import SignConfig
from hdmap_seg.vectorize.frame import FrameGeometry
from hdmap_seg.vectorize.layers import Feature
from hdmap_seg.vectorize.tracks import Track, assign, iso_time, merge_close, split_stale

_DEPTH_RATIO_GATE = 2.5  # a detection's size-based depth and a track's depth differ by at most this factor
# A finished sign's distances over its pixel-size distances: within this factor (plates of 0.45 to
# 1.8 m for the 0.9 m prior); association allows more, while the track still learns its distance.
_SIZE_RATIO_FINAL = 2.0
_MIN_FACING_SPAN_RAD = np.radians(10.0)  # views closer in bearing cannot fit a facing: use their mean


def sign_instances(sign_mask: np.ndarray, cfg: SignConfig) -> np.ndarray:
    """Sign instances of one frame: ``(K, 4)`` float ``[u_px, v_px, width_px, height_px]`` (centroid, bbox)."""
    H, W = sign_mask.shape
    out = []
    for x, y, sub in components(sign_mask, cfg.min_pixels):
        h, w = sub.shape
        if x == 0 or y == 0 or x + w == W or y + h == H:  # cut by the border: the centroid would be off
            continue
        rows, cols = np.nonzero(sub)
        out.append((x + cols.mean(), y + rows.mean(), w, h))
    return np.array(out, dtype=float).reshape(-1, 4)


class SignTracker:
    """Associates sign rays over frames and triangulates them; :meth:`finish` gives Point features."""

    def __init__(self, cfg: SignConfig, max_range_m: float) -> None:
        self.cfg = cfg
        self.max_range_m = max_range_m
        self.active: list[Track] = []
        self.finished: list[Track] = []

    @property
    def n_tracks(self) -> int:
        return len(self.active) + len(self.finished)

    def add(self, frame: int, time, instances: np.ndarray, geom: FrameGeometry) -> None:
        self.active, stale = split_stale(self.active, frame, self.cfg.retire_after_frames)
        self.finished.extend(t for t in stale if t.n_obs >= self.cfg.min_obs)
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
        C = geom.center
        track_depth = np.full(len(self.active), np.nan)
        pairs: list[tuple[int, int]] = []
        if self.active:
            est = np.array([t.estimate for t in self.active])
            T_cam_from_world = np.linalg.inv(geom.T_world_from_cam)
            p_cam = est @ T_cam_from_world[:3, :3].T + T_cam_from_world[:3, 3]
            uv, in_front = cam.project(p_cam)
            track_depth = np.linalg.norm(est - C, axis=1)
            cost = np.linalg.norm(instances[:, None, :2] - uv[None], axis=2)
            gate = np.maximum(self.cfg.gate_px, 0.75 * np.hypot(instances[:, 2], instances[:, 3]))[:, None]
            ratio = track_depth[None] / prior_depth[:, None]
            ok = in_front[None] & (ratio < _DEPTH_RATIO_GATE) & (ratio > 1 / _DEPTH_RATIO_GATE)
            cost = np.where(ok, cost / gate, np.inf)
            pairs = assign(np.where(np.isfinite(cost), cost, 1e9), 1.0)
        matched = {}
        for o, t in pairs:
            matched[o] = t
        for o in range(len(instances)):
            t = matched.get(o)
            depth = track_depth[t] if t is not None and self.active[t].n_obs >= 2 else prior_depth[o]
            d = dirs[o]
            s_perp = np.hypot(depth * self.cfg.sigma_px / f, self.cfg.sigma_floor_m)
            s_depth = 0.5 * prior_depth[o]
            outer = np.outer(d, d)
            info = (np.eye(3) - outer) / s_perp**2 + outer / s_depth**2
            x = C + d * prior_depth[o]
            record = (C[0], C[1], *_angular_size(cam, instances[o]), C[2], *d, prior_depth[o])
            if t is None:
                track = Track.start(info, x, frame, time, geom.ground_z_m, [record])
                self.active.append(track)
            else:
                track = self.active[t]
                track.add(info, x, frame, time, geom.ground_z_m)
                _keep_largest(track.kept, record, self.cfg.max_obs_kept)

    def finish(self) -> list[Feature]:
        self.finished.extend(t for t in self.active if t.n_obs >= self.cfg.min_obs)
        self.active = []
        tracks = merge_close(self.finished, self.cfg.merge_radius_m)
        tracks.sort(key=lambda t: (t.first_frame, t.last_frame))
        features = []
        tracks = [
            t
            for t in tracks
            if t.chi2_per_obs <= self.cfg.max_rms_sigma**2
            and _well_triangulated(t.estimate, np.array(t.kept), self.cfg.min_parallax_deg)
        ]
        for i, t in enumerate(tracks):
            p = t.estimate
            facing_rad, width_m, height_m = _facing_and_size(p, np.array(t.kept))
            sigma = float(np.sqrt(np.linalg.eigvalsh(t.covariance).max()))
            features.append(
                Feature(
                    Point(*p),
                    {
                        "id": i,
                        "type": "sign",
                        "height_m": round(float(p[2] - t.ground_z_m), 3),
                        "facing_deg": round(float(np.degrees(np.pi / 2 - facing_rad) % 360.0), 1),
                        "width_m": round(width_m, 2),
                        "height_plate_m": round(height_m, 2),
                        "n_obs": t.n_obs,
                        "first_frame": t.first_frame,
                        "last_frame": t.last_frame,
                        "first_seen": iso_time(t.first_time),
                        "last_seen": iso_time(t.last_time),
                        "confidence": round(t.confidence, 3),
                        "sigma_m": round(sigma, 3),
                    },
                )
            )
        return features


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


def _keep_largest(kept: list, record: tuple, limit: int) -> None:
    """Keep at most ``limit`` views, preferring the largest (nearest) ones."""
    if len(kept) < limit:
        kept.append(record)
        return
    smallest = min(range(len(kept)), key=lambda i: max(kept[i][2], kept[i][3]))
    if max(record[2], record[3]) > max(kept[smallest][2], kept[smallest][3]):
        kept[smallest] = record


def _well_triangulated(p: np.ndarray, kept: np.ndarray, min_parallax_deg: float) -> bool:
    """Rays far enough apart (parallax), and a position whose distances agree with the plate's pixel size.

    Nearly parallel rays (a sign seen only far ahead) fix the direction but not the distance; noise
    then puts the least-squares point anywhere along the rays.
    """
    dirs = kept[:, 5:8]
    parallax = np.degrees(np.arccos(np.clip((dirs @ dirs.T).min(), -1.0, 1.0)))
    dist = np.linalg.norm(np.c_[kept[:, :2], kept[:, 4]] - p, axis=1)
    ratio = float(np.median(dist / kept[:, 8]))
    return parallax >= min_parallax_deg and 1 / _SIZE_RATIO_FINAL <= ratio <= _SIZE_RATIO_FINAL


def _facing_and_size(p: np.ndarray, kept: np.ndarray) -> tuple[float, float, float]:
    """Facing (world yaw, rad), plate width and height (m) from views ``[cam_x, cam_y, w_rad, h_rad, ...]``."""
    dx, dy = kept[:, 0] - p[0], kept[:, 1] - p[1]
    phi = np.arctan2(dy, dx)
    dist = np.hypot(dx, dy)
    ratio = kept[:, 2] / kept[:, 3]
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
    width_m = float(np.median(kept[:, 2] * dist / cos_view))
    height_m = float(np.median(kept[:, 3] * dist))
    return theta, width_m, height_m
