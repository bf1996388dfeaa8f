"""Smoothing of a whole drive's poses, GNSS jump detection, and the pose noise that remains.

Consumer or unfused GNSS/INS gives positions with about 0.2 m of white noise and yaw with about
0.3 deg per frame, while its velocities and angular rates are far better. Vectorization is offline,
so the whole trajectory is known and a smoother (not a filter) is used:

- **positions**: dead reckoning ``base`` from the integrated world velocities (trapezoid rule), then
  a smoothing spline (:func:`scipy.interpolate.make_smoothing_spline`, smoothing chosen by generalised
  cross-validation) of ``xyz - base``. The GNSS fixes the slow part, the velocities the shape.
  Without velocities, ``base`` integrates a running median of the frame-to-frame velocities (the
  neighbours' robust motion) for jump detection, and the smoother fits the positions themselves.
- **yaw**: the same with the yaw rate (``base`` = its integral), else a spline of the unwrapped yaw.
- **roll, pitch**: kept as recorded. An INS measures attitude to hundredths of a degree, and the
  body's pitch and roll on its springs are real motion of the camera: smoothing them away put
  poles and signs of a noise-free drive 0.1-0.3 m off.

**Jumps** (GNSS glitches) are found on ``r = xyz - base`` (what the velocities, or the neighbours'
motion, do not explain): a frame whose ``r`` is more than ``max_jump_m`` (3D, so altitude counts)
from the running median of ``r`` over ``2 * JUMP_HALF_WINDOW_FRAMES + 1`` frames is a spike or part
of a burst; where the medians of the ``JUMP_HALF_WINDOW_FRAMES`` good frames before and after a
frame boundary differ by more than ``max_jump_m`` there is a step (a jump that persists), placed at
the largest frame-to-frame change of ``r`` in that stretch, and its two frames are flagged. Flagged
frames are left out of every fit (their pose comes from the fit of the others), and the position
spline is fitted apart on each side of a step, so a step neither smears over the drive nor makes
the cross-validation choose a rough fit.

**Remaining noise**: for each spline the smoothing ``lam`` that cross-validation chose is recovered
(the fit is linear in the data for a given ``lam``), and the fit's response to a unit impulse at a
frame gives that frame's row ``h`` of the hat matrix: the smoothed value's noise is
``sigma * ||h||``, the smoother's effective window being ``1 / ||h||**2`` frames. ``sigma``, the
per-frame noise, comes from the robust scatter (1.4826 MAD) of the fit's residuals, which have
variance ``sigma**2 * (1 - 2 h_jj + ||h||**2)``. ``||h||`` is averaged (RMS) over frames spread along
the drive, its ends included (where it is about 1.5x the interior's). It leaves out the error of
the velocities integrated within the window and the spline's bias on sharp manoeuvres when there
are no velocities, so it is a lower bound of the right order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import cumulative_trapezoid
from scipy.interpolate import make_smoothing_spline
from scipy.ndimage import median_filter
from scipy.optimize import minimize_scalar

#: A drive needs this many frames and this much time to be smoothed; shorter ones come back unchanged.
MIN_FRAMES = 10
MIN_DURATION_S = 2.0
#: Half-window of the running medians of jump detection (1 s at 10 Hz): a burst of up to this many
#: frames is a minority in the window and is found frame by frame.
JUMP_HALF_WINDOW_FRAMES = 10
# Frames whose hat-matrix row is measured for the remaining noise.
_PROBES = 9
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class TrajectoryReport:
    """What smoothing a drive found.

    ``good``: ``(N,)`` bool, False at frames of GNSS jumps (left out of the fit and of the ground).
    ``sigma_pos_m``: 1-sigma per horizontal axis of a smoothed position; ``sigma_yaw_rad`` the same
    for yaw (None when not smoothed). ``skipped``: why the drive was not smoothed, "" when it was.
    """

    good: np.ndarray
    sigma_pos_m: float | None
    sigma_yaw_rad: float | None
    skipped: str

    @property
    def smoothed(self) -> bool:
        return not self.skipped

    @property
    def jump_frames(self) -> np.ndarray:
        """``(K,)`` indices of the frames flagged as GNSS jumps."""
        return np.flatnonzero(~self.good)


def _robust_base_m(t_s: np.ndarray, xyz_m: np.ndarray) -> np.ndarray:
    """``(N, 3)`` dead reckoning from the running median of frame-to-frame velocities.

    A spike or a burst spoils two frame differences and a step one, a minority of the window.
    """
    v_mps = np.diff(xyz_m, axis=0) / np.diff(t_s)[:, None]
    size = min(2 * JUMP_HALF_WINDOW_FRAMES + 1, len(v_mps))
    v_mps = median_filter(v_mps, size=(size, 1), mode="mirror")
    return np.vstack([np.zeros(3), np.cumsum(v_mps * np.diff(t_s)[:, None], axis=0)])


def _velocity_base_m(t_s: np.ndarray, xyz_m: np.ndarray, v_world_mps: np.ndarray | None) -> np.ndarray:
    if v_world_mps is None:
        return _robust_base_m(t_s, xyz_m)
    return cumulative_trapezoid(v_world_mps, t_s, axis=0, initial=0.0)


def _jumps(r_m: np.ndarray, max_jump_m: float) -> tuple[np.ndarray, list[int]]:
    """Flags of ``(N, 3)`` residual ``r_m``: ``(good (N,), step frames)``; a step frame starts a new level."""
    n = len(r_m)
    w = JUMP_HALF_WINDOW_FRAMES
    size = min(2 * w + 1, n)
    local = median_filter(r_m, size=(size, 1), mode="mirror")
    good = np.linalg.norm(r_m - local, axis=1) <= max_jump_m
    idx = np.flatnonzero(good)
    # Boundaries between consecutive good frames: idx[k - 1] | idx[k].
    over = np.zeros(len(idx), bool)
    for k in range(3, len(idx) - 2):
        before, after = r_m[idx[max(0, k - w) : k]], r_m[idx[k : k + w]]
        over[k] = np.linalg.norm(np.median(before, axis=0) - np.median(after, axis=0)) > max_jump_m
    steps = []
    change = np.r_[0.0, np.linalg.norm(np.diff(r_m[idx], axis=0), axis=1)]
    k = 0
    while k < len(idx):
        if not over[k]:
            k += 1
            continue
        end = k
        while end < len(idx) and over[end]:
            end += 1
        s = k + int(np.argmax(change[k:end]))
        steps.append(int(idx[s]))
        good[idx[s - 1]] = good[idx[s]] = False
        k = end
    return good, steps


def _segments(n: int, steps: list[int], good: np.ndarray) -> list[tuple[int, int]]:
    """Frame ranges ``[a, b)`` between steps, each with at least ``MIN_FRAMES`` good frames."""
    cuts = sorted(steps)
    while True:
        bounds = [0, *cuts, n]
        short = [i for i in range(len(bounds) - 1) if good[bounds[i] : bounds[i + 1]].sum() < MIN_FRAMES]
        if not short or not cuts:
            return list(zip(bounds[:-1], bounds[1:], strict=True))
        # Merge the short piece into its left neighbour (right one for the first piece).
        cuts.pop(max(short[0] - 1, 0))


def _detect(
    t_s: np.ndarray, xyz_m: np.ndarray, v_world_mps: np.ndarray | None, max_jump_m: float
) -> tuple[np.ndarray, list[tuple[int, int]], np.ndarray]:
    """``(good (N,), segments [a, b), base_m (N, 3))`` of a drive with strictly increasing times.

    ``base_m`` is what the position spline is fitted around: the dead reckoning, or zeros without
    velocities. After the first pass a spline is fitted to each segment's good frames, and frames
    more than ``max_jump_m`` from it are flagged too: the first pass's robust motion, integrated
    without velocities, wanders by a metre over a window and can hide part of a long burst.
    """
    n = len(t_s)
    detect_base_m = _velocity_base_m(t_s, xyz_m, v_world_mps)
    good, steps = _jumps(xyz_m - detect_base_m, max_jump_m)
    base_m = detect_base_m if v_world_mps is not None else np.zeros_like(xyz_m)
    segments = _segments(n, steps, good)
    if good.sum() < MIN_FRAMES:
        return good, segments, base_m
    fitted_m = np.empty_like(xyz_m)
    for a, b in segments:
        g = a + np.flatnonzero(good[a:b])
        fitted_m[a:b] = base_m[a:b] + make_smoothing_spline(t_s[g], (xyz_m - base_m)[g])(t_s[a:b])
    far = np.linalg.norm(xyz_m - fitted_m, axis=1) > max_jump_m
    if np.any(far & good):
        good = good & ~far
        segments = _segments(n, steps, good)
    return good, segments, base_m


def find_jumps(
    t_s: np.ndarray, xyz_m: np.ndarray, v_world_mps: np.ndarray | None = None, max_jump_m: float = 2.0
) -> np.ndarray:
    """``(N,)`` bool mask of good frames: False where the position jumps (module docstring).

    ``t_s (N,)`` seconds, ``xyz_m (N, 3)`` world positions, ``v_world_mps (N, 3)`` world velocities
    or None. A drive under 3 frames or with repeated timestamps is not judged: all good.
    """
    t_s = np.asarray(t_s, float)
    xyz_m = np.asarray(xyz_m, float)
    if len(xyz_m) < 3 or np.any(np.diff(t_s) <= 0):
        return np.ones(len(xyz_m), bool)
    return _detect(t_s, xyz_m, v_world_mps, max_jump_m)[0]


@dataclass(frozen=True)
class _Fit:
    values: np.ndarray  # (n,) the spline at every requested time
    sigma: float  # per-frame noise of the fitted data
    hat_norm: float  # RMS ||h|| over the probe frames


def _recover_lam(t_s: np.ndarray, y: np.ndarray, target: np.ndarray) -> float:
    """The ``lam`` whose fit of ``y`` is ``target`` (the one cross-validation chose)."""

    def misfit(log_lam: float) -> float:
        return float(np.sum((make_smoothing_spline(t_s, y, lam=10.0**log_lam)(t_s) - target) ** 2))

    # make_smoothing_spline searches lam in (0, n).
    return 10.0 ** minimize_scalar(misfit, bounds=(-12.0, np.log10(len(t_s))), method="bounded").x


def _spline_fit(t_fit_s: np.ndarray, y: np.ndarray, t_eval_s: np.ndarray) -> _Fit:
    """GCV smoothing spline of ``y`` over ``t_fit_s`` evaluated at ``t_eval_s``, with its noise figures."""
    spline = make_smoothing_spline(t_fit_s, y)
    fitted = spline(t_fit_s)
    lam = _recover_lam(t_fit_s, y, fitted)
    n = len(t_fit_s)
    h_norm2, denom = [], []
    for j in np.unique(np.linspace(0, n - 1, _PROBES).round().astype(int)):
        h = make_smoothing_spline(t_fit_s, np.eye(1, n, j)[0], lam=lam)(t_fit_s)
        h_norm2.append(h @ h)
        denom.append(1.0 - 2.0 * h[j] + h @ h)
    resid = y - fitted
    scatter = _MAD_TO_SIGMA * np.median(np.abs(resid - np.median(resid)))
    sigma = scatter / np.sqrt(max(np.mean(denom), 1e-6))
    return _Fit(spline(t_eval_s), float(sigma), float(np.sqrt(np.mean(h_norm2))))


def smooth_trajectory(
    t_s: np.ndarray,
    xyz_m: np.ndarray,
    rpy_rad: np.ndarray,
    v_world_mps: np.ndarray | None = None,
    yaw_rate_radps: np.ndarray | None = None,
    max_jump_m: float = 2.0,
) -> tuple[np.ndarray, np.ndarray, TrajectoryReport]:
    """Smooth a whole drive's poses (module docstring): ``(xyz_m (N, 3), rpy_rad (N, 3), report)``.

    ``t_s (N,)`` seconds, ``xyz_m (N, 3)`` world positions, ``rpy_rad (N, 3)`` roll, pitch, yaw (yaw
    comes back wrapped to [-pi, pi)), ``v_world_mps (N, 3)`` world velocities and ``yaw_rate_radps
    (N,)`` the rate of yaw, each None when the log lacks it. A drive too short (``MIN_FRAMES``,
    ``MIN_DURATION_S``), with repeated timestamps or too few good frames comes back unchanged with
    ``report.skipped`` saying why; its jump frames are still flagged.
    """
    t_s = np.asarray(t_s, float)
    xyz_m = np.asarray(xyz_m, float)
    rpy_rad = np.asarray(rpy_rad, float)
    n = len(t_s)
    judged = n >= 3 and bool(np.all(np.diff(t_s) > 0))
    good, segments, base_m = _detect(t_s, xyz_m, v_world_mps, max_jump_m) if judged else (None, [], None)

    def unchanged(why: str) -> tuple[np.ndarray, np.ndarray, TrajectoryReport]:
        mask = np.ones(n, bool) if good is None else good
        return xyz_m.copy(), rpy_rad.copy(), TrajectoryReport(mask, None, None, why)

    duration_s = float(t_s[-1] - t_s[0]) if n else 0.0
    if n < MIN_FRAMES or duration_s < MIN_DURATION_S:
        return unchanged(f"too short to smooth ({n} frames, {duration_s:.1f} s)")
    if good is None:
        return unchanged("timestamps repeat")
    if good.sum() < MIN_FRAMES:
        return unchanged(f"only {int(good.sum())} frames without GNSS jumps")
    r_m = xyz_m - base_m
    out_xyz = np.empty_like(xyz_m)
    pos_var, pos_weight = 0.0, 0
    for a, b in segments:
        g = a + np.flatnonzero(good[a:b])
        for axis in range(3):
            fit = _spline_fit(t_s[g], r_m[g, axis], t_s[a:b])
            out_xyz[a:b, axis] = base_m[a:b, axis] + fit.values
            if axis < 2:
                pos_var += len(g) * (fit.sigma * fit.hat_norm) ** 2
                pos_weight += len(g)
    g = np.flatnonzero(good)
    # Roll and pitch stay as recorded: the unit's gyros and accelerometers give them to hundredths of
    # a degree, and what they show is the body's real motion on its springs, which the camera rides.
    out_rpy = rpy_rad.copy()
    yaw = np.unwrap(rpy_rad[:, 2])
    yaw_base = (
        np.zeros(n) if yaw_rate_radps is None else cumulative_trapezoid(yaw_rate_radps, t_s, initial=0.0)
    )
    yaw_fit = _spline_fit(t_s[g], (yaw - yaw_base)[g], t_s)
    out_rpy[:, 2] = (yaw_base + yaw_fit.values + np.pi) % (2 * np.pi) - np.pi
    report = TrajectoryReport(
        good, float(np.sqrt(pos_var / pos_weight)), yaw_fit.sigma * yaw_fit.hat_norm, ""
    )
    return out_xyz, out_rpy, report
