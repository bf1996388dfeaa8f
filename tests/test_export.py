"""GeoJSON (RFC 7946) and GeoPackage output of map layers."""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import shapely
from shapely.geometry import LineString, Point, Polygon, shape

from hdmap_seg.errors import HdmapError
from hdmap_seg.export import read_geojson, write_geojson, write_layers
from hdmap_seg.geo.frames import LocalFrame
from hdmap_seg.maplayers import Feature

ORIGIN = LocalFrame(49.0, 8.4, 110.0)


def _layers():
    # A clockwise ring with a counter-clockwise hole: the writer must turn both round.
    cw = Polygon([(0, 0), (0, 10), (30, 10), (30, 0)], [[(5, 2), (8, 2), (8, 5), (5, 5)]])
    assert not cw.exterior.is_ccw
    return {
        "poles": [
            Feature(Point(100.0, 50.0, -0.5), {"id": 0, "n_obs": np.int64(3), "confidence": np.float32(0.75)})
        ],
        "signs": [Feature(Point(-20.0, 3.0, 2.75), {"id": 0, "facing_deg": 270.0, "first_seen": None})],
        "medians": [
            Feature(cw, {"id": 0, "kind": "footprint", "confidence": 0.9}),
            Feature(LineString([(0, 5), (30, 5)]), {"id": 0, "kind": "centerline", "length_m": 30.0}),
        ],
    }


def test_geojson_follows_rfc7946(tmp_path):
    paths = write_layers(_layers(), tmp_path, ORIGIN, gpkg=False)
    assert sorted(p.name for p in paths) == ["medians.geojson", "poles.geojson", "signs.geojson"]
    fc = json.loads((tmp_path / "poles.geojson").read_text())
    assert fc["type"] == "FeatureCollection" and "crs" not in fc
    lon, lat, alt = fc["features"][0]["geometry"]["coordinates"]
    # lon first: 100 m east of the origin is a larger longitude, 50 m north a larger latitude
    assert lon > ORIGIN.lon0 and lat > ORIGIN.lat0 and alt == pytest.approx(109.5)
    x, y, _ = ORIGIN.to_world(lat, lon)
    assert (x, y) == pytest.approx((100.0, 50.0), abs=0.001)  # 8 decimals: about 1 mm
    assert fc["features"][0]["properties"] == {"id": 0, "n_obs": 3, "confidence": 0.75}
    medians = json.loads((tmp_path / "medians.geojson").read_text())["features"]
    poly = shape(medians[0]["geometry"])
    assert poly.is_valid and poly.exterior.is_ccw and not poly.interiors[0].is_ccw
    text = (tmp_path / "medians.geojson").read_text()
    decimals = [
        len(tok.split(".")[1]) for tok in text.replace("]", ",").replace("[", ",").split(",") if "." in tok
    ]
    assert max(decimals) <= 8
    assert medians[1]["geometry"]["type"] == "LineString" and medians[1]["properties"]["kind"] == "centerline"
    # reading back gives the same geometry within a centimetre
    (g, props), _ = read_geojson(tmp_path / "medians.geojson")
    back = shapely.transform(g, lambda p: np.stack(ORIGIN.to_world(p[:, 1], p[:, 0])[:2], axis=1))
    assert back.symmetric_difference(_layers()["medians"][0].geometry).area < 0.5


def test_writes_are_atomic(tmp_path, monkeypatch):
    write_geojson(tmp_path / "poles.geojson", _layers()["poles"], ORIGIN)
    before = (tmp_path / "poles.geojson").read_text()
    bad = [Feature(Point(0, 0), {"x": object()})]  # not JSON-serialisable: the write fails
    with pytest.raises(TypeError):
        write_geojson(tmp_path / "poles.geojson", bad, ORIGIN)
    assert (tmp_path / "poles.geojson").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poles.geojson"]  # no temporary file left


def test_geopackage_has_one_typed_layer_each(tmp_path):
    layers = _layers()
    layers["coverage"] = []
    write_layers(layers, tmp_path, ORIGIN)
    listed = dict(pyogrio.list_layers(tmp_path / "map.gpkg"))
    assert listed == {
        "poles": "Point Z",
        "signs": "Point Z",
        "medians": "Polygon",
        "median_centerlines": "LineString",
        "coverage": "Polygon",
    }
    info = pyogrio.read_info(tmp_path / "map.gpkg", layer="poles")
    assert "4326" in info["crs"] and list(info["fields"]) == ["id", "n_obs", "confidence"]
    meta, _, geoms, fields = pyogrio.raw.read(tmp_path / "map.gpkg", layer="medians")
    poly = shapely.from_wkb(geoms[0])
    assert poly.exterior.is_ccw and fields[meta["fields"].tolist().index("kind")][0] == "footprint"


def test_reading_a_non_geojson_is_a_clear_error(tmp_path):
    (tmp_path / "x.geojson").write_text('{"type": "Feature"}')
    with pytest.raises(HdmapError, match="x.geojson: not a GeoJSON FeatureCollection"):
        read_geojson(tmp_path / "x.geojson")
