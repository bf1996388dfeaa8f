"""Synthetic drive logs read back through the geo stage's own readers: masks agree with the ground
truth, the GeoJSON is valid RFC 7946, and the KITTI files carry OXTS's documented meanings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from shapely.geometry import shape

from hdmap_seg.geo.drivelog import open_drive_log
from hdmap_seg.geo.frames import LocalFrame, T_world_from_imu, invert_transform
from hdmap_seg.geo.kitti import OXTS_FIELDS, KittiCalib, read_oxts, read_timestamps, seconds_since
from hdmap_seg.synthetic import SynthConfig, write_drive_log
from hdmap_seg.synthetic.logs import _log_setup
from hdmap_seg.synthetic.render import MEDIAN, POLE, SIGN

CFG = SynthConfig(seed=2, camera="kitti", scale=0.5, train=0, val=0, logs=1, frames_per_log=40)  # hills
ORIGIN = LocalFrame(CFG.lat0, CFG.lon0, CFG.alt0)  # the world frame of the ground truth


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    return write_drive_log(CFG, 0, tmp_path_factory.mktemp("logs"), workers=1)


def _layer(log_dir: Path, name: str) -> list[dict]:
    data = json.loads((log_dir / "gt" / f"{name}.geojson").read_text())
    assert data["type"] == "FeatureCollection"
    return data["features"]


def _project(log, i: int, p_world: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels (rounded), camera depth and in-image flags of world points in frame ``i``."""
    T_cam_from_world = invert_transform(log.T_world_from_cam(i))
    p_cam = p_world @ T_cam_from_world[:3, :3].T + T_cam_from_world[:3, 3]
    uv, front = log.camera.project(p_cam)
    uv = np.round(uv).astype(int)
    inside = front & (uv[:, 0] >= 1) & (uv[:, 0] < log.camera.width - 1) & (uv[:, 1] >= 1)
    inside &= uv[:, 1] < log.camera.height - 1
    return uv, p_cam[:, 2], inside


def _hits(log, points_world: np.ndarray, cls: int, max_depth_m: float, min_depth_m: float = 3.0):
    """For every (point, frame) with the point in view and in range: is its 3x3 pixel window ``cls``?

    ``points_world`` (N, 3), or (N, k, 3): point 0 decides what is in view, any of the k may hit.
    """
    probes = points_world.reshape(len(points_world), -1, 3)
    hits = []
    for i in range(len(log)):
        mask = cv2.imread(str(log.mask_path(log.default_masks_dir, i)), cv2.IMREAD_UNCHANGED)
        log.camera.check_mask(mask, "label")
        uv, depth, inside = _project(log, i, probes.reshape(-1, 3))
        uv, depth, inside = (
            uv.reshape(*probes.shape[:2], 2),
            depth.reshape(probes.shape[:2]),
            inside.reshape(probes.shape[:2]),
        )
        for k in np.flatnonzero(inside[:, 0] & (depth[:, 0] > min_depth_m) & (depth[:, 0] < max_depth_m)):
            hit = False
            for (u, v), ok in zip(uv[k], inside[k], strict=True):
                hit |= bool(ok and np.any(mask[v - 1 : v + 2, u - 1 : u + 2] == cls))
            hits.append(hit)
    return np.array(hits)


def test_pole_bases_and_sign_centres_land_on_their_pixels(log_dir):
    log = open_drive_log(log_dir, origin=ORIGIN)
    poles = _layer(log_dir, "poles")
    signs = _layer(log_dir, "signs")
    assert len(poles) >= 4 and len(signs) >= 2
    base = np.array([f["geometry"]["coordinates"] for f in poles])
    base_world = log.origin.world_from_wgs84_points(base)
    world = _log_setup(CFG, 0)[0]
    # On the terrain: each base is on the ground under it (to GeoJSON's millimetre).
    assert np.allclose(base_world[:, 2], world.ground_z_m(base_world[:, 0], base_world[:, 1]), atol=2e-3)
    assert np.ptp(base_world[:, 2]) > 0.1
    # The base itself sits on the pole's boundary with the ground: probe 0.3 m up the pole.
    pole_hits = _hits(log, base_world + [0.0, 0.0, 0.3], POLE, 30.0)
    assert pole_hits.size >= 20 and pole_hits.mean() >= 0.9
    centres = log.origin.world_from_wgs84_points(np.array([f["geometry"]["coordinates"] for f in signs]))
    # Seen from behind, a sign's post hides its centre column: probe a quarter width to both sides.
    facing = np.radians([f["properties"]["facing_deg"] for f in signs])  # clockwise from north
    across = np.column_stack(
        [np.cos(facing), -np.sin(facing), np.zeros(len(signs))]
    )  # the plate's horizontal
    quarter = 0.25 * np.array([f["properties"]["width_m"] for f in signs])[:, None] * across
    sign_hits = _hits(log, np.stack([centres, centres - quarter, centres + quarter], 1), SIGN, 30.0)
    assert sign_hits.size >= 10 and sign_hits.mean() >= 0.9
    # Heights above ground in the properties agree with the 3D points.
    heights = np.array([f["properties"]["height_m"] for f in signs])
    ground = world.ground_z_m(centres[:, 0], centres[:, 1])
    assert np.allclose(centres[:, 2] - ground, heights, atol=3e-3)


def test_median_centre_line_lies_on_median_pixels(log_dir):
    log = open_drive_log(log_dir, origin=ORIGIN)
    lines = [f for f in _layer(log_dir, "medians") if f["properties"]["kind"] == "centerline"]
    assert lines
    pts = np.array([c for f in lines for c in f["geometry"]["coordinates"]])  # 3-D, on the terrain
    assert pts.shape[1] == 3
    hits = _hits(log, log.origin.world_from_wgs84_points(pts), MEDIAN, 25.0, min_depth_m=7.0)
    assert hits.size >= 50 and hits.mean() >= 0.95


def test_ground_truth_is_valid_rfc7946(log_dir):
    decimals = re.compile(r"\.\d{9,}")  # 8 decimals at most
    for name in ("poles", "signs", "medians", "lane_markings"):
        text = (log_dir / "gt" / f"{name}.geojson").read_text()
        for f in _layer(log_dir, name):
            geom = shape(f["geometry"])
            assert geom.is_valid, (name, f["properties"])
            coords = np.array(geom.exterior.coords if geom.geom_type == "Polygon" else geom.coords)
            assert np.all(np.abs(coords[:, 0]) <= 180) and np.all(np.abs(coords[:, 1]) <= 90)
            if geom.geom_type == "Polygon":
                assert geom.exterior.is_ccw
        for number in re.findall(r"-?\d+\.\d+", text.split('"properties"')[0]):
            assert not decimals.search(number)
    medians = _layer(log_dir, "medians")
    kinds = {f["properties"]["kind"] for f in medians}
    assert kinds == {"footprint", "centerline"}
    signs = _layer(log_dir, "signs")
    for f in signs:
        p = f["properties"]
        assert len(f["geometry"]["coordinates"]) == 3
        assert 2.0 <= p["height_m"] <= 5.0 and 0.5 <= p["width_m"] <= 1.5 and 0 <= p["facing_deg"] < 360
    styles = {f["properties"]["style"] for f in _layer(log_dir, "lane_markings")}
    assert "solid" in styles


def test_signs_face_the_traffic(log_dir):
    """A sign on its own post faces the cars of its side: against the drive on the right, with it on the left."""
    log = open_drive_log(log_dir, origin=ORIGIN)
    centres = log.origin.world_from_wgs84_points(
        np.array([f["geometry"]["coordinates"] for f in _layer(log_dir, "signs")])
    )
    poses = log.T_world_from_vehicle
    checked = 0
    for f, c in zip(_layer(log_dir, "signs"), centres, strict=True):
        if f["properties"]["mount"] != "post":
            continue
        i = int(np.argmin(np.linalg.norm(poses[:, :2, 3] - c[:2], axis=1)))
        fwd, left = poses[i, :2, 0], poses[i, :2, 1]
        side = np.sign((c[:2] - poses[i, :2, 3]) @ left)
        b = np.radians(f["properties"]["facing_deg"])
        facing = np.array([np.sin(b), np.cos(b)])  # bearing: clockwise from north
        expect = -fwd if side < 0 else fwd
        assert facing @ expect > np.cos(np.radians(30)), f["properties"]
        checked += 1
    assert checked >= 1


def test_kitti_files_carry_oxts_meanings(log_dir):
    packet_paths = sorted((log_dir / "oxts" / "data").glob("*.txt"))
    assert len(packet_paths) == CFG.frames_per_log
    assert len((log_dir / "oxts" / "data" / "0000000000.txt").read_text().split()) == len(OXTS_FIELDS) == 30
    world, drive, origin = _log_setup(CFG, 0)
    t = seconds_since(read_timestamps(log_dir / "oxts" / "timestamps.txt"))
    assert np.allclose(np.diff(t), 0.1, atol=1e-6)
    assert np.array_equal(
        read_timestamps(log_dir / "image_02" / "timestamps.txt"),
        read_timestamps(log_dir / "oxts" / "timestamps.txt"),
    )
    for i in (0, 17, CFG.frames_per_log - 1):
        p = read_oxts(packet_paths[i])
        # yaw 0 = east, counter-clockwise: the heading agrees with the velocity's direction.
        assert np.arctan2(p.vn, p.ve) == pytest.approx(p.yaw, abs=0.03)
        assert p.vf == pytest.approx(np.hypot(p.vn, p.ve), rel=1e-3) and abs(p.vl) < 0.2
        # Gentle hills (grades within 4 %, curves banked 3-5 %): small roll and pitch.
        assert p.az == pytest.approx(9.81, abs=0.3) and abs(p.roll) < 0.07 and abs(p.pitch) < 0.07
        # The pose read back through the geo stage is the pose rendered, to a millimetre.
        T = T_world_from_imu(origin, p.lat, p.lon, p.alt, p.roll, p.pitch, p.yaw)
        assert np.allclose(T[:3, 3], drive.T_world_from_imu[i][:3, 3], atol=1e-3)
        assert np.allclose(T[:3, :3], drive.T_world_from_imu[i][:3, :3], atol=1e-6)
    K, T_cam_from_imu, size = KittiCalib.read(log_dir).rect_camera(2)
    rig = CFG.rig()
    assert (
        size == (rig.width, rig.height)
        and np.allclose(K, rig.K)
        and np.allclose(T_cam_from_imu, rig.T_cam_from_imu)
    )


def test_real_kitti_sample_reads_like_ours(shared_dir):
    """The real drive parses with the same conventions our packets follow."""
    drive = shared_dir / "data" / "kitti_raw_sample" / "2011_09_26" / "2011_09_26_drive_0001_sync"
    p = read_oxts(drive / "oxts" / "data" / "0000000000.txt")
    assert np.arctan2(p.vn, p.ve) == pytest.approx(p.yaw, abs=0.02)
    assert p.vf == pytest.approx(np.hypot(p.vn, p.ve), rel=0.01) and p.az == pytest.approx(9.81, abs=0.6)
    K, T_cam_from_imu, size = KittiCalib.read(drive.parent).rect_camera(2)
    cam_height = 0.93 + invert_transform(T_cam_from_imu)[2, 3]
    assert size == (1242, 375) and cam_height == pytest.approx(1.65, abs=0.02)
