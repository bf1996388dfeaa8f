"""The synthetic world's terrain: heights and slopes, the car riding it, rays meeting it, the
CLI's --terrain and --pose-noise."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hdmap_seg.cli.make_synthetic import main as make_synthetic_main
from hdmap_seg.errors import HdmapError
from hdmap_seg.geo.frames import LocalFrame, invert_transform
from hdmap_seg.geo.kitti import read_oxts
from hdmap_seg.synthetic import SynthConfig, write_drive_log
from hdmap_seg.synthetic.base import pose_noise_rng
from hdmap_seg.synthetic.camera import rig_by_name
from hdmap_seg.synthetic.drive import Wobble, make_drive, oxts_packets, pose_on_road
from hdmap_seg.synthetic.render import ROAD, Renderer
from hdmap_seg.synthetic.world import CrossSection, RoadGeometry, Terrain, make_terrain, make_world

STILL = Wobble(0.0, 10.0, (0.0, 0.0), 0.0, (0.0, 0.0, 0.0, 0.0))
SECTION = CrossSection(median_width_m=2.0, lanes_per_direction=2, lane_width_m=3.5, sidewalk_width_m=3.0)
STRAIGHT = RoadGeometry.from_pieces([1000.0], [0.0])  # east along the x axis: s = x, d = y


def _terrain(spec: str, road: RoadGeometry = STRAIGHT) -> Terrain:
    return make_terrain(spec, road, SECTION, np.random.default_rng(0))


# ------------------------------------------------------------------------ heights and slopes


def test_a_grade_climbs_by_its_percent_with_the_crown_on_top():
    t = _terrain("grade:6")
    hm, edge = SECTION.half_median_m, SECTION.road_edge_m  # 1.0, 8.0
    assert t.height_m(100.0, 0.0) == pytest.approx(6.0, abs=1e-12)
    assert t.height_m(-50.0, 0.0) == pytest.approx(-3.0, abs=1e-12)  # extended backwards
    # Level median at the crown, 2 % down to the road edge, level sidewalk and verge beyond.
    for d in (0.0, 0.5, hm, -hm):
        assert t.height_m(100.0, d) == pytest.approx(6.0, abs=1e-12)
    fall = 0.02 * (edge - hm)
    for d in (edge, -edge, edge + 2.0, -(edge + 30.0)):
        assert t.height_m(100.0, d) == pytest.approx(6.0 - fall, abs=1e-12)
    assert t.height_m(100.0, -(hm + 2.0)) == pytest.approx(6.0 - 0.04, abs=1e-12)
    dz_ds, dz_dd = t.gradient(np.array([100.0, 100.0, 100.0]), np.array([0.0, 3.0, -3.0]))
    assert np.allclose(dz_ds, 0.06) and np.allclose(dz_dd, [0.0, -0.02, 0.02])


def test_a_vertical_curve_is_the_parabola_of_its_grades():
    # 5 % for 100 m, a 100 m crest down to -3 %, then -3 %.
    t = Terrain(
        "hand",
        np.array([0.0, 100.0, 200.0]),
        np.array([0.0, 5.0, 6.0]),
        np.array([0.05, 0.05, -0.03]),
        np.array([0.0, -0.0008, 0.0]),
        0.0,
        1.0,
        8.0,
        np.zeros(0),
        np.zeros(0),
        np.zeros(0),
    )
    assert t.height_m(150.0, 0.0) == pytest.approx(5.0 + 50 * 0.05 - 0.5 * 0.0008 * 50**2, abs=1e-12)
    assert t.grade(150.0) == pytest.approx(0.01, abs=1e-12)
    assert t.height_m(300.0, 0.0) == pytest.approx(3.0, abs=1e-12)
    for s in (100.0, 200.0):  # z and grade continuous at the piece ends
        assert t.height_m(s - 1e-7, 0.0) == pytest.approx(t.height_m(s + 1e-7, 0.0), abs=1e-8)
        assert t.grade(s - 1e-7) == pytest.approx(t.grade(s + 1e-7), abs=1e-8)


def test_hills_stay_within_their_grade_and_are_continuous():
    world = make_world(5, 800.0, terrain="hills:6")
    t = world.terrain
    s = np.linspace(-20.0, world.road.total_length_m + 50.0, 20001)
    g = t.grade(s)
    assert np.all(np.abs(g) <= 0.06 + 1e-12) and np.ptp(g) > 0.02
    assert np.any(t.profile_dgrade_1pm < 0) or np.any(t.profile_dgrade_1pm > 0)  # crests or sags
    for d in (-9.0, -4.0, 0.0, 3.0, 12.0):  # no steps anywhere, banking ramps included
        z = t.height_m(s, np.full_like(s, d))
        assert np.max(np.abs(np.diff(z))) < 0.1 * (s[1] - s[0]) + 1e-9
    # The gradient is the heights' derivative (away from the kinks).
    dz_ds, _ = t.gradient(s, np.full_like(s, -5.0))
    z = t.height_m(s, np.full_like(s, -5.0))
    assert np.median(np.abs(np.gradient(z, s) - dz_ds)) < 1e-4


@pytest.mark.parametrize("turn", [1.0, -1.0])
def test_curves_bank_towards_their_inside(turn):
    R = 200.0
    road = RoadGeometry.from_pieces([100.0, 150.0, 100.0], [0.0, turn / R, 0.0])
    t = _terrain("grade:0", road)
    inside, outside = turn * 5.0, -turn * 5.0
    assert t.height_m(175.0, inside) < t.height_m(175.0, 0.0) < t.height_m(175.0, outside)
    _, dz_dd = t.gradient(175.0, 3.0)
    assert -turn * dz_dd == pytest.approx(0.03 + 0.02 * (1 / R - 1 / 600) / (1 / 120 - 1 / 600), abs=1e-9)
    # The run-in is linear over 30 m centred on the curve's start; the crown holds before it.
    assert t.height_m(80.0, 5.0) == pytest.approx(-0.02 * 4.0, abs=1e-12)
    half_in = t.height_m(100.0, 5.0)
    assert half_in == pytest.approx(0.5 * (-0.02 * 4.0) + 0.5 * float(t.bank_slope[0]) * 5.0, abs=1e-12)
    z = t.height_m(np.linspace(70, 280, 4201), np.full(4201, 6.0))
    assert np.max(np.abs(np.diff(z))) < 1e-3


def test_flat_is_todays_world():
    flat, hills = make_world(7, 500.0), make_world(7, 500.0, terrain="hills")
    assert flat.terrain.is_flat and not hills.terrain.is_flat
    x = np.random.default_rng(0).uniform(-300, 300, (2, 50))
    assert np.all(flat.ground_z_m(x[0], x[1]) == 0.0)
    assert all(p.z0_m == 0.0 for p in flat.poles) and all(s.ground_z_m == 0.0 for s in flat.signs)
    assert all(b.z0_m == 0.0 for b in flat.buildings) and all(tr.z0_m == 0.0 for tr in flat.trees)
    # The terrain draws from its own stream: the same road and objects stand on the hills.
    assert np.array_equal(flat.road.s0_m, hills.road.s0_m) and flat.style == hills.style
    assert [(p.x_m, p.y_m, p.height_m) for p in flat.poles] == [
        (p.x_m, p.y_m, p.height_m) for p in hills.poles
    ]
    assert [(s.x_m, s.y_m, s.height_m) for s in flat.signs] == [
        (s.x_m, s.y_m, s.height_m) for s in hills.signs
    ]
    z = np.array([p.z0_m for p in hills.poles])
    assert np.allclose(
        z, hills.ground_z_m([p.x_m for p in hills.poles], [p.y_m for p in hills.poles]), atol=1e-9
    )


@pytest.mark.parametrize("spec", ["bumpy", "hills:0", "hills:9", "grade:12", "grade", "flat:2", "hills:x"])
def test_bad_terrain_specs_are_refused(spec):
    with pytest.raises(HdmapError, match="use flat, hills"):
        make_world(1, 100.0, terrain=spec)


# --------------------------------------------------------------------------------- the car


def _car(world, s, d, imu_height_m=0.93):
    T, rpy = pose_on_road(world, s, d, np.arange(len(s)) * 0.1, STILL, imu_height_m)
    return T, rpy


def test_the_car_stands_on_the_surface_and_follows_its_slopes():
    world = make_world(3, 600.0, terrain="hills:8")
    s = np.linspace(40.0, 560.0, 60)
    d = np.full_like(s, world.section.lane_center_m(world.ego_lane))
    T, rpy = _car(world, s, d)
    contact = T[:, :3, 3] - T[:, :3, 2] * 0.93  # the unit is 0.93 m along the car's up axis
    assert np.allclose(contact[:, 2], world.ground_z_m(contact[:, 0], contact[:, 1]), atol=1e-3)
    assert np.allclose(contact[:, 2], world.terrain.height_m(s, d), atol=1e-9)
    # The car's x and y axes lie in the surface: their rise is the ground's over them.
    for k in range(0, 60, 7):
        for axis in (0, 1):
            a = T[k, :3, axis] * 0.5
            p = contact[k] + a
            assert p[2] == pytest.approx(float(world.ground_z_m(p[0], p[1])), abs=2e-3)


def test_climbing_pitches_negative_and_the_crown_rolls():
    grade = make_world(2, 400.0, terrain="grade:6")
    lane = grade.section.lane_center_m(0)
    straight = np.flatnonzero(grade.road.curvature_1pm == 0)[0]
    s = grade.road.s0_m[straight] + np.array([10.0, 10.5])
    _, rpy = _car(grade, s, np.full(2, lane))
    assert rpy[0, 1] == pytest.approx(-np.arctan(0.06), abs=1e-6)  # front up: negative pitch
    # Ego lanes (d < 0) fall 2 % away from the median: the left side is up.
    assert rpy[0, 0] == pytest.approx(np.arctan(0.02 / np.hypot(1, 0.06)), abs=1e-6)
    # Going down: positive pitch.
    down = make_world(2, 400.0, terrain="grade:-5")
    _, rpy = _car(down, s, np.full(2, lane))
    assert rpy[0, 1] == pytest.approx(np.arctan(0.05), abs=1e-6)


@pytest.mark.parametrize("turn", [1.0, -1.0])
def test_a_banked_curve_rolls_the_car_towards_its_inside(turn):
    road = RoadGeometry.from_pieces([100.0, 200.0, 100.0], [0.0, turn / 300.0, 0.0])
    base = make_world(4, 100.0)
    world = dataclasses.replace(base, road=road, section=SECTION, terrain=_terrain("grade:0", road))
    _, rpy = _car(world, np.array([200.0, 200.5]), np.full(2, SECTION.lane_center_m(0)))
    # Left curve: inside left, low: roll negative (left side down); right curve: positive.
    assert np.sign(rpy[0, 0]) == -turn and 0.025 < abs(rpy[0, 0]) < 0.05
    assert abs(rpy[0, 1]) < 1e-9


# ----------------------------------------------------------------------------- the renderer


def test_ground_depth_is_the_rays_meeting_a_graded_plane():
    """Rendered depth at ground pixels = the closed-form ray-plane intersection for ``z = g x``."""
    g = 0.07
    plane = Terrain(
        "plane", np.zeros(1), np.zeros(1), np.array([g]), np.zeros(1), 0.0, 1.0, 8.0, *(np.zeros(0),) * 3
    )
    base = make_world(8, 400.0)
    world = dataclasses.replace(
        base,
        road=STRAIGHT,
        terrain=plane,
        poles=(),
        signs=(),
        buildings=(),
        trees=(),
        vehicles=(),
        median_gaps_m=np.zeros((0, 2)),
    )
    rig = rig_by_name("kitti", 0.25)
    T, _ = _car(world, np.array([100.0, 100.5]), np.full(2, world.section.lane_center_m(0)))
    frame = Renderer(rig).render(world, T[0], degrade=False)
    T_world_from_cam = T[0] @ invert_transform(rig.T_cam_from_imu)
    R, o = T_world_from_cam[:3, :3], T_world_from_cam[:3, 3]
    n = np.array([-g, 0.0, 1.0])
    v, u = np.nonzero(np.isfinite(frame.depth_m))
    assert u.size > 0.3 * rig.width * rig.height
    rays = np.column_stack(
        [(u - rig.K[0, 2]) / rig.K[0, 0], (v - rig.K[1, 2]) / rig.K[1, 1], np.ones(u.size)]
    )
    t = -(n @ o) / ((rays @ R.T) @ n)  # z-depth, the rays having z = 1 in the camera
    assert np.all(t > 0)
    assert np.allclose(frame.depth_m[v, u], t, rtol=2e-4, atol=1e-3)
    assert np.mean(frame.label[v, u] == ROAD) > 0.3


def test_a_crest_hides_the_road_beyond_it():
    """Past a sharp crest the road drops out of sight: the sky shows where a flat road would be."""
    t = Terrain(
        "crest",
        np.array([0.0, 100.0, 140.0]),
        np.array([0.0, 8.0, 9.6]),
        np.array([0.08, 0.08, -0.08]),
        np.array([0.0, -0.004, 0.0]),
        0.0,
        1.0,
        8.0,
        *(np.zeros(0),) * 3,
    )
    base = make_world(8, 400.0)
    bare = dict(poles=(), signs=(), buildings=(), trees=(), vehicles=())
    world = dataclasses.replace(base, road=STRAIGHT, terrain=t, **bare)
    rig = rig_by_name("kitti", 0.25)
    T, _ = _car(world, np.array([60.0, 60.5]), np.full(2, world.section.lane_center_m(0)))
    depth = Renderer(rig).render(world, T[0], degrade=False).depth_m
    col = depth[:, rig.width // 2]
    seen = col[np.isfinite(col)]
    # The ground's depths along the centre column: nothing between the crest (~80 m ahead) and
    # the far slope's re-emergence, and the crest itself is the horizon of the near road.
    assert seen.max() < 400.0 and np.isfinite(col[-1])
    assert not np.any((seen > 85.0) & (seen < 100.0))


# -------------------------------------------------------------------------- CLI, pose noise


def test_cli_rejects_a_bad_terrain_in_one_line(tmp_path, capsys):
    for bad in (["--terrain", "bumpy"], ["--terrain", "grade:20"], ["--pose-noise", "-1", "0"]):
        with pytest.raises(SystemExit) as exc:
            make_synthetic_main(["--out", str(tmp_path / "x"), *bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_pose_noise_has_its_std_and_leaves_the_frames_alone(tmp_path):
    pos_m, yaw_deg = 0.5, 2.0
    cfg = SynthConfig(seed=6, scale=0.2, train=0, val=0, logs=1, frames_per_log=4, terrain="hills")
    noisy_cfg = dataclasses.replace(cfg, pose_noise_pos_m=pos_m, pose_noise_yaw_deg=yaw_deg)
    clean = write_drive_log(cfg, 0, tmp_path / "clean")
    noisy = write_drive_log(noisy_cfg, 0, tmp_path / "noisy")
    for sub in ("image_02", "label_02"):
        for p in sorted((clean / sub / "data").glob("*.png")):
            assert p.read_bytes() == (noisy / sub / "data" / p.name).read_bytes()
    assert '"pose_noise_pos_m": 0.5' in (noisy / "synthetic.json").read_text()
    with pytest.raises(HdmapError, match="other settings"):
        write_drive_log(cfg, 0, tmp_path / "noisy")
    p0 = read_oxts(clean / "oxts" / "data" / "0000000000.txt")
    p1 = read_oxts(noisy / "oxts" / "data" / "0000000000.txt")
    assert p1.pos_accuracy == pos_m and p0.pos_accuracy == 0.02 and (p0.lat, p0.lon) != (p1.lat, p1.lon)

    # The statistics over 300 packets of the same drive (no rendering).
    world = make_world(6, 600.0, terrain="hills")
    drive = make_drive(world, 300, np.random.default_rng(1), 0.93)
    frame = LocalFrame(cfg.lat0, cfg.lon0, cfg.alt0)
    true = oxts_packets(frame, drive)
    noise = noisy_cfg.pose_noise()
    again = oxts_packets(frame, drive, noise, pose_noise_rng(6, 0))
    packets = oxts_packets(frame, drive, noise, pose_noise_rng(6, 0))
    assert packets == again  # reproducible
    xyz = np.array([frame.to_world(p.lat, p.lon, p.alt) for p in packets]) - drive.T_world_from_imu[:, :3, 3]
    assert np.allclose(xyz.std(axis=0), pos_m, rtol=0.2) and np.all(np.abs(xyz.mean(axis=0)) < 0.15)
    d_yaw = np.array([np.angle(np.exp(1j * (p.yaw - q.yaw))) for p, q in zip(packets, true, strict=True)])
    d_pitch = np.array([p.pitch - q.pitch for p, q in zip(packets, true, strict=True)])
    assert d_yaw.std() == pytest.approx(np.radians(yaw_deg), rel=0.2)
    assert d_pitch.std() == pytest.approx(np.radians(yaw_deg) / 10, rel=0.2)
    d_vel = np.array([[p.vn - q.vn, p.ve - q.ve, p.vu - q.vu] for p, q in zip(packets, true, strict=True)])
    assert np.allclose(d_vel.std(axis=0), 0.02, rtol=0.25)
