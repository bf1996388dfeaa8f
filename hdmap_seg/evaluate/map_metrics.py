"""Map metrics: predicted layers against ground-truth layers (GeoJSON folders).

Points (poles, signs): one-to-one matching on horizontal distance (Hungarian, scipy), precision,
recall and F1 at 0.5 / 1 / 2 m; mean and 90th-percentile horizontal error of the pairs matched at
2 m (signs also their altitude, height-above-ground and facing errors, the facing also modulo 180 deg).

Lines and polygons (median centre lines and footprints, lane markings): MapTR's Chamfer AP. Each
line, or polygon's exterior ring, is resampled to ``FIXED_NUM`` points evenly along its length
(MapTR's elements lie in a 60 x 30 m patch, so 100 points are at most 0.6 m apart; a map's medians
run for hundreds of metres, so more points are taken where they would be over ``MAX_SPACING_M``
apart, lest the sampling alone cost a metre of Chamfer distance); the Chamfer distance of two is the mean of both directed mean nearest-point distances. Predictions,
by descending ``confidence``, are true positives when their nearest ground truth (smallest Chamfer
distance) is within the threshold and not yet taken (MapTR's ``custom_tpfp_gen``); AP is the area
under the precision envelope (mmdet's ``average_precision``, mode ``area``) at 0.5 / 1.0 / 1.5 m.
Footprints also get their IoU (areas of the unions).

Evaluation happens inside a region of interest: the prediction's ``coverage.geojson`` (the ground
the drive saw within range) when present, so that ground truth the camera never saw is not counted
missing; both sides are clipped to it. Distances are metres in a local frame at the truth's centre.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import shapely
from scipy.optimize import linear_sum_assignment
from shapely.geometry import LineString, Polygon, mapping
from shapely.geometry.base import BaseGeometry

from hdmap_seg import lanemerge
from hdmap_seg.errors import HdmapError
from hdmap_seg.export.geojson import read_geojson, to_world
from hdmap_seg.geo.frames import LocalFrame, angle_diff_deg
from hdmap_seg.io import write_text_atomic
from hdmap_seg.mapmerge import CHANGES, read_map

log = logging.getLogger(__name__)

POINT_THRESHOLDS_M = (0.5, 1.0, 2.0)
CHAMFER_THRESHOLDS_M = (0.5, 1.0, 1.5)
FIXED_NUM = 100
MAX_SPACING_M = 0.25
POINT_LAYERS = ("poles", "signs")


# ------------------------------------------------------------------------------------ points


def match_points(pred_xy: np.ndarray, gt_xy: np.ndarray, threshold_m: float) -> list[tuple[int, int, float]]:
    """One-to-one pairs ``(pred, gt, distance)`` with distance <= threshold, maximising the pairs, then closeness."""
    if len(pred_xy) == 0 or len(gt_xy) == 0:
        return []
    d = np.linalg.norm(pred_xy[:, None, :2] - gt_xy[None, :, :2], axis=2)
    ok = d <= threshold_m
    # Every allowed pair costs less than any forbidden one, so the most pairs are made first.
    cost = np.where(ok, d / max(threshold_m, 1e-9), 1e6)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c), float(d[r, c])) for r, c in zip(rows, cols, strict=True) if ok[r, c]]


def point_metrics(pred: np.ndarray, gt: np.ndarray, pred_props=None, gt_props=None) -> dict:
    """P/R/F1 per threshold and errors of the pairs at the largest threshold; points ``(N, 3)`` metres."""
    out: dict = {"n_pred": int(len(pred)), "n_gt": int(len(gt))}
    for thr in POINT_THRESHOLDS_M:
        tp = len(match_points(pred, gt, thr))
        p = tp / len(pred) if len(pred) else 0.0
        r = tp / len(gt) if len(gt) else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        out[f"@{thr:g}m"] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4), "tp": tp}
    pairs = match_points(pred, gt, max(POINT_THRESHOLDS_M))
    err = np.array([d for _, _, d in pairs])
    out["mean_error_m"] = round(float(err.mean()), 4) if len(err) else None
    out["p90_error_m"] = round(float(np.percentile(err, 90)), 4) if len(err) else None
    if pairs and pred.shape[1] == 3 and gt.shape[1] == 3:
        dz = np.array([abs(pred[i, 2] - gt[j, 2]) for i, j, _ in pairs])
        out["mean_alt_error_m"] = round(float(dz.mean()), 4)
    if pairs and pred_props and gt_props and all("facing_deg" in p for p in pred_props + gt_props):
        dang = np.array(
            [angle_diff_deg(pred_props[i]["facing_deg"], gt_props[j]["facing_deg"]) for i, j, _ in pairs]
        )
        out["mean_facing_error_deg"] = round(float(np.mean(dang)), 2)
        # The plate's axis, what masks can tell (a drive that saw a plate's back maps the back's facing;
        # docs/map.md, "Limitations"), and how many pairs point the opposite way.
        out["mean_facing_axis_error_deg"] = round(float(np.mean(np.minimum(dang, 180.0 - dang))), 2)
        out["facing_reversed"] = int(np.sum(dang > 90.0))
    if pairs and pred_props and gt_props and all("height_m" in p for p in pred_props + gt_props):
        dh = np.array([abs(pred_props[i]["height_m"] - gt_props[j]["height_m"]) for i, j, _ in pairs])
        out["mean_height_error_m"] = round(float(dh.mean()), 4)
        out["max_height_error_m"] = round(float(dh.max()), 4)
    return out


# ---------------------------------------------------------------------------- lines, polygons


def resample(geom: BaseGeometry, n: int = FIXED_NUM) -> np.ndarray:
    """Points evenly along a LineString or a Polygon's exterior ring: ``n``, or more where they would lie
    over ``MAX_SPACING_M`` apart (see the module docstring)."""
    line = geom.exterior if isinstance(geom, Polygon) else geom
    n = max(n, int(np.ceil(line.length / MAX_SPACING_M)) + 1)
    return shapely.get_coordinates(shapely.line_interpolate_point(line, np.linspace(0.0, line.length, n)))


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """MapTR's Chamfer distance of two point sets: mean of both directed mean nearest distances."""
    d = np.linalg.norm(a[:, None] - b[None], axis=2)
    return float(0.5 * (d.min(axis=1).mean() + d.min(axis=0).mean()))


def average_precision(recalls: np.ndarray, precisions: np.ndarray) -> float:
    """Area under the precision envelope (mmdet ``average_precision``, mode ``area``)."""
    mrec = np.concatenate([[0.0], recalls, [1.0]])
    mpre = np.concatenate([[0.0], precisions, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def chamfer_ap(pred: list[BaseGeometry], scores: list[float], gt: list[BaseGeometry]) -> dict:
    """Chamfer AP at each threshold, MapTR's matching (see the module docstring)."""
    out: dict = {"n_pred": len(pred), "n_gt": len(gt)}
    if not gt:
        for thr in CHAMFER_THRESHOLDS_M:
            out[f"AP@{thr:g}m"] = None
        return out
    gt_pts = [resample(g) for g in gt]
    cd = np.array([[chamfer(resample(p), g) for g in gt_pts] for p in pred]).reshape(len(pred), len(gt))
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    for thr in CHAMFER_THRESHOLDS_M:
        tp = np.zeros(len(pred))
        covered = np.zeros(len(gt), bool)
        for rank, i in enumerate(order):
            j = int(np.argmin(cd[i]))
            if cd[i, j] <= thr and not covered[j]:
                covered[j] = True
                tp[rank] = 1
        ctp = np.cumsum(tp)
        recalls = ctp / len(gt)
        precisions = ctp / np.maximum(np.arange(1, len(pred) + 1), 1)
        out[f"AP@{thr:g}m"] = round(average_precision(recalls, precisions), 4) if len(pred) else 0.0
    return out


def polygon_iou(pred: list[BaseGeometry], gt: list[BaseGeometry]) -> float | None:
    """IoU of the unions of two polygon sets (None when both are empty)."""
    p, g = shapely.union_all(pred) if pred else Polygon(), shapely.union_all(gt) if gt else Polygon()
    union = p.union(g).area
    return round(float(p.intersection(g).area / union), 4) if union > 0 else None


# ----------------------------------------------------------------------------------- folders


def _load(folder: Path, name: str, frame: LocalFrame) -> list[tuple[BaseGeometry, dict]]:
    """A layer in the world frame (none when its file is absent: :func:`evaluate_maps` decides what
    that means); a feature with a non-finite coordinate is an error, not a miss."""
    path = folder / f"{name}.geojson"
    if not path.is_file():
        return []
    features = read_geojson(path)
    for i, (g, _) in enumerate(features):
        if not np.isfinite(shapely.get_coordinates(g, include_z=g.has_z)).all():
            raise HdmapError(f"{path}: feature {i} has a coordinate that is not a finite number")

    return [(to_world(g, frame), props) for g, props in features]


def _frame_of(gt_dir: Path) -> LocalFrame:
    for name in (*POINT_LAYERS, "medians", "lane_markings"):
        path = gt_dir / f"{name}.geojson"
        if path.is_file():
            feats = read_geojson(path)
            if feats:
                c = shapely.get_coordinates(shapely.union_all([g for g, _ in feats]).centroid)[0]
                return LocalFrame(float(c[1]), float(c[0]), 0.0)
    raise HdmapError(
        f"{gt_dir}: no ground-truth layer (poles/signs/medians/lane_markings.geojson) with features"
    )


def _split_medians(feats) -> tuple[list, list]:
    polys = [(g, p) for g, p in feats if g.geom_type in ("Polygon", "MultiPolygon")]
    lines = [(g, p) for g, p in feats if g.geom_type in ("LineString", "MultiLineString")]
    return polys, lines


# Parts of clipped elements smaller than these are dropped (a footprint's perimeter is no measure of its size).
_MIN_CLIPPED_AREA_M2 = 0.5
_MIN_CLIPPED_LENGTH_M = 0.5


def _clip(items, roi: BaseGeometry | None, points: bool = False):
    if roi is None:
        return items
    if points:
        return [(g, p) for g, p in items if roi.covers(shapely.Point(g.x, g.y))]
    out = []
    for g, p in items:
        c = g.intersection(roi)
        for part in shapely.get_parts(c):
            # Slivers the clip leaves where the region's edge grazes a footprint are no element of a map.
            if (part.geom_type == "Polygon" and part.area >= _MIN_CLIPPED_AREA_M2) or (
                part.geom_type == "LineString" and part.length >= _MIN_CLIPPED_LENGTH_M
            ):
                out.append((part, p))
    return out


def evaluate_maps(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, use_roi: bool = True) -> dict:
    """Every layer that the ground truth has; returns the metrics as a JSON-ready dict."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for d in (pred_dir, gt_dir):
        if not d.is_dir():
            raise HdmapError(f"{d}: layer folder not found")
    frame = _frame_of(gt_dir)
    roi = None
    if use_roi and (pred_dir / "coverage.geojson").is_file():
        cover = [g for g, _ in _load(pred_dir, "coverage", frame)]
        roi = shapely.union_all(cover) if cover else None
    scored = []
    for name in (*POINT_LAYERS, "medians"):
        if not (gt_dir / f"{name}.geojson").is_file():
            continue
        if (pred_dir / f"{name}.geojson").is_file():
            scored.append(name)
        else:
            # Not scored as empty: a missing file is a model without that class or a misdirected run.
            log.warning(
                "%s: not found; the %s layer is left out of the metrics", pred_dir / f"{name}.geojson", name
            )
    result: dict = {
        "pred": str(pred_dir),
        "gt": str(gt_dir),
        "roi": "coverage" if roi is not None else "none",
    }
    for name in (n for n in POINT_LAYERS if n in scored):
        gt = _clip(_load(gt_dir, name, frame), roi, points=True)
        pred = _clip(_load(pred_dir, name, frame), roi, points=True)
        result[name] = point_metrics(_coords(pred), _coords(gt), [p for _, p in pred], [p for _, p in gt])
    if "medians" in scored:
        gt_polys, gt_lines = (_clip(x, roi) for x in _split_medians(_load(gt_dir, "medians", frame)))
        pr_polys, pr_lines = (_clip(x, roi) for x in _split_medians(_load(pred_dir, "medians", frame)))
        result["medians"] = {
            "footprints": {
                **chamfer_ap([g for g, _ in pr_polys], _scores(pr_polys), [g for g, _ in gt_polys]),
                "iou": polygon_iou([g for g, _ in pr_polys], [g for g, _ in gt_polys]),
            },
            "centerlines": chamfer_ap([g for g, _ in pr_lines], _scores(pr_lines), [g for g, _ in gt_lines]),
        }
    if (gt_dir / "lane_markings.geojson").is_file() and (pred_dir / "lane_markings.geojson").is_file():
        gt = _clip(_load(gt_dir, "lane_markings", frame), roi)
        pred = _clip(_load(pred_dir, "lane_markings", frame), roi)
        result["lane_markings"] = chamfer_ap([g for g, _ in pred], _scores(pred), [g for g, _ in gt])
    result["_frame"] = frame.to_dict()
    return result


def _coords(items) -> np.ndarray:
    return np.array([g.coords[0] if g.has_z else (*g.coords[0], 0.0) for g, _ in items], float).reshape(-1, 3)


def _scores(items) -> list[float]:
    return [float(p.get("confidence", 1.0) if p.get("confidence") is not None else 1.0) for _, p in items]


def load_for_plot(pred_dir: Path, gt_dir: Path, frame: LocalFrame) -> dict[str, tuple[list, list]]:
    """``{layer: (pred geometries, gt geometries)}`` in the metric frame, for the map plot."""
    return {
        name: ([g for g, _ in _load(pred_dir, name, frame)], [g for g, _ in _load(gt_dir, name, frame)])
        for name in (*POINT_LAYERS, "medians", "lane_markings", "coverage")
    }


def plot_map(pred_dir: Path, gt_dir: Path, frame: LocalFrame, path: Path) -> None:
    """PNG of prediction over truth: truth in grey/black, prediction in colour, coverage shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hdmap_seg.io import atomic_path

    layers = load_for_plot(pred_dir, gt_dir, frame)
    xy = np.concatenate(
        [shapely.get_coordinates(g) for pr, gt in layers.values() for g in pr + gt] or [np.zeros((1, 2))]
    )
    span = np.ptp(xy, axis=0) + 20
    fig, ax = plt.subplots(figsize=(min(24, max(6, span[0] / 15)), min(24, max(5, span[1] / 15))))
    for g in layers["coverage"][0]:
        for poly in shapely.get_parts(g):
            ax.fill(*poly.exterior.xy, color="#e8eef8", zorder=0)
    styles = {  # (layer, 1 = truth / 0 = prediction) -> line style
        ("medians", 1): {"color": "0.45", "lw": 2.5},
        ("medians", 0): {"color": "tab:green", "lw": 1.2},
        ("lane_markings", 1): {"color": "0.75", "lw": 1.0, "ls": "--"},
        ("lane_markings", 0): {"color": "tab:purple", "lw": 0.8, "ls": "--"},
    }
    for (name, is_truth), style in styles.items():
        for g in layers[name][is_truth]:
            for part in shapely.get_parts(g):
                line = part.exterior if isinstance(part, Polygon) else part
                if isinstance(line, (LineString, shapely.LinearRing)):
                    ax.plot(*line.xy, zorder=2 - is_truth, **style)
    for name, marker, colour in (("poles", "o", "tab:blue"), ("signs", "^", "tab:red")):
        pred, gt = layers[name]
        if gt:
            ax.scatter(
                *np.array([g.coords[0][:2] for g in gt]).T,
                s=70,
                facecolors="none",
                edgecolors="k",
                marker=marker,
                zorder=3,
                label=f"{name} truth",
            )
        if pred:
            ax.scatter(
                *np.array([g.coords[0][:2] for g in pred]).T,
                s=18,
                c=colour,
                marker=marker,
                zorder=4,
                label=f"{name} predicted",
            )
    for (name, is_truth), style in styles.items():
        if layers[name][is_truth]:
            ax.plot([], [], label=f"{name} {'truth' if is_truth else 'predicted'}", **style)
    ax.set_aspect("equal")
    ax.set_xlabel("east (m)")
    ax.set_ylabel("north (m)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_title(f"{pred_dir} over {gt_dir}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------- truth of many drives


CHANGE_THRESHOLD_M = 1.5
CHANGE_KINDS = ("removed", "added", "moved")


def evaluate_changes(map_dir: str | os.PathLike, edits_path: str | os.PathLike) -> dict:
    """A merged map's ``changes.geojson`` (hdmap-merge) against the world's edits (the synthetic
    ``edits.geojson``): precision and recall per kind of change, of the changes the map applied and
    of all reported (any drive's view, agreed or not), and the removals reported outside the
    reporting drive's coverage (there should be none).

    A change is one per map feature (its last report; none for the feature a reported move left). It
    matches an edit of the same kind and layer one-to-one when within ``CHANGE_THRESHOLD_M``: a removal
    where the object was, an addition where it is, a move at both ends.
    """
    map_dir, edits_path = Path(map_dir), Path(edits_path)
    state = read_map(map_dir)
    frame = state.origin
    coverage = {d["id"]: shapely.from_wkb(d["coverage"]) for d in state.drives}
    if not (map_dir / f"{CHANGES}.geojson").is_file():
        raise HdmapError(f"{map_dir / f'{CHANGES}.geojson'}: not found (hdmap-merge writes it)")
    reports = _load(map_dir, CHANGES, frame)
    latest: dict[tuple[str, int], tuple[BaseGeometry, dict]] = {}
    for g, props in reports:
        latest[(props["layer"], props["feature_id"])] = (g, props)
    # A feature a move left is that move's other end, whatever a drive that missed it said before.
    for _, props in list(latest.values()):
        if props.get("from_feature_id") is not None:
            latest.pop((props["layer"], props["from_feature_id"]), None)
    if not edits_path.is_file():
        raise HdmapError(f"{edits_path}: edits file not found")
    edits = []
    for _, props in read_geojson(edits_path):
        ends = [
            None if props.get(k) is None else frame.world_from_wgs84_points(np.array([props[k]], float))[0]
            for k in ("old", "new")
        ]
        edits.append((props["change"], props["layer"], *ends))

    def ends(g: BaseGeometry, kind: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        xy = shapely.get_coordinates(g)
        return (xy[0], None) if kind == "removed" else (None, xy[-1]) if kind == "added" else (xy[0], xy[-1])

    def score(pred: list) -> dict:
        out = {}
        tp_all = 0
        for kind in CHANGE_KINDS:
            p = [x for x in pred if x[0] == kind]
            e = [x for x in edits if x[0] == kind]
            cost = np.full((len(p), len(e)), np.inf)
            for i, (_, layer, old, new) in enumerate(p):
                for j, (_, layer_e, old_e, new_e) in enumerate(e):
                    if layer == layer_e:
                        d = [
                            np.linalg.norm(a[:2] - b[:2])
                            for a, b in ((old, old_e), (new, new_e))
                            if a is not None
                        ]
                        cost[i, j] = max(d)
            ok = cost <= CHANGE_THRESHOLD_M
            rows, cols = linear_sum_assignment(np.where(ok, cost, 1e6)) if ok.size else ([], [])
            tp = sum(bool(ok[r, c]) for r, c in zip(rows, cols, strict=True))
            tp_all += tp
            out[kind] = {"n_pred": len(p), "n_edits": len(e), "tp": tp}
        n_pred, n_edits = len(pred), len(edits)
        out["precision"] = tp_all / n_pred if n_pred else None
        out["recall"] = tp_all / n_edits if n_edits else None
        out["tp"], out["n_pred"], out["n_edits"] = tp_all, n_pred, n_edits
        return out

    reported = [(p["change"], p["layer"], *ends(g, p["change"])) for g, p in latest.values()]
    applied = [(p["change"], p["layer"], *ends(g, p["change"])) for g, p in latest.values() if p["applied"]]
    outside = 0
    for g, p in reports:
        region = coverage.get(p["drive"])
        if p["change"] == "removed" and (region is None or not region.covers(g)):
            outside += 1
    return {"applied": score(applied), "reported": score(reported), "removed_outside_coverage": outside}


def _union_lane_truth(feats: list[tuple[BaseGeometry, dict]]) -> list[tuple[BaseGeometry, dict]]:
    """The lane lines of several drives' truth (lon/lat) as one per stretch of a world line: pieces of
    one line (the same ``side`` and ``line``; a line broken at median openings has several) that run
    along each other are one, run out over the stretch each saw (:func:`hdmap_seg.lanemerge.fuse`
    with no weight: the truth is exact, only its extent differs)."""
    frame = LocalFrame(*shapely.get_coordinates(feats[0][0])[0, ::-1], 0.0)
    groups: dict[tuple, list[tuple[LineString, dict]]] = {}
    for g, p in feats:
        groups.setdefault((p.get("side"), p.get("line")), []).append(
            (shapely.force_2d(to_world(g, frame)), p)
        )
    out = []
    for pieces in groups.values():
        merged: list[tuple[np.ndarray, dict]] = []
        for line, p in sorted(pieces, key=lambda t: -t[0].length):
            for k, (xy, q) in enumerate(merged):
                if lanemerge.overlap_m(xy, line, 0.05) > 0:
                    merged[k] = (lanemerge.fuse(xy, np.ones(len(xy)), line, 0.0, 0.05)[0], q)
                    break
            else:
                merged.append((lanemerge.resample(line), p))
        for xy, p in merged:
            lonlat = frame.wgs84_from_world_points(np.c_[xy, np.zeros(len(xy))])[:, :2]
            out.append((LineString(lonlat), p))
    return out


def union_ground_truth(gt_dirs: list[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """The truth of several drives of one world (synthetic logs' ``gt/``) as one folder, for scoring a
    merged map: poles and signs once per ``id`` (ids are the world's, the same in every log); median
    footprints united where they overlap, each with the longest centre line inside it (the drives cover
    about one stretch, so the longest stands for all); lane markings as the world's lines over the
    stretch any drive saw (:func:`_union_lane_truth`)."""
    out_dir = Path(out_dir)
    layers: dict[str, list[tuple[BaseGeometry, dict]]] = {}
    for d in gt_dirs:
        for name in (*POINT_LAYERS, "medians", "lane_markings"):
            if (Path(d) / f"{name}.geojson").is_file():
                layers.setdefault(name, []).extend(read_geojson(Path(d) / f"{name}.geojson"))
    out: dict[str, list[tuple[BaseGeometry, dict]]] = {}
    for name in POINT_LAYERS:
        if name in layers:
            out[name] = list({p["id"]: (g, p) for g, p in reversed(layers[name])}.values())[::-1]
    if "medians" in layers:
        polys, lines = _split_medians(layers["medians"])
        merged = []
        for k, part in enumerate(
            shapely.get_parts(shapely.union_all([g for g, _ in polys]) if polys else Polygon())
        ):
            props = {"kind": "footprint", "median_id": k}
            merged.append((part, props))
            inside = [g for g, _ in lines if part.buffer(1e-6).intersects(g)]
            if inside:
                merged.append((max(inside, key=lambda g: g.length), {**props, "kind": "centerline"}))
        out["medians"] = merged
    if "lane_markings" in layers:
        out["lane_markings"] = _union_lane_truth(layers["lane_markings"])
    for name, feats in out.items():
        fc = {
            "type": "FeatureCollection",
            "name": name,
            "features": [{"type": "Feature", "geometry": mapping(g), "properties": p} for g, p in feats],
        }
        write_text_atomic(out_dir / f"{name}.geojson", json.dumps(fc) + "\n")
    return out_dir
