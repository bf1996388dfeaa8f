"""Streaming fusion of point observations: Gaussian information sums per track, bounded state.

A track holds the information matrix ``J = sum(Sigma_i^-1)`` and vector ``sum(Sigma_i^-1 x_i)`` of
its observations (the least-squares estimate is ``J^-1 sum(...)``): constant size however many
frames see it. Tracks not seen for ``retire_after_frames`` leave the active set; the caller turns
them into features or drops them, so that active state is bounded by what the camera sees and
finished state by the map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


@dataclass
class Track:
    """Fused observations of one physical object (``dim`` = 2 for poles, 3 for signs)."""

    info: np.ndarray
    info_vec: np.ndarray
    first_frame: int
    last_frame: int
    first_time: np.datetime64 | None
    last_time: np.datetime64 | None
    n_obs: int = 1
    ground_z_sum: float = 0.0
    #: a few per-observation records, for the properties that need them (bounded by the caller)
    kept: list = field(default_factory=list)
    #: what the caller needs of the latest observation to associate the next one
    last: tuple = ()

    @classmethod
    def start(cls, info: np.ndarray, x: np.ndarray, frame: int, time, ground_z_m: float, kept=None) -> Track:
        """A track of one observation ``x`` with information matrix ``info``."""
        return cls(info.copy(), info @ x, frame, frame, time, time, 1, ground_z_m, list(kept or []))

    @property
    def estimate(self) -> np.ndarray:
        return np.linalg.solve(self.info, self.info_vec)

    @property
    def covariance(self) -> np.ndarray:
        return np.linalg.inv(self.info)

    @property
    def ground_z_m(self) -> float:
        """Mean height of the ground under its observations."""
        return self.ground_z_sum / self.n_obs

    @property
    def hit_rate(self) -> float:
        """Fraction of the frames from first to last sighting in which it was seen."""
        return self.n_obs / (self.last_frame - self.first_frame + 1)

    @property
    def confidence(self) -> float:
        """``hit_rate * (1 - 1/n_obs)``: 0 for a single sighting, towards 1 for a steady one."""
        return float(self.hit_rate * (1.0 - 1.0 / self.n_obs))

    def add(self, info: np.ndarray, x: np.ndarray, frame: int, time, ground_z_m: float) -> None:
        """Add an observation ``x`` with information matrix ``info`` (inverse covariance)."""
        self.info = self.info + info
        self.info_vec = self.info_vec + info @ x
        self.n_obs += 1
        self.last_frame = frame
        self.last_time = time
        self.ground_z_sum += ground_z_m

    def absorb(self, other: Track) -> None:
        """Merge another track of the same object (a second pass over the same place)."""
        self.info = self.info + other.info
        self.info_vec = self.info_vec + other.info_vec
        self.n_obs += other.n_obs
        self.ground_z_sum += other.ground_z_sum
        if other.first_frame < self.first_frame:
            self.first_frame, self.first_time = other.first_frame, other.first_time
        if other.last_frame > self.last_frame:
            self.last_frame, self.last_time = other.last_frame, other.last_time
        self.kept.extend(other.kept)


#: The ground height at a finished track's point: ``(track, xy_m (2,)) -> z_m``.
GroundAt = Callable[[Track, np.ndarray], float]


def mean_ground(track: Track, xy_m: np.ndarray) -> float:
    """The mean height of the ground under the track's observations (a level plane under each frame)."""
    return track.ground_z_m


def keep_best(kept: list, record: Any, limit: int, score: Callable[[Any], float]) -> None:
    """Keep at most ``limit`` per-observation records in ``kept``, those of the highest ``score``."""
    if len(kept) < limit:
        kept.append(record)
        return
    worst = min(range(len(kept)), key=lambda i: score(kept[i]))
    if score(record) > score(kept[worst]):
        kept[worst] = record


#: 99% of a chi-square with 2 degrees of freedom: the squared Mahalanobis gate of association (poles
#: on the ground, signs in the image).
CHI2_2D_99 = 9.21
#: ... and with 1 (a bearing: across its ray only).
CHI2_1D_99 = 6.63


def assign(cost: np.ndarray, gate: float | np.ndarray) -> list[tuple[int, int]]:
    """One-to-one assignment (Hungarian) of rows to columns with ``cost <= gate``."""
    if cost.size == 0:
        return []
    ok = cost <= gate
    big = 1e6 + float(np.nanmax(np.where(ok, cost, 0.0)))
    rows, cols = linear_sum_assignment(np.where(ok, cost, big))
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if ok[r, c]]


class TrackSet:
    """Active tracks (what the camera may still see) and finished ones (the map so far).

    :meth:`retire` moves tracks unseen for ``retire_after_frames`` out of the active set, keeping
    those with ``min_obs`` observations; :meth:`close` finishes the rest and merges repeat passes.
    """

    def __init__(self, min_obs: int, retire_after_frames: int, merge_radius_m: float) -> None:
        self.min_obs = min_obs
        self.retire_after_frames = retire_after_frames
        self.merge_radius_m = merge_radius_m
        self.active: list[Track] = []
        self.finished: list[Track] = []

    @property
    def n_tracks(self) -> int:
        return len(self.active) + len(self.finished)

    def retire(self, frame: int) -> None:
        stale = [t for t in self.active if frame - t.last_frame > self.retire_after_frames]
        self.active = [t for t in self.active if frame - t.last_frame <= self.retire_after_frames]
        self.finished.extend(t for t in stale if t.n_obs >= self.min_obs)

    def close(self) -> list[Track]:
        """Every track with ``min_obs`` observations, repeat passes merged, in order of first sighting."""
        self.finished.extend(t for t in self.active if t.n_obs >= self.min_obs)
        self.active = []
        tracks = merge_close(self.finished, self.merge_radius_m)
        tracks.sort(key=lambda t: (t.first_frame, t.last_frame))
        return tracks


def merge_close(tracks: list[Track], radius_m: float) -> list[Track]:
    """Merge tracks whose horizontal estimates lie within ``radius_m`` (transitively)."""
    if len(tracks) < 2 or radius_m <= 0:
        return tracks
    xy = np.array([t.estimate[:2] for t in tracks])
    pairs = cKDTree(xy).query_pairs(radius_m, output_type="ndarray")
    if len(pairs) == 0:
        return tracks
    n = len(tracks)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    merged: dict[int, Track] = {}
    for t, lab in zip(tracks, labels, strict=True):
        if lab in merged:
            merged[lab].absorb(t)
        else:
            merged[lab] = t
    return list(merged.values())


def sighting_properties(track: Track, covariance: np.ndarray) -> dict:
    """The properties every fused point feature carries (docs/map.md, "Layers and their properties")."""
    return {
        "n_obs": track.n_obs,
        "first_frame": track.first_frame,
        "last_frame": track.last_frame,
        "first_seen": iso_time(track.first_time),
        "last_seen": iso_time(track.last_time),
        "confidence": round(track.confidence, 3),
        "sigma_m": round(position_sigma_m(covariance), 3),
    }


def position_sigma_m(covariance: np.ndarray) -> float:
    """1-sigma of a fused point along its least certain direction (m)."""
    return float(np.sqrt(np.linalg.eigvalsh(covariance).max()))


def iso_time(ts: np.datetime64 | None) -> str | None:
    """ISO 8601 text of a frame time (milliseconds), or None for a frame without one."""
    return None if ts is None else str(np.datetime_as_string(np.datetime64(ts, "ns"), unit="ms"))
