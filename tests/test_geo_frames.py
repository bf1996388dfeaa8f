"""WGS84 <-> world frame and OXTS poses, checked against independent constructions."""

from __future__ import annotations

import numpy as np
import pytest
from pyproj import Geod

from hdmap_seg.errors import HdmapError
from hdmap_seg.geo.frames import (
    LocalFrame,
    T_world_from_imu,
    invert_transform,
    oxts_pose_from_T,
    rot_x,
    rot_y,
    rot_z,
    rotation_from_rpy,
    rpy_from_rotation,
    transform_points,
)

KARLSRUHE = LocalFrame(49.015003823272, 8.4342971002335, 116.43)
GEOD = Geod(ellps="WGS84")


def test_origin_maps_to_zero_and_round_trips():
    x, y, z = KARLSRUHE.to_world(KARLSRUHE.lat0, KARLSRUHE.lon0, KARLSRUHE.alt0)
    assert abs(x) < 1e-6 and abs(y) < 1e-6 and abs(z) < 1e-9
    rng = np.random.default_rng(0)
    lat = KARLSRUHE.lat0 + rng.uniform(-0.05, 0.05, 50)
    lon = KARLSRUHE.lon0 + rng.uniform(-0.05, 0.05, 50)
    alt = rng.uniform(50, 300, 50)
    x, y, z = KARLSRUHE.to_world(lat, lon, alt)
    lat2, lon2, alt2 = KARLSRUHE.to_wgs84(x, y, z)
    np.testing.assert_allclose(lat2, lat, atol=1e-10)  # 1e-10 deg is about 0.01 mm
    np.testing.assert_allclose(lon2, lon, atol=1e-10)
    np.testing.assert_allclose(alt2, alt, atol=1e-9)


def test_axes_point_east_and_north():
    x, y, _ = KARLSRUHE.to_world(KARLSRUHE.lat0, KARLSRUHE.lon0 + 0.001)
    assert x > 70 and abs(y) < 0.01  # east
    x, y, _ = KARLSRUHE.to_world(KARLSRUHE.lat0 + 0.001, KARLSRUHE.lon0)
    assert y > 110 and abs(x) < 1e-6  # north


@pytest.mark.parametrize("azimuth_deg", [0.0, 37.0, 90.0, 200.0])
def test_distances_match_geodesic(azimuth_deg):
    """Euclidean world distance equals the WGS84 geodesic distance (pyproj.Geod) to 1e-5 relative."""
    lon1, lat1, _ = GEOD.fwd(KARLSRUHE.lon0, KARLSRUHE.lat0, 45.0, 2000.0)
    lon2, lat2, _ = GEOD.fwd(lon1, lat1, azimuth_deg, 1500.0)
    x1, y1, _ = KARLSRUHE.to_world(lat1, lon1)
    x2, y2, _ = KARLSRUHE.to_world(lat2, lon2)
    assert np.hypot(x2 - x1, y2 - y1) == pytest.approx(1500.0, rel=1e-5)


def test_known_distance_along_meridian():
    # The WGS84 meridian arc from 49.01 N to 49.02 N is 1112.09 m (111,209 m per degree at 49 N).
    _, y, _ = KARLSRUHE.to_world(49.02, KARLSRUHE.lon0)
    _, y0, _ = KARLSRUHE.to_world(49.01, KARLSRUHE.lon0)
    assert y - y0 == pytest.approx(1112.09, abs=0.05)


def test_rotation_helpers():
    np.testing.assert_allclose(rot_z(np.pi / 2) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(rot_x(0.3) @ rot_x(-0.3), np.eye(3), atol=1e-12)
    np.testing.assert_allclose(rot_y(np.pi / 2) @ [1, 0, 0], [0, 0, -1], atol=1e-12)
    rng = np.random.default_rng(1)
    for _ in range(20):
        r, p, y = rng.uniform(-3, 3), rng.uniform(-1.5, 1.5), rng.uniform(-3, 3)
        assert rpy_from_rotation(rotation_from_rpy(r, p, y)) == pytest.approx((r, p, y), abs=1e-9)


def test_oxts_angles_follow_kitti_meanings():
    f = KARLSRUHE
    # yaw 0: forward (imu x) is east; yaw pi/2: north.
    T = T_world_from_imu(f, f.lat0, f.lon0, f.alt0, 0.0, 0.0, 0.0)
    np.testing.assert_allclose(T[:3, 0], [1, 0, 0], atol=1e-9)
    T = T_world_from_imu(f, f.lat0, f.lon0, f.alt0, 0.0, 0.0, np.pi / 2)
    np.testing.assert_allclose(T[:3, 0], [0, 1, 0], atol=1e-9)
    # pitch positive = front down; roll positive = left side up.
    T = T_world_from_imu(f, f.lat0, f.lon0, f.alt0, 0.0, 0.1, 0.0)
    assert transform_points(T, [[10, 0, 0]])[0, 2] < -0.9
    T = T_world_from_imu(f, f.lat0, f.lon0, f.alt0, 0.1, 0.0, 0.0)
    assert transform_points(T, [[0, 10, 0]])[0, 2] > 0.9


def test_heading_uses_true_north_away_from_origin():
    """5 km east of the origin, a car heading true north (yaw pi/2) moves along its meridian."""
    f = KARLSRUHE
    lon, lat, _ = GEOD.fwd(f.lon0, f.lat0, 90.0, 5000.0)
    T = T_world_from_imu(f, lat, lon, f.alt0, 0.0, 0.0, np.pi / 2)
    ahead = transform_points(T, [[100.0, 0.0, 0.0]])[0]
    lat2, lon2, _ = f.to_wgs84(ahead[0], ahead[1])
    assert abs(lon2 - lon) < 1e-8  # within a millimetre of the meridian
    assert lat2 > lat


def test_pose_round_trip():
    f = KARLSRUHE
    rng = np.random.default_rng(2)
    for _ in range(10):
        pose = {
            "lat": f.lat0 + rng.uniform(-0.02, 0.02),
            "lon": f.lon0 + rng.uniform(-0.02, 0.02),
            "alt": rng.uniform(100, 130),
            "roll": rng.uniform(-0.1, 0.1),
            "pitch": rng.uniform(-0.1, 0.1),
            "yaw": rng.uniform(-3.1, 3.1),
        }
        T = T_world_from_imu(f, *(pose[k] for k in ("lat", "lon", "alt", "roll", "pitch", "yaw")))
        back = oxts_pose_from_T(f, T)
        for k in ("lat", "lon"):
            assert back[k] == pytest.approx(pose[k], abs=1e-10)
        for k in ("alt", "roll", "pitch", "yaw"):
            assert back[k] == pytest.approx(pose[k], abs=1e-9)
        np.testing.assert_allclose(invert_transform(T) @ T, np.eye(4), atol=1e-12)


def test_origin_accepts_numpy_scalars_and_rejects_nonsense():
    f = LocalFrame(np.float32(49.0), np.float64(8.4), np.int64(110))
    x, y, _ = f.to_world(49.0, 8.4)
    assert abs(x) < 1e-3 and abs(y) < 1e-6 and isinstance(f.lat0, float)
    with pytest.raises(HdmapError, match="finite WGS84"):
        LocalFrame(float("nan"), 8.4)
