"""The synthetic world: road geometry, camera rigs, rendering (occlusion), data set, determinism, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from hdmap_seg.cli.make_synthetic import main as make_synthetic_main
from hdmap_seg.data.classes import ROAD_CLASSES, load_classes
from hdmap_seg.errors import HdmapError
from hdmap_seg.geo.frames import invert_transform
from hdmap_seg.geo.kitti import KittiCalib
from hdmap_seg.synthetic import SynthConfig, write_dataset, write_drive_log
from hdmap_seg.synthetic.camera import kitti_rig, rig_by_name, wide1024_rig
from hdmap_seg.synthetic.drive import Wobble, pose_on_road
from hdmap_seg.synthetic.render import MEDIAN, POLE, ROAD, SIGN, Renderer
from hdmap_seg.synthetic.world import Pole, RoadGeometry, Sign, make_world

STILL = Wobble(0.0, 10.0, (0.0, 0.0), 0.0, (0.0, 0.0, 0.0, 0.0))


# ------------------------------------------------------------------------------------- road


def test_arc_piece_ends_where_a_circle_says():
    R = 200.0
    road = RoadGeometry.from_pieces([50.0, np.pi / 2 * R], [0.0, 1.0 / R])  # straight east, then left quarter
    x, y, h = road.pose_at(np.array([50.0 + np.pi / 2 * R]))
    assert (x[0], y[0], h[0]) == pytest.approx((50.0 + R, R, np.pi / 2), abs=1e-9)
    # Midway round the quarter circle centred at (50, R).
    x, y, _ = road.pose_at(np.array([50.0 + np.pi / 4 * R]))
    assert np.hypot(x[0] - 50.0, y[0] - R) == pytest.approx(R, abs=1e-9)


def test_road_coords_invert_point_at():
    world = make_world(11, 500.0)
    rng = np.random.default_rng(0)
    s = rng.uniform(0, world.road.total_length_m, 400)
    d = rng.uniform(-20, 20, 400)
    x, y = world.road.point_at(s, d)
    s2, d2 = world.road.road_coords(x, y)
    assert np.abs(s2 - s).max() < 1e-6 and np.abs(d2 - d).max() < 1e-6
    # float32, as the renderer uses it, is good to a centimetre.
    s3, d3 = world.road.road_coords(x.astype(np.float32), y.astype(np.float32))
    assert np.abs(d3 - d).max() < 0.01


def test_world_respects_the_brief_ranges():
    for seed in range(6):
        w = make_world(seed, 400.0)
        assert 1.0 <= w.section.median_width_m <= 4.0 and 1 <= w.section.lanes_per_direction <= 3
        assert all(5.0 <= p.height_m <= 12.0 and 0.1 <= 2 * p.radius_m <= 0.3 for p in w.poles)
        assert all(0.5 <= s.size_m <= 1.5 and 2.0 <= s.height_m <= 5.0 for s in w.signs)
        assert {s.shape for s in w.signs} <= {"circle", "triangle", "rectangle"}
        assert len(w.median_gaps_m) > 0
    shapes = {s.shape for seed in range(6) for s in make_world(seed, 400.0).signs}
    assert shapes == {"circle", "triangle", "rectangle"}
    assert any(s.pole_id >= 0 for seed in range(6) for s in make_world(seed, 400.0).signs)


# ----------------------------------------------------------------------------------- camera


def test_rigs_agree_with_the_kitti_files_they_write(tmp_path):
    rig = kitti_rig()
    assert (rig.width, rig.height) == (1242, 375)
    assert rig.camera_height_m == pytest.approx(1.65, abs=0.02)
    rig.calib.write(tmp_path)
    K, T, size = KittiCalib.read(tmp_path).rect_camera(2)
    assert np.allclose(K, rig.K, atol=1e-12) and np.allclose(T, rig.T_cam_from_imu, atol=1e-12)
    assert size == (1242, 375)
    wide = wide1024_rig()
    hfov = [2 * np.arctan(0.5 * r.width / r.K[0, 0]) for r in (rig, wide)]
    assert (wide.width, wide.height) == (1024, 512) and hfov[0] == pytest.approx(hfov[1], rel=1e-6)
    assert np.allclose(wide.T_cam_from_imu, rig.T_cam_from_imu, atol=1e-9)


def test_scaled_rig_projects_like_a_resized_image():
    rig, half = kitti_rig(), rig_by_name("kitti", 0.5)
    p_cam = np.array([[3.0, -1.0, 20.0], [-5.0, 1.4, 8.0]])
    uv = (p_cam @ rig.K.T)[:, :2] / p_cam[:, 2:]
    uv_half = (p_cam @ half.K.T)[:, :2] / p_cam[:, 2:]
    sx, sy = half.width / rig.width, half.height / rig.height
    # cv2.resize maps pixel centres: u' = s (u + 0.5) - 0.5.
    assert np.allclose(uv_half, np.column_stack([sx * (uv[:, 0] + 0.5) - 0.5, sy * (uv[:, 1] + 0.5) - 0.5]))
    with pytest.raises(HdmapError, match="unknown camera"):
        rig_by_name("fisheye")


def test_embedded_calibration_is_kittis(shared_dir):
    calib_dir = shared_dir / "data" / "kitti_raw_sample" / "2011_09_26"
    real = KittiCalib.read(calib_dir)
    ours = kitti_rig().calib
    for idx, cam in real.cam_to_cam.cameras.items():
        for name in ("S", "K", "D", "R", "T", "S_rect", "R_rect", "P_rect"):
            assert np.array_equal(getattr(cam, name), getattr(ours.cam_to_cam.cameras[idx], name)), (
                idx,
                name,
            )
    assert np.array_equal(real.imu_to_velo.matrix, ours.imu_to_velo.matrix)
    assert np.array_equal(real.velo_to_cam.matrix, ours.velo_to_cam.matrix)


# -------------------------------------------------------------------------------- rendering


def _ego_pose(world, rig, s_m: float = 120.0):
    d = world.section.lane_center_m(world.ego_lane)
    T, _ = pose_on_road(world, [s_m], [d], [0.0], STILL, rig.imu_height_m)
    return T[0]


def _point_on_ray(rig, T_world_from_imu, u: float, v: float, depth_m: float) -> np.ndarray:
    """The world point seen at pixel (u, v) at camera depth ``depth_m`` (independent of the renderer)."""
    T_world_from_cam = T_world_from_imu @ invert_transform(rig.T_cam_from_imu)
    p_cam = depth_m * np.linalg.solve(rig.K, np.array([u, v, 1.0]))
    return T_world_from_cam[:3, :3] @ p_cam + T_world_from_cam[:3, 3]


def test_near_objects_hide_far_ones():
    rig = rig_by_name("kitti", 0.5)
    base = make_world(5, 400.0)
    empty = dataclasses.replace(base, poles=(), signs=(), buildings=(), trees=(), vehicles=())
    T = _ego_pose(empty, rig)
    u, v = rig.width * 0.6, rig.height * 0.3  # above the horizon: sky behind
    far = _point_on_ray(rig, T, u, v, 25.0)
    near = _point_on_ray(rig, T, u, v, 12.0)
    pole = Pole(0, far[0], far[1], 10.0, 0.15, "plain", (0.5, 0.5, 0.5))
    facing = float(np.arctan2(T[1, 3] - near[1], T[0, 3] - near[0]))  # towards the car
    sign = Sign(0, near[0], near[1], near[2], 0.8, "circle", facing, (1, 0, 0), (1, 1, 1), (0, 0, 0))
    renderer = Renderer(rig)
    iu, iv = int(round(u)), int(round(v))

    only_pole = renderer.render(dataclasses.replace(empty, poles=(pole,)), T, degrade=False)
    assert only_pole.label[iv, iu] == POLE
    assert only_pole.depth_m[iv, iu] == pytest.approx(25.0, abs=0.3)
    both = renderer.render(dataclasses.replace(empty, poles=(pole,), signs=(sign,)), T, degrade=False)
    assert both.label[iv, iu] == SIGN
    assert both.depth_m[iv, iu] == pytest.approx(12.0, abs=0.1)
    # Swap roles: the pole near, the sign far: the pole wins.
    pole_near = dataclasses.replace(pole, x_m=near[0], y_m=near[1])
    sign_far = dataclasses.replace(sign, x_m=far[0], y_m=far[1], height_m=far[2])
    swapped = renderer.render(
        dataclasses.replace(empty, poles=(pole_near,), signs=(sign_far,)), T, degrade=False
    )
    assert swapped.label[iv, iu] == POLE
    assert swapped.depth_m[iv, iu] == pytest.approx(12.0, abs=0.3)


def test_ground_labels_follow_the_cross_section():
    """Ground points placed by road coordinates project onto pixels of their class."""
    rig = rig_by_name("kitti", 0.5)
    base = make_world(8, 400.0)
    world = dataclasses.replace(
        base, poles=(), signs=(), buildings=(), trees=(), vehicles=(), median_gaps_m=np.zeros((0, 2))
    )
    T = _ego_pose(world, rig, 100.0)
    frame = Renderer(rig).render(world, T, degrade=False)
    sec = world.section
    T_cam_from_world = invert_transform(T @ invert_transform(rig.T_cam_from_imu))
    checks = {MEDIAN: 0.0, ROAD: sec.lane_center_m(world.ego_lane) - 0.9}
    for cls, d in checks.items():
        s = np.linspace(106, 160, 12)
        x, y = world.road.point_at(s, np.full_like(s, d))
        p = np.column_stack([x, y, np.zeros_like(x)]) @ T_cam_from_world[:3, :3].T + T_cam_from_world[:3, 3]
        uv = p @ rig.K.T
        u, v = np.round(uv[:, 0] / uv[:, 2]).astype(int), np.round(uv[:, 1] / uv[:, 2]).astype(int)
        ok = (u >= 0) & (u < rig.width) & (v >= 0) & (v < rig.height)
        assert ok.sum() >= 5
        assert np.all(frame.label[v[ok], u[ok]] == cls), cls


# ----------------------------------------------------------------------------- data set, CLI


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_any_workers(tmp_path):
    cfg = SynthConfig(seed=4, scale=0.25, train=3, val=2, frames_per_world=2, logs=1, frames_per_log=6)
    write_dataset(cfg, tmp_path / "a", workers=1)
    write_drive_log(cfg, 0, tmp_path / "a" / "logs", workers=1)
    write_dataset(cfg, tmp_path / "b", workers=2)
    write_drive_log(cfg, 0, tmp_path / "b" / "logs", workers=2)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a == b and len(a) > 30
    # A rerun after a crash makes what is missing, and the same bytes.
    (tmp_path / "b" / "images" / "train" / "000001.jpg").unlink()
    (tmp_path / "b" / "logs" / "synthetic_drive_0000" / "image_02" / "data" / "0000000003.png").unlink()
    (tmp_path / "b" / "logs" / "synthetic_drive_0000" / "gt" / "signs.geojson").unlink()
    write_dataset(cfg, tmp_path / "b", workers=1)
    write_drive_log(cfg, 0, tmp_path / "b" / "logs", workers=1)
    assert _digest(tmp_path / "b") == a
    with pytest.raises(HdmapError, match="other settings"):  # a log is not resumed with another world
        write_drive_log(dataclasses.replace(cfg, seed=9), 0, tmp_path / "b" / "logs")
    other = dataclasses.replace(cfg, seed=5, logs=0)
    write_dataset(other, tmp_path / "c", workers=1)
    assert _digest(tmp_path / "c")["images/train/000000.jpg"] != a["images/train/000000.jpg"]


def test_dataset_layout_and_content(tmp_path):
    cfg = SynthConfig(seed=1, scale=0.5, train=6, val=3, frames_per_world=3, logs=0)
    root = write_dataset(cfg, tmp_path / "roads")
    assert load_classes(root / "classes.yaml") == ROAD_CLASSES
    rig = cfg.rig()
    seen = np.zeros(256, int)
    for split, n in (("train", 6), ("val", 3)):
        stems = sorted(p.stem for p in (root / "images" / split).glob("*.jpg"))
        assert stems == sorted(p.stem for p in (root / "masks" / split).glob("*.png")) and len(stems) == n
        for stem in stems:
            img = cv2.imread(str(root / "images" / split / f"{stem}.jpg"), cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(str(root / "masks" / split / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
            assert img.shape == (rig.height, rig.width, 3) and mask.shape == (rig.height, rig.width)
            assert mask.dtype == np.uint8
            seen += np.bincount(mask.ravel(), minlength=256)
    assert np.all(seen[:6] > 0) and seen[6:].sum() == 0  # every class, nothing else
    assert (root / "contact_sheet.png").is_file()
    # Rerunning with other settings into the same folder is refused (no mixed data sets).
    with pytest.raises(HdmapError, match="other settings"):
        write_dataset(dataclasses.replace(cfg, seed=2), root)


def test_cli_makes_data_and_rejects_bad_options(tmp_path, capsys):
    make_synthetic_main(
        [
            "--out",
            str(tmp_path / "r"),
            "--train",
            "2",
            "--val",
            "1",
            "--logs",
            "0",
            "--scale",
            "0.25",
            "--workers",
            "1",
        ]
    )
    assert len(list((tmp_path / "r" / "images" / "train").glob("*.jpg"))) == 2
    for bad in (["--scale", "0"], ["--train", "-1"], ["--logs", "1", "--frames-per-log", "1"]):
        with pytest.raises(SystemExit) as exc:
            make_synthetic_main(["--out", str(tmp_path / "x"), *bad])
        assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
