"""One synthetic world driven several times (``--drives``), and edited between drives (``--edits``):
the drives overlay, differ in lane, direction and light, and their ground truth follows the edits."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hdmap_seg.cli import merge as merge_cli
from hdmap_seg.cli import vectorize as vectorize_cli
from hdmap_seg.cli.make_synthetic import main as make_synthetic_main
from hdmap_seg.errors import HdmapError
from hdmap_seg.evaluate.map_metrics import evaluate_changes
from hdmap_seg.geo.frames import LocalFrame
from hdmap_seg.geo.kitti import read_oxts
from hdmap_seg.synthetic import SynthConfig, make_all
from hdmap_seg.synthetic.base import drive_plan_rng
from hdmap_seg.synthetic.logs import _log_setup, log_name, world_versions
from hdmap_seg.synthetic.multidrive import ADDED, MOVED, REMOVED, drivable_lanes, drive_plan, drive_world
from hdmap_seg.synthetic.world import make_world

# Seed 9's world has three lanes a side (ego lane 1): drives 1 and 3 go the other way, drive 2 the
# ego way in lane 0. Drives 0 and 1 see the world as made, drives 2 and 3 the edited one (its
# removed pole, on the median, carries a sign: both go).
CFG = SynthConfig(
    seed=9,
    scale=0.5,
    train=0,
    val=0,
    logs=4,
    frames_per_log=60,
    terrain="flat",
    one_world=True,
    edit_remove_poles=1,
    edit_add_signs=1,
    edit_move_signs=1,
    edit_from_drive=2,
)
ORIGIN = LocalFrame(CFG.lat0, CFG.lon0, CFG.alt0)


@pytest.fixture(scope="module")
def logs_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multi")
    make_all(CFG, out, workers=1)
    return out / "logs"


def _truth(logs_root: Path, drive: int, layer: str) -> dict[int, dict]:
    data = json.loads((logs_root / log_name(drive) / "gt" / f"{layer}.geojson").read_text())
    return {f["properties"]["id"]: f for f in data["features"]}


def _edits(logs_root: Path) -> list[dict]:
    return [f["properties"] for f in json.loads((logs_root / "edits.geojson").read_text())["features"]]


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def test_drives_overlay_and_agree_on_what_both_saw(logs_root):
    edited = {(e["layer"], e["id"]) for e in _edits(logs_root)}
    for a in range(CFG.logs):
        for b in range(a + 1, CFG.logs):
            shared = 0
            for layer in ("poles", "signs"):
                ta, tb = _truth(logs_root, a, layer), _truth(logs_root, b, layer)
                both = (set(ta) & set(tb)) - {i for lay, i in edited if lay == layer}
                shared += len(both)
                for i in both:
                    fa, fb = ta[i], tb[i]
                    assert fa["geometry"] == fb["geometry"]  # one origin, one world: the same point
                    pa = {k: v for k, v in fa["properties"].items() if k != "n_frames_seen"}
                    pb = {k: v for k, v in fb["properties"].items() if k != "n_frames_seen"}
                    assert pa == pb
            assert shared, (a, b)  # the drives share their stretch
    for k in range(CFG.logs):
        manifest = json.loads((logs_root / log_name(k) / "synthetic.json").read_text())
        assert (manifest["lat0"], manifest["lon0"], manifest["alt0"]) == (CFG.lat0, CFG.lon0, CFG.alt0)


def test_drives_differ_in_direction_lane_and_light(logs_root):
    world, _, _ = world_versions(CFG)
    plans = []
    for k in range(CFG.logs):
        log = logs_root / log_name(k)
        packets = [read_oxts(p) for p in sorted((log / "oxts" / "data").glob("*.txt"))]
        lonlat = np.array([[p.lon, p.lat, p.alt] for p in packets])
        xyz = ORIGIN.world_from_wgs84_points(lonlat)
        s, d = world.road.road_coords(xyz[:, 0], xyz[:, 1])
        _, _, heading = world.road.pose_at(s)
        yaw = np.array([p.yaw for p in packets])
        _, drive, _ = _log_setup(CFG, k)
        plan = drive_plan(world, k, drive_plan_rng(CFG.seed, k))
        if k % 2:  # the other way: heading reversed, arc length falling, on the far carriageway
            assert np.all(np.abs(_wrap(yaw - heading - np.pi)) < 0.1)
            assert np.all(np.diff(s) < 0) and drive.direction == -1 and np.all(d > 0)
        else:
            assert np.all(np.abs(_wrap(yaw - heading)) < 0.1)
            assert np.all(np.diff(s) > 0) and drive.direction == 1 and np.all(d < 0)
        assert abs(np.median(d) - plan.lane_d_m) < 0.4  # in its lane, wobbling a little
        plans.append((plan.direction, plan.lane))
    assert plans[0] == (1, world.ego_lane)
    assert len(set(plans)) == CFG.logs  # three lanes a side: no two drives alike
    styles = [_log_setup(CFG, k)[0].style for k in range(CFG.logs)]
    # Drive 0 is the plain log 0: the same world, poses and light (so the same frames).
    plain = replace(CFG, one_world=False, edit_remove_poles=0, edit_add_signs=0, edit_move_signs=0)
    (w0, d0, _), (wp, dp, _) = _log_setup(CFG, 0), _log_setup(plain, 0)
    assert np.array_equal(d0.T_world_from_imu, dp.T_world_from_imu) and styles[0] == wp.style
    assert (w0.poles, w0.signs, w0.vehicles) == (wp.poles, wp.signs, wp.vehicles)
    assert len({(st.sun_azimuth_rad, st.exposure) for st in styles}) == CFG.logs


def test_plans_cycle_lanes_and_directions():
    for seed in (1, 3, 7):  # one, two, three lanes a side
        world = make_world(seed, 300)
        plans = [drive_plan(world, k, drive_plan_rng(seed, k)) for k in range(6)]
        for a, b in zip(plans, plans[1:], strict=False):
            assert a.direction != b.direction
        assert plans[0].lane == world.ego_lane and plans[0].start_offset_m == 0.0
        n = world.section.lanes_per_direction
        assert {p.lane for p in plans if p.direction > 0} == set(range(min(n, 3)))
        assert all(p.lane in drivable_lanes(world.section, world.ego_lane, -1) for p in plans[1::2])
        for k, p in enumerate(plans):
            seen = drive_world(world, p, k, drive_plan_rng(seed, k))
            assert all(abs(v.d_m - p.lane_d_m) >= 0.5 * world.section.lane_width_m for v in seen.vehicles)


def test_edited_world_truth_follows_the_edit_list(logs_root):
    edits = _edits(logs_root)
    assert {(e["change"], e["layer"]) for e in edits} >= {
        (REMOVED, "poles"),
        (ADDED, "signs"),
        (MOVED, "signs"),
    }
    before, after, listed = world_versions(CFG)
    assert [(e.change, e.layer, e.id) for e in listed] == [(e["change"], e["layer"], e["id"]) for e in edits]
    first = CFG.edit_from_drive
    assert all(e["from_drive"] == first for e in edits)
    for e in edits:
        earlier = [_truth(logs_root, k, e["layer"]) for k in range(first)]
        later = [_truth(logs_root, k, e["layer"]) for k in range(first, CFG.logs)]
        # Where a drive saw the object, it saw it where the list says; some drive on each side saw it.
        for truths, where in ((earlier, e["old"]), (later, e["new"])):
            seen = [gt[e["id"]]["geometry"]["coordinates"] for gt in truths if e["id"] in gt]
            assert seen == [where] * len(seen)
            assert bool(seen) == (where is not None), (e, where)
        if e["change"] == REMOVED:
            assert e["id"] not in {o.id for o in getattr(after, e["layer"])}
        if e["change"] == ADDED:
            assert e["id"] > max(sg.id for sg in before.signs)
        if e["change"] == MOVED:
            lon0, lat0, _ = e["old"]
            lon1, lat1, _ = e["new"]
            xy = ORIGIN.world_from_wgs84_points(np.array([[lon0, lat0, 0.0], [lon1, lat1, 0.0]]))[:, :2]
            assert 1.9 < np.hypot(*(xy[1] - xy[0])) < 4.1  # along the road, so a little less on a curve
    # Nothing else changed: what both versions hold stands where it stood.
    for layer in ("poles", "signs"):
        touched = {e["id"] for e in edits if e["layer"] == layer}
        old = {o.id: o for o in getattr(before, layer) if o.id not in touched}
        new = {o.id: o for o in getattr(after, layer) if o.id not in touched}
        assert old == new


def test_bad_multidrive_options_are_one_line_errors(tmp_path, capsys):
    for bad in (
        ["--drives", "0"],
        ["--drives", "2", "--logs", "2"],
        ["--edits", "1", "0", "0"],  # edits without --drives
        ["--drives", "1", "--edits", "1", "0", "0"],
        ["--drives", "2", "--edits", "-1", "0", "0"],
        ["--drives", "3", "--edits", "1", "0", "0", "--edit-from-drive", "3"],
        ["--drives", "2", "--edits", "500", "0", "0", "--frames-per-log", "20"],  # more than the world holds
    ):
        with pytest.raises(SystemExit) as exc:
            make_synthetic_main(["--out", str(tmp_path / "x"), "--train", "0", "--val", "0", *bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err, err
    assert not (tmp_path / "x").exists()
    with pytest.raises(HdmapError, match="--edits needs --drives"):
        make_all(SynthConfig(train=0, val=0, edit_add_signs=1), tmp_path / "y")


def test_merging_the_drives_reports_the_edits_and_nothing_else(logs_root, tmp_path):
    """Drives 0-1 (the world as made) merged, then drives 2-3 (edited) added: every change they
    report is one of the edits, the edits are found, and no removal lies outside a drive's view."""
    folders = []
    for k in range(4):
        log = logs_root / log_name(k)
        vectorize_cli.run([str(log), "--quiet", "--no-gpkg"])
        folders.append(str(log / "map"))
    m = tmp_path / "map"
    merge_cli.run(["--out", str(m), *folders[:2], "--no-gpkg"])
    merge_cli.run(["--map", str(m), "--add", *folders[2:], "--no-gpkg"])
    metrics = evaluate_changes(m, logs_root / "edits.geojson")
    reported = metrics["reported"]
    assert reported["precision"] == 1.0, reported
    # The added sign stands 2.4 m inside the edge of what drives 0-1 saw, within the margin where
    # their not seeing it says nothing: for the map it is new ground, not a change.
    assert reported["recall"] >= 0.75 and reported["removed"]["tp"] == 2 and reported["moved"]["tp"] == 1
    assert metrics["removed_outside_coverage"] == 0
