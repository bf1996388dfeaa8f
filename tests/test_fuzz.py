"""Fuzzing: the vectorizers and the drive-log readers on random and degenerate input.

- Vectorizers: random, degenerate and adversarial masks (every pixel random, one class, every class,
  one-pixel specks, salt and pepper, a full row or column, frames touching every border) seen from
  random cameras and random 6-DoF poses, on the level plane or the drive's own road surface. Nothing
  may crash; every output geometry is valid, finite and non-degenerate, and the GeoJSON written is
  RFC 7946 (lon, lat within range, closed counter-clockwise exteriors, no NaN, nothing across the
  antimeridian).
- Readers: random bytes, truncations at random offsets and bad tokens in every file of a KITTI raw
  log (OXTS packets, timestamps, the three calibration files) and of a generic log (poses.csv,
  camera.yaml), built with the project's own writers and, where ../shared is present, from real
  KITTI files. Each gives a drive log with finite poses and a sane camera, or an HdmapError of one
  line that names the file; never another exception.

The default run is derandomized (the same examples every time) and takes well under a minute on two
cores. ``HDMAP_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py`` explores that many fresh random
examples per test instead (and reports the first failure as found, without shrinking it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from shapely.geometry import shape
from test_vectorize_scene import R_VEHICLE_FROM_CAM, kitti_calib_for, kitti_like_camera, trajectory

from conftest import SHARED
from hdmap_seg.errors import HdmapError
from hdmap_seg.export import write_layers
from hdmap_seg.geo.camera import CameraModel
from hdmap_seg.geo.drivelog import open_drive_log
from hdmap_seg.geo.frames import LocalFrame, make_transform, oxts_pose_from_T, rotation_from_rpy
from hdmap_seg.geo.ground import TrajectoryGround
from hdmap_seg.geo.kitti import OxtsPacket, write_oxts, write_timestamps
from hdmap_seg.vectorize import MapBuilder, VectorizeConfig
from hdmap_seg.vectorize.config import MedianConfig, PoleConfig, SignConfig

_EXPLORE = int(os.environ.get("HDMAP_FUZZ_EXAMPLES", "0"))
# Hypothesis caches what it learns of the code (constants, Unicode tables) in ./.hypothesis, even without
# an example database: in the temporary folder instead, not in the checkout.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "hdmap_seg-hypothesis")


def fuzz_settings(max_examples: int):
    """``max_examples`` derandomized examples, or ``HDMAP_FUZZ_EXAMPLES`` random ones; no example database."""
    return settings(
        max_examples=_EXPLORE or max_examples,
        derandomize=not _EXPLORE,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        **({"phases": (Phase.generate,)} if _EXPLORE else {}),  # exploring: report, don't shrink
    )


# ------------------------------------------------------------------------------------- vectorizers

CLASS_IDS = np.array([0, 1, 2, 3, 4, 5, 255], np.uint8)  # the project's taxonomy and its ignore index
MASK_KINDS = (
    "random",
    "one_class",
    "every_class",
    "specks",
    "salt_and_pepper",
    "row",
    "column",
    "border",
    "blobs",
)


def make_mask(kind: str, seed: int, height: int, width: int) -> np.ndarray:
    """A ``(height, width)`` uint8 mask of class ids of one ``kind`` (``MASK_KINDS``)."""
    rng = np.random.default_rng(seed)
    cls = int(rng.choice(CLASS_IDS))
    base = int(rng.choice(CLASS_IDS))
    mask = np.full((height, width), base, np.uint8)
    if kind == "random":
        return rng.choice(CLASS_IDS, (height, width)).astype(np.uint8)
    if kind == "one_class":
        return np.full((height, width), cls, np.uint8)
    if kind == "every_class":
        # stripes or blocks of every class, all touching one another
        idx = np.arange(width)[None, :] * len(CLASS_IDS) // width
        if rng.random() < 0.5:
            idx = (idx + np.arange(height)[:, None] * len(CLASS_IDS) // height) % len(CLASS_IDS)
        return np.broadcast_to(CLASS_IDS[idx], (height, width)).copy()
    if kind == "specks":
        n = int(rng.integers(1, 40))
        mask[rng.integers(0, height, n), rng.integers(0, width, n)] = rng.choice(CLASS_IDS, n)
        return mask
    if kind == "salt_and_pepper":
        noisy = rng.random((height, width)) < rng.uniform(0.01, 0.5)
        mask[noisy] = rng.choice(CLASS_IDS, int(noisy.sum()))
        return mask
    if kind == "row":
        mask[int(rng.integers(0, height)), :] = cls
        return mask
    if kind == "column":
        mask[:, int(rng.integers(0, width))] = cls
        return mask
    if kind == "border":
        t = int(rng.integers(1, 4))
        mask[:t], mask[-t:], mask[:, :t], mask[:, -t:] = cls, cls, cls, cls
        return mask
    # blobs: tall bars (poles), discs (signs), quadrilaterals (medians), any class, often cut by the border
    for _ in range(int(rng.integers(1, 12))):
        c = int(rng.choice(CLASS_IDS))
        shape_kind = int(rng.integers(0, 3))
        x, y = int(rng.integers(-5, width + 5)), int(rng.integers(-5, height + 5))
        if shape_kind == 0:
            bar_w, bar_h = int(rng.integers(1, 6)), int(rng.integers(1, height + 1))
            cv2.rectangle(mask, (x, y), (x + bar_w, y + bar_h), c, -1)
        elif shape_kind == 1:
            cv2.circle(mask, (x, y), int(rng.integers(1, max(2, height // 3))), c, -1)
        else:
            pts = rng.integers([-10, -10], [width + 10, height + 10], (4, 2)).astype(np.int32)
            cv2.fillPoly(mask, [pts], c)
    return mask


@st.composite
def cameras(draw) -> CameraModel:
    """A small pinhole camera (possibly distorted) looking forward from a vehicle, tilted a little."""
    width = draw(st.integers(24, 160))
    height = draw(st.integers(12, 100))
    f = draw(st.floats(0.5, 3.0)) * width
    K = np.array(
        [
            [f, 0.0, draw(st.floats(0.3, 0.7)) * width],
            [0.0, f * draw(st.floats(0.9, 1.1)), draw(st.floats(0.2, 0.8)) * height],
            [0.0, 0.0, 1.0],
        ]
    )
    dist = (
        [draw(st.floats(-0.3, 0.1)), draw(st.floats(-0.05, 0.1)), 0.0, 0.0, 0.0]
        if draw(st.booleans())
        else []
    )
    tilt = rotation_from_rpy(
        draw(st.floats(-0.1, 0.1)), draw(st.floats(-0.35, 0.35)), draw(st.floats(-0.2, 0.2))
    )
    mount = make_transform(
        tilt @ R_VEHICLE_FROM_CAM,
        [draw(st.floats(-1.0, 2.0)), draw(st.floats(-1.0, 1.0)), draw(st.floats(-0.5, 2.5))],
    )
    return CameraModel(K, width, height, np.array(dist), mount, draw(st.floats(0.2, 2.0)))


@st.composite
def drives(draw, n_frames: int) -> np.ndarray:
    """``(n_frames, 4, 4)`` T_world_from_vehicle: a few km from the origin, any heading, roll and pitch
    within 10 deg, steps of 0 to 3 m (a car standing still) and now and then a jump."""
    deg10 = np.radians(10.0)
    xy = np.array([draw(st.floats(-3000.0, 3000.0)), draw(st.floats(-3000.0, 3000.0))])
    z = draw(st.floats(-300.0, 3000.0))
    yaw = draw(st.floats(-np.pi, np.pi))
    out = []
    for _ in range(n_frames):
        R = rotation_from_rpy(draw(st.floats(-deg10, deg10)), draw(st.floats(-deg10, deg10)), yaw)
        out.append(make_transform(R, [*xy, z]))
        step = draw(st.sampled_from([0.0, 0.5, 1.0, 3.0, 40.0]))
        xy = xy + step * np.array([np.cos(yaw), np.sin(yaw)])
        z += draw(st.floats(-0.3, 0.3))
        yaw += draw(st.floats(-0.2, 0.2))
    return np.array(out)


@st.composite
def configs(draw) -> VectorizeConfig:
    """Settings that let a few frames make features (min_obs 1..3) and the defaults' neighbours."""
    return VectorizeConfig(
        max_range_m=draw(st.sampled_from([5.0, 30.0, 60.0])),
        pole=PoleConfig(
            min_pixels=draw(st.integers(1, 12)),
            min_height_px=draw(st.integers(1, 8)),
            min_width_px=draw(st.integers(1, 2)),
            min_obs=draw(st.integers(1, 3)),
        ),
        sign=SignConfig(
            min_pixels=draw(st.integers(1, 12)),
            min_obs=draw(st.integers(1, 3)),
            min_parallax_deg=draw(st.sampled_from([0.0, 2.0])),
        ),
        median=MedianConfig(
            min_pixels=draw(st.integers(1, 20)),
            min_votes=draw(st.integers(1, 2)),
            min_area_m2=draw(st.sampled_from([0.0, 0.01, 2.0])),
            surface_height_m=draw(st.sampled_from([0.0, 0.15])),
            tile_cells=draw(st.sampled_from([32, 256])),
            retire_after_frames=draw(st.sampled_from([1, 40])),
        ),
    )


origins = st.builds(
    LocalFrame,
    st.floats(-84.9, 84.9),
    st.one_of(st.floats(-180.0, 180.0), st.sampled_from([-180.0, 179.99999, 180.0, 0.0])),
    st.floats(-100.0, 5000.0),
)


def check_world_geometry(g, where: str) -> None:
    """A map feature's geometry: valid, finite, not empty, no zero-area polygon, no one-point line."""
    assert g.geom_type in ("Point", "LineString", "Polygon", "MultiPolygon"), where
    assert not g.is_empty, where
    assert g.is_valid, f"{where}: {shapely.is_valid_reason(g)}"
    coords = shapely.get_coordinates(g, include_z=g.has_z)
    assert len(coords) and np.isfinite(coords).all(), where
    if g.geom_type == "MultiPolygon":
        assert all(p.area > 0 for p in g.geoms), where
    if g.geom_type == "Polygon":
        assert g.area > 0, where
    if g.geom_type == "LineString":
        assert len(np.unique(coords[:, :2], axis=0)) >= 2 and g.length > 0, where


def check_layers_in_world(layers: dict, centres_m: np.ndarray, max_range_m: float) -> None:
    """Every feature valid (:func:`check_world_geometry`) and near the drive: within a few times
    ``max_range_m`` of a camera centre ``(N, 2|3)`` (a fit that runs away lands anywhere)."""
    reach = 3.0 * max_range_m + 10.0
    for name, feats in layers.items():
        for k, f in enumerate(feats):
            where = f"{name}[{k}]"
            check_world_geometry(f.geometry, where)
            xy = shapely.get_coordinates(f.geometry)
            d = np.linalg.norm(xy[:, None, :] - centres_m[None, :, :2], axis=2).min(axis=1)
            assert d.max() <= reach, f"{where}: {d.max():.4g} m from the drive"


def _ring_area_deg2(ring: np.ndarray) -> float:
    """Signed shoelace area of a closed ``(N, 2)`` lon/lat ring: positive counter-clockwise."""
    x, y = ring[:, 0] - ring[0, 0], ring[:, 1] - ring[0, 1]  # about its first vertex: no cancellation
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def _check_positions(positions, where: str) -> np.ndarray:
    arr = np.array(positions, dtype=float)
    assert arr.ndim == 2 and arr.shape[1] in (2, 3), where
    assert np.isfinite(arr).all(), where
    assert np.all(np.abs(arr[:, 0]) <= 180.0) and np.all(np.abs(arr[:, 1]) <= 90.0), f"{where}: lon/lat range"
    # RFC 7946 3.1.9: a geometry crossing the antimeridian is cut in two, never drawn the long way round
    assert np.all(np.abs(np.diff(arr[:, 0])) < 180.0), f"{where}: crosses the antimeridian"
    return arr


def _check_polygon(rings, where: str) -> None:
    assert rings, where
    for k, ring in enumerate(rings):
        arr = _check_positions(ring, where)
        assert len(arr) >= 4 and np.array_equal(arr[0], arr[-1]), f"{where}: ring not closed"
        area = _ring_area_deg2(arr)
        assert (area > 0) if k == 0 else (area < 0), f"{where}: ring {k} turns the wrong way"


def check_geojson_file(path: Path) -> int:
    """An RFC 7946 FeatureCollection; returns its number of features."""

    def no_constants(name):
        raise AssertionError(f"{path}: {name} in the GeoJSON")

    fc = json.loads(path.read_text(), parse_constant=no_constants)
    assert fc["type"] == "FeatureCollection" and "crs" not in fc
    for i, f in enumerate(fc["features"]):
        where = f"{path.name} feature {i}"
        g = f["geometry"]
        t, coords = g["type"], g["coordinates"]
        if t == "Point":
            _check_positions([coords], where)
        elif t in ("LineString", "MultiLineString"):
            for line in [coords] if t == "LineString" else coords:
                arr = _check_positions(line, where)
                assert len(np.unique(arr[:, :2], axis=0)) >= 2, where
        elif t == "Polygon":
            _check_polygon(coords, where)
        elif t == "MultiPolygon":
            assert coords, where
            for rings in coords:
                _check_polygon(rings, where)
        else:
            raise AssertionError(f"{where}: geometry type {t}")
        geom = shape(g)
        assert not geom.is_empty and geom.is_valid, f"{where}: {shapely.is_valid_reason(geom)}"
    return len(fc["features"])


def vectorize_and_check(camera, poses, masks, config, origin, surface: bool, gpkg: bool = False) -> dict:
    ground = (
        TrajectoryGround.from_poses(
            poses,
            camera.ground_offset_m,
            cross_reach_m=config.ground.cross_reach_m,
            extrapolate_m=config.ground.extrapolate_m,
            reach_m=2.0 * config.max_range_m + 20.0,
        )
        if surface
        else None
    )
    builder = MapBuilder(camera, config, ground)
    t0 = np.datetime64("2026-01-01T12:00:00", "ns")
    for i, (T, mask) in enumerate(zip(poses, masks, strict=True)):
        builder.add_frame(i, mask, T @ camera.T_vehicle_from_cam, t0 + i * np.timedelta64(100, "ms"))
    layers = builder.finish()
    centres = np.array([(T @ camera.T_vehicle_from_cam)[:3, 3] for T in poses])
    check_layers_in_world(layers, centres, config.max_range_m)
    with tempfile.TemporaryDirectory() as out:
        paths = write_layers(layers, out, origin, gpkg=gpkg)
        counts = {p.stem: check_geojson_file(p) for p in paths if p.suffix == ".geojson"}
    return counts


@fuzz_settings(60)
@given(data=st.data())
def test_vectorizers_never_crash_and_write_valid_geometry(data):
    camera = data.draw(cameras(), "camera")
    n = data.draw(st.integers(1, 6), "frames")
    poses = data.draw(drives(n), "poses")
    masks = []
    for _ in range(n):
        if masks and data.draw(st.booleans(), "repeat the last mask"):
            masks.append(masks[-1])  # the same view again: tracks build up
            continue
        kind = data.draw(st.sampled_from(MASK_KINDS), "mask kind")
        masks.append(
            make_mask(kind, data.draw(st.integers(0, 2**32 - 1), "seed"), camera.height, camera.width)
        )
    vectorize_and_check(
        camera,
        poses,
        masks,
        data.draw(configs(), "config"),
        data.draw(origins, "origin"),
        surface=data.draw(st.booleans(), "road surface"),
    )


# Full-size masks of pixel noise take seconds a frame (tens of thousands of components): small cameras
# fuzz those, and test_a_full_size_mask_of_sign_specks_takes_seconds_not_minutes times one.
QUIET_KINDS = tuple(k for k in MASK_KINDS if k not in ("random", "salt_and_pepper"))


@fuzz_settings(10)
@given(
    kind=st.sampled_from(QUIET_KINDS),
    seed=st.integers(0, 2**32 - 1),
    origin=origins,
    surface=st.booleans(),
)
def test_vectorizers_on_a_kitti_sized_drive(kind, seed, origin, surface):
    """The full-size camera along a gently swaying drive, every mask of one kind, and the GeoPackage too."""
    camera = kitti_like_camera()
    poses = trajectory(8, step_m=1.5, seed=seed % 1000)
    masks = [make_mask(kind, seed + i, camera.height, camera.width) for i in range(len(poses))]
    config = VectorizeConfig(
        pole=PoleConfig(min_obs=2), sign=SignConfig(min_obs=2), median=MedianConfig(min_votes=1)
    )
    vectorize_and_check(camera, poses, masks, config, origin, surface, gpkg=True)


@fuzz_settings(8)
@given(data=st.data())
def test_vectorizing_a_drive_log_with_smoothed_poses(data):
    """As ``vectorize_log`` does: the poses smoothed (with or without velocities), GNSS jumps left out,
    the road surface from what remains, then the masks."""
    from hdmap_seg.geo.drivelog import DriveLog, Frame
    from hdmap_seg.vectorize.builder import drive_ground, prepare_poses

    camera = data.draw(cameras(), "camera")
    n = data.draw(st.integers(10, 30), "frames")
    poses = data.draw(drives(n), "poses")
    t0 = np.datetime64("2026-01-01T12:00:00", "ns")
    frames = [
        Frame(i, f"{i:06d}", Path(f"{i:06d}.png"), t0 + i * np.timedelta64(100, "ms")) for i in range(n)
    ]
    v = np.gradient(poses[:, :3, 3], 0.1, axis=0) if data.draw(st.booleans(), "velocities") else None
    origin = data.draw(origins, "origin")
    log = DriveLog(Path("drive"), "generic", frames, poses, camera, origin, Path("masks"), v, None)
    config = data.draw(configs(), "config")
    log, config, good = prepare_poses(log, config)
    assert np.isfinite(log.T_world_from_vehicle).all() and good.shape == (n,)
    ground = drive_ground(log, config, good)
    builder = MapBuilder(log.camera, config, ground)
    kind = data.draw(st.sampled_from(MASK_KINDS), "mask kind")
    mask = make_mask(kind, data.draw(st.integers(0, 2**32 - 1), "seed"), camera.height, camera.width)
    for i in range(n):
        builder.add_frame(i, mask, log.T_world_from_cam(i), log[i].timestamp)
    layers = builder.finish()
    centres = np.array([log.T_world_from_cam(i)[:3, 3] for i in range(n)])
    check_layers_in_world(layers, centres, config.max_range_m)
    with tempfile.TemporaryDirectory() as out:
        for p in write_layers(layers, out, origin, gpkg=False):
            check_geojson_file(p)


# ----------------------------------------------------------------------------------------- readers

KITTI_DAY = SHARED / "data" / "kitti_raw_sample" / "2011_09_26"
BAD_TOKENS = (
    "nan",
    "-NaN",
    "inf",
    "-inf",
    "1e309",
    "-1e308",
    "1e-320",
    "0",
    "-0",
    "-1",
    "4294967296",
    "9" * 30,
    "",
    "x",
    "0x10",
    "1_0",
    "NaT",
    "2011-13-45 25:61:61.000000000",
    "99999-01-01 00:00:00.000000000",
    "[]",
    "{}",
    "null",
    "~",
    "'",
    '"',
    ":",
    ",",
    "\x00",
    "\xff",
    "é",
)


def _velocities(traj: np.ndarray, dt_s: float = 0.1) -> list[dict]:
    """The OXTS velocities (north, east, up) and yaw rate of a ``trajectory`` sampled every ``dt_s``."""
    v = np.gradient(traj[:, :3, 3], dt_s, axis=0)
    yaw = np.unwrap(np.arctan2(traj[:, 1, 0], traj[:, 0, 0]))
    wu = np.gradient(yaw, dt_s) if len(traj) > 1 else np.zeros(len(traj))
    return [
        {"vn": n, "ve": e, "vu": u, "wu": w} for (e, n, u), w in zip(v.tolist(), wu.tolist(), strict=True)
    ]


def write_synthetic_kitti_log(root: Path, n: int = 4) -> Path:
    """A KITTI raw log by the project's writers: calibration, timestamps, OXTS packets with velocities;
    frames are empty files (the reader only lists them)."""
    camera = kitti_like_camera()
    for sub in ("image_02/data", "oxts/data"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    kitti_calib_for(camera).write(root)
    times = np.datetime64("2026-01-01T12:00:00", "ns") + np.arange(n) * np.timedelta64(100_000_000, "ns")
    write_timestamps(root / "image_02" / "timestamps.txt", times)
    write_timestamps(root / "oxts" / "timestamps.txt", times)
    origin = LocalFrame(49.0, 8.4, 110.0)
    traj = trajectory(n)
    for i, (T, v) in enumerate(zip(traj, _velocities(traj), strict=True)):
        packet = OxtsPacket(**oxts_pose_from_T(origin, T), **v)
        write_oxts(root / "oxts" / "data" / f"{i:010d}.txt", packet)
        (root / "image_02" / "data" / f"{i:010d}.png").touch()
    return root


def write_real_kitti_log(root: Path) -> Path:
    """A KITTI raw log of the real 2011_09_26 files: its calibration, its 108 OXTS timestamps, and its one
    OXTS packet for every frame."""
    drive = KITTI_DAY / "2011_09_26_drive_0001_sync"
    for sub in ("image_02/data", "oxts/data"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in ("calib_cam_to_cam.txt", "calib_imu_to_velo.txt", "calib_velo_to_cam.txt"):
        shutil.copyfile(KITTI_DAY / name, root / name)
    shutil.copyfile(drive / "oxts" / "timestamps.txt", root / "oxts" / "timestamps.txt")
    packet = (drive / "oxts" / "data" / "0000000000.txt").read_bytes()
    n = len((root / "oxts" / "timestamps.txt").read_text().split("\n")) - 1
    for i in range(n):
        (root / "oxts" / "data" / f"{i:010d}.txt").write_bytes(packet)
        (root / "image_02" / "data" / f"{i:010d}.png").touch()
    return root


def write_generic_log(root: Path, n: int = 4) -> Path:
    """A generic log: poses.csv with velocities and yaw rate, camera.yaml with distortion, empty frames."""
    camera = kitti_like_camera((-0.2, 0.05, 0.001, 0.0, 0.0))
    origin = LocalFrame(49.0, 8.4, 110.0)
    (root / "frames").mkdir(parents=True, exist_ok=True)
    rows = ["frame,timestamp,lat,lon,alt,roll,pitch,yaw,vn,ve,vu,wu"]
    traj = trajectory(n)
    for i, (T, v) in enumerate(zip(traj, _velocities(traj), strict=True)):
        p = oxts_pose_from_T(origin, T)
        values = [p[k] for k in ("lat", "lon", "alt", "roll", "pitch", "yaw")] + list(v.values())
        rows.append(",".join([f"f{i:03d}", f"{1767268800 + 0.1 * i:.3f}", *map(repr, values)]))
        (root / "frames" / f"f{i:03d}.png").touch()
    (root / "poses.csv").write_text("\n".join(rows) + "\n")
    K = camera.K
    cam = {
        "width": camera.width,
        "height": camera.height,
        "fx": float(K[0, 0]),
        "fy": float(K[1, 1]),
        "cx": float(K[0, 2]),
        "cy": float(K[1, 2]),
        "distortion": camera.dist.tolist(),
        "T_vehicle_from_cam": camera.T_vehicle_from_cam.tolist(),
        "ground_offset_m": camera.ground_offset_m,
    }
    (root / "camera.yaml").write_text(yaml.safe_dump(cam))
    return root


LOG_WRITERS = {
    "kitti": write_synthetic_kitti_log,
    "generic": write_generic_log,
    "kitti_real": write_real_kitti_log,
}


@pytest.fixture(scope="module")
def pristine_logs(tmp_path_factory) -> dict[str, Path]:
    """Each kind of log written once; every example damages a fresh copy."""
    out = {}
    for kind, writer in LOG_WRITERS.items():
        if kind == "kitti_real" and not KITTI_DAY.is_dir():
            continue
        out[kind] = writer(tmp_path_factory.mktemp(kind) / "drive")
        open_drive_log(out[kind])  # undamaged, it opens
    return out


def _files_to_damage(root: Path) -> list[str]:
    names = [str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".png"]
    # one OXTS packet stands for all (the first fixes the world origin, a later one does not)
    packets = [n for n in names if n.startswith("oxts/data/")]
    return [n for n in names if not n.startswith("oxts/data/")] + packets[:2]


@st.composite
def damaged(draw, data: bytes) -> bytes:
    """``data`` truncated, with random bytes, a bad token or a line dropped, or replaced by random bytes."""
    how = draw(st.sampled_from(["truncate", "bytes", "token", "drop_line", "random"]))
    if how == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "random":
        return draw(st.binary(max_size=400))
    if how == "bytes":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 6))):
            at = draw(st.integers(0, len(out)))
            new = draw(st.binary(min_size=0, max_size=3))
            out[at : at + draw(st.integers(0, 3))] = new
        return bytes(out)
    lines = data.split(b"\n")
    k = draw(st.integers(0, len(lines) - 1))
    if how == "drop_line":
        return b"\n".join(lines[:k] + lines[k + 1 :])
    tokens = lines[k].replace(b",", b" , ").replace(b":", b" : ").split(b" ")
    j = draw(st.integers(0, len(tokens) - 1))
    bad = draw(st.one_of(st.sampled_from(BAD_TOKENS), st.text(max_size=6)))
    tokens[j] = bad.encode("utf-8", "surrogatepass")
    lines[k] = b" ".join(tokens).replace(b" , ", b",").replace(b" : ", b": ")
    return b"\n".join(lines)


def check_opened_log(log) -> None:
    """What a reader hands on: frames, finite poses and velocities, a camera that projects."""
    assert len(log) > 0
    assert np.isfinite(log.T_world_from_vehicle).all()
    assert np.isfinite(log.times_s()).all()
    for extra in (log.v_world_mps, log.yaw_rate_radps):
        assert extra is None or np.isfinite(extra).all()
    cam = log.camera
    assert np.isfinite(cam.K).all() and cam.K[0, 0] > 0 and cam.K[1, 1] > 0
    assert isinstance(cam.width, int) and isinstance(cam.height, int) and cam.width > 0 and cam.height > 0
    assert np.isfinite(cam.T_vehicle_from_cam).all() and np.isfinite(cam.ground_offset_m)
    R = cam.T_vehicle_from_cam[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-2)
    assert np.isfinite(cam.normalized_from_pixels(np.array([[0.0, 0.0], [cam.width, cam.height]]))).all()


def open_damaged(pristine: Path, name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "drive"
        shutil.copytree(pristine, root)
        (root / name).write_bytes(data)
        try:
            log = open_drive_log(root)
        except HdmapError as err:
            message = str(err)
            assert message and "\n" not in message, message
            assert str(root) in message, f"the error does not name the file: {message}"
        else:
            check_opened_log(log)


@pytest.mark.parametrize("kind", list(LOG_WRITERS))
@fuzz_settings(40)
@given(data=st.data())
def test_readers_give_a_drive_log_or_one_clear_error(pristine_logs, kind, data):
    if kind not in pristine_logs:
        pytest.skip(f"{KITTI_DAY} is absent: the real KITTI files are not available here")
    pristine = pristine_logs[kind]
    name = data.draw(st.sampled_from(_files_to_damage(pristine)), "file")
    open_damaged(pristine, name, data.draw(damaged((pristine / name).read_bytes()), "content"))


# ------------------------------------- what the fuzzing found, and the faults users reported


def _edit(rel: str, change):
    """A damage: ``change(bytes) -> bytes`` applied to the log's file ``rel``."""

    def damage(root: Path) -> None:
        (root / rel).write_bytes(change((root / rel).read_bytes()))

    return damage


def _token(rel: str, index: int, new: str):
    """A damage: whitespace-separated token ``index`` of the first line of ``rel`` replaced by ``new``."""

    def change(data: bytes) -> bytes:
        first, _, rest = data.partition(b"\n")
        tokens = first.split(b" ")
        tokens[index] = new.encode()
        return b" ".join(tokens) + b"\n" + rest

    return _edit(rel, change)


def _line(rel: str, key: bytes, new: bytes):
    """A damage: the line of ``rel`` that starts with ``key`` becomes ``new``."""
    return _edit(rel, lambda d: b"\n".join(new if ln.startswith(key) else ln for ln in d.split(b"\n")))


CAM = "calib_cam_to_cam.txt"
PACKET_1 = "oxts/data/0000000001.txt"
KITTI_DAMAGE = {
    # faults users reported: each was a traceback
    "P_rect_2 for P_rect_02": (
        _edit(CAM, lambda d: d.replace(b"P_rect_02:", b"P_rect_2:")),
        r"calib_cam_to_cam.txt: calibration lacks the key 'P_rect_02' \(cameras present: \[0\]; "
        r"is 'P_rect_2' meant to be 'P_rect_02'\?\)",
    ),
    "all-zero P_rect_02": (
        _line(CAM, b"P_rect_02:", b"P_rect_02: " + b" ".join([b"0"] * 12)),
        r"calib_cam_to_cam.txt: P_rect_02 is not a camera projection: its first 3 columns must be "
        r"\[fx 0 cx; 0 fy cy; 0 0 1\] with fx, fy > 0, got 0 0 0 0 0 0 0 0 0",
    ),
    "NaN navstat": (
        _token(PACKET_1, 25, "nan"),
        r"0000000001.txt: OXTS field navstat is nan, not a whole number",
    ),
    # found by fuzzing
    "inf posmode": (_token(PACKET_1, 27, "inf"), r"0000000001.txt: OXTS field posmode is inf"),
    "calibration not UTF-8": (
        _edit(CAM, lambda d: d[:100] + b"\xe6" + d[101:]),
        r"calib_cam_to_cam.txt: not a text file \(byte 0xe6 at offset 100 is not UTF-8\)",
    ),
    "OXTS packet not UTF-8": (_edit(PACKET_1, lambda d: b"\xff" + d), r"0000000001.txt: not a text file"),
    "timestamps not UTF-8": (
        _edit("image_02/timestamps.txt", lambda d: d + b"\xff"),
        r"image_02/timestamps.txt: not a text file",
    ),
    "NaT timestamp": (
        _edit("image_02/timestamps.txt", lambda d: d.replace(b"2026-01-01 12:00:00.200000000", b"NaT")),
        r"timestamps.txt:3: not a KITTI timestamp: 'NaT'",
    ),
    "year 99999": (
        _edit(
            "image_02/timestamps.txt",
            lambda d: d.replace(b"2026-01-01 12:00:00.3", b"99999-01-01 12:00:00.3"),
        ),
        r"timestamps.txt:4: not a KITTI timestamp: '99999-01-01 12:00:00.300000000'",
    ),
    "time zone": (
        _edit("image_02/timestamps.txt", lambda d: d.replace(b"12:00:00.300000000", b"12:00:00.300000000Z")),
        r"timestamps.txt:4: not a KITTI timestamp",
    ),
    "latitude 95": (_token(PACKET_1, 0, "95.0"), r"0000000001.txt: lat 95.0, lon .* is not a WGS84 position"),
    "first latitude 86": (
        _token("oxts/data/0000000000.txt", 0, "86.0"),
        r"0000000000.txt: world origin must be a finite WGS84 lat/lon/alt",
    ),
    "altitude 1e308": (_token(PACKET_1, 2, "1e308"), r"0000000001.txt: alt is 1e\+308, out of range"),
    "velocity 1e308": (_token(PACKET_1, 6, "1e308"), r"0000000001.txt: vn is 1e\+308, out of range"),
    "NaN yaw rate": (_token(PACKET_1, 22, "nan"), r"0000000001.txt: wu is nan, out of range"),
    "R_rect_00 not a rotation": (
        _edit(CAM, lambda d: d.replace(b"R_rect_00: 1.0e+00", b"R_rect_00: 2.0e+00")),
        r"calib_cam_to_cam.txt: R_rect_00 is not a rotation",
    ),
    "S_rect_02 zero": (
        _edit(CAM, lambda d: d.replace(b"S_rect_02: 1.242e+03", b"S_rect_02: 0.0e+00")),
        r"calib_cam_to_cam.txt: S_rect_02 must be an image size of 1 to 100000 px, got 0 375",
    ),
    "P_rect_02 with skew": (
        _edit(
            CAM, lambda d: d.replace(b"P_rect_02: 7.215377e+02 0.0e+00", b"P_rect_02: 7.215377e+02 5.0e+01")
        ),
        r"calib_cam_to_cam.txt: P_rect_02 is not a camera projection",
    ),
    "sheared R of imu_to_velo": (
        _edit("calib_imu_to_velo.txt", lambda d: d.replace(b"R: 1.0e+00 0.0e+00", b"R: 1.0e+00 1.0e+00")),
        r"calib_imu_to_velo.txt: R is not a rotation",
    ),
}


def _camera_yaml(key: str, value):
    def damage(root: Path) -> None:
        data = yaml.safe_load((root / "camera.yaml").read_text())
        data[key] = value
        (root / "camera.yaml").write_text(yaml.safe_dump(data))

    return damage


def _poses_row(column: str, value: str, row: int = 1):
    def damage(root: Path) -> None:
        lines = (root / "poses.csv").read_text().splitlines()
        header = lines[0].split(",")
        cells = lines[row + 1].split(",")
        cells[header.index(column)] = value
        lines[row + 1] = ",".join(cells)
        (root / "poses.csv").write_text("\n".join(lines) + "\n")

    return damage


GENERIC_DAMAGE = {
    "width not a number": (
        _camera_yaml("width", "wide"),
        r"camera.yaml: width and height must be whole numbers",
    ),
    "width NaN": (
        _camera_yaml("width", float("nan")),
        r"camera.yaml: width and height must be whole numbers",
    ),
    "width 0": (_camera_yaml("width", 0), r"camera.yaml: width and height must be whole numbers"),
    "fx 0": (_camera_yaml("fx", 0.0), r"camera.yaml: fx and fy must be positive \(pixels\), got 0, 721.538"),
    "fx beyond floats": (_camera_yaml("fx", 10**400), r"camera.yaml: a camera value is not a number"),
    "3 distortion coefficients": (
        _camera_yaml("distortion", [0.1, 0.2, 0.3]),
        r"camera.yaml: distortion must have 0, 4, 5 or 8 coefficients, got 3",
    ),
    "YAML syntax (a five-line message)": (
        _edit("camera.yaml", lambda d: d.replace(b"fx:", b":")),
        r"camera.yaml:\d+: not valid YAML \(expected <block end>, but found ':'\)$",
    ),
    "camera.yaml not UTF-8": (_edit("camera.yaml", lambda d: b"\xff" + d), r"camera.yaml: not a text file"),
    "poses.csv not UTF-8": (_edit("poses.csv", lambda d: d + b"\xff"), r"poses.csv: not a text file"),
    "timestamp 1e300": (_poses_row("timestamp", "1e300"), r"poses.csv:3: timestamp 1e\+300 s is not a time"),
    "latitude 95": (_poses_row("lat", "95"), r"poses.csv:3: lat 95.0, lon .* is not a WGS84 position"),
    "velocity 1e308": (_poses_row("ve", "1e308"), r"poses.csv:3: ve is 1e\+308, out of range"),
}


@pytest.mark.parametrize(
    ("kind", "case"), [("kitti", c) for c in KITTI_DAMAGE] + [("generic", c) for c in GENERIC_DAMAGE]
)
def test_reader_errors_found_by_fuzzing(pristine_logs, tmp_path, kind, case):
    damage, message = {"kitti": KITTI_DAMAGE, "generic": GENERIC_DAMAGE}[kind][case]
    root = shutil.copytree(pristine_logs[kind], tmp_path / "drive")
    damage(root)
    with pytest.raises(HdmapError, match=message) as err:
        open_drive_log(root)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(root))


def test_a_tiny_median_has_no_zero_length_centre_line():
    """A footprint whose medial path trims down to one point gave a LineString of two equal points."""
    from shapely.geometry import Polygon

    from hdmap_seg.vectorize.medians import centerline

    triangle = Polygon([(1.5459574, 0.0308264), (1.1282641, 0.3825335), (1.5333214, 0.9587514)])
    assert centerline(triangle, 0.1) is None
    line = centerline(shapely.box(0.0, 0.0, 20.0, 2.0), 0.1)
    assert line is not None and line.is_valid and line.length > 15.0


def test_a_median_that_geos_cannot_snap_is_written_all_the_same():
    """A valid 0.02 m2 median piece (a fuzzed config keeps any size) on which GEOS's snap rounding to the
    GeoJSON grid raised ``TopologyException: unable to assign free hole to a shell``."""
    from hdmap_seg.export.geojson import to_wgs84

    piece = shapely.from_wkt(
        "POLYGON ((1797.3999999999999 -56.42954895152526, 1797.4 -55.77045104847477, "
        "1797.4 -56.22573593128813, 1797.4016853456646 -56.26004193040345, 1797.5 -56.470451048474686, "
        "1797.5 -56.674264068712105, 1797.3999999999999 -56.42954895152526))"
    )
    assert piece.is_valid and piece.area > 0.01
    out = to_wgs84(piece, LocalFrame(79.83517570681903, 17.13537825291752, 2308.9394360046317))
    assert out.geom_type == "Polygon" and out.is_valid and out.area > 0 and out.exterior.is_ccw


def test_a_pole_fit_that_runs_away_keeps_its_start():
    """Four views of a stray blob from 2.6 to 10 m (a 34 px focal length) sent the final fit to 1e56 m,
    and the GeoJSON writer to ValueError on its infinite longitude."""
    from hdmap_seg.vectorize.poles import refine_pole

    views = np.array(  # cx, cy, drop, azimuth, front range, radius, focal, slope, optical axis azimuth
        [
            [-0.1665, 1.7295, 1.8167, 0.2399, 4.3388, 0.2577, 33.6693, 0.0, 0.4],
            [0.045, 2.1877, 1.8363, 0.1403, 3.0907, 0.1836, 33.6693, 0.0, 0.4],
            [0.2672, 2.6477, 1.9, 0.4259, 2.6083, 0.1162, 33.6693, 0.0, 0.4],
            [0.7908, 3.6781, 2.0125, 0.9123, 10.103, 0.4501, 33.6693, 0.0, 0.4],
        ]
    )
    start, track_cov = np.array([1.0887, 2.6023]), np.array([[0.0596, 0.0178], [0.0178, 0.0094]])
    xy, cov = refine_pole(start, views, PoleConfig(), cov0=track_cov)
    np.testing.assert_array_equal(xy, start)
    np.testing.assert_array_equal(cov, track_cov)
    xy, cov = refine_pole(start, views, PoleConfig())  # without one: the fit's first step's
    assert np.array_equal(xy, start) and np.all(np.linalg.eigvalsh(cov) > 0)


def test_layers_across_the_antimeridian_are_cut_there(tmp_path):
    """A drive near longitude 180: polygons and lines were drawn the long way round the Earth (RFC 7946, 3.1.9)."""
    from shapely.geometry import LineString, Point, Polygon

    from hdmap_seg.maplayers import Feature

    origin = LocalFrame(-16.5, 179.9999, 10.0)  # Fiji
    square = Polygon([(-50.0, -20.0), (50.0, -20.0), (50.0, 20.0), (-50.0, 20.0)])
    layers = {
        "poles": [Feature(Point(30.0, 0.0, 1.0), {"id": 0}), Feature(Point(-30.0, 0.0, 1.0), {"id": 1})],
        "medians": [
            Feature(square, {"id": 0, "kind": "footprint"}),
            Feature(LineString([(-40.0, 0.0), (40.0, 0.0)]), {"id": 0, "kind": "centerline"}),
        ],
        "coverage": [Feature(shapely.box(-5.0, -5.0, 5.0, 5.0), {})],  # wholly west of 180: one piece
    }
    write_layers(layers, tmp_path, origin)
    for name in layers:
        assert check_geojson_file(tmp_path / f"{name}.geojson") == len(layers[name])
    poles = json.loads((tmp_path / "poles.geojson").read_text())["features"]
    # east of 180 is -179.9...
    assert [np.sign(f["geometry"]["coordinates"][0]) for f in poles] == [-1.0, 1.0]
    medians = json.loads((tmp_path / "medians.geojson").read_text())["features"]
    assert [f["geometry"]["type"] for f in medians] == ["MultiPolygon", "MultiLineString"]
    footprint = shape(medians[0]["geometry"])
    lons = shapely.get_coordinates(footprint)[:, 0]
    assert lons.max() == 180.0 and lons.min() == -180.0 and np.all(np.abs(lons) > 179.99)
    # the two pieces are the square: its area, back in the world frame
    back = [
        Polygon(np.stack(origin.to_world(*np.asarray(p.exterior.coords)[:, ::-1].T)[:2], axis=1))
        for p in footprint.geoms
    ]
    assert sum(p.area for p in back) == pytest.approx(square.area, rel=1e-3)  # snapped to 1 cm
    coverage = json.loads((tmp_path / "coverage.geojson").read_text())["features"]
    assert coverage[0]["geometry"]["type"] == "Polygon"
    # a sliver of no area across 180 (a fuzzed config kept medians of any size) is left out, not a crash
    from hdmap_seg.export.geojson import feature_collection

    sliver = Polygon([(-174.70000000000002, -2968.03), (-174.70000000000002, -2967.87), (-174.7, -2967.87)])
    assert sliver.area > 0 and sliver.is_valid
    assert (
        feature_collection([Feature(sliver, {})], LocalFrame(0.0, -180.0, 0.0), "medians")["features"] == []
    )


def _sign_instances_one_by_one(sign_mask: np.ndarray, cfg: SignConfig) -> np.ndarray:
    """``sign_instances`` as it was: each component tried against every earlier part (the oracle)."""
    from hdmap_seg.vectorize import signs
    from hdmap_seg.vectorize.components import components

    merged = []
    for x, y, sub in sorted(components(sign_mask, 1), key=lambda c: c[0]):
        for k in range(len(merged) - 1, -1, -1):
            px, py, psub, _ = merged[k]
            ph, pw = psub.shape
            h = sub.shape[0]
            overlap = min(py + ph, y + h) - max(py, y)
            gap = x - (px + pw)
            if 0 <= gap <= max(2, 0.6 * min(ph, h)) and overlap >= 0.7 * max(ph, h):
                merged[k] = (*signs._union(px, py, psub, x, y, sub), True)
                break
        else:
            merged.append((x, y, sub, False))
    pieces = [
        p for x, y, sub, j in merged for p in ([(x, y, sub)] if j else signs._split_overlapping(x, y, sub))
    ]
    H, W = sign_mask.shape
    out = []
    for x, y, sub in pieces:
        h, w = sub.shape
        if sub.sum() < cfg.min_pixels or x == 0 or y == 0 or x + w == W or y + h == H:
            continue
        rows, cols = np.nonzero(sub)
        out.append((x + cols.mean(), y + rows.mean(), w, h))
    return np.array(out, dtype=float).reshape(-1, 4)


@pytest.mark.parametrize("seed", range(6))
def test_sign_parts_join_as_before_however_many(seed):
    """A noisy mask's thousands of sign specks took minutes (every speck tried against every earlier part);
    the sweep that drops parts out of reach, in NumPy past 16 of them, joins exactly the same parts."""
    from hdmap_seg.vectorize.signs import sign_instances

    rng = np.random.default_rng(seed)
    mask = rng.random((60, 200)) < (0.02, 0.05, 0.12)[seed % 3]
    for _ in range(6):  # plates, and plates cut in two by a post
        x, y, r = int(rng.integers(0, 200)), int(rng.integers(0, 60)), int(rng.integers(3, 15))
        cv2.circle(mask.view(np.uint8), (x, y), r, 1, -1)
        mask[:, x : x + int(rng.integers(0, 3))] = False
    cfg = SignConfig(min_pixels=int(rng.integers(1, 12)))
    np.testing.assert_array_equal(sign_instances(mask, cfg), _sign_instances_one_by_one(mask, cfg))


def test_a_full_size_mask_of_sign_specks_takes_seconds_not_minutes():
    import time

    from hdmap_seg.vectorize.signs import sign_instances

    mask = np.random.default_rng(0).random((375, 1242)) < 0.05  # about 20,000 specks
    start = time.process_time()
    sign_instances(mask, SignConfig())
    assert time.process_time() - start < 10.0  # one by one: over two minutes


def write_vectorizable_log(root: Path, n: int = 24) -> Path:
    """A KITTI raw log (``write_synthetic_kitti_log``) with empty label masks: 2.3 s and 23 m, long
    enough to smooth and to build a ground without a warning."""
    write_synthetic_kitti_log(root, n)
    (root / "label_02" / "data").mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(root / "label_02" / "data" / f"{i:010d}.png"), np.zeros((375, 1242), np.uint8))
    return root


def _mask_value_200(root: Path) -> None:
    mask = np.zeros((375, 1242), np.uint8)
    mask[200:210, 600:605] = 200  # classes are 0..5, ignore 255
    cv2.imwrite(str(root / "label_02" / "data" / "0000000003.png"), mask)


ISSUE_CASES = {
    "P_rect_2": (
        KITTI_DAMAGE["P_rect_2 for P_rect_02"][0],
        "{root}/calib_cam_to_cam.txt: calibration lacks the key 'P_rect_02' (cameras present: [0]; "
        "is 'P_rect_2' meant to be 'P_rect_02'?)",
    ),
    "all-zero P_rect_02": (
        KITTI_DAMAGE["all-zero P_rect_02"][0],
        "{root}/calib_cam_to_cam.txt: P_rect_02 is not a camera projection: its first 3 columns must be "
        "[fx 0 cx; 0 fy cy; 0 0 1] with fx, fy > 0, got 0 0 0 0 0 0 0 0 0",
    ),
    "NaN navstat": (
        KITTI_DAMAGE["NaN navstat"][0],
        "{root}/oxts/data/0000000001.txt: OXTS field navstat is nan, not a whole number",
    ),
    "mask value 200": (
        _mask_value_200,
        "{root}/label_02/data/0000000003.png: mask holds the value 200, which no class has "
        "(class ids 0..5, ignore 255)",
    ),
}


@pytest.mark.parametrize("case", list(ISSUE_CASES))
def test_hdmap_vectorize_stops_with_one_line_on_the_issues_cases(tmp_path, capsys, case):
    from hdmap_seg.cli.vectorize import main

    damage, message = ISSUE_CASES[case]
    root = write_vectorizable_log(tmp_path / "drive")
    damage(root)
    with pytest.raises(SystemExit) as exit_:
        main([str(root), "--quiet", "--no-gpkg"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message.format(root=root)}"]
    assert not list(root.glob("map/*.geojson"))


def test_mask_values_beyond_the_classes_end_to_end(tmp_path):
    """``hdmap-vectorize`` as users run it: exit status 2 and one line naming the mask and the value."""
    from conftest import run_script

    root = write_vectorizable_log(tmp_path / "drive")
    _mask_value_200(root)
    proc = run_script("tools/vectorize.py", str(root), "--quiet", "--no-gpkg")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [f"error: {ISSUE_CASES['mask value 200'][1].format(root=root)}"]


def test_mask_values_are_checked_against_the_masks_classes():
    """Ids 0..5 and 255 pass; with a class map's taxonomy the count is ``num_classes``, or unknown (unchecked)."""
    from hdmap_seg.data.class_map import load_class_map
    from hdmap_seg.vectorize.config import layer_classes

    camera = kitti_like_camera()
    T = trajectory(1)[0] @ camera.T_vehicle_from_cam
    mask = np.zeros((375, 1242), np.uint8)
    mask[:, :7] = [0, 1, 2, 3, 4, 5, 255]
    MapBuilder(camera).add_frame(0, mask, T)
    mask[0, 0], mask[1, 0] = 6, 254
    with pytest.raises(HdmapError, match=r"^masks/0.png: mask holds the values 6, 254, which no class has"):
        MapBuilder(camera).add_frame(0, mask, T, source="masks/0.png")
    with pytest.raises(HdmapError, match=r"^frame 0: mask values must be class ids 0..255, got 0..300"):
        MapBuilder(camera).add_frame(0, np.where(mask == 6, 300, 0), T)
    camvid = load_class_map(
        Path(__file__).resolve().parents[1] / "conf" / "class_map" / "camvid_to_roads.yaml"
    )
    classes = layer_classes(camvid.source, camvid)
    MapBuilder(camera, VectorizeConfig(classes=classes)).add_frame(0, mask, T)  # not known: not checked
    with pytest.raises(HdmapError, match=r"mask holds the value 254, which no class has \(class ids 0..10"):
        MapBuilder(camera, VectorizeConfig(classes=classes, num_classes=11)).add_frame(0, mask, T)
    with pytest.raises(HdmapError, match=r"class ids \{'sign': \[6\]\} are beyond num_classes 6"):
        VectorizeConfig(classes=classes, num_classes=6)
