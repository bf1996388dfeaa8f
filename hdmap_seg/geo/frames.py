"""WGS84 <-> the local metric ``world`` frame, rotations, and OXTS packets <-> 6-DoF poses.

The ``world`` frame (docs/conventions.md) is a local East-North-Up frame anchored at a WGS84
origin ``(lat0, lon0, alt0)``. We realise it as a transverse Mercator projection centred on the
origin (``+proj=tmerc +lat_0=lat0 +lon_0=lon0 +k=1``, WGS84 ellipsoid) with ``z = h - alt0``:

- x east, y north (grid north), metres; the projection is conformal, so angles are true locally;
- ``z`` is the ellipsoidal height above the origin's, so a level road stays at constant ``z`` over a
  whole drive (a tangent plane would drop away from the Earth by ``d**2 / 2R``: 8 m at 10 km);
- scale error is ``1 + d**2 / (2 R**2)``: 1.2e-6 at 10 km from the origin, far below GPS noise.

Grid north and true north differ by the meridian convergence (about ``dlon * sin(lat)``: 0.07 deg
at 10 km east of the origin at 49 N). OXTS yaw is measured from true east, so poses convert it
with the convergence at the vehicle's position; nothing else needs to know.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from pyproj import CRS, Transformer

from hdmap_seg.errors import HdmapError

# A point this far north (deg) of the vehicle gives grid north's direction; 1e-5 deg is about 1 m.
_NORTH_STEP_DEG = 1e-5


def rot_x(angle_rad: float) -> np.ndarray:
    """3x3 rotation about x by ``angle_rad`` (right-handed)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(angle_rad: float) -> np.ndarray:
    """3x3 rotation about y by ``angle_rad`` (right-handed)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(angle_rad: float) -> np.ndarray:
    """3x3 rotation about z by ``angle_rad`` (right-handed)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_from_rpy(roll_rad: float, pitch_rad: float, yaw_rad: float) -> np.ndarray:
    """``Rz(yaw) @ Ry(pitch) @ Rx(roll)``: KITTI's OXTS angles (convertOxtsToPose)."""
    return rot_z(yaw_rad) @ rot_y(pitch_rad) @ rot_x(roll_rad)


def rpy_from_rotation(R: np.ndarray) -> tuple[float, float, float]:
    """Inverse of :func:`rotation_from_rpy`: ``(roll_rad, pitch_rad, yaw_rad)``, pitch in [-pi/2, pi/2]."""
    pitch = -np.arcsin(np.clip(R[2, 0], -1.0, 1.0))
    roll = np.arctan2(R[2, 1], R[2, 2])
    yaw = np.arctan2(R[1, 0], R[0, 0])
    return float(roll), float(pitch), float(yaw)


def angle_diff_deg(a_deg: float | np.ndarray, b_deg: float | np.ndarray) -> float | np.ndarray:
    """The smaller angle between two directions in degrees, 0..180 (359 and 1 are 2 apart)."""
    return abs((a_deg - b_deg + 180.0) % 360.0 - 180.0)


def make_transform(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 homogeneous transform from a 3x3 rotation and a translation 3-vector."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t, dtype=float).reshape(3)
    return T


def invert_transform(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (``T_b_from_a`` -> ``T_a_from_b``)."""
    R, t = T[:3, :3], T[:3, 3]
    return make_transform(R.T, -R.T @ t)


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to ``(N, 3)`` points; returns ``(N, 3)``."""
    points = np.asarray(points, dtype=float)
    return points @ T[:3, :3].T + T[:3, 3]


@dataclass(frozen=True)
class LocalFrame:
    """The ``world`` frame: local ENU metres around a WGS84 origin (module docstring says how).

    ``to_world`` and ``to_wgs84`` take and return arrays (or scalars) and are exact inverses
    to well under a millimetre.
    """

    lat0: float
    lon0: float
    alt0: float = 0.0

    def __post_init__(self) -> None:
        for name in ("lat0", "lon0", "alt0"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if not (abs(self.lat0) < 85.0 and abs(self.lon0) <= 180.0 and np.isfinite(self.alt0)):
            raise HdmapError(
                f"world origin must be a finite WGS84 lat/lon/alt, got {self.lat0}, {self.lon0}, {self.alt0}"
            )

    @functools.cached_property
    def crs(self) -> CRS:
        """The projected CRS of the world frame's x, y (for GeoPackage export and QGIS)."""
        return CRS.from_proj4(
            f"+proj=tmerc +lat_0={self.lat0!r} +lon_0={self.lon0!r} +k=1 +x_0=0 +y_0=0 "
            "+ellps=WGS84 +units=m +no_defs"
        )

    @functools.cached_property
    def _fwd(self) -> Transformer:
        return Transformer.from_crs(CRS.from_epsg(4326), self.crs, always_xy=True)

    @functools.cached_property
    def _inv(self) -> Transformer:
        return Transformer.from_crs(self.crs, CRS.from_epsg(4326), always_xy=True)

    def to_world(self, lat_deg, lon_deg, alt_m=None):
        """WGS84 ``(lat, lon[, alt])`` -> world ``(x, y, z)`` in metres (z is None if alt is)."""
        x, y = self._fwd.transform(np.asarray(lon_deg, float), np.asarray(lat_deg, float))
        z = None if alt_m is None else np.asarray(alt_m, float) - self.alt0
        return x, y, z

    def to_wgs84(self, x_m, y_m, z_m=None):
        """World ``(x, y[, z])`` -> WGS84 ``(lat, lon, alt)`` (alt is None if z is)."""
        lon, lat = self._inv.transform(np.asarray(x_m, float), np.asarray(y_m, float))
        alt = None if z_m is None else np.asarray(z_m, float) + self.alt0
        return lat, lon, alt

    def grid_convergence_rad(self, lat_deg, lon_deg):
        """Angle from grid north to true north, clockwise positive (0 on the origin's meridian)."""
        x0, y0, _ = self.to_world(lat_deg, lon_deg)
        x1, y1, _ = self.to_world(np.asarray(lat_deg, float) + _NORTH_STEP_DEG, lon_deg)
        return np.arctan2(np.asarray(x1) - x0, np.asarray(y1) - y0)

    def world_from_wgs84_points(self, lonlatalt: np.ndarray) -> np.ndarray:
        """``(N, 3)`` [lon, lat, alt] (GeoJSON order) -> ``(N, 3)`` world xyz."""
        lonlatalt = np.asarray(lonlatalt, float).reshape(-1, 3)
        x, y, z = self.to_world(lonlatalt[:, 1], lonlatalt[:, 0], lonlatalt[:, 2])
        return np.stack([x, y, z], axis=1)

    def wgs84_from_world_points(self, xyz: np.ndarray) -> np.ndarray:
        """``(N, 2|3)`` world points -> ``(N, 2|3)`` [lon, lat(, alt)] (GeoJSON order)."""
        xyz = np.asarray(xyz, float)
        xyz = xyz.reshape(-1, xyz.shape[-1])
        lat, lon, _ = self.to_wgs84(xyz[:, 0], xyz[:, 1])
        cols = [lon, lat] + ([xyz[:, 2] + self.alt0] if xyz.shape[1] == 3 else [])
        return np.stack(cols, axis=1)

    def to_dict(self) -> dict:
        return {"lat0": self.lat0, "lon0": self.lon0, "alt0": self.alt0}


def T_world_from_imu(
    frame: LocalFrame,
    lat_deg: float,
    lon_deg: float,
    alt_m: float,
    roll_rad: float,
    pitch_rad: float,
    yaw_rad: float,
) -> np.ndarray:
    """The 6-DoF pose of the OXTS unit (``imu`` frame) in ``world``: KITTI's convertOxtsToPose.

    Like the devkit, ``R = Rz(yaw) @ Ry(pitch) @ Rx(roll)`` with OXTS meanings (yaw 0 = true
    east, counter-clockwise); unlike it, the translation is in the local frame of ``frame``
    (not relative to the first packet) and yaw is turned from true east to grid east.
    """
    x, y, z = frame.to_world(lat_deg, lon_deg, alt_m)
    yaw_grid = yaw_rad - float(frame.grid_convergence_rad(lat_deg, lon_deg))
    return make_transform(rotation_from_rpy(roll_rad, pitch_rad, yaw_grid), [float(x), float(y), float(z)])


def oxts_pose_from_T(frame: LocalFrame, T_world_from_imu_: np.ndarray) -> dict[str, float]:
    """Inverse of :func:`T_world_from_imu`: ``{lat, lon, alt, roll, pitch, yaw}`` (deg, m, rad)."""
    x, y, z = T_world_from_imu_[:3, 3]
    lat, lon, alt = frame.to_wgs84(x, y, z)
    roll, pitch, yaw_grid = rpy_from_rotation(T_world_from_imu_[:3, :3])
    yaw = yaw_grid + float(frame.grid_convergence_rad(lat, lon))
    yaw = float(np.arctan2(np.sin(yaw), np.cos(yaw)))
    return {
        "lat": float(lat),
        "lon": float(lon),
        "alt": float(alt),
        "roll": roll,
        "pitch": pitch,
        "yaw": yaw,
    }
