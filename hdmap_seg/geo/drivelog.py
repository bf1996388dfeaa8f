"""Drive logs: frames with their time, 6-DoF pose and camera, in KITTI raw or the generic layout.

KITTI raw (docs/conventions.md, docs/map.md)::

    <log>/image_02/data/<10-digit index>.png   frames of the chosen camera (``camera=2``)
    <log>/image_02/timestamps.txt              (else oxts/timestamps.txt)
    <log>/oxts/data/<index>.txt                one OXTS packet per frame
    <log>/calib_*.txt or <log>/../calib_*.txt  or ``calib_dir``

Generic (other rigs)::

    <log>/frames/<frame>.png|.jpg
    <log>/poses.csv     frame,timestamp,lat,lon,alt,roll,pitch,yaw[,vn,ve,vu][,wu]   (timestamp:
                        Unix seconds; angles in rad with KITTI's OXTS meanings; lat/lon deg, alt m;
                        optional velocities north, east, up in m/s and yaw rate (about the up axis,
                        counter-clockwise) in rad/s, OXTS's names and meanings)
    <log>/camera.yaml   width, height, fx, fy, cx, cy, distortion, T_vehicle_from_cam, ground_offset_m

Poses are those of the vehicle reference point (the OXTS unit on KITTI); the camera's pose is
``T_world_from_cam = T_world_from_vehicle @ T_vehicle_from_cam``. The world frame is anchored at
the first frame's position unless an ``origin`` is given.

Velocities and yaw rate, where the log has them (OXTS ``vn, ve, vu`` and ``wu``; the optional
columns of ``poses.csv``), are kept per frame for :func:`smooth_log`: world velocities are
``(ve, vn, vu)`` turned from true to grid north by the grid convergence at the vehicle, as yaw is.
KITTI packets always hold the fields; a log whose ``vn, ve, vu`` (or ``wu``) are all exactly zero
was written without them and has none.

A bad file stops with an :class:`~hdmap_seg.errors.HdmapError` of one line that names it (and the
line or frame): not UTF-8 text, a missing key or column, NaN, a latitude beyond 90 deg, values
beyond any drive on Earth (``_LIMITS``: altitude 100 km, angles 1000 rad, velocities 1000 m/s), a
calibration that is no camera (a singular ``P_rect``, a rotation that is none, an image size of 0).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hdmap_seg.errors import HdmapError
from hdmap_seg.geo.camera import CameraModel
from hdmap_seg.geo.frames import (
    LocalFrame,
    T_world_from_imu,
    invert_transform,
    make_transform,
    rotation_from_rpy,
    rpy_from_rotation,
)
from hdmap_seg.geo.kitti import (
    KITTI_IMU_HEIGHT_M,
    MAX_IMAGE_SIDE_PX,
    KittiCalib,
    check_lat_lon,
    is_rotation,
    read_oxts,
    read_timestamps,
    seconds_since,
)
from hdmap_seg.geo.trajectory import TrajectoryReport, find_jumps, smooth_trajectory
from hdmap_seg.imageio import IMAGE_SUFFIXES
from hdmap_seg.io import read_text, read_yaml_mapping

log = logging.getLogger(__name__)

POSES_COLUMNS = ("frame", "timestamp", "lat", "lon", "alt", "roll", "pitch", "yaw")
VELOCITY_COLUMNS = ("vn", "ve", "vu")
YAW_RATE_COLUMN = "wu"
# Times a datetime64[ns] holds: within 292 years of 1970.
_MAX_ABS_TIME_S = 9.0e9
# Magnitudes beyond any drive on Earth (unwrapped angles included): a broken file, not a pose, and
# arithmetic on them overflows. Name -> (limit, unit).
_LIMITS = {
    "alt": (1e5, "m"),
    "roll": (1e3, "rad"),
    "pitch": (1e3, "rad"),
    "yaw": (1e3, "rad"),
    "vn": (1e3, "m/s"),
    "ve": (1e3, "m/s"),
    "vu": (1e3, "m/s"),
    "wu": (1e3, "rad/s"),
}


@dataclass(frozen=True)
class Frame:
    """One frame of a log: its index in the log, file stem, image path and time."""

    index: int
    stem: str
    image_path: Path
    timestamp: np.datetime64


class DriveLog:
    """Frames, poses and camera of one drive. Index it for :class:`Frame` s; poses by index.

    ``v_world_mps (N, 3)`` and ``yaw_rate_radps (N,)`` are the vehicle's world velocity and rate of
    yaw per frame, None where the log lacks them. Memory is a 4x4 pose and a path per frame: a
    10,000-frame log holds about 3 MB.
    """

    def __init__(
        self,
        root: Path,
        layout: str,
        frames: list[Frame],
        T_world_from_vehicle: np.ndarray,
        camera: CameraModel,
        origin: LocalFrame,
        default_masks_dir: Path,
        v_world_mps: np.ndarray | None = None,
        yaw_rate_radps: np.ndarray | None = None,
    ) -> None:
        self.root = root
        self.layout = layout
        self.frames = frames
        self.T_world_from_vehicle = T_world_from_vehicle
        self.camera = camera
        self.origin = origin
        self.default_masks_dir = default_masks_dir
        self.v_world_mps = v_world_mps
        self.yaw_rate_radps = yaw_rate_radps

    def times_s(self) -> np.ndarray:
        """``(N,)`` seconds since the first frame."""
        return seconds_since(np.array([f.timestamp for f in self.frames], "datetime64[ns]"))

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> Frame:
        return self.frames[i]

    def T_world_from_cam(self, i: int) -> np.ndarray:
        """4x4 pose of the camera at frame ``i``."""
        return self.T_world_from_vehicle[i] @ self.camera.T_vehicle_from_cam

    def ground_z_m(self, i: int) -> float:
        """World height of the ground under the vehicle at frame ``i``."""
        return float(self.T_world_from_vehicle[i, 2, 3] - self.camera.ground_offset_m)

    def mask_path(self, masks_dir: Path, i: int) -> Path:
        """The mask of frame ``i`` in ``masks_dir``: a PNG named like the frame."""
        return Path(masks_dir) / f"{self.frames[i].stem}.png"


def open_drive_log(
    path: str | os.PathLike,
    camera: int = 2,
    calib_dir: str | os.PathLike | None = None,
    origin: LocalFrame | None = None,
) -> DriveLog:
    """Open a drive log, KITTI raw (has ``oxts/``) or generic (has ``poses.csv``)."""
    root = Path(path)
    if not root.is_dir():
        raise HdmapError(f"{root}: drive log folder not found")
    if (root / "oxts").is_dir():
        return _open_kitti(root, camera, calib_dir, origin)
    if (root / "poses.csv").is_file():
        return _open_generic(root, origin)
    raise HdmapError(
        f"{root}: not a drive log (neither oxts/ of KITTI raw nor poses.csv of the generic layout)"
    )


def _check_times(timestamps: np.ndarray, source: Path) -> None:
    back = np.flatnonzero(np.diff(timestamps) < np.timedelta64(0, "ns"))
    if back.size:
        i = int(back[0]) + 1
        raise HdmapError(
            f"{source}: timestamps go backwards at frame {i} ({timestamps[i - 1]} -> {timestamps[i]})"
        )


def _origin(origin: LocalFrame | None, rows: np.ndarray, source: str) -> LocalFrame:
    """The given world origin, else the first frame's position (``source`` names where it comes from)."""
    if origin is not None:
        return origin
    try:
        return LocalFrame(*rows[0, :3])
    except HdmapError as err:
        raise HdmapError(f"{source}: {err}") from None


def _poses(origin: LocalFrame, rows: np.ndarray, sources: list[str]) -> np.ndarray:
    """``(N, 6)`` lat, lon, alt, roll, pitch, yaw -> ``(N, 4, 4)`` T_world_from_vehicle.

    ``sources[i]`` names where row ``i`` comes from, for the error of a position that the world
    frame cannot hold (half a world away from its origin).
    """
    T = np.stack([T_world_from_imu(origin, *r) for r in rows]) if len(rows) else np.zeros((0, 4, 4))
    bad = np.flatnonzero(~np.isfinite(T.reshape(len(T), -1)).all(axis=1))
    if bad.size:
        i = int(bad[0])
        lat, lon = float(rows[i, 0]), float(rows[i, 1])
        raise HdmapError(
            f"{sources[i]}: lat {lat!r}, lon {lon!r} has no place in the world frame around "
            f"lat {origin.lat0!r}, lon {origin.lon0!r}: too far from it"
        )
    return T


def _v_world_mps(origin: LocalFrame, rows: np.ndarray, v_neu_mps: np.ndarray) -> np.ndarray | None:
    """``(N, 3)`` world velocities from ``(N, 3)`` north, east, up ones; None if all are zero (absent)."""
    if not np.any(v_neu_mps):
        return None
    # True -> grid directions: an angle from true east is ``- gamma`` from grid east, as for yaw.
    gamma = np.asarray(origin.grid_convergence_rad(rows[:, 0], rows[:, 1]), float)
    vn, ve, vu = v_neu_mps.T
    return np.stack(
        [ve * np.cos(gamma) + vn * np.sin(gamma), -ve * np.sin(gamma) + vn * np.cos(gamma), vu], axis=1
    )


def _open_kitti(root: Path, camera: int, calib_dir, origin: LocalFrame | None) -> DriveLog:
    calib = KittiCalib.read(Path(calib_dir) if calib_dir is not None else KittiCalib.find_dir(root))
    K, T_cam_from_imu, (width, height) = calib.rect_camera(camera)
    cam_model = CameraModel(
        K,
        width,
        height,
        T_vehicle_from_cam=invert_transform(T_cam_from_imu),
        ground_offset_m=KITTI_IMU_HEIGHT_M,
    )
    image_dir = root / f"image_{camera:02d}"
    data_dir = image_dir / "data"
    if not data_dir.is_dir():
        raise HdmapError(f"{data_dir}: frames folder of camera {camera} not found")
    ts_path = image_dir / "timestamps.txt"
    if not ts_path.is_file():
        ts_path = root / "oxts" / "timestamps.txt"
    timestamps = read_timestamps(ts_path)
    _check_times(timestamps, ts_path)
    by_stem = {p.stem: p for p in data_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    frames, rows, packets = [], np.zeros((len(timestamps), 6)), []
    v_neu, wu = np.zeros((len(timestamps), 3)), np.zeros(len(timestamps))
    for i, ts in enumerate(timestamps):
        stem = f"{i:010d}"
        if stem not in by_stem:
            raise HdmapError(
                f"{data_dir}: frame {stem} is missing ({ts_path} lists {len(timestamps)} frames)"
            )
        oxts = root / "oxts" / "data" / f"{stem}.txt"
        if not oxts.is_file():
            raise HdmapError(f"{oxts}: missing OXTS packet (pose) for frame {stem}")
        p = read_oxts(oxts)
        rows[i] = (p.lat, p.lon, p.alt, p.roll, p.pitch, p.yaw)
        v_neu[i], wu[i] = (p.vn, p.ve, p.vu), p.wu
        frames.append(Frame(i, stem, by_stem[stem], ts))
        packets.append(str(oxts))
    if not frames:
        raise HdmapError(f"{ts_path}: the log has no frames")
    _check_values(rows, np.c_[v_neu, wu], ["vn", "ve", "vu", "wu"], packets)
    extra = sorted(set(by_stem) - {f.stem for f in frames})
    if extra:
        raise HdmapError(
            f"{ts_path}: lists {len(frames)} frames but {data_dir} also holds {extra[0]} (and more?)"
        )
    origin = _origin(origin, rows, packets[0])
    return DriveLog(
        root,
        "kitti",
        frames,
        _poses(origin, rows, packets),
        cam_model,
        origin,
        root / f"label_{camera:02d}" / "data",
        _v_world_mps(origin, rows, v_neu),
        wu if np.any(wu) else None,
    )


def _check_values(rows: np.ndarray, rates: np.ndarray, names: list[str], sources: list[str]) -> None:
    """Altitudes, angles and the ``rates`` (columns ``names``: vn, ve, vu, wu) within ``_LIMITS``, not NaN."""
    table = np.c_[rows[:, 2:], rates]
    cols = ["alt", "roll", "pitch", "yaw", *names]
    limits = np.array([_LIMITS[c][0] for c in cols])
    bad = np.argwhere(~(np.abs(table) <= limits))  # NaN fails too
    if len(bad):
        i, j = (int(v) for v in bad[0])
        limit, unit = _LIMITS[cols[j]]
        raise HdmapError(
            f"{sources[i]}: {cols[j]} is {float(table[i, j])!r}, out of range (at most {limit:g} {unit} either way)"
        )


def read_camera_yaml(path: Path) -> CameraModel:
    """Read a generic log's ``camera.yaml`` (keys in the module docstring)."""
    data = read_yaml_mapping(path, "camera file")
    for key in ("width", "height", "fx", "fy", "cx", "cy", "T_vehicle_from_cam", "ground_offset_m"):
        if key not in data:
            raise HdmapError(f"{path}: calibration lacks the key {key!r}")
    try:
        K = np.array([[data["fx"], 0, data["cx"]], [0, data["fy"], data["cy"]], [0, 0, 1]], float)
        T = np.asarray(data["T_vehicle_from_cam"], float)
        dist = np.asarray(data.get("distortion") or [], float).ravel()
        ground = float(data["ground_offset_m"])
    except (TypeError, ValueError, OverflowError) as err:
        raise HdmapError(f"{path}: a camera value is not a number ({err})") from None
    size = [data["width"], data["height"]]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMAGE_SIDE_PX for v in size):
        raise HdmapError(
            f"{path}: width and height must be whole numbers of pixels, 1 to {MAX_IMAGE_SIDE_PX}, got {size}"
        )
    if T.shape != (4, 4):
        raise HdmapError(f"{path}: T_vehicle_from_cam must be a 4x4 matrix, got shape {T.shape}")
    if not (
        np.all(np.isfinite(K))
        and np.all(np.isfinite(T))
        and np.all(np.isfinite(dist))
        and np.isfinite(ground)
    ):
        raise HdmapError(f"{path}: NaN or inf in the camera")
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise HdmapError(f"{path}: fx and fy must be positive (pixels), got {K[0, 0]:g}, {K[1, 1]:g}")
    if not is_rotation(T[:3, :3]) or not np.array_equal(T[3], [0.0, 0.0, 0.0, 1.0]):
        raise HdmapError(
            f"{path}: T_vehicle_from_cam is not a rigid transform (rotation, translation; 0 0 0 1)"
        )
    if dist.size not in (0, 4, 5, 8):
        raise HdmapError(f"{path}: distortion must have 0, 4, 5 or 8 coefficients, got {dist.size}")
    return CameraModel(K, size[0], size[1], dist, T, ground)


def _open_generic(root: Path, origin: LocalFrame | None) -> DriveLog:
    camera = read_camera_yaml(root / "camera.yaml")
    poses_path = root / "poses.csv"
    text = read_text(poses_path, "poses file")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in POSES_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise HdmapError(f"{poses_path}: missing column(s) {missing}; expected {','.join(POSES_COLUMNS)}")
        table = list(reader)
    except csv.Error as err:
        raise HdmapError(f"{poses_path}:{reader.line_num}: not CSV ({err})") from None
    if not table:
        raise HdmapError(f"{poses_path}: no pose rows")
    frames_dir = root / "frames"
    by_stem = (
        {p.stem: p for p in frames_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        if frames_dir.is_dir()
        else {}
    )
    fields = reader.fieldnames or []
    has_v = [c in fields for c in VELOCITY_COLUMNS]
    if any(has_v) and not all(has_v):
        raise HdmapError(
            f"{poses_path}: velocity columns must be all of {','.join(VELOCITY_COLUMNS)} or none"
        )
    extra = [*VELOCITY_COLUMNS] * all(has_v) + [YAW_RATE_COLUMN] * (YAW_RATE_COLUMN in fields)
    rows = np.zeros((len(table), 6))
    rates = np.zeros((len(table), len(extra)))
    times = np.zeros(len(table), "datetime64[ns]")
    frames = []
    for i, rec in enumerate(table):
        where = f"{poses_path}:{i + 2}"
        try:
            values = [float(rec[c]) for c in POSES_COLUMNS[1:]]
            rates[i] = [float(rec[c]) for c in extra]
        except (TypeError, ValueError):
            raise HdmapError(f"{where}: a pose value is empty or not a number") from None
        if not (np.all(np.isfinite(values)) and np.all(np.isfinite(rates[i]))):
            raise HdmapError(f"{where}: NaN or inf in the pose of frame {rec['frame']}")
        if abs(values[0]) > _MAX_ABS_TIME_S:
            raise HdmapError(f"{where}: timestamp {values[0]!r} s is not a time (seconds since 1970)")
        check_lat_lon(values[1], values[2], where)
        stem = str(rec["frame"]).strip()
        if stem not in by_stem:
            raise HdmapError(f"{frames_dir}: frame {stem!r} of {where} is missing")
        times[i] = np.datetime64(int(round(values[0] * 1e9)), "ns")
        rows[i] = values[1:]
        frames.append(Frame(i, stem, by_stem[stem], times[i]))
    _check_times(times, poses_path)
    unposed = sorted(set(by_stem) - {f.stem for f in frames})
    if unposed:
        raise HdmapError(f"{poses_path}: no pose row for frame {unposed[0]!r} of {frames_dir}")
    sources = [f"{poses_path}:{i + 2}" for i in range(len(rows))]
    _check_values(rows, rates, extra, sources)
    origin = _origin(origin, rows, sources[0])
    poses = _poses(origin, rows, sources)
    v_world = _v_world_mps(origin, rows, rates[:, :3]) if all(has_v) else None
    yaw_rate = rates[:, -1].copy() if YAW_RATE_COLUMN in extra else None
    return DriveLog(root, "generic", frames, poses, camera, origin, root / "labels", v_world, yaw_rate)


def _frame_ranges(indices: np.ndarray) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"``."""
    parts, idx = [], [int(i) for i in indices]
    start = 0
    for k in range(1, len(idx) + 1):
        if k == len(idx) or idx[k] != idx[k - 1] + 1:
            a, b = idx[start], idx[k - 1]
            parts.append(str(a) if a == b else f"{a}-{b}")
            start = k
    return ", ".join(parts)


def _warn_jumps(drive: DriveLog, good: np.ndarray, max_jump_m: float) -> None:
    bad = np.flatnonzero(~good)
    if bad.size:
        log.warning(
            "%s: GNSS position jumps (> %g m) at frames %s: left out of the trajectory fit and the ground",
            drive.root,
            max_jump_m,
            _frame_ranges(bad),
        )


def find_log_jumps(drive: DriveLog, max_jump_m: float = 2.0) -> np.ndarray:
    """``(N,)`` bool mask of the frames without a GNSS jump (:func:`~hdmap_seg.geo.trajectory.find_jumps`).

    For runs without smoothing, so that the ground surface still leaves glitched frames out; logs a
    warning naming the log and the frames.
    """
    good = find_jumps(drive.times_s(), drive.T_world_from_vehicle[:, :3, 3], drive.v_world_mps, max_jump_m)
    _warn_jumps(drive, good, max_jump_m)
    return good


def smooth_log(drive: DriveLog, max_jump_m: float = 2.0) -> tuple[DriveLog, TrajectoryReport]:
    """A new log with smoothed ``T_world_from_vehicle`` (:func:`~hdmap_seg.geo.trajectory.smooth_trajectory`).

    Logs a warning naming the log and the frames of GNSS jumps, and one when the drive is not
    smoothed (then its poses are the given ones).
    """
    T = drive.T_world_from_vehicle
    rpy = np.array([rpy_from_rotation(R) for R in T[:, :3, :3]]).reshape(-1, 3)
    xyz_m, rpy_rad, report = smooth_trajectory(
        drive.times_s(), T[:, :3, 3], rpy, drive.v_world_mps, drive.yaw_rate_radps, max_jump_m
    )
    _warn_jumps(drive, report.good, max_jump_m)
    if not report.smoothed:
        log.warning("%s: poses not smoothed: %s", drive.root, report.skipped)
    poses = np.stack([make_transform(rotation_from_rpy(*a), p) for a, p in zip(rpy_rad, xyz_m, strict=True)])
    smoothed = DriveLog(
        drive.root,
        drive.layout,
        drive.frames,
        poses,
        drive.camera,
        drive.origin,
        drive.default_masks_dir,
        drive.v_world_mps,
        drive.yaw_rate_radps,
    )
    return smoothed, report
