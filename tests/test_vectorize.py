"""Vectorization against geometry placed by hand and drawn with OpenCV (tests/test_vectorize_scene.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely
from shapely.geometry import LineString, Polygon
from test_vectorize_scene import (
    MEDIAN,
    POLE,
    SIGN,
    Scene,
    default_scene,
    kitti_like_camera,
    level,
    render_mask,
    trajectory,
)

from hdmap_seg.data.class_map import load_class_map
from hdmap_seg.data.classes import ROAD_CLASSES
from hdmap_seg.errors import HdmapError
from hdmap_seg.geo.frames import make_transform, rotation_from_rpy
from hdmap_seg.geo.ground import LevelPlane
from hdmap_seg.vectorize import MapBuilder, VectorizeConfig, load_vectorize_config
from hdmap_seg.vectorize.config import PoleConfig, SignConfig, for_mask_classes, layer_classes
from hdmap_seg.vectorize.frame import FrameGeometry
from hdmap_seg.vectorize.layer_builder import FrameStamp
from hdmap_seg.vectorize.poles import PoleBuilder, PoleView, pole_instances, pole_observations
from hdmap_seg.vectorize.signs import SignView, _off_path_m, _support_ground_z, sign_instances, support_bases

REPO = Path(__file__).resolve().parents[1]


def _run(camera, traj, scene, config=None, ground=None):
    builder = MapBuilder(camera, config)
    for i, T in enumerate(traj):
        builder.add_frame(i, render_mask(camera, T, scene, ground), T @ camera.T_vehicle_from_cam)
    return builder.finish()


def _xy(features):
    return np.array([[f.geometry.x, f.geometry.y] for f in features]).reshape(-1, 2)


@pytest.mark.parametrize("dist", [(), (-0.3, 0.12, 0.001, -0.0005, -0.02)])
def test_pole_placed_by_hand_seen_from_three_poses(dist):
    camera = kitti_like_camera(dist)
    pole = np.array([[18.0, -6.5, 0.12, 7.0]])
    poses = [
        make_transform(rotation_from_rpy(0.02, -0.03, 0.05), [0.0, -2.0, 0.93]),
        make_transform(rotation_from_rpy(-0.015, 0.02, -0.04), [3.0, -1.6, 0.95]),
        make_transform(rotation_from_rpy(0.0, 0.035, 0.1), [6.5, -2.3, 0.91]),
    ]
    # Three frames: below the default min_obs (5, set for a model's flickering masks).
    layers = _run(camera, np.array(poses), Scene(poles=pole), VectorizeConfig(pole=PoleConfig(min_obs=3)))
    (f,) = layers["poles"]
    # Three views within 6.5 m, 18 m off, barely fix the distance: the fit may not trust the rows
    # alone (a model's masks offset them alike), and says so in its sigma.
    assert np.hypot(f.geometry.x - 18.0, f.geometry.y + 6.5) < min(0.15, f.properties["sigma_m"])
    assert f.properties["n_obs"] == 3 and (f.properties["first_frame"], f.properties["last_frame"]) == (0, 2)
    # the ground under the car: 0.93 m below the OXTS unit (first frame), in world z
    assert f.geometry.z == pytest.approx(np.mean([0.0, 0.02, -0.02]), abs=0.03)
    assert 0 < f.properties["confidence"] <= 1


def test_known_ground_point_projects_and_back_under_pitch_and_roll():
    """A base pixel computed from a known world point comes back to that point (full 6-DoF pose)."""
    camera = kitti_like_camera()
    T_wv = make_transform(rotation_from_rpy(0.03, -0.04, 0.7), [100.0, 50.0, 12.93])  # ground at z = 12
    T_wc = T_wv @ camera.T_vehicle_from_cam
    base = np.array([108.0, 62.0, 12.0])
    uv, ok = camera.project((np.linalg.inv(T_wc) @ np.r_[base, 1.0])[:3])
    assert ok[0]
    geom = FrameGeometry(camera, T_wc, LevelPlane(camera.ground_z_m(T_wc)), 30.0)
    assert geom.ground_z_m == pytest.approx(12.0)
    xy, info, _, _ = pole_observations(np.array([[uv[0, 0], uv[0, 1], 0.0]]), geom, PoleConfig())
    np.testing.assert_allclose(xy[0], base[:2], atol=1e-6)
    # A plane fixed to the vehicle (ignoring pitch and roll) would put it metres off.
    level = make_transform(rotation_from_rpy(0.0, 0.0, 0.7), T_wv[:3, 3]) @ camera.T_vehicle_from_cam
    xy_level, _, _, _ = pole_observations(
        np.array([[uv[0, 0], uv[0, 1], 0.0]]),
        FrameGeometry(camera, level, LevelPlane(12.0), 30.0),
        PoleConfig(),
    )
    assert np.linalg.norm(xy_level[0] - base[:2]) > 1.0
    # The weakest direction's sigma is what one pixel of the base row moves the point, measured here
    # by finite differences (times the config's base-row noise, with its 5 cm floor).
    cfg = PoleConfig()
    xy_down, _, _, _ = pole_observations(np.array([[uv[0, 0], uv[0, 1] + 0.5, 0.0]]), geom, cfg)
    xy_up, _, _, _ = pole_observations(np.array([[uv[0, 0], uv[0, 1] - 0.5, 0.0]]), geom, cfg)
    sigma_radial = np.hypot(np.linalg.norm(xy_up[0] - xy_down[0]) * cfg.sigma_row_px, cfg.sigma_floor_m)
    assert 1 / np.sqrt(np.linalg.eigvalsh(info[0])[0]) == pytest.approx(sigma_radial, rel=0.1)


@pytest.mark.parametrize("bleed_px", [0.0, 4.0, 8.0])
def test_pole_fit_trusts_bearings_when_every_base_row_bleeds_low(bleed_px):
    """A model's pole masks may end a few px below the true base in every frame (the blur of a 1/4-scale
    decoder). Each such base looks nearer, hence more certain, so the information sum is pulled
    towards the camera; the final fit weighs every view at the fitted point and trusts the bearings."""
    camera = kitti_like_camera()
    base = np.array([30.0, 2.5, 0.0])  # the pole's axis at the ground, 4.5 m left of the lane
    radius_m = 0.1
    poles = PoleBuilder(PoleConfig())
    for i, T_wv in enumerate(trajectory(24)):
        T_wc = T_wv @ camera.T_vehicle_from_cam
        geom = FrameGeometry(camera, T_wc, LevelPlane(0.0), 30.0)
        # The axis's column; the base row is the lowest image point of the base circle, the width its span.
        ring = np.linspace(0, 2 * np.pi, 720, endpoint=False)
        circle = np.c_[base[:2] + radius_m * np.c_[np.cos(ring), np.sin(ring)], np.zeros(720), np.ones(720)]
        uv_circle, ok = camera.project((np.linalg.inv(T_wc) @ circle.T)[:3].T)
        uv, _ = camera.project((np.linalg.inv(T_wc) @ np.r_[base, 1.0])[:3])
        if not ok.all() or not 0 <= uv[0, 0] < camera.size[0]:
            continue
        width_px = np.ptp(uv_circle[:, 0])
        obs = pole_observations(
            np.array([[uv[0, 0], uv_circle[:, 1].max() + bleed_px, width_px]]), geom, poles.cfg
        )
        poles.fuse(FrameStamp(i), obs)
    (track,) = [*poles.active, *poles.finished]
    summed_err = np.linalg.norm(track.estimate - base[:2])
    (f,) = poles.finish()  # on the mean ground of its views
    fitted_err = np.linalg.norm([f.geometry.x - base[0], f.geometry.y - base[1]])
    assert fitted_err < 0.03
    if bleed_px > 0:  # 4 px at 1242 px wide: 2 px of a half-resolution model's masks
        assert summed_err > 0.15


def test_pole_seen_in_one_frame_is_rejected():
    camera = kitti_like_camera()
    traj = trajectory(2)
    traj[1, :3, :3] = traj[1, :3, :3] @ rotation_from_rpy(0, 0, np.pi)  # second frame looks back
    layers = _run(camera, traj, Scene(poles=np.array([[15.0, -6.0, 0.12, 7.0]])))
    assert layers["poles"] == []


def test_instances_split_touching_poles_and_skip_ungrounded_ones():
    mask = np.zeros((200, 300), np.uint8)
    cv2.rectangle(mask, (50, 20), (55, 150), 1, -1)  # pole A, base at row 150
    cv2.rectangle(mask, (56, 30), (61, 120), 1, -1)  # pole B touching A, farther (base row 120)
    cv2.rectangle(mask, (120, 10), (124, 90), 1, -1)  # pole on a sign (sign below)
    cv2.rectangle(mask, (200, 40), (204, 199), 1, -1)  # cut by the bottom of the image
    cv2.rectangle(mask, (240, 40), (244, 100), 1, -1)  # a pole with a thin arm to the right
    cv2.line(mask, (245, 45), (290, 45), 1, 1)
    signs = np.zeros_like(mask, bool)
    signs[91:100, 115:130] = True
    inst = pole_instances(mask > 0, PoleConfig(), blocked=signs)
    # A and B apart at their base jump, the arm cut off; u at the column centre, v at the lower pixel edge.
    # The one cut by the image's bottom is not grounded: its lowest rows' centroid gives its bearing.
    assert sorted(inst.tolist()) == [
        [52.5, 150.5, 6.0, 1.0],
        [58.5, 120.5, 6.0, 1.0],
        [202.0, 191.5, 5.0, 0.0],
        [242.0, 100.5, 5.0, 1.0],
    ]


def test_instances_follow_a_leaning_pole_down_to_its_base():
    """A rolled camera leans poles in the image; the lowest rows' centroid lies half their height up the
    pole, and a leaning pole's edge columns (covered only near its base) are too weak to count."""
    lean = 0.06  # columns per row, a 3.4 deg roll
    height, width = 300, 200
    mask = np.zeros((height, width), np.uint8)
    base_u, base_v, half_w = 100.0, 280.0, 6.0  # the axis meets the base's lower edge at column 100
    poly = [
        (base_u - half_w, base_v),
        (base_u + half_w, base_v),
        (base_u + half_w - lean * 250, base_v - 250),
        (base_u - half_w - lean * 250, base_v - 250),
    ]
    # Pixel centres on integers: a pixel is the pole's when its centre is (as a renderer decides).
    vv, uu = np.mgrid[0:height, 0:width]
    inside = shapely.contains_xy(Polygon(poly), uu, vv)
    mask[inside] = 1
    # The vanishing point of the verticals: the axis's line, far up.
    up = np.array([base_u - lean * 1e5, base_v - 1e5, 1.0])
    ((u, v, w, grounded),) = pole_instances(mask > 0, PoleConfig(), up_vanishing_px=up)
    assert grounded == 1.0 and v == pytest.approx(base_v, abs=0.5)
    assert u == pytest.approx(base_u - lean * (base_v - v), abs=0.25)  # on the axis, at the base row
    assert w == pytest.approx(2 * half_w, abs=0.5)  # the rows' width, not the strong columns'
    ((u_upright, _, _, _),) = pole_instances(mask > 0, PoleConfig())
    assert abs(u_upright - base_u) > 0.5  # taken as upright, the base lands half the band's lean off


def test_pole_far_to_the_side_grounded_at_its_base_circle():
    """The lowest point of a round pole's image is its base circle's point nearest the image plane, and
    its width is 2 r f / (range cos^2 b) at b off the optical axis: a pole 25-32 deg aside, seen once,
    lands within 1.5 cm (the front edge along the ray, and the width as 2 r f / range, put it 2.3-2.5 cm
    farther)."""
    camera = kitti_like_camera()
    T_wv = trajectory(1)[0]
    T_wc = T_wv @ camera.T_vehicle_from_cam
    geom = FrameGeometry(camera, T_wc, LevelPlane(0.0), 30.0)
    for x, y in [(8.0, -6.5), (7.0, -5.0), (12.0, -7.5)]:
        mask = render_mask(camera, T_wv, Scene(poles=np.array([[x, y, 0.15, 6.0]]))) == POLE
        inst = pole_instances(mask, PoleConfig(), up_vanishing_px=geom.up_vanishing_px)
        obs = pole_observations(inst, geom, PoleConfig())
        assert np.degrees(abs(np.arctan2(y - geom.center[1], x - geom.center[0]))) > 24
        assert np.hypot(*(obs.xy[0] - [x, y])) < 0.015


def test_pole_on_a_kerb_found_by_its_base_height():
    """Poles on a sidewalk 0.15 m above the road the car drives: the surface under the car says nothing
    of the kerb, and the final fit solves for the base's height above it (the rows of near and far
    views disagree on it); held to the surface, the poles land 1-3 cm off."""
    camera = kitti_like_camera()

    def kerb(x, y):
        return np.where(np.asarray(y) < -5.0, 0.15, 0.0)

    xs = np.arange(15.0, 60.0, 9.0)
    scene = Scene(
        poles=np.stack([xs, np.full_like(xs, -6.0), np.full_like(xs, 0.12), np.full_like(xs, 7.0)], 1)
    )
    traj = trajectory(60)
    masks = [render_mask(camera, T, scene, kerb) for T in traj]

    def errors(cfg: PoleConfig) -> np.ndarray:
        builder = MapBuilder(camera, VectorizeConfig(pole=cfg))
        for i, T in enumerate(traj):
            builder.add_frame(i, masks[i], T @ camera.T_vehicle_from_cam)
        xy = _xy(builder.finish()["poles"])
        assert len(xy) == len(xs)
        return np.array([np.min(np.hypot(*(xy - p[:2]).T)) for p in scene.poles])

    fitted = errors(PoleConfig())
    assert fitted.mean() < 0.012 and fitted.max() < 0.02
    assert errors(PoleConfig(base_height_sigma_m=1e-4)).mean() > max(0.015, 2 * fitted.mean())


def test_pole_passed_close_by_keeps_its_bearing_after_its_base_leaves_the_image():
    """A pole 3 m beside the lane: once its base is below the image, its bearing (turning fastest then)
    still joins its track as a view of the final fit, though not as a sighting of its base."""
    camera = kitti_like_camera()
    pole = np.array([[25.0, -5.0, 0.12, 7.0]])
    builder = MapBuilder(camera)
    for i, T in enumerate(trajectory(30)):
        builder.add_frame(i, render_mask(camera, T, Scene(poles=pole)), T @ camera.T_vehicle_from_cam)
    (track,) = [*builder.builders["poles"].active, *builder.builders["poles"].finished]
    views = PoleView(*np.array(track.kept).T)
    bearing_only = ~np.isfinite(views.drop_m)
    assert bearing_only.sum() >= 2 and track.n_obs == (~bearing_only).sum()
    assert views.front_range_m[bearing_only].max() < views.front_range_m[~bearing_only].min()
    (f,) = builder.finish()["poles"]
    assert np.hypot(f.geometry.x - 25.0, f.geometry.y + 5.0) < 0.01
    assert f.properties["n_obs"] == track.n_obs


def test_sign_instances_split_overlapping_plates_and_join_cut_ones():
    mask = np.zeros((200, 400), np.uint8)
    # Two discs overlapping in the image (a plate in front of another): two instances.
    cv2.circle(mask, (60, 60), 20, 1, -1)
    cv2.circle(mask, (88, 74), 20, 1, -1)
    # A rectangle cut in two by a pole in front, a small far plate in the gap: one plate and the small one.
    cv2.rectangle(mask, (200, 40), (214, 70), 1, -1)
    cv2.rectangle(mask, (226, 40), (240, 70), 1, -1)
    cv2.rectangle(mask, (218, 60), (220, 66), 1, -1)
    # One disc with a notch (partly hidden): one instance; a plate cut by the image border: none.
    cv2.circle(mask, (320, 120), 22, 1, -1)
    cv2.rectangle(mask, (318, 98), (322, 110), 0, -1)
    cv2.rectangle(mask, (380, 10), (399, 30), 1, -1)
    inst = sign_instances(mask > 0, SignConfig())
    assert len(inst) == 5

    def nearest(u, v):
        return inst[np.argmin(np.hypot(inst[:, 0] - u, inst[:, 1] - v))]

    # The hidden part moves the back plate's centroid a few pixels away from the front one, never onto it.
    assert np.hypot(*(nearest(60, 60)[:2] - [60, 60])) < 5
    assert np.hypot(*(nearest(88, 74)[:2] - [88, 74])) < 5
    assert np.allclose(nearest(220, 55), [220, 55, 41, 31], atol=0.01)
    assert np.allclose(nearest(219, 63), [219, 63, 3, 7], atol=0.01)
    assert np.hypot(*(nearest(320, 120)[:2] - [320, 120])) < 2


def test_a_plate_cut_off_its_centre_by_a_wide_pole_in_front_is_one_plate():
    """Near, a lamp pole in front cuts a triangle into a short slice and the rest, wider apart than a post
    would: one plate where pole pixels fill the gap, as far as the mask of poles says."""
    signs, poles = np.zeros((200, 300), np.uint8), np.zeros((200, 300), bool)
    cv2.fillPoly(signs, [np.array([[100, 150], [200, 150], [150, 60]], np.int32)], 1)
    poles[:, 118:140] = True  # the pole in front, 22 px wide, hides the plate there
    signs[poles] = 0
    whole = sign_instances(signs > 0, SignConfig(), poles)
    assert len(whole) == 1 and whole[0, 2] == pytest.approx(101, abs=1)
    assert len(sign_instances(signs > 0, SignConfig())) == 2  # no pole mask: the gap is too wide for a post
    background = np.zeros_like(poles)  # the same gap with nothing in it: two plates side by side
    assert len(sign_instances(signs > 0, SignConfig(), background)) == 2
    # Two plates side by side with a pole between them (a cluster of signs): joined they would be twice as
    # wide as tall, which no plate is; they stay two.
    signs, poles = np.zeros((200, 300), np.uint8), np.zeros((200, 300), bool)
    cv2.circle(signs, (60, 80), 20, 1, -1)
    cv2.circle(signs, (131, 84), 20, 1, -1)
    poles[:, 81:111] = True  # wider than a post's gap (0.6 of the plates' height): only a pole joins it
    signs[poles] = 0
    assert len(sign_instances(signs > 0, SignConfig(), poles)) == 2


def test_support_bases_follow_the_pole_down_from_under_the_plate():
    mask = np.zeros((120, 200), bool)
    plates = np.array([[30.0, 20.0, 10.0, 10.0], [100.0, 20.0, 10.0, 10.0], [160.0, 20.0, 10.0, 10.0]])
    mask[25:61, 29:32] = True  # under plate 0, with a 3-row gap bridged, down to row 80
    mask[61:64, 29:32] = False
    mask[64:81, 29:32] = True
    mask[40:119, 99:102] = True  # starts far below plate 1: another pole, not its support
    mask[25:120, 159:162] = True  # plate 2's support runs out of the image: no base in view
    bases = support_bases(mask, plates)
    assert bases[0] == pytest.approx([30.0, 80.5])
    assert np.isnan(bases[1:]).all()
    assert np.isnan(support_bases(None, plates)).all()


def test_a_sign_on_a_pole_is_as_high_as_its_pole_says_across_a_lower_carriageway():
    """The far side falls 0.2 m below the car's level road, which its roll cannot see: the sign on a pole
    is measured above that pole's base; the one on a post (no pole pixels) above the surface extrapolated
    from the drive."""

    def ground(x, y):
        return -0.04 * np.clip(np.asarray(y, float) - 4.0, 0.0, 5.0)  # 0 at the car, -0.2 m from y = 9

    camera = kitti_like_camera()
    scene = Scene(
        poles=np.array([[30.0, 9.15, 0.1, 6.0]]),
        signs=np.array([[30.0, 9.0, 2.8, 0.8, np.pi], [60.0, 9.0, 2.8, 0.8, np.pi]]),
    )
    layers = _run(camera, trajectory(90, ground=ground), scene, ground=ground)
    signs = sorted(layers["signs"], key=lambda f: f.geometry.x)
    assert [f.geometry.x for f in signs] == pytest.approx([30.0, 60.0], abs=0.2)
    assert [f.properties["height_m"] for f in signs] == pytest.approx([2.8, 2.6], abs=0.06)


def test_a_pole_down_the_sidewalk_in_line_with_a_sign_is_not_its_support():
    """Seen from far down the road a pole 6 m behind a sign stands under its plate in every view, and its
    base's heights at the sign agree; triangulated, its base is 6 m away, so it is no support."""
    sign = np.array([0.0, 0.0, 2.5])
    cameras = np.stack([np.linspace(-60.0, -40.0, 8), np.full(8, -6.0), np.full(8, 1.7)], axis=1)

    def views(base: np.ndarray) -> np.ndarray:
        to_sign = (sign - cameras) / np.linalg.norm(sign - cameras, axis=1, keepdims=True)
        to_base = (base - cameras) / np.linalg.norm(base - cameras, axis=1, keepdims=True)
        return np.array(
            [
                SignView(c[0], c[1], 0.02, 0.02, c[2], *r, 50.0, *b)
                for c, r, b in zip(cameras, to_sign, to_base, strict=True)
            ]
        )

    assert _support_ground_z(sign, views(np.array([0.1, 0.1, -0.3])), 2.0) == pytest.approx(-0.3, abs=0.02)
    assert _support_ground_z(sign, views(np.array([6.0, 0.0, -0.3])), 2.0) is None


def test_off_path_is_the_distance_from_the_line_the_views_were_taken_along():
    heading = np.radians(30.0)
    along, left = np.array([np.cos(heading), np.sin(heading)]), np.array([-np.sin(heading), np.cos(heading)])
    cameras = np.array([3.0, -1.0]) + np.linspace(0.0, 25.0, 6)[:, None] * along
    kept = np.array(
        [SignView(c[0], c[1], 0.02, 0.02, 1.6, 1.0, 0.0, 0.0, 30.0, *[np.nan] * 3) for c in cameras]
    )
    sign = np.r_[np.array([3.0, -1.0]) + 40.0 * along + 11.5 * left, 2.5]
    assert _off_path_m(sign, kept) == pytest.approx(11.5)
    assert _off_path_m(sign, kept[:1]) == np.inf


def test_scene_poles_signs_medians_land_on_the_truth():
    camera = kitti_like_camera()
    scene = default_scene()
    # The first pole (x = 8 m) is seen in the drive's first 2 frames only, and cut by the image's side
    # in one of them (its axis unseen): one view is not a pole. min_obs 2 shows it is left out for that.
    layers = _run(camera, trajectory(100), scene, VectorizeConfig(pole=PoleConfig(min_obs=2)))
    poles = _xy(layers["poles"])
    d = np.linalg.norm(poles[:, None] - scene.poles[None, 1:, :2], axis=2)
    assert len(poles) == len(scene.poles) - 1
    assert d.min(axis=1).max() < 0.1 and len(set(d.argmin(axis=1))) == len(poles)

    signs = layers["signs"]
    assert len(signs) == len(scene.signs)
    for f, truth in zip(sorted(signs, key=lambda f: f.geometry.x), scene.signs, strict=True):
        assert np.linalg.norm(np.array(f.geometry.coords[0]) - truth[:3]) < 0.1
        assert f.properties["height_m"] == pytest.approx(truth[2], abs=0.1)
        assert abs((f.properties["facing_deg"] - 270.0 + 180) % 360 - 180) < 10  # truth faces west
        assert f.properties["width_m"] == pytest.approx(truth[3], rel=0.2)
        assert f.properties["n_obs"] >= 5

    footprints = [f.geometry for f in layers["medians"] if f.properties["kind"] == "footprint"]
    lines = [f.geometry for f in layers["medians"] if f.properties["kind"] == "centerline"]
    assert len(footprints) == 2 and len(lines) == 2
    seen = shapely.union_all([f.geometry for f in layers["coverage"]])
    truth = shapely.union_all([Polygon(m) for m in scene.medians]).intersection(seen)
    pred = shapely.union_all(footprints)
    assert pred.intersection(truth).area / pred.union(truth).area > 0.9
    for line in lines:
        x0, x1 = sorted(line.xy[0])[0], sorted(line.xy[0])[-1]
        truth_line = LineString([(x0, 2.2), (x1, 2.2)])
        assert line.hausdorff_distance(truth_line) < 0.3 and line.length > 30


def test_signs_placed_less_surely_than_max_sigma_are_left_out():
    """A drive that stops 35 m short of the last sign sees it only far ahead: with a low parallax
    floor it is triangulated metres off, and says so in its sigma_m, which the default
    ``max_sigma_m`` rejects; ``max_sigma_m`` keeps exactly the signs at or below it."""
    camera = kitti_like_camera()
    scene = default_scene()

    def signs(max_sigma_m):
        config = VectorizeConfig(sign=SignConfig(min_obs=3, min_parallax_deg=0.5, max_sigma_m=max_sigma_m))
        return sorted(_run(camera, trajectory(40), scene, config)["signs"], key=lambda f: f.geometry.x)

    every = signs(np.inf)
    assert len(every) == 3
    miss_m = [
        np.hypot(f.geometry.x - t[0], f.geometry.y - t[1]) for f, t in zip(every, scene.signs, strict=True)
    ]
    sigmas = [f.properties["sigma_m"] for f in every]
    assert max(miss_m[:2]) < 0.1 and miss_m[2] > 2.0
    assert max(sigmas[:2]) < SignConfig().max_sigma_m < sigmas[2]
    assert [f.geometry.x for f in signs(SignConfig().max_sigma_m)] == [f.geometry.x for f in every[:2]]
    limit = 0.5 * (sigmas[0] + sigmas[1])
    assert [f.properties["sigma_m"] for f in signs(limit)] == [s for s in sigmas if s <= limit]


def test_ground_height_and_median_surface_height_are_used():
    """The same scene on ground 7 m up gives the same map (ground from the pose, not z = 0)."""
    camera = kitti_like_camera()
    scene = Scene(poles=np.array([[14.0, -6.0, 0.12, 7.0], [25.0, 7.0, 0.1, 6.0]]))
    layers = _run(camera, trajectory(20, ground=level(7.0)), scene, ground=level(7.0))
    np.testing.assert_allclose(
        np.sort(_xy(layers["poles"]), axis=0), np.sort(scene.poles[:, :2], axis=0), atol=0.15
    )
    assert all(abs(f.geometry.z - 7.0) < 0.05 for f in layers["poles"])


def test_camvid_class_map_feeds_its_ids_into_the_same_layers():
    """Masks in CamVid's own ids (a model trained on its 11 classes) give the layers of the project's masks."""
    camera = kitti_like_camera()
    scene = default_scene()
    class_map = load_class_map(REPO / "conf" / "class_map" / "camvid_to_roads.yaml")
    classes = layer_classes(class_map.source, class_map)
    assert classes == {"pole": [2], "sign": [6]}  # CamVid's Pole and SignSymbol; it has no median class
    assert layer_classes(ROAD_CLASSES.names) == {"pole": [4], "sign": [5], "median": [3], "lane_marking": [2]}
    with pytest.raises(HdmapError, match="need its class map"):
        layer_classes(class_map.source)
    config = for_mask_classes(VectorizeConfig(), class_map.source, class_map)
    assert config.classes == classes and config.num_classes == 11  # values of no CamVid class are errors
    with pytest.raises(HdmapError, match="num_classes is 6, but the masks have 11 classes"):
        for_mask_classes(VectorizeConfig(num_classes=6), class_map.source, class_map)
    native = MapBuilder(camera, config)
    ours = MapBuilder(camera, VectorizeConfig(classes={"pole": [POLE], "sign": [SIGN]}))
    to_camvid = np.arange(256, dtype=np.uint8)
    to_camvid[POLE], to_camvid[SIGN], to_camvid[MEDIAN] = 2, 6, 0
    for i, T in enumerate(trajectory(40)):
        mask = render_mask(camera, T, scene)
        native.add_frame(i, to_camvid[mask], T @ camera.T_vehicle_from_cam)
        ours.add_frame(i, mask, T @ camera.T_vehicle_from_cam)
    a, b = native.finish(), ours.finish()
    assert "medians" not in a and len(a["poles"]) >= 3 and len(a["signs"]) >= 1
    for layer in ("poles", "signs"):
        assert np.allclose(_xy(a[layer]), _xy(b[layer]))


def test_builder_rejects_bad_input():
    camera = kitti_like_camera()
    builder = MapBuilder(camera)
    T = trajectory(1)[0] @ camera.T_vehicle_from_cam
    with pytest.raises(HdmapError, match=r"masks/7.png: mask is 620x188.*1242x375"):
        builder.add_frame(7, np.zeros((188, 620), np.uint8), T, source="masks/7.png")
    builder.add_frame(3, np.zeros((375, 1242), np.uint8), T)
    with pytest.raises(HdmapError, match="increasing order"):
        builder.add_frame(3, np.zeros((375, 1242), np.uint8), T)
    with pytest.raises(HdmapError, match="NaN or inf"):
        builder.add_frame(4, np.zeros((375, 1242), np.uint8), np.full((4, 4), np.nan))
    with pytest.raises(HdmapError, match=r"no layer builder for \['road'\]"):
        VectorizeConfig.from_dict({"classes": {"road": [1]}})
    with pytest.raises(HdmapError, match="min_obz"):
        load_vectorize_config("road", ["pole.min_obz=3"])


def test_a_vectorize_config_of_broken_yaml_is_one_line(tmp_path):
    broken = tmp_path / "mine.yaml"
    broken.write_text("pole:\n  min_obs: [3, 4\nsign: {}\n")
    with pytest.raises(HdmapError) as err:
        load_vectorize_config(broken)
    assert str(err.value) == f"{broken}:3: not valid YAML (expected ',' or ']', but got ':')"


def test_state_is_bounded_over_a_long_drive():
    """Active fusion state stays that of the view: tracks and tiles retire as the car moves on."""
    camera = kitti_like_camera(width=414, height=125)
    camera = type(camera)(
        camera.K / np.array([[3], [3], [1]]), 414, 125, camera.dist, camera.T_vehicle_from_cam, 0.93
    )
    base = default_scene()
    period = 100.0
    scene = Scene(
        np.concatenate([base.poles + [k * period, 0, 0, 0] for k in range(4)]),
        np.concatenate([base.signs + [k * period, 0, 0, 0, 0] for k in range(4)]),
        [m + [k * period, 0] for k in range(4) for m in base.medians],
    )
    builder = MapBuilder(camera)
    active = []
    for i, T in enumerate(trajectory(250, step_m=1.5)):
        builder.add_frame(i, render_mask(camera, T, scene), T @ camera.T_vehicle_from_cam)
        active.append(
            (
                len(builder.builders["poles"].active),
                len(builder.builders["signs"].active),
                builder.ground.n_tiles,
            )
        )
    active = np.array(active)
    assert active[:, 0].max() <= 12 and active[:, 1].max() <= 6 and active[:, 2].max() <= 12
    # the last 60 frames hold no more state than the first 60 (same scenery, 280 m further)
    assert np.all(active[190:].max(axis=0) <= active[:60].max(axis=0) + 1)
    layers = builder.finish()
    assert len(layers["poles"]) >= 3 * len(base.poles)


def test_centerline_of_a_curved_strip_follows_its_arc():
    from hdmap_seg.vectorize.medians import centerline

    radius, half_width = 40.0, 0.8
    a = np.linspace(0.0, 1.2, 200)
    outer = np.c_[(radius + half_width) * np.cos(a), (radius + half_width) * np.sin(a)]
    inner = np.c_[(radius - half_width) * np.cos(a), (radius - half_width) * np.sin(a)][::-1]
    strip = Polygon(np.vstack([outer, inner]))
    line = centerline(strip, simplify_m=0.05)
    pts = np.asarray(line.coords)
    assert np.abs(np.hypot(pts[:, 0], pts[:, 1]) - radius).max() < 0.1
    assert line.length == pytest.approx(radius * 1.2, rel=0.02)  # end to end, spurs cut


def test_median_votes_reject_a_footprint_few_frames_saw():
    from shapely.geometry import box

    from hdmap_seg.vectorize.config import MedianConfig
    from hdmap_seg.vectorize.medians import GroundVotes

    votes = GroundVotes(MedianConfig())
    seen = box(-30.02, -29.96, 30.01, 30.03)
    truth = box(-20.03, -1.07, 20.04, 0.98)  # edges off the 0.1 m grid, as projected footprints are
    for i in range(10):
        wrong = box(10, 10, 14, 14) if i < 3 else None  # a false footprint in 3 of 10 frames
        votes.see(i, seen)
        votes.vote(shapely.union_all([truth] + ([wrong] if wrong else [])))
    votes.close()
    medians, coverage = votes.medians(), votes.coverage()
    (footprint,) = [f.geometry for f in medians if f.properties["kind"] == "footprint"]
    # within a cell (0.1 m) of every edge: 120 m of boundary x 0.1 m
    assert footprint.symmetric_difference(truth).area < 0.1 * truth.length
    assert coverage[0].geometry.symmetric_difference(seen).area < 0.2 * seen.length  # coverage: within 0.2 m


def test_ragged_masks_with_pinched_contours_are_repaired():
    """Predicted masks are ragged: a contour may touch itself at one pixel (an invalid ring)."""
    camera = kitti_like_camera()
    builder = MapBuilder(camera)
    mask = np.zeros((375, 1242), np.uint8)
    mask[250:290, 500:540] = MEDIAN
    mask[290:330, 540:580] = MEDIAN  # touches the first square at one corner pixel: one pinched contour
    mask[300:320, 540:560] = 0  # ... with a hole against the pinch
    mask[300:340, 700:760] = MEDIAN  # a second part, so that the parts are unioned
    rng = np.random.default_rng(3)
    for i, T in enumerate(trajectory(3)):
        ragged = mask.copy()
        ragged[(rng.random(mask.shape) < 0.3) & (mask == MEDIAN)] = 0  # holes, many touching
        builder.add_frame(i, ragged, T @ camera.T_vehicle_from_cam)
    layers = builder.finish()
    assert layers["medians"] and all(f.geometry.is_valid for f in layers["medians"])
