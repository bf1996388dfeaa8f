"""The lane_markings layer on a drawn scene: one solid and one dashed line of known geometry."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
import shapely
from shapely.geometry import LineString, Polygon
from test_vectorize_scene import ORIGIN, Scene, kitti_like_camera, render_mask, trajectory

from hdmap_seg.export import write_layers
from hdmap_seg.geo.frames import make_transform, rotation_from_rpy
from hdmap_seg.geo.ground import LevelPlane
from hdmap_seg.vectorize import MapBuilder, VectorizeConfig
from hdmap_seg.vectorize.config import LaneMarkingConfig
from hdmap_seg.vectorize.frame import FrameGeometry
from hdmap_seg.vectorize.lanes import LaneVotes

SOLID_Y_M, SOLID_WIDTH_M = -4.0, 0.15
DASHED_Y_M, DASHED_WIDTH_M = 0.0, 0.12
DASH_M, GAP_M = 3.0, 6.0


def _strip(x0: float, x1: float, y: float, width: float) -> np.ndarray:
    return np.array([[x0, y - width / 2], [x1, y - width / 2], [x1, y + width / 2], [x0, y + width / 2]])


def _scene() -> Scene:
    dashes = [
        _strip(x, x + DASH_M, DASHED_Y_M, DASHED_WIDTH_M) for x in np.arange(2.0, 150.0, DASH_M + GAP_M)
    ]
    return Scene(markings=[_strip(-10.0, 150.0, SOLID_Y_M, SOLID_WIDTH_M), *dashes])


@pytest.fixture(scope="module")
def layers():
    camera = kitti_like_camera()
    builder = MapBuilder(camera, VectorizeConfig(classes={"lane_marking": [2]}))
    scene = _scene()
    for i, T in enumerate(trajectory(60)):
        builder.add_frame(i, render_mask(camera, T, scene), T @ camera.T_vehicle_from_cam)
    return builder.finish()


def test_solid_and_dashed_lines_are_where_drawn_with_their_pattern(layers):
    by_style = {f.properties["style"]: f for f in layers["lane_markings"]}
    assert len(layers["lane_markings"]) == 2 and set(by_style) == {"solid", "dashed"}

    solid = by_style["solid"]
    x = np.asarray(solid.geometry.coords)[:, 0]
    # The car drives x = 0..59 m and takes paint up to lane_marking.max_range_m (20 m) from the camera
    # (1.08 m ahead of x); the nearest ground in view is ~5 m ahead.
    assert x.min() < 10 and x.max() > 75
    truth = LineString([(x.min(), SOLID_Y_M), (x.max(), SOLID_Y_M)])
    assert solid.geometry.hausdorff_distance(truth) < 0.1
    assert solid.properties["width_m"] == pytest.approx(SOLID_WIDTH_M, abs=0.04)
    assert "dash_m" not in solid.properties

    dashed = by_style["dashed"]
    x = np.asarray(dashed.geometry.coords)[:, 0]
    assert (
        dashed.geometry.hausdorff_distance(LineString([(x.min(), DASHED_Y_M), (x.max(), DASHED_Y_M)])) < 0.1
    )
    # Dashes run over x = 2 + 9k .. 5 + 9k: the first seen whole starts at 11 m, the last within 80 m ends at 77 m.
    assert x.min() == pytest.approx(11.0, abs=0.5) and x.max() == pytest.approx(77.0, abs=1.0)
    assert dashed.properties["dash_m"] == pytest.approx(DASH_M, abs=0.3)
    assert dashed.properties["gap_m"] == pytest.approx(GAP_M, abs=0.3)
    assert dashed.properties["width_m"] == pytest.approx(DASHED_WIDTH_M, abs=0.04)
    assert dashed.properties["n_dashes"] == 8
    for f in (solid, dashed):
        assert 0.5 < f.properties["confidence"] <= 1.0


def test_geopackage_has_the_lane_markings_layer(layers, tmp_path):
    write_layers(layers, tmp_path, ORIGIN)
    assert dict(pyogrio.list_layers(tmp_path / "map.gpkg"))["lane_markings"] == "LineString"
    meta, _, _, fields = pyogrio.raw.read(tmp_path / "map.gpkg", layer="lane_markings")
    assert sorted(fields[meta["fields"].tolist().index("style")]) == ["dashed", "solid"]


def test_a_config_without_lane_marking_builds_no_such_layer():
    camera = kitti_like_camera()
    builder = MapBuilder(camera, VectorizeConfig(classes={"median": [3]}))
    T = trajectory(1)[0]
    builder.add_frame(0, render_mask(camera, T, _scene()), T @ camera.T_vehicle_from_cam)
    assert "lane_markings" not in builder.finish()


def test_a_painted_ring_with_a_hole_is_voted_where_it_lies_on_the_ground():
    """Ground points projected into the image and back land where they were (pitch, roll, height),
    and the rings vote even-odd: the hole's cells get no vote, nor cells the frame did not see."""
    camera = kitti_like_camera(dist=(-0.37, 0.2, 0.0, 0.0))
    T_wv = make_transform(rotation_from_rpy(0.02, -0.03, 0.4), [50.0, 20.0, 7.93])  # ground at z = 7
    T_wc = T_wv @ camera.T_vehicle_from_cam
    geom = FrameGeometry(camera, T_wc, LevelPlane(7.0), 30.0)
    ahead = T_wv[:2, :2] @ np.array([1.0, 0.0])
    centre = T_wv[:2, 3] + 8.0 * ahead
    outer = centre + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]], float)
    inner = centre + 0.4 * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]], float)
    rings_px = []
    for ring in (outer, inner):
        p_world = np.c_[ring, np.full(len(ring), 7.0), np.ones(len(ring))]
        uv, ok = camera.project((np.linalg.inv(T_wc) @ p_world.T).T[:, :3])
        assert ok.all()
        rings_px.append(uv)
    on_ground = geom.image_rings_to_ground(rings_px)
    np.testing.assert_allclose(on_ground[0], outer, atol=1e-6)
    np.testing.assert_allclose(on_ground[1], inner, atol=1e-6)

    cfg = LaneMarkingConfig()
    votes = LaneVotes(cfg)
    # The frame saw only the half of the square nearer the car.
    seen = Polygon(centre + [[-5.0, -5.0], [5.0, -5.0], [5.0, 5.0], [-5.0, 5.0]]).intersection(
        shapely.Point(T_wv[:2, 3]).buffer(8.0)
    )
    votes.see(0, seen)
    votes.vote_rings(on_ground)
    cell = cfg.cell_m
    voted = sum(float(t.votes.sum()) for t in votes.tiles.values()) * cell**2
    # The grid paints every cell an edge touches: half a cell beyond each edge.
    expected = Polygon(outer, [inner]).intersection(seen).buffer(0.5 * cell, join_style="mitre").area
    assert voted == pytest.approx(expected, rel=0.03)
    # No vote inside the hole or beyond what was seen: every voted cell's centre lies in the ring's
    # region grown by one cell.
    region = Polygon(outer, [inner]).intersection(seen).buffer(cell)
    for (tc, tr), tile in votes.tiles.items():
        rows, cols = np.nonzero(tile.votes)
        x = (tc * cfg.tile_cells + cols + 0.5) * cell
        y = (tr * cfg.tile_cells + rows + 0.5) * cell
        assert shapely.contains_xy(region, x, y).all()


def test_a_ring_whose_rays_all_miss_the_ground_votes_nothing():
    """Found by the fuzzer: a marking seen only above the horizon projects to an empty ring."""
    votes = LaneVotes(LaneMarkingConfig())
    votes.see(0, Polygon([(0, 0), (5, 0), (5, 5), (0, 5)]))
    votes.vote_rings([np.zeros((0, 2))])
    assert sum(int(t.votes.sum()) for t in votes.tiles.values()) == 0
