"""Map metrics on constructed layers, and the two commands end to end on a hand-drawn drive."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import LineString, Point, Polygon
from test_vectorize_scene import ORIGIN, default_scene, kitti_like_camera, trajectory, write_kitti_log

from hdmap_seg.errors import BROKEN_PIPE_EXIT
from hdmap_seg.evaluate import evaluate_maps
from hdmap_seg.evaluate.map_metrics import (
    average_precision,
    chamfer,
    chamfer_ap,
    match_points,
    point_metrics,
    resample,
)
from hdmap_seg.export import write_geojson
from hdmap_seg.maplayers import Feature

REPO = Path(__file__).resolve().parents[1]


def test_point_matching_is_one_to_one_and_maximal():
    # Greedy nearest-first would pair pred 0 with gt 0 (0.5 m) and leave pred 1 without a partner
    # within 1 m; the optimal one-to-one matching pairs both.
    pred = np.array([[0.0, 0.0, 0], [1.4, 0.0, 0]])
    gt = np.array([[0.5, 0.0, 0], [-0.6, 0.0, 0]])
    pairs = match_points(pred, gt, 1.0)
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 1), (1, 0)]
    m = point_metrics(pred, gt)
    assert m["@1m"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 2}
    assert m["@0.5m"]["tp"] == 1  # only (0, gt 0) at 0.5 m
    assert m["mean_error_m"] == pytest.approx((0.6 + 0.9) / 2)


def test_point_metrics_report_height_errors_of_matched_pairs():
    pred = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [50.0, 0.0, 0.0]])
    gt = np.array([[0.2, 0.0, 0.0], [10.0, 0.5, 0.0]])
    pred_props = [{"height_m": 2.1}, {"height_m": 2.6}, {"height_m": 9.0}]  # the third matches nothing
    gt_props = [{"height_m": 2.0}, {"height_m": 2.3}]
    m = point_metrics(pred, gt, pred_props, gt_props)
    assert m["mean_height_error_m"] == pytest.approx((0.1 + 0.3) / 2)
    assert m["max_height_error_m"] == pytest.approx(0.3)
    assert "mean_height_error_m" not in point_metrics(pred, gt)


def test_point_metrics_report_facing_errors_also_along_the_plates_axis():
    pred = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [20.0, 0.0, 0.0]])
    gt = pred + [0.1, 0.0, 0.0]
    # 10 deg off; the back's facing, 4 deg off the reversed truth (across north); exact
    pred_props = [{"facing_deg": 30.0}, {"facing_deg": 356.0}, {"facing_deg": 90.0}]
    gt_props = [{"facing_deg": 20.0}, {"facing_deg": 180.0}, {"facing_deg": 90.0}]
    m = point_metrics(pred, gt, pred_props, gt_props)
    assert m["mean_facing_error_deg"] == pytest.approx((10 + 176 + 0) / 3, abs=0.005)  # rounded to 0.01
    assert m["mean_facing_axis_error_deg"] == pytest.approx((10 + 4 + 0) / 3, abs=0.005)
    assert m["facing_reversed"] == 1


def test_point_metrics_count_misses_and_extras():
    gt = np.array([[0, 0, 0], [10, 0, 0], [20, 0, 0], [30, 0, 0]], float)
    pred = np.array([[0.2, 0, 0], [10, 1.5, 0], [50, 0, 0]], float)
    m = point_metrics(pred, gt)
    assert m["@1m"]["tp"] == 1 and m["@2m"]["tp"] == 2
    assert m["@1m"]["precision"] == pytest.approx(1 / 3, abs=1e-4) and m["@1m"]["recall"] == pytest.approx(
        1 / 4
    )
    assert m["@2m"]["f1"] == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4), abs=1e-4)
    assert m["p90_error_m"] == pytest.approx(0.2 + 0.9 * 1.3, abs=1e-4)


def test_chamfer_and_ap_follow_maptr():
    a = LineString([(0, 0), (20, 0)])
    shifted = LineString([(0, 0.7), (20, 0.7)])
    assert chamfer(resample(a), resample(shifted)) == pytest.approx(0.7)
    assert len(resample(LineString([(0, 0), (500, 0)]))) > 1000  # long map lines keep a dense sampling
    r = chamfer_ap([shifted], [0.9], [a])
    assert (r["AP@0.5m"], r["AP@1m"], r["AP@1.5m"]) == (0.0, 1.0, 1.0)
    # A duplicate prediction of a covered truth is a false positive; the lower score ranks last.
    far = LineString([(100, 0), (120, 0)])
    r = chamfer_ap([a, shifted, far], [0.9, 0.8, 0.7], [a, far])
    # ranks: TP, FP, TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; envelope: 1 up to 1/2, 2/3 to 1
    assert r["AP@1m"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3, abs=1e-4)
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == 1.0
    # Polygons are compared by their rings.
    sq = Polygon([(0, 0), (4, 0), (4, 4), (0, 4)])
    assert chamfer(resample(sq), resample(Polygon([(0, 0), (4, 0), (4, 4.3), (0, 4.3)]))) < 0.3


def _write_truth(gt_dir: Path, scene) -> None:
    write_geojson(
        gt_dir / "poles.geojson", [Feature(Point(x, y, 0.0), {}) for x, y, _, _ in scene.poles], ORIGIN
    )
    write_geojson(
        gt_dir / "signs.geojson",
        [Feature(Point(x, y, z), {"facing_deg": 270.0}) for x, y, z, _, _ in scene.signs],
        ORIGIN,
    )
    feats = []
    for m in scene.medians:
        feats += [
            Feature(Polygon(m), {"kind": "footprint"}),
            Feature(LineString([(m[0, 0], 2.2), (m[1, 0], 2.2)]), {"kind": "centerline"}),
        ]
    write_geojson(gt_dir / "medians.geojson", feats, ORIGIN)


@pytest.mark.slow
def test_commands_end_to_end(tmp_path):
    """hdmap-vectorize then hdmap-eval-map on a drawn KITTI log; a second world origin changes nothing."""
    from hdmap_seg.cli.eval_map import run as eval_main
    from hdmap_seg.cli.vectorize import run as vectorize_main

    scene = default_scene()
    log = write_kitti_log(tmp_path / "drive", kitti_like_camera(), trajectory(70), scene)
    _write_truth(tmp_path / "gt", scene)
    # The drawn truth holds every pole of the scene, also those this 70-frame drive sees in fewer
    # frames than the default min_obs (5, set for predicted masks).
    summary = vectorize_main(
        [str(log), "--quiet", "--set", "pole.min_obs=2"]
    )  # world frame at the first OXTS packet
    assert summary["frames"] == 70 and summary["features"]["medians"] == 2
    for name in ("poles", "signs", "medians", "coverage"):
        assert (log / "map" / f"{name}.geojson").is_file()
    assert (log / "map" / "map.gpkg").is_file() and (log / "map" / "vectorize.json").is_file()
    metrics = eval_main([str(log / "map"), str(tmp_path / "gt")])
    # Two of the 11 poles in view are seen whole in one frame only (x = 8 m, cut by the image's side in
    # its other frame; x = 99 m, at the range limit in the last frame): below min_obs 2.
    poles = metrics["poles"]["@1m"]
    assert poles["precision"] == 1.0 and poles["tp"] >= metrics["poles"]["n_gt"] - 2
    assert metrics["poles"]["mean_error_m"] <= 0.15
    assert metrics["signs"]["@1m"]["f1"] == 1.0 and metrics["signs"]["mean_facing_error_deg"] < 10
    assert (
        metrics["medians"]["footprints"]["AP@1m"] == 1.0 and metrics["medians"]["centerlines"]["AP@1m"] == 1.0
    )
    assert metrics["medians"]["footprints"]["iou"] > 0.85
    assert json.loads((log / "map" / "eval" / "metrics.json").read_text())["poles"] == metrics["poles"]
    assert (log / "map" / "eval" / "map.png").stat().st_size > 10_000
    # the same drive mapped about another origin lands on the same coordinates
    vectorize_main(
        [
            str(log),
            "--quiet",
            "--no-gpkg",
            "--out",
            str(tmp_path / "map2"),
            "--origin",
            "49.01",
            "8.41",
            "100",
        ]
    )
    again = evaluate_maps(tmp_path / "map2", tmp_path / "gt")
    assert again["poles"]["mean_error_m"] == pytest.approx(metrics["poles"]["mean_error_m"], abs=0.005)


def test_user_errors_exit_2_without_traceback(tmp_path):
    for tool, args in (
        ("vectorize.py", [str(tmp_path / "nope")]),
        ("eval_map.py", [str(tmp_path), str(tmp_path)]),
    ):
        proc = subprocess.run(
            [sys.executable, str(REPO / "tools" / tool), *args], capture_output=True, text=True, cwd=REPO
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_slivers_the_coverage_clip_leaves_of_a_footprint_do_not_count(tmp_path):
    """A truth median whose end the coverage's edge just grazes leaves a 0.02 m^2 sliver: no map element."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    strip = Polygon([(0, 0), (40, 0), (40, 2), (0, 2)])
    grazed = Polygon([(49.99, 0), (70, 0), (70, 2), (49.99, 2)])  # starts 1 cm inside the coverage
    coverage = Polygon([(-5, -10), (50, -10), (50, 10), (-5, 10)])
    write_geojson(
        gt / "medians.geojson",
        [Feature(strip, {"kind": "footprint"}), Feature(grazed, {"kind": "footprint"})],
        ORIGIN,
    )
    write_geojson(
        pred / "medians.geojson", [Feature(strip, {"kind": "footprint", "confidence": 0.9})], ORIGIN
    )
    write_geojson(pred / "coverage.geojson", [Feature(coverage, {})], ORIGIN)
    m = evaluate_maps(pred, gt)["medians"]["footprints"]
    assert m["n_gt"] == 1 and m["AP@1m"] == 1.0
    assert evaluate_maps(pred, gt, use_roi=False)["medians"]["footprints"]["n_gt"] == 2


@pytest.mark.slow
def test_console_scripts_exit_0_and_report_on_stdout(tmp_path):
    """``hdmap-vectorize`` and ``hdmap-eval-map`` as installed (``sys.exit(main())``): exit 0 on success,
    the summary on stdout; stderr holds warnings at most, not the summary dict (as ``sys.exit(dict)`` printed)."""
    scene = default_scene()
    log = write_kitti_log(tmp_path / "drive", kitti_like_camera(), trajectory(20), scene)
    _write_truth(tmp_path / "gt", scene)
    bin_dir = Path(sys.executable).parent
    for cmd in (
        [bin_dir / "hdmap-vectorize", log, "--quiet", "--no-gpkg"],
        [bin_dir / "hdmap-eval-map", log / "map", tmp_path / "gt"],
    ):
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "{" not in proc.stderr and "Traceback" not in proc.stderr and proc.stdout.strip()


def test_a_reader_that_stops_early_ends_the_command_quietly_after_its_files(tmp_path):
    """``hdmap-eval-map ... | head``: head exits first; the command still writes its files, then ends as
    SIGPIPE ends ``cat`` (status 141), with no traceback and no "Exception ignored" at exit."""
    scene = default_scene()
    _write_truth(tmp_path / "gt", scene)
    _write_truth(tmp_path / "pred", scene)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tools/eval_map.py"), str(tmp_path / "pred"), str(tmp_path / "gt")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # the reader is gone before the command prints
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == BROKEN_PIPE_EXIT, stderr[-2000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-2000:]
    assert (
        json.loads((tmp_path / "pred" / "eval" / "metrics.json").read_text())["poles"]["@0.5m"]["f1"] == 1.0
    )


def test_a_missing_predicted_layer_is_left_out_with_a_warning_not_scored_empty(tmp_path, caplog):
    scene = default_scene()
    _write_truth(tmp_path / "gt", scene)
    _write_truth(tmp_path / "pred", scene)
    (tmp_path / "pred" / "signs.geojson").unlink()
    metrics = evaluate_maps(tmp_path / "pred", tmp_path / "gt", use_roi=False)
    assert "signs" not in metrics and metrics["poles"]["@0.5m"]["f1"] == 1.0
    assert f"{tmp_path / 'pred' / 'signs.geojson'}: not found; the signs layer is left out" in caplog.text


def test_a_non_finite_coordinate_in_a_layer_is_one_line_exit_2(tmp_path):
    scene = default_scene()
    _write_truth(tmp_path / "gt", scene)
    _write_truth(tmp_path / "pred", scene)
    poles = tmp_path / "pred" / "poles.geojson"
    data = json.loads(poles.read_text())
    data["features"][1]["geometry"]["coordinates"][0] = float("nan")
    poles.write_text(json.dumps(data))  # json writes NaN, as a careless writer would
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/eval_map.py"), str(tmp_path / "pred"), str(tmp_path / "gt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {poles}: feature 1 has a coordinate that is not a finite number"
