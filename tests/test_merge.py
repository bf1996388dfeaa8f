"""hdmap-merge: matching by sigma_m, inverse-variance fusion, incremental adds, bad input, atomic writes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import LineString, Point, box

from hdmap_seg import mapmerge, maptiles
from hdmap_seg.cli import merge as merge_cli
from hdmap_seg.errors import HdmapError
from hdmap_seg.evaluate.map_metrics import evaluate_changes, union_ground_truth
from hdmap_seg.export import geojson as geojson_mod
from hdmap_seg.export import read_geojson, write_layers
from hdmap_seg.geo.frames import LocalFrame
from hdmap_seg.mapchanges import ChangeConfig
from hdmap_seg.maplayers import CENTERLINE, COVERAGE, FOOTPRINT, LANE_MARKINGS, MEDIANS, POLES, SIGNS, Feature
from hdmap_seg.mapmerge import MergeConfig, merge_drives, point_estimate, read_map
from hdmap_seg.synthetic.multidrive import WorldEdit, write_edits

FRAME = LocalFrame(49.0, 8.4, 110.0)
A = np.array([10.0, 5.0, 0.2])  # a pole every drive sees
B = np.array([30.0, -4.0, 0.1])  # a pole drives a and c see
COVERAGE_BOX = box(-20, -20, 60, 20)  # what a drive saw, unless said


def pole(xyz, sigma_m, t="2026-01-01T00:00:00.000Z", n_obs=5, confidence=0.8) -> Feature:
    props = {"type": "pole", "n_obs": n_obs, "first_seen": t, "last_seen": t, "confidence": confidence}
    return Feature(Point(*xyz), props | {"sigma_m": sigma_m})


def sign(xyz, sigma_m, facing_deg, height_m=2.5) -> Feature:
    feat = pole(xyz, sigma_m)
    feat.properties |= {"type": "sign", "facing_deg": facing_deg, "height_m": height_m}
    return feat


def make_drive(
    root: Path,
    name: str,
    poles=(),
    signs=(),
    medians=(),
    origin=FRAME,
    record=True,
    coverage=None,
    lanes=(),
) -> Path:
    folder = root / name / "map"
    layers = {
        POLES: list(poles),
        SIGNS: list(signs),
        MEDIANS: list(medians),
        LANE_MARKINGS: list(lanes),
        COVERAGE: [Feature(coverage or COVERAGE_BOX, {"area_m2": (coverage or COVERAGE_BOX).area})],
    }
    write_layers(layers, folder, origin, gpkg=False)
    if record:
        (folder / "vectorize.json").write_text(
            json.dumps({"log": str(root / name), "origin": origin.to_dict()})
        )
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under a map folder (its tiles too), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_world(path: Path) -> list[tuple[np.ndarray, dict]]:
    """A layer's points in the world frame, as the drive wrote them (rounded to the file's decimals)."""
    return [(FRAME.world_from_wgs84_points(np.array([[g.x, g.y, g.z]]))[0], p) for g, p in read_geojson(path)]


@pytest.fixture
def drives(tmp_path):
    a = make_drive(tmp_path, "drive_a", [pole(A + [0.05, 0, 0], 0.1), pole(B + [0, 0.1, 0], 0.2)])
    b = make_drive(tmp_path, "drive_b", [pole(A + [-0.1, 0.05, 0.02], 0.2, t="2026-01-02T00:00:00.000Z")])
    c = make_drive(
        tmp_path,
        "drive_c",
        [pole(A + [0.0, -0.2, 0], 0.3, t="2025-12-31T00:00:00.000Z"), pole(B + [0.1, 0, 0], 0.1)],
    )
    return [a, b, c]


def test_merged_positions_are_the_inverse_variance_means(drives):
    state = merge_drives(drives)
    merged = {tuple(f["drives"]): f for f in state.points[POLES]}
    assert set(merged) == {("drive_a", "drive_b", "drive_c"), ("drive_a", "drive_c")}
    seen = [read_world(d / "poles.geojson") for d in drives]
    for key, picks in (
        (("drive_a", "drive_b", "drive_c"), [seen[0][0], seen[1][0], seen[2][0]]),
        (("drive_a", "drive_c"), [seen[0][1], seen[2][1]]),
    ):
        w = np.array([1.0 / p["sigma_m"] ** 2 for _, p in picks])
        want = (w[:, None] * np.array([xyz for xyz, _ in picks])).sum(axis=0) / w.sum()
        got, sigma_m = point_estimate(merged[key])
        np.testing.assert_allclose(got, want, atol=1e-9)
        assert sigma_m == pytest.approx(w.sum() ** -0.5, abs=1e-12)
    a = merged[("drive_a", "drive_b", "drive_c")]
    assert (a["n_obs"], a["first_seen"], a["last_seen"]) == (
        15,
        "2025-12-31T00:00:00.000Z",
        "2026-01-02T00:00:00.000Z",
    )


def test_the_written_map_names_the_drives_that_saw_each_feature(drives, tmp_path):
    merge_cli.run(["--out", str(tmp_path / "m"), *map(str, drives), "--no-gpkg"])
    props = sorted(
        (p for _, p in read_geojson(tmp_path / "m" / "poles.geojson")), key=lambda p: p["n_drives"]
    )
    assert [(p["n_drives"], p["drives"]) for p in props] == [
        (2, ["drive_a", "drive_c"]),
        (3, ["drive_a", "drive_b", "drive_c"]),
    ]
    assert props[1]["n_obs"] == 15 and props[1]["n_covered"] == 3
    assert props[1]["sigma_m"] == pytest.approx((1 / 0.01 + 1 / 0.04 + 1 / 0.09) ** -0.5, abs=1e-4)
    assert props[1]["confidence"] == pytest.approx(1 - 0.2**3, abs=1e-4)


def test_an_outlier_pole_3_m_away_stays_apart(tmp_path):
    a = make_drive(tmp_path, "a", [pole(A, 0.1)])
    b = make_drive(tmp_path, "b", [pole(A + [0.1, 0, 0], 0.1)])
    c = make_drive(
        tmp_path, "c", [pole(A + [3.0, 0, 0], 0.5)]
    )  # large sigma: only max_gate_m and the floor hold it
    state = merge_drives([a, b, c])
    assert sorted(len(f["drives"]) for f in state.points[POLES]) == [1, 2]
    pos = sorted(point_estimate(f)[0][0] for f in state.points[POLES])
    assert pos[0] == pytest.approx(A[0] + 0.05, abs=0.02) and pos[1] == pytest.approx(A[0] + 3.0, abs=0.02)


def test_one_drive_matches_one_to_one(tmp_path):
    # drive b saw two poles 0.6 m apart near one pole of drive a: only the closer joins it
    a = make_drive(tmp_path, "a", [pole(A, 0.1)])
    b = make_drive(tmp_path, "b", [pole(A + [0.1, 0, 0], 0.1), pole(A + [-0.5, 0, 0], 0.1)])
    state = merge_drives([a, b])
    by_n = sorted(state.points[POLES], key=lambda f: len(f["drives"]))
    assert [len(f["drives"]) for f in by_n] == [1, 2]
    assert point_estimate(by_n[0])[0][0] == pytest.approx(A[0] - 0.5, abs=0.02)


def test_signs_match_on_facing_and_height(tmp_path):
    p = A + [0, 0, 2.5]
    a = make_drive(tmp_path, "a", signs=[sign(p, 0.2, 350.0), sign(B, 0.2, 90.0)])
    b = make_drive(tmp_path, "b", signs=[sign(p, 0.2, 10.0), sign(B, 0.2, 270.0)])  # B seen from the back
    c = make_drive(tmp_path, "c", signs=[sign(p, 0.2, 0.0, height_m=4.0)])  # another plate above
    d = make_drive(tmp_path, "d", signs=[sign(p, 0.2, 60.0)])  # another plate on the post, turned
    strict = merge_drives([a, b, c, d], config=MergeConfig(facing_either_side=False))
    assert sorted(len(f["drives"]) for f in strict.points[SIGNS]) == [1, 1, 1, 1, 2]
    state = merge_drives([a, b, c])
    assert sorted(len(f["drives"]) for f in state.points[SIGNS]) == [1, 2, 2]
    merge_cli.run(["--out", str(tmp_path / "m"), str(a), str(b), str(c), "--no-gpkg"])
    two = [q for _, q in read_geojson(tmp_path / "m" / "signs.geojson") if q["n_drives"] == 2]
    two = sorted(two, key=lambda q: q["facing_deg"] % 180)
    assert two[1]["facing_deg"] in (pytest.approx(90.0), pytest.approx(270.0))
    assert len(two) == 2 and min(two[0]["facing_deg"], 360 - two[0]["facing_deg"]) == pytest.approx(
        0.0, abs=0.01
    )
    assert two[0]["height_m"] == pytest.approx(2.5)


def test_overlapping_median_footprints_merge(tmp_path):
    def median(poly, i):
        props = {"id": i, "confidence": 0.5, "area_m2": poly.area}
        line = LineString([(poly.bounds[0], poly.centroid.y), (poly.bounds[2], poly.centroid.y)])
        return [Feature(poly, props | {"kind": FOOTPRINT}), Feature(line, props | {"kind": CENTERLINE})]

    a = make_drive(tmp_path, "a", medians=median(box(0, 0, 10, 1), 0) + median(box(30, 0, 35, 1), 1))
    b = make_drive(tmp_path, "b", medians=median(box(8, 0, 20, 1), 0))
    state = merge_drives([a, b])
    assert sorted(m["drives"] for m in state.medians) == [["a"], ["a", "b"]]
    merged = next(m for m in state.medians if len(m["drives"]) == 2)
    assert shapely.from_wkb(merged["footprint"]).area == pytest.approx(20.0, abs=0.05)
    assert shapely.from_wkb(merged["centerline"]).length == pytest.approx(12.0, abs=0.05)


def test_adding_drives_equals_merging_them_at_once(drives, tmp_path):
    merge_cli.run(["--out", str(tmp_path / "all"), *map(str, drives)])
    merge_cli.run(["--out", str(tmp_path / "inc"), str(drives[0])])
    merge_cli.run(["--map", str(tmp_path / "inc"), "--add", str(drives[1]), str(drives[2])])
    one, inc = read_map(tmp_path / "all"), read_map(tmp_path / "inc")
    assert [d["id"] for d in inc.drives] == ["drive_a", "drive_b", "drive_c"]
    for name in (POLES, SIGNS):
        assert len(one.points[name]) == len(inc.points[name])
        for f, g in zip(one.points[name], inc.points[name], strict=True):
            assert (f["id"], f["drives"], f["n_obs"]) == (g["id"], g["drives"], g["n_obs"])
            np.testing.assert_allclose(point_estimate(f)[0], point_estimate(g)[0], atol=1e-9, rtol=0)
    for name in ("poles", "signs", "medians", "coverage"):
        assert (tmp_path / "all" / f"{name}.geojson").read_bytes() == (
            tmp_path / "inc" / f"{name}.geojson"
        ).read_bytes()


# ----------------------------------------------------------------------------------------- bad input


def test_drives_far_from_the_map_are_an_error_naming_them(drives, tmp_path):
    # 111 km north: layers written in another world frame than their file says, or another place
    far = make_drive(tmp_path, "far", [pole(A, 0.1)], origin=LocalFrame(48.0, 8.4, 110.0))
    with pytest.raises(HdmapError, match=r"far/map: layers 11\d\.\d km from the map's origin"):
        merge_drives([*drives, far])


def test_drives_recorded_in_other_origins_merge_in_wgs84(drives, tmp_path):
    # vectorize's origin is the drive's first position: the layers are WGS84 whatever it is
    other = make_drive(tmp_path, "other", [pole(A, 0.1)])
    record = json.loads((other / "vectorize.json").read_text())
    record["origin"] = {"lat0": 49.001, "lon0": 8.401, "alt0": 111.0}
    (other / "vectorize.json").write_text(json.dumps(record))
    state = merge_drives([other, *drives])
    assert state.origin == LocalFrame(49.001, 8.401, 111.0)
    assert sorted(len(f["drives"]) for f in state.points[POLES]) == [2, 4]
    lonlatalt = state.origin.wgs84_from_world_points(point_estimate(state.points[POLES][0])[0][None])
    assert np.linalg.norm(FRAME.world_from_wgs84_points(lonlatalt)[0, :2] - A[:2]) < 0.1


def test_a_drive_without_coverage_is_an_error(drives):
    (drives[1] / "coverage.geojson").unlink()
    with pytest.raises(HdmapError, match=r"drive_b/map/coverage.geojson: missing"):
        merge_drives(drives)


def test_duplicate_drive_ids_are_an_error(drives, tmp_path):
    twin = make_drive(tmp_path / "elsewhere", "drive_a", [pole(A, 0.1)])
    with pytest.raises(HdmapError, match=r"duplicate drive id 'drive_a'"):
        merge_drives([*drives, twin])
    with pytest.raises(HdmapError, match=r"duplicate drive id 'x'"):
        merge_drives(drives[:2], ["x", "x"])
    merge_cli.run(["--out", str(tmp_path / "m"), str(drives[0])])
    with pytest.raises(HdmapError, match=r"duplicate drive id 'drive_a' .*the map"):
        merge_cli.run(["--map", str(tmp_path / "m"), "--add", str(twin)])


def test_corrupt_geojson_is_a_one_line_error_with_exit_2(drives, tmp_path, capsys):
    (drives[2] / "poles.geojson").write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(SystemExit) as exc:
        merge_cli.main(["--out", str(tmp_path / "m"), *map(str, drives)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "drive_c/map/poles.geojson" in err
    assert not (tmp_path / "m").exists()


def test_an_empty_drive_is_a_warning_and_a_drive_that_saw_nothing(drives, tmp_path, caplog):
    empty = make_drive(tmp_path, "drive_empty")
    with caplog.at_level(logging.WARNING):
        state = merge_drives([*drives, empty])
    outside = make_drive(tmp_path, "outside", [pole([100.0, 0.0, 0.0], 0.1)])  # beyond its coverage's edge
    assert mapmerge.map_layers(merge_drives([outside, empty]))[POLES][0].properties["n_covered"] == 1
    assert any("drive_empty" in r.getMessage() and "no features" in r.getMessage() for r in caplog.records)
    assert [d["id"] for d in state.drives][-1] == "drive_empty"
    assert all("drive_empty" not in f["drives"] for f in state.points[POLES])


def test_a_map_folder_not_written_by_merge_is_an_error(drives, tmp_path):
    with pytest.raises(HdmapError, match=r"drive_a/map: not a map written by hdmap-merge"):
        merge_cli.run(["--map", str(drives[0]), "--add", str(drives[1])])
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "merge.json").write_text('{"format": "something else"}')
    with pytest.raises(HdmapError, match=r"m/merge.json: not a map written by hdmap-merge"):
        merge_cli.run(["--map", str(tmp_path / "m"), "--add", str(drives[1])])
    with pytest.raises(HdmapError, match=r"exists and is not empty"):
        merge_cli.run(["--out", str(tmp_path / "m"), str(drives[1])])


def test_a_drive_without_a_run_record_is_named_by_its_folder(drives, tmp_path):
    bare = make_drive(tmp_path, "bare", [pole(A, 0.1)], record=False)
    state = merge_drives([bare, *drives])
    assert state.drives[0]["id"] == "bare" and len(state.points[POLES][0]["drives"]) == 4


def test_an_interrupted_merge_leaves_the_old_map_byte_identical(drives, tmp_path, monkeypatch):
    out = tmp_path / "m"
    merge_cli.run(["--out", str(out), str(drives[0]), str(drives[1])])
    before = _files(out)
    real, calls = geojson_mod.write_geojson, []

    def fail_second(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(geojson_mod, "write_geojson", fail_second)
    with pytest.raises(OSError):
        merge_cli.run(["--map", str(out), "--add", str(drives[2])])
    assert len(calls) == 2
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".m.")) == [".m.lock.d"]
    monkeypatch.undo()
    (tmp_path / ".m.tmp-killed").mkdir()  # what a killed merge leaves
    merge_cli.run(["--map", str(out), "--add", str(drives[2])])
    assert not (tmp_path / ".m.tmp-killed").exists()
    assert [d["id"] for d in read_map(out).drives] == ["drive_a", "drive_b", "drive_c"]


def test_gate_options_are_checked(drives, tmp_path):
    with pytest.raises(HdmapError, match=r"--max-gate-m must be a number >= 0"):
        merge_cli.run(["--out", str(tmp_path / "m"), str(drives[0]), "--max-gate-m", "nan"])
    assert MergeConfig().gate_chi2 == pytest.approx(9.21, abs=0.01)


def test_the_truth_of_many_drives_is_one_feature_per_id_and_united_footprints(tmp_path):
    def truth(name, pole_ids, footprint, extra_lanes=()):
        poles = [Feature(Point(i, 0.0, 0.0), {"id": i, "type": "pole"}) for i in pole_ids]
        line = LineString([(footprint.bounds[0], 0.5), (footprint.bounds[2], 0.5)])
        medians = [Feature(footprint, {"kind": FOOTPRINT}), Feature(line, {"kind": CENTERLINE})]
        lanes = [  # the world's lines, each seen by this drive as far as it went
            Feature(
                LineString([(footprint.bounds[0], y), (footprint.bounds[2], y)]), {"side": "ego", "line": k}
            )
            for k, y in enumerate((3.0, 6.0))
        ] + list(extra_lanes)
        layers = {POLES: poles, SIGNS: [], MEDIANS: medians, LANE_MARKINGS: lanes}
        write_layers(layers, tmp_path / name, FRAME, gpkg=False)
        return tmp_path / name

    out = union_ground_truth(
        [
            truth("g0", [1, 2], box(0, 0, 10, 1)),
            # line 0 again past a median opening: another piece of the same line
            truth(
                "g1",
                [2, 3],
                box(5, 0, 20, 1),
                [Feature(LineString([(30, 3), (40, 3)]), {"side": "ego", "line": 0})],
            ),
        ],
        tmp_path / "u",
    )
    assert [p["id"] for _, p in read_geojson(out / "poles.geojson")] == [1, 2, 3]
    medians = read_geojson(out / "medians.geojson")
    assert [p["kind"] for _, p in medians] == [FOOTPRINT, CENTERLINE]
    area = shapely.area(
        shapely.transform(
            medians[0][0], lambda c: FRAME.world_from_wgs84_points(np.c_[c, 0 * c[:, 0]])[:, :2]
        )
    )
    assert area == pytest.approx(20.0, rel=1e-3)
    lanes = [
        (FRAME.world_from_wgs84_points(np.c_[np.asarray(g.coords), np.zeros(len(g.coords))]), p)
        for g, p in read_geojson(out / "lane_markings.geojson")
    ]
    extents = sorted((p["line"], round(xy[:, 0].min(), 1), round(xy[:, 0].max(), 1)) for xy, p in lanes)
    # each line over the stretch either drive saw (x 0 to 20), the piece past the opening apart
    assert extents == [(0, 0.0, 20.0), (0, 30.0, 40.0), (1, 0.0, 20.0)]
    assert all(np.ptp(xy[:, 1]) < 0.002 for xy, _ in lanes)  # 8 decimals


def test_a_failed_swap_puts_the_old_map_back(drives, tmp_path, monkeypatch):
    out = tmp_path / "m"
    merge_cli.run(["--out", str(out), str(drives[0])])
    before = _files(out)
    real, calls = mapmerge.os.rename, []

    def fail_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new map's rename, after the old one moved aside
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(mapmerge.os, "rename", fail_second)
    with pytest.raises(OSError):
        merge_cli.run(["--map", str(out), "--add", str(drives[1])])
    monkeypatch.undo()
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".m.")) == [".m.lock.d"]


# ------------------------------------------------------------------------------------ change detection


def _changes(folder: Path) -> list[dict]:
    out = []
    for g, p in read_geojson(folder / "changes.geojson"):
        lonlat = np.asarray(g.coords)
        p["xy"] = FRAME.world_from_wgs84_points(np.c_[lonlat[:, :2], np.zeros(len(lonlat))])[:, :2]
        out.append(p)
    return out


def _ids(folder: Path, name: str = POLES) -> list[int]:
    return sorted(p["id"] for _, p in read_geojson(folder / f"{name}.geojson"))


def test_a_pole_two_drives_miss_where_they_saw_leaves_the_map(tmp_path):
    seen = [pole(A, 0.1), pole(B, 0.1)]
    a, b = make_drive(tmp_path, "a", seen), make_drive(tmp_path, "b", seen)
    c, d = make_drive(tmp_path, "c", [pole(A, 0.1)]), make_drive(tmp_path, "d", [pole(A, 0.1)])
    m = tmp_path / "m"
    merge_cli.run(["--out", str(m), str(a), str(b), "--no-gpkg"])
    assert _changes(m) == [] and len(_ids(m)) == 2
    merge_cli.run(["--map", str(m), "--add", str(c), "--no-gpkg"])
    (change,) = _changes(m)
    assert (change["change"], change["layer"], change["drive"]) == ("removed", "poles", "c")
    assert (change["n_agree"], change["applied"]) == (1, False)  # one drive: the map keeps it
    np.testing.assert_allclose(change["xy"][0], B[:2], atol=0.01)
    assert change["distance_m"] == pytest.approx(np.linalg.norm(B[:2] - A[:2]), abs=0.01)
    assert len(_ids(m)) == 2
    merge_cli.run(["--map", str(m), "--add", str(d), "--no-gpkg"])
    (change,) = _changes(m)
    assert (change["change"], change["n_agree"], change["applied"]) == ("removed", 2, True)
    (left,) = read_geojson(m / "poles.geojson")
    np.testing.assert_allclose(FRAME.world_from_wgs84_points(np.array([left[0].coords[0]]))[0], A, atol=0.01)
    # The map remembers: it stays out however the map grows, unless a drive sees it again.
    state = read_map(m)
    assert [f["status"] for f in sorted(state.points[POLES], key=lambda f: f["id"])] == ["mapped", "removed"]


def test_no_removal_is_reported_where_the_drive_did_not_see(tmp_path):
    a = make_drive(tmp_path, "a", [pole(A, 0.1), pole(B, 0.1)])
    # c saw only x < 20 (B at x = 30 is outside), d saw up to x = 33: B lies within 5 m of its edge.
    c = make_drive(tmp_path, "c", [pole(A, 0.1)], coverage=box(-20, -20, 20, 20))
    d = make_drive(tmp_path, "d", [pole(A, 0.1)], coverage=box(-20, -20, 33, 20))
    state = merge_drives([a, c, d], config=MergeConfig())
    assert state.changes == []
    assert all(f["status"] == "mapped" for f in state.points[POLES])
    # With no margin, d's coverage holds B: one drive's evidence, reported and not applied.
    state = merge_drives([a, c, d], config=MergeConfig(change=ChangeConfig(inside_m=0.0)))
    assert [(c.change, c.drive_id, c.applied) for c in state.changes] == [("removed", "d", False)]


def test_an_added_pole_enters_the_map_once_two_drives_saw_it(tmp_path):
    C = np.array([0.0, 8.0, 0.1])
    a, b = make_drive(tmp_path, "a", [pole(A, 0.1)]), make_drive(tmp_path, "b", [pole(A, 0.1)])
    # Only where the map had looked: a pole beyond its coverage is new ground, mapped at once.
    far = np.array([80.0, 0.0, 0.1])
    wide = box(-20, -20, 100, 20)
    c = make_drive(tmp_path, "c", [pole(A, 0.1), pole(C, 0.1), pole(far, 0.1)], coverage=wide)
    d = make_drive(tmp_path, "d", [pole(A, 0.1), pole(C + [0.05, 0, 0], 0.1), pole(far, 0.1)], coverage=wide)
    m = tmp_path / "m"
    merge_cli.run(["--out", str(m), str(a), str(b), str(c), "--no-gpkg"])
    (change,) = _changes(m)
    assert (change["change"], change["drive"], change["n_agree"], change["applied"]) == (
        "added",
        "c",
        1,
        False,
    )
    np.testing.assert_allclose(change["xy"][0], C[:2], atol=0.01)
    assert change["distance_m"] == pytest.approx(np.linalg.norm(C[:2] - A[:2]), abs=0.01)
    assert len(_ids(m)) == 2  # A and the far pole; C waits for a second drive
    merge_cli.run(["--map", str(m), "--add", str(d), "--no-gpkg"])
    (change,) = _changes(m)
    assert (change["change"], change["drive"], change["n_agree"], change["applied"]) == (
        "added",
        "d",
        2,
        True,
    )
    assert len(_ids(m)) == 3


def test_a_moved_sign_is_one_change_and_moves_the_map_once_two_drives_agree(tmp_path):
    old, new = A + [0, 0, 2.5], A + [3.0, 0.2, 2.5]
    a = make_drive(tmp_path, "a", signs=[sign(old, 0.2, 90.0)])
    b = make_drive(tmp_path, "b", signs=[sign(old, 0.2, 270.0)])  # from the back
    c = make_drive(tmp_path, "c", signs=[sign(new, 0.2, 92.0)])
    d = make_drive(tmp_path, "d", signs=[sign(new + [0.05, 0, 0], 0.2, 88.0)])
    m = tmp_path / "m"
    merge_cli.run(["--out", str(m), str(a), str(b), str(c), "--no-gpkg"])
    (change,) = _changes(m)
    assert (change["change"], change["layer"], change["n_agree"], change["applied"]) == (
        "moved",
        "signs",
        1,
        False,
    )
    np.testing.assert_allclose(change["xy"], [old[:2], new[:2]], atol=0.01)  # a line from where to where
    assert change["distance_m"] == pytest.approx(np.linalg.norm((new - old)[:2]), abs=0.01)
    assert change["from_feature_id"] == 0 and change["feature_id"] != 0  # the sign it moved from
    (sign_now,) = read_geojson(m / "signs.geojson")
    assert FRAME.world_from_wgs84_points(np.array([sign_now[0].coords[0]]))[0][0] == pytest.approx(
        old[0], abs=0.01
    )
    merge_cli.run(["--map", str(m), "--add", str(d), "--no-gpkg"])
    (change,) = _changes(m)
    assert (change["change"], change["n_agree"], change["applied"]) == ("moved", 2, True)
    (sign_now,) = read_geojson(m / "signs.geojson")
    assert FRAME.world_from_wgs84_points(np.array([sign_now[0].coords[0]]))[0][0] == pytest.approx(
        new[0] + 0.025, abs=0.02
    )


def test_one_drive_suffices_with_change_drives_1(tmp_path):
    a = make_drive(tmp_path, "a", [pole(A, 0.1), pole(B, 0.1)])
    c = make_drive(tmp_path, "c", [pole(A, 0.1)])
    m = tmp_path / "m"
    merge_cli.run(["--out", str(m), str(a), str(c), "--change-drives", "1", "--no-gpkg"])
    assert [(c["change"], c["applied"]) for c in _changes(m)] == [("removed", True)]
    assert len(_ids(m)) == 1


def test_change_options_are_checked(drives, tmp_path, capsys):
    for args in (["--change-drives", "0"], ["--max-move-m", "-1"], ["--change-inside-m", "nan"]):
        with pytest.raises(SystemExit) as exc:
            merge_cli.main(["--out", str(tmp_path / "m"), str(drives[0]), *args])
        assert exc.value.code == 2
        assert args[0] in capsys.readouterr().err


def test_a_map_of_the_first_manifest_version_reads_as_all_mapped(drives, tmp_path):
    m = tmp_path / "m"
    merge_cli.run(["--out", str(m), *map(str, drives[:2]), "--no-gpkg"])
    data = json.loads((m / "merge.json").read_text())
    data["version"] = 1
    for feats in data["points"].values():
        for f in feats:
            del f["status"], f["missed_by"]
    (m / "merge.json").write_text(json.dumps(data))
    merge_cli.run(["--map", str(m), "--add", str(drives[2]), "--no-gpkg"])
    assert len(_ids(m)) == 2 and json.loads((m / "merge.json").read_text())["version"] == 2


def test_change_metrics_score_the_map_against_the_edits(tmp_path):
    old, new = A + [0, 0, 2.5], A + [3.0, 0.2, 2.5]
    before = {"poles": [pole(A, 0.1), pole(B, 0.1)], "signs": [sign(old, 0.2, 90.0)]}
    after = {"poles": [pole(A, 0.1)], "signs": [sign(new, 0.2, 90.0)]}
    folders = [make_drive(tmp_path, n, **(before if n in "ab" else after)) for n in "abcd"]
    m = tmp_path / "m"
    merge_cli.run(["--out", str(m), *map(str, folders), "--no-gpkg"])
    edits = [
        WorldEdit("removed", POLES, 1, tuple(B), None),
        WorldEdit("moved", SIGNS, 2, tuple(old), tuple(new)),
        WorldEdit("added", SIGNS, 3, None, (0.0, -10.0, 2.5)),  # a sign no drive saw
    ]
    write_edits(tmp_path / "edits.geojson", edits, 2, FRAME)
    metrics = evaluate_changes(m, tmp_path / "edits.geojson")
    applied = metrics["applied"]
    assert (applied["removed"]["tp"], applied["moved"]["tp"], applied["added"]["tp"]) == (1, 1, 0)
    assert applied["precision"] == 1.0 and applied["recall"] == pytest.approx(2 / 3)
    assert metrics["removed_outside_coverage"] == 0
    # A move scored at one end only is no match.
    edits[1] = WorldEdit("moved", SIGNS, 2, tuple(old + [2.0, 0, 0]), tuple(new))
    write_edits(tmp_path / "edits.geojson", edits, 2, FRAME)
    assert evaluate_changes(m, tmp_path / "edits.geojson")["applied"]["moved"]["tp"] == 0


# ----------------------------------------------------------------------------------------- lane lines


def lane(x0, x1, y, style="solid", width_m=0.15, confidence=0.9, **extra) -> Feature:
    props = {"style": style, "width_m": width_m, "length_m": x1 - x0, "confidence": confidence, **extra}
    return Feature(LineString([(x0, y), ((x0 + x1) / 2, y), (x1, y)]), props)


def _lanes(folder: Path) -> list[tuple[np.ndarray, dict]]:
    out = []
    for g, p in read_geojson(folder / "lane_markings.geojson"):
        lonlat = np.asarray(g.coords)
        out.append((FRAME.world_from_wgs84_points(np.c_[lonlat[:, :2], np.zeros(len(lonlat))])[:, :2], p))
    return sorted(out, key=lambda t: t[0][:, 1].mean())


def test_lane_lines_of_two_drives_fuse_where_they_overlap_and_run_on_where_one_saw(tmp_path):
    a = make_drive(tmp_path, "a", lanes=[lane(0, 50, 0.1, width_m=0.14), lane(0, 50, 3.6)])
    b = make_drive(tmp_path, "b", lanes=[lane(60, 10, -0.1, width_m=0.18)])  # drawn the other way
    m = tmp_path / "m"
    merge_cli.run(["--out", str(m), str(a), str(b), "--no-gpkg"])
    (xy, props), (xy_far, props_far) = _lanes(m)
    assert props["n_drives"] == 2 and props["drives"] == ["a", "b"] and props_far["n_drives"] == 1
    assert xy[:, 0].min() == pytest.approx(0.0, abs=0.3) and xy[:, 0].max() == pytest.approx(60.0, abs=0.3)
    both = (xy[:, 0] > 11) & (xy[:, 0] < 49)
    np.testing.assert_allclose(xy[both, 1], 0.0, atol=0.01)  # the mean of +0.1 and -0.1
    np.testing.assert_allclose(xy[xy[:, 0] < 9, 1], 0.1, atol=0.01)
    np.testing.assert_allclose(xy[xy[:, 0] > 51, 1], -0.1, atol=0.01)
    assert props["width_m"] == pytest.approx((0.14 * 50 + 0.18 * 50) / 100, abs=1e-3)  # by length seen
    assert props["confidence"] == pytest.approx(1 - 0.1**2, abs=1e-4)
    np.testing.assert_allclose(xy_far[:, 1], 3.6, atol=0.01)  # the next line over stays apart


def test_a_lane_line_takes_the_style_most_of_its_length_says(tmp_path):
    a = make_drive(tmp_path, "a", lanes=[lane(0, 60, 0.0, "dashed", dash_m=3.0, gap_m=9.0)])
    b = make_drive(tmp_path, "b", lanes=[lane(0, 20, 0.05, "solid")])  # dashes run together, seen once
    c = make_drive(tmp_path, "c", lanes=[lane(0, 60, -0.05, "dashed", dash_m=3.2, gap_m=8.8)])
    m = tmp_path / "m"
    merge_cli.run(["--out", str(m), str(a), str(b), str(c), "--no-gpkg"])
    ((_, props),) = _lanes(m)
    assert props["style"] == "dashed" and props["n_drives"] == 3
    assert (props["dash_m"], props["gap_m"]) == (pytest.approx(3.1), pytest.approx(8.9))


def test_layers_in_another_crs_are_a_one_line_error(drives, tmp_path, capsys):
    path = drives[1] / "poles.geojson"
    data = json.loads(path.read_text())
    data["crs"] = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}}
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exc:
        merge_cli.main(["--out", str(tmp_path / "m"), *map(str, drives)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and "EPSG::3857" in err
    assert not (tmp_path / "m").exists()
    # WGS84 named the old way is WGS84.
    data["crs"]["properties"]["name"] = "urn:ogc:def:crs:OGC:1.3:CRS84"
    path.write_text(json.dumps(data))
    merge_cli.run(["--out", str(tmp_path / "m"), *map(str, drives), "--no-gpkg"])


def test_a_drive_vectorized_with_other_classes_is_a_warning_naming_it(drives, tmp_path, caplog):
    for folder, classes in zip(drives, ({"pole": [4]}, {"pole": [4]}, {"pole": [5]}), strict=True):
        record = json.loads((folder / "vectorize.json").read_text())
        (folder / "vectorize.json").write_text(json.dumps(record | {"config": {"classes": classes}}))
    m = tmp_path / "m"
    with caplog.at_level(logging.WARNING):
        merge_cli.run(["--out", str(m), str(drives[0]), str(drives[1]), "--no-gpkg"])
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        merge_cli.run(["--map", str(m), "--add", str(drives[2]), "--no-gpkg"])  # compared with the map's
    (record,) = caplog.records
    assert str(drives[2] / "vectorize.json") in record.getMessage() and "[5]" in record.getMessage()


# -------------------------------------------------------------------------------------- tiles on Dask


def _street(tmp_path: Path, seed: int) -> list[Path]:
    """Four drives along a 200 m street with poles every 7 m and signs every 23 m (many tile borders at
    zoom 20, tiles about 25 m wide here), each seeing them with noise; the last two miss one pole and
    see a new sign and a sign moved 3 m."""
    rng = np.random.default_rng(seed)
    # On the tiles' borders, where a drive's noise puts a pole now on one side, now on the other.
    edges = sorted(
        {
            round(maptiles.tile_box(FRAME, t).bounds[0], 3)
            for t in maptiles.tiles_reached(FRAME, box(-95, 5, 95, 7), 20)
        }
    )
    poles = [np.array([x, 6.0, 0.1]) for x in edges if -95 < x < 95]
    poles += [
        np.array([x, 6.0, 0.1]) for x in np.arange(-95.0, 100.0, 7.0) if min(abs(x - e) for e in edges) > 1.5
    ]
    signs = [np.array([x, -7.0, 2.5]) for x in np.arange(-90.0, 100.0, 23.0)]
    wide = box(-110, -20, 110, 20)
    out = []
    for k in range(4):
        ps = [p for j, p in enumerate(poles) if not (k >= 2 and j == len(poles) - 3)]
        ss = list(signs) + ([np.array([40.0, -7.0, 2.5])] if k >= 2 else [])
        if k >= 2:
            ss[4] = ss[4] + [3.0, 0.0, 0.0]
        folder = make_drive(
            tmp_path,
            f"street_{k}",
            [pole(p + [*rng.normal(0, 0.05, 2), 0], 0.08) for p in ps],
            [sign(s + [*rng.normal(0, 0.05, 2), 0], 0.1, 90.0 + 180.0 * (k % 2)) for s in ss],
            coverage=wide,
        )
        out.append(folder)
    return out


def _map_points(folder: Path) -> dict[str, np.ndarray]:
    return {
        name: np.array(
            sorted(tuple(np.round(xyz[:2], 6)) for xyz, _ in read_world(folder / f"{name}.geojson"))
        )
        for name in (POLES, SIGNS)
    }


def test_tiles_neither_lose_nor_duplicate_features_on_their_borders(tmp_path):
    folders = _street(tmp_path, 0)
    one, many = tmp_path / "one_tile", tmp_path / "many_tiles"
    merge_cli.run(["--out", str(one), *map(str, folders[:2]), "--tile-zoom", "1", "--no-gpkg"])
    merge_cli.run(["--map", str(one), "--add", *map(str, folders[2:]), "--tile-zoom", "1", "--no-gpkg"])
    merge_cli.run(["--out", str(many), *map(str, folders[:2]), "--tile-zoom", "20", "--no-gpkg"])
    merge_cli.run(["--map", str(many), "--add", *map(str, folders[2:]), "--tile-zoom", "20", "--no-gpkg"])
    state = read_map(many)
    tiles = {
        t for f in state.points[POLES] for t in maptiles.tile_of(FRAME, point_estimate(f)[0][None, :2], 20)
    }
    assert len(tiles) >= 6  # the street spans many tiles
    a, b = _map_points(one), _map_points(many)
    assert len(a[POLES]) == len(b[POLES]) > 20 and len(a[SIGNS]) == 10  # a sign added, one moved
    for name in (POLES, SIGNS):
        np.testing.assert_allclose(a[name], b[name], atol=1e-6)
    kinds = sorted((c["change"], c["applied"]) for c in _changes(many))
    assert kinds == sorted((c["change"], c["applied"]) for c in _changes(one))
    # drive 2 sees each change first (pending), drive 3 agrees (applied)
    assert kinds == [(k, a) for k in ("added", "moved", "removed") for a in (False, True)]


@pytest.mark.slow
def test_a_merge_on_a_dask_cluster_of_two_workers_is_the_local_one(tmp_path):
    distributed = pytest.importorskip("distributed")
    folders = _street(tmp_path, 1)
    local, remote = tmp_path / "local", tmp_path / "cluster"
    args = [*map(str, folders), "--tile-zoom", "19", "--no-gpkg"]
    merge_cli.run(["--out", str(local), *args])
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        merge_cli.run(["--out", str(remote), *args, "--scheduler", cluster.scheduler_address])
    for name in ("poles", "signs", "changes", "merge"):
        ext = "json" if name == "merge" else "geojson"
        assert (local / f"{name}.{ext}").read_bytes() == (remote / f"{name}.{ext}").read_bytes(), name


def test_a_scheduler_that_does_not_answer_is_a_one_line_error(drives, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(maptiles, "SCHEDULER_TIMEOUT_S", 1)
    with pytest.raises(SystemExit) as exc:
        merge_cli.main(["--out", str(tmp_path / "m"), *map(str, drives), "--scheduler", "tcp://127.0.0.1:9"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err.splitlines()[-1] and "tcp://127.0.0.1:9" in err.splitlines()[-1]
    assert not (tmp_path / "m").exists()


def test_a_run_rewrites_only_the_tiles_its_drives_reach(tmp_path):
    folders = _street(tmp_path, 2)
    m = tmp_path / "m"
    merge_cli.run(["--out", str(m), *map(str, folders[:2]), "--tile-zoom", "20", "--no-gpkg"])
    tiles = sorted(p.parent for p in (m / "tiles").rglob("poles.geojson"))
    top = sum(len(read_geojson(m / f"{n}.geojson")) for n in ("poles", "signs"))
    assert len(tiles) >= 6 and top == sum(
        len(read_geojson(t / n)) for t in tiles for n in ("poles.geojson", "signs.geojson")
    )
    inode = {t: (t / "poles.geojson").stat().st_ino for t in tiles}
    # A drive over the street's east end only, seeing the poles there.
    east = box(60, -20, 110, 20)
    poles = [pole(xyz, 0.08) for xyz, _ in read_world(m / "poles.geojson") if xyz[0] > 62]
    late = make_drive(tmp_path, "east", poles, coverage=east)
    merge_cli.run(["--map", str(m), "--add", str(late), "--no-gpkg"])
    state = read_map(m)
    reached = set(maptiles.tiles_reached(FRAME, east, 20))

    def tile(folder: Path) -> tuple[int, int, int]:  # tiles/Z/X/Y -> (x, y, z)
        z, x, y = (int(p) for p in folder.relative_to(m / "tiles").parts)
        return x, y, z

    assert all(tile(t)[2] == 20 for t in tiles)
    kept = [t for t in tiles if tile(t) not in reached]
    assert kept and len(kept) < len(tiles)
    for t in tiles:
        same = (t / "poles.geojson").stat().st_ino == inode[t]
        assert same == (t in kept), t  # linked from the old map, or written again
    assert state.tile_zoom == 20


def test_a_map_keeps_its_tile_zoom(drives, tmp_path, capsys):
    m = tmp_path / "m"
    merge_cli.run(["--out", str(m), str(drives[0]), "--tile-zoom", "17", "--no-gpkg"])
    merge_cli.run(["--map", str(m), "--add", str(drives[1]), "--no-gpkg"])  # its own zoom by default
    assert read_map(m).tile_zoom == 17
    with pytest.raises(SystemExit) as exc:
        merge_cli.main(["--map", str(m), "--add", str(drives[2]), "--tile-zoom", "15"])
    assert exc.value.code == 2 and "zoom 17" in capsys.readouterr().err
