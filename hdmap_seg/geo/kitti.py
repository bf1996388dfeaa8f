"""Read and write the files of KITTI's raw data set: OXTS packets, timestamps, calibration.

The formats are those of KITTI's raw devkit (``readme.txt``, ``oxts/dataformat.txt``):

- ``oxts/data/<index>.txt``: one line of 30 space-separated numbers (:class:`OxtsPacket`);
- ``*/timestamps.txt``: one ``YYYY-MM-DD HH:MM:SS.nnnnnnnnn`` per frame (nanoseconds kept);
- ``calib_*.txt``: ``key: v1 v2 ...`` lines; ``calib_time`` is text.

Writers produce files that the devkit's readers (and pykitti's ``read_calib_file``) accept, and
reading what they wrote gives back the same numbers exactly (floats are written with the
shortest representation that round-trips).

The projection chain for camera ``x`` (x = 0..3) follows the devkit:
``pixel = P_rect_0x @ R_rect_00 @ T_cam0_from_velo @ T_velo_from_imu @ p_imu``.
:meth:`KittiCalib.rect_camera` turns it into a pinhole ``K`` and ``T_cam_from_imu`` where ``cam``
is camera x's rectified frame (OpenCV axes).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hdmap_seg.errors import HdmapError
from hdmap_seg.geo.frames import make_transform
from hdmap_seg.io import read_text, write_text_atomic

CALIB_CAM_TO_CAM = "calib_cam_to_cam.txt"
CALIB_IMU_TO_VELO = "calib_imu_to_velo.txt"
CALIB_VELO_TO_CAM = "calib_velo_to_cam.txt"

#: Height of the OXTS unit above the ground on the KITTI car (KITTI's setup page).
KITTI_IMU_HEIGHT_M = 0.93
#: Image sides (px) that a calibration may give; more is a broken file, not a camera.
MAX_IMAGE_SIDE_PX = 100_000
_CAMERA_KEY = re.compile(r"P_rect_(\d\d)")
_TIMESTAMP = re.compile(r"(\d{4})-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d{1,9})?", re.ASCII)
# Orthonormality of a calibration's rotations: KITTI prints 7 significant digits (about 1e-6 off).
_ROTATION_TOL = 1e-3


def check_lat_lon(lat_deg: float, lon_deg: float, source: str) -> None:
    """A clear error for a latitude or longitude that is not one."""
    if not (abs(lat_deg) <= 90.0 and abs(lon_deg) <= 180.0):
        raise HdmapError(f"{source}: lat {lat_deg!r}, lon {lon_deg!r} is not a WGS84 position (deg)")


def is_rotation(R: np.ndarray) -> bool:
    """A 3x3 matrix that is orthonormal and right-handed (to the digits calibration files print)."""
    return bool(np.abs(R @ R.T - np.eye(3)).max() <= _ROTATION_TOL and np.linalg.det(R) > 0)


def _fmt(value: float) -> str:
    """Shortest scientific notation that reads back to the same float, like KITTI's ``%e``."""
    return np.format_float_scientific(float(value), unique=True, trim="0", exp_digits=2)


# --------------------------------------------------------------------------------------- OXTS


@dataclass
class OxtsPacket:
    """One OXTS packet, fields in file order with the meanings of KITTI's ``dataformat.txt``.

    Angles in rad (roll positive = left side up, pitch positive = front down, yaw 0 = east,
    counter-clockwise), lat/lon in degrees, alt in metres, velocities m/s, accelerations m/s^2.
    """

    lat: float
    lon: float
    alt: float
    roll: float
    pitch: float
    yaw: float
    vn: float = 0.0
    ve: float = 0.0
    vf: float = 0.0
    vl: float = 0.0
    vu: float = 0.0
    ax: float = 0.0
    ay: float = 0.0
    az: float = 0.0
    af: float = 0.0
    al: float = 0.0
    au: float = 0.0
    wx: float = 0.0
    wy: float = 0.0
    wz: float = 0.0
    wf: float = 0.0
    wl: float = 0.0
    wu: float = 0.0
    pos_accuracy: float = 0.0
    vel_accuracy: float = 0.0
    navstat: int = 4
    numsats: int = 10
    posmode: int = 6
    velmode: int = 6
    orimode: int = 6

    def to_line(self) -> str:
        vals = dataclasses.astuple(self)
        floats = [repr(float(v)) for v in vals[:25]]
        ints = [str(int(v)) for v in vals[25:]]
        return " ".join(floats + ints)


OXTS_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(OxtsPacket))
assert len(OXTS_FIELDS) == 30


def parse_oxts_line(line: str, source: str = "<oxts>") -> OxtsPacket:
    """Parse one OXTS line; a clear error for a wrong count or non-finite pose values."""
    parts = line.split()
    if len(parts) != 30:
        raise HdmapError(f"{source}: expected 30 OXTS numbers, found {len(parts)}")
    try:
        nums = [float(p) for p in parts]
    except ValueError as err:
        raise HdmapError(f"{source}: not a number in OXTS packet ({err})") from None
    if not np.all(np.isfinite(nums[:6])):
        raise HdmapError(f"{source}: NaN or inf in lat/lon/alt/roll/pitch/yaw: {parts[:6]}")
    check_lat_lon(nums[0], nums[1], source)
    for name, text, value in zip(OXTS_FIELDS[25:], parts[25:], nums[25:], strict=True):
        if not np.isfinite(value):
            raise HdmapError(f"{source}: OXTS field {name} is {text}, not a whole number")
    return OxtsPacket(*nums[:25], *(int(round(v)) for v in nums[25:]))


def read_oxts(path: str | os.PathLike) -> OxtsPacket:
    """Read one ``oxts/data/<index>.txt``."""
    return parse_oxts_line(read_text(path, "OXTS packet"), source=str(path))


def write_oxts(path: str | os.PathLike, packet: OxtsPacket) -> None:
    """Write one ``oxts/data/<index>.txt`` atomically."""
    write_text_atomic(path, packet.to_line() + "\n")


# --------------------------------------------------------------------------------- timestamps


def parse_timestamp(text: str, source: str = "<timestamps>") -> np.datetime64:
    """``"2011-09-26 13:02:25.964389445"`` -> ``numpy.datetime64`` with nanoseconds."""
    m = _TIMESTAMP.fullmatch(text.strip())
    try:
        # NumPy wraps years outside 1678-2262 round silently when it converts to nanoseconds
        ts = np.datetime64(text.strip().replace(" ", "T"), "ns") if m and 1700 <= int(m[1]) <= 2200 else None
    except ValueError:  # a month 13, a 25th hour
        ts = None
    if ts is None:
        raise HdmapError(f"{source}: not a KITTI timestamp: {text.strip()!r}")
    return ts


def format_timestamp(ts: np.datetime64) -> str:
    """Inverse of :func:`parse_timestamp` (always 9 fractional digits)."""
    text = np.datetime_as_string(np.datetime64(ts, "ns"), unit="ns")
    return text.replace("T", " ")


def read_timestamps(path: str | os.PathLike) -> np.ndarray:
    """Read a ``timestamps.txt``: ``(N,)`` ``datetime64[ns]``; blank lines are ignored."""
    path = Path(path)
    lines = [ln for ln in read_text(path, "timestamps file").splitlines() if ln.strip()]
    return np.array([parse_timestamp(ln, f"{path}:{i + 1}") for i, ln in enumerate(lines)], "datetime64[ns]")


def write_timestamps(path: str | os.PathLike, timestamps) -> None:
    """Write a ``timestamps.txt`` atomically from ``datetime64`` values."""
    ts = np.asarray(timestamps, "datetime64[ns]")
    write_text_atomic(path, "".join(format_timestamp(t) + "\n" for t in ts))


def seconds_since(timestamps: np.ndarray, start: np.datetime64 | None = None) -> np.ndarray:
    """``datetime64[ns]`` -> float seconds since ``start`` (default: the first timestamp)."""
    ts = np.asarray(timestamps, "datetime64[ns]")
    start = ts[0] if start is None else np.datetime64(start, "ns")
    return (ts - start).astype(np.int64) / 1e9


# -------------------------------------------------------------------------------- calibration


def read_calib_file(path: str | os.PathLike) -> dict[str, np.ndarray | str]:
    """Read a KITTI ``key: values`` calibration file: numbers as float arrays, ``calib_time`` as text."""
    path = Path(path)
    out: dict[str, np.ndarray | str] = {}
    for n, line in enumerate(read_text(path, "calibration file").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise HdmapError(f"{path}:{n}: expected 'key: values', got {line!r}")
        key = key.strip()
        if key == "calib_time":
            out[key] = value.strip()
            continue
        try:
            out[key] = np.array([float(v) for v in value.split()], dtype=float)
        except ValueError:
            raise HdmapError(f"{path}:{n}: {key} holds something that is not a number") from None
        if not np.all(np.isfinite(out[key])):
            raise HdmapError(f"{path}:{n}: {key} holds NaN or inf")
    return out


def write_calib_file(path: str | os.PathLike, entries: dict[str, np.ndarray | str]) -> None:
    """Write a KITTI calibration file atomically, keys in the given order."""
    lines = []
    for key, value in entries.items():
        if isinstance(value, str):
            lines.append(f"{key}: {value}")
        else:
            lines.append(f"{key}: " + " ".join(_fmt(v) for v in np.asarray(value, float).ravel()))
    write_text_atomic(path, "\n".join(lines) + "\n")


def _need(entries: dict, key: str, size: int, source: Path) -> np.ndarray:
    if key not in entries:
        raise HdmapError(f"{source}: calibration lacks the key {key!r}")
    value = entries[key]
    if isinstance(value, str) or value.size != size:
        got = "text" if isinstance(value, str) else f"{value.size} numbers"
        raise HdmapError(f"{source}: {key} must hold {size} numbers, got {got}")
    return value


@dataclass
class CameraCalib:
    """One camera of ``calib_cam_to_cam.txt`` (KITTI raw devkit's meanings).

    ``S`` image size before rectification (w, h), ``K`` 3x3, ``D`` 5 distortion coefficients,
    ``R``/``T`` the camera relative to camera 0, ``S_rect`` rectified size, ``R_rect`` 3x3
    rectifying rotation, ``P_rect`` 3x4 projection after rectification.
    """

    S: np.ndarray
    K: np.ndarray
    D: np.ndarray
    R: np.ndarray
    T: np.ndarray
    S_rect: np.ndarray
    R_rect: np.ndarray
    P_rect: np.ndarray


_CAM_KEYS = {"S": (2,), "K": (3, 3), "D": (5,), "R": (3, 3), "T": (3,), "S_rect": (2,), "R_rect": (3, 3)}


@dataclass
class CamToCamCalib:
    """``calib_cam_to_cam.txt``: the four cameras, keyed by index (0..3)."""

    cameras: dict[int, CameraCalib]
    calib_time: str = ""
    corner_dist: float = 0.0
    #: the file it was read from (None: built in memory); errors name it
    path: Path | None = field(default=None, compare=False)
    #: ``P_rect`` keys not spelled ``P_rect_0x`` (``P_rect_2``): named when a camera is missing
    odd_keys: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def read(cls, path: str | os.PathLike) -> CamToCamCalib:
        path = Path(path)
        entries = read_calib_file(path)
        cams: dict[int, CameraCalib] = {}
        found = {k: _CAMERA_KEY.fullmatch(k) for k in entries if k.startswith("P_rect")}
        odd = tuple(k for k, m in found.items() if m is None)
        for idx in sorted({int(m.group(1)) for m in found.values() if m is not None}):
            sfx = f"_{idx:02d}"
            vals = {
                name: _need(entries, name + sfx, int(np.prod(shape)), path).reshape(shape)
                for name, shape in _CAM_KEYS.items()
            }
            vals["P_rect"] = _need(entries, "P_rect" + sfx, 12, path).reshape(3, 4)
            cams[idx] = CameraCalib(**vals)
        if not cams:
            raise HdmapError(f"{path}: calibration lacks the key 'P_rect_00' (no camera found{_odd(odd)})")
        corner = entries.get("corner_dist")
        return cls(
            cams,
            calib_time=str(entries.get("calib_time", "")),
            corner_dist=float(corner[0]) if isinstance(corner, np.ndarray) and corner.size else 0.0,
            path=path,
            odd_keys=odd,
        )

    def camera(self, idx: int) -> CameraCalib:
        """Camera ``idx`` (0..3), checked: a pinhole ``P_rect``, a rotation ``R_rect``, a positive size."""
        where = self.path or CALIB_CAM_TO_CAM
        if idx not in self.cameras:
            raise HdmapError(
                f"{where}: calibration lacks the key 'P_rect_{idx:02d}' "
                f"(cameras present: {sorted(self.cameras)}{_odd(self.odd_keys)})"
            )
        cam = self.cameras[idx]
        K = cam.P_rect[:, :3]
        if not (
            K[0, 0] > 0
            and K[1, 1] > 0
            and np.allclose(K[[0, 1, 2, 2], [1, 0, 0, 1]], 0.0, rtol=0, atol=1e-6)
            and abs(K[2, 2] - 1.0) <= 1e-6
        ):
            raise HdmapError(
                f"{where}: P_rect_{idx:02d} is not a camera projection: its first 3 columns must be "
                f"[fx 0 cx; 0 fy cy; 0 0 1] with fx, fy > 0, got {' '.join(f'{v:g}' for v in K.ravel())}"
            )
        if not is_rotation(cam.R_rect):
            raise HdmapError(f"{where}: R_rect_{idx:02d} is not a rotation")
        if not np.all((cam.S_rect >= 1) & (cam.S_rect <= MAX_IMAGE_SIDE_PX)):
            raise HdmapError(
                f"{where}: S_rect_{idx:02d} must be an image size of 1 to {MAX_IMAGE_SIDE_PX} px, "
                f"got {' '.join(f'{v:g}' for v in cam.S_rect)}"
            )
        return cam

    def write(self, path: str | os.PathLike) -> None:
        entries: dict[str, np.ndarray | str] = {
            "calib_time": self.calib_time,
            "corner_dist": np.array([self.corner_dist]),
        }
        for idx, cam in sorted(self.cameras.items()):
            for name in (*_CAM_KEYS, "P_rect"):
                entries[f"{name}_{idx:02d}"] = getattr(cam, name)
        write_calib_file(path, entries)


@dataclass
class RigidCalib:
    """``calib_imu_to_velo.txt`` or ``calib_velo_to_cam.txt``: ``R`` (3x3) and ``T`` (3,).

    ``extra`` keeps other numeric keys (``delta_f``, ``delta_c`` of velo_to_cam) for rewriting.
    """

    R: np.ndarray
    T: np.ndarray
    calib_time: str = ""
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def matrix(self) -> np.ndarray:
        """The 4x4 transform ``T_to_from_from`` that this file describes."""
        return make_transform(self.R, self.T)

    @classmethod
    def read(cls, path: str | os.PathLike) -> RigidCalib:
        path = Path(path)
        entries = read_calib_file(path)
        R = _need(entries, "R", 9, path).reshape(3, 3)
        T = _need(entries, "T", 3, path).reshape(3)
        if not is_rotation(R):
            off = np.abs(R @ R.T - np.eye(3)).max()
            raise HdmapError(
                f"{path}: R is not a rotation (R R^T is {off:.2g} off the identity, det {np.linalg.det(R):.4f})"
            )
        extra = {
            k: v for k, v in entries.items() if k not in ("R", "T", "calib_time") and not isinstance(v, str)
        }
        return cls(R, T, calib_time=str(entries.get("calib_time", "")), extra=extra)

    @classmethod
    def from_matrix(cls, T: np.ndarray, calib_time: str = "", **extra: np.ndarray) -> RigidCalib:
        return cls(T[:3, :3].copy(), T[:3, 3].copy(), calib_time, dict(extra))

    def write(self, path: str | os.PathLike) -> None:
        entries: dict[str, np.ndarray | str] = {"calib_time": self.calib_time, "R": self.R, "T": self.T}
        entries.update(self.extra)
        write_calib_file(path, entries)


@dataclass
class KittiCalib:
    """The three calibration files of one KITTI recording day."""

    cam_to_cam: CamToCamCalib
    imu_to_velo: RigidCalib
    velo_to_cam: RigidCalib

    @classmethod
    def find_dir(cls, drive_dir: str | os.PathLike) -> Path:
        """The folder holding the calib files: the drive's own, else its parent (KITTI's per-day layout)."""
        drive_dir = Path(drive_dir)
        for d in (drive_dir, drive_dir.parent):
            if (d / CALIB_CAM_TO_CAM).is_file():
                return d
        raise HdmapError(f"{drive_dir}: no {CALIB_CAM_TO_CAM} in the drive folder or its parent")

    @classmethod
    def read(cls, calib_dir: str | os.PathLike) -> KittiCalib:
        d = Path(calib_dir)
        return cls(
            CamToCamCalib.read(d / CALIB_CAM_TO_CAM),
            RigidCalib.read(d / CALIB_IMU_TO_VELO),
            RigidCalib.read(d / CALIB_VELO_TO_CAM),
        )

    def write(self, calib_dir: str | os.PathLike) -> None:
        d = Path(calib_dir)
        self.cam_to_cam.write(d / CALIB_CAM_TO_CAM)
        self.imu_to_velo.write(d / CALIB_IMU_TO_VELO)
        self.velo_to_cam.write(d / CALIB_VELO_TO_CAM)

    def projection(self, cam_index: int = 2) -> np.ndarray:
        """The devkit's 3x4 ``P_rect_0x @ R_rect_00 @ T_cam0_from_velo @ T_velo_from_imu`` (imu -> pixels)."""
        R_rect_00 = make_transform(self._camera(0).R_rect, np.zeros(3))
        T_cam0_from_imu = self.velo_to_cam.matrix @ self.imu_to_velo.matrix
        return self._camera(cam_index).P_rect @ R_rect_00 @ T_cam0_from_imu

    def rect_camera(self, cam_index: int = 2) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """Pinhole model of camera ``cam_index``'s rectified images.

        Returns ``(K, T_cam_from_imu, (width, height))``. ``P_rect_0x = K @ [I | t]`` where ``t``
        moves rectified camera 0 to rectified camera x, so
        ``T_cam_from_imu = [I | t] @ R_rect_00 @ T_cam0_from_velo @ T_velo_from_imu`` and
        ``K @ (T_cam_from_imu @ p)[:3]`` equals :meth:`projection` ``@ p``.
        """
        cam = self._camera(cam_index)
        K = cam.P_rect[:, :3].copy()
        t = np.linalg.solve(K, cam.P_rect[:, 3])
        T_rectx_from_rect0 = make_transform(np.eye(3), t)
        R_rect_00 = make_transform(self._camera(0).R_rect, np.zeros(3))
        T_cam0_from_imu = self.velo_to_cam.matrix @ self.imu_to_velo.matrix
        size = (int(round(cam.S_rect[0])), int(round(cam.S_rect[1])))
        return K, T_rectx_from_rect0 @ R_rect_00 @ T_cam0_from_imu, size

    def _camera(self, idx: int) -> CameraCalib:
        return self.cam_to_cam.camera(idx)


def _odd(keys: tuple[str, ...]) -> str:
    """A hint at keys misspelled for ``P_rect_0x``: ``"; is 'P_rect_2' meant to be 'P_rect_02'?"``."""
    hints = []
    for k in keys:
        m = re.fullmatch(r"P_rect_?(\d{1,2})", k)
        hints.append(
            f"is {k!r} meant to be 'P_rect_{int(m.group(1)):02d}'?" if m else f"{k!r} is not P_rect_0x"
        )
    return "".join(f"; {h}" for h in hints)
