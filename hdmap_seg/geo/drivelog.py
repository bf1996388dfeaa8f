"""Drive logs: frames with their time, 6-DoF pose and camera, in KITTI raw or the generic layout.

KITTI raw (docs/conventions.md, docs/map.md)::

    <log>/image_02/data/<10-digit index>.png   frames of the chosen camera (``camera=2``)
    <log>/image_02/timestamps.txt              (else oxts/timestamps.txt)
    <log>/oxts/data/<index>.txt                one OXTS packet per frame
    <log>/calib_*.txt or <log>/../calib_*.txt  or ``calib_dir``

Generic (other rigs)::

    <log>/frames/<frame>.png|.jpg
    <log>/poses.csv     frame,timestamp,lat,lon,alt,roll,pitch,yaw   (timestamp: Unix seconds;
                        angles in rad with KITTI's OXTS meanings; lat/lon deg, alt m)
    <log>/camera.yaml   width, height, fx, fy, cx, cy, distortion, T_vehicle_from_cam, ground_offset_m

Poses are those of the vehicle reference point (the OXTS unit on KITTI); the camera's pose is
``T_world_from_cam = T_world_from_vehicle @ T_vehicle_from_cam``. The world frame is anchored at
the first frame's position unless an ``origin`` is given.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hdmap_seg.errors import HdmapError
from hdmap_seg.geo.camera import CameraModel
from hdmap_seg.geo.frames import LocalFrame, T_world_from_imu, invert_transform
from hdmap_seg.geo.kitti import KITTI_IMU_HEIGHT_M, KittiCalib, parse_oxts_line, read_timestamps
from hdmap_seg.io import read_yaml_mapping

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
POSES_COLUMNS = ("frame", "timestamp", "lat", "lon", "alt", "roll", "pitch", "yaw")


@dataclass(frozen=True)
class Frame:
    """One frame of a log: its index in the log, file stem, image path and time."""

    index: int
    stem: str
    image_path: Path
    timestamp: np.datetime64


class DriveLog:
    """Frames, poses and camera of one drive. Index it for :class:`Frame` s; poses by index.

    Memory is a 4x4 pose and a path per frame: a 10,000-frame log holds about 3 MB.
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
    ) -> None:
        self.root = root
        self.layout = layout
        self.frames = frames
        self.T_world_from_vehicle = T_world_from_vehicle
        self.camera = camera
        self.origin = origin
        self.default_masks_dir = default_masks_dir

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


def _poses(origin: LocalFrame, rows: np.ndarray) -> np.ndarray:
    """``(N, 6)`` lat, lon, alt, roll, pitch, yaw -> ``(N, 4, 4)`` T_world_from_vehicle."""
    return np.stack([T_world_from_imu(origin, *r) for r in rows]) if len(rows) else np.zeros((0, 4, 4))


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
    frames, rows = [], np.zeros((len(timestamps), 6))
    for i, ts in enumerate(timestamps):
        stem = f"{i:010d}"
        if stem not in by_stem:
            raise HdmapError(
                f"{data_dir}: frame {stem} is missing ({ts_path} lists {len(timestamps)} frames)"
            )
        oxts = root / "oxts" / "data" / f"{stem}.txt"
        if not oxts.is_file():
            raise HdmapError(f"{oxts}: missing OXTS packet (pose) for frame {stem}")
        p = parse_oxts_line(oxts.read_text(), str(oxts))
        rows[i] = (p.lat, p.lon, p.alt, p.roll, p.pitch, p.yaw)
        frames.append(Frame(i, stem, by_stem[stem], ts))
    if not frames:
        raise HdmapError(f"{ts_path}: the log has no frames")
    extra = sorted(set(by_stem) - {f.stem for f in frames})
    if extra:
        raise HdmapError(
            f"{ts_path}: lists {len(frames)} frames but {data_dir} also holds {extra[0]} (and more?)"
        )
    origin = origin or LocalFrame(*rows[0, :3])
    return DriveLog(
        root, "kitti", frames, _poses(origin, rows), cam_model, origin, root / f"label_{camera:02d}" / "data"
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
        dist = np.asarray(data.get("distortion") or [], float)
        ground = float(data["ground_offset_m"])
    except (TypeError, ValueError) as err:
        raise HdmapError(f"{path}: a camera value is not a number ({err})") from None
    if T.shape != (4, 4):
        raise HdmapError(f"{path}: T_vehicle_from_cam must be a 4x4 matrix, got shape {T.shape}")
    if not (
        np.all(np.isfinite(K))
        and np.all(np.isfinite(T))
        and np.all(np.isfinite(dist))
        and np.isfinite(ground)
    ):
        raise HdmapError(f"{path}: NaN or inf in the camera")
    if abs(np.linalg.det(T[:3, :3]) - 1.0) > 1e-3:
        raise HdmapError(f"{path}: T_vehicle_from_cam's rotation is not a rotation")
    return CameraModel(K, int(data["width"]), int(data["height"]), dist, T, ground)


def _open_generic(root: Path, origin: LocalFrame | None) -> DriveLog:
    camera = read_camera_yaml(root / "camera.yaml")
    poses_path = root / "poses.csv"
    with poses_path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in POSES_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise HdmapError(f"{poses_path}: missing column(s) {missing}; expected {','.join(POSES_COLUMNS)}")
        table = list(reader)
    if not table:
        raise HdmapError(f"{poses_path}: no pose rows")
    frames_dir = root / "frames"
    by_stem = (
        {p.stem: p for p in frames_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        if frames_dir.is_dir()
        else {}
    )
    rows = np.zeros((len(table), 6))
    times = np.zeros(len(table), "datetime64[ns]")
    frames = []
    for i, rec in enumerate(table):
        where = f"{poses_path}:{i + 2}"
        try:
            values = [float(rec[c]) for c in POSES_COLUMNS[1:]]
        except (TypeError, ValueError):
            raise HdmapError(f"{where}: a pose value is empty or not a number") from None
        if not np.all(np.isfinite(values)):
            raise HdmapError(f"{where}: NaN or inf in the pose of frame {rec['frame']}")
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
    origin = origin or LocalFrame(*rows[0, :3])
    return DriveLog(root, "generic", frames, _poses(origin, rows), camera, origin, root / "labels")
