"""``hdmap-eval-map PRED GT`` / ``python tools/eval_map.py``: map metrics of predicted layers against ground truth; JSON, table, PNG.

PRED and GT are folders of ``<layer>.geojson`` (what ``hdmap-vectorize`` writes; a synthetic log's ``gt/``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hdmap_seg.errors import exit_on_user_error
from hdmap_seg.evaluate.map_metrics import (
    CHAMFER_THRESHOLDS_M,
    CHANGE_KINDS,
    POINT_THRESHOLDS_M,
    evaluate_changes,
    evaluate_maps,
    plot_map,
)
from hdmap_seg.geo.frames import LocalFrame
from hdmap_seg.io import write_text_atomic


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hdmap-eval-map",
        description="Map metrics: points P/R/F1 at 0.5/1/2 m, Chamfer AP at 0.5/1.0/1.5 m, polygon IoU.",
        epilog="Definitions: docs/map.md, 'Map metrics'.",
    )
    p.add_argument(
        "pred", type=Path, help="folder of predicted layers (poles/signs/medians/lane_markings.geojson)"
    )
    p.add_argument("gt", type=Path, help="folder of ground-truth layers")
    p.add_argument("--out", type=Path, help="where metrics.json and map.png go (default: PRED/eval)")
    p.add_argument("--no-roi", action="store_true", help="do not clip to the prediction's coverage.geojson")
    p.add_argument(
        "--edits",
        type=Path,
        help="also score PRED/changes.geojson (a map hdmap-merge wrote) against these edits (a synthetic edits.geojson)",
    )
    return p


def format_table(m: dict) -> str:
    """The metrics as a plain-text table."""
    lines = []
    head = "".join(f"  P/R/F1@{t:g}m      " for t in POINT_THRESHOLDS_M)
    lines.append(f"{'layer':<22}{'pred':>5}{'gt':>5}{head}  mean/p90 err (m)")
    for name in ("poles", "signs"):
        if name not in m:
            continue
        r = m[name]
        cells = "".join(
            f"  {r[k]['precision']:.2f}/{r[k]['recall']:.2f}/{r[k]['f1']:.2f}   "
            for k in (f"@{t:g}m" for t in POINT_THRESHOLDS_M)
        )
        err = "-" if r["mean_error_m"] is None else f"{r['mean_error_m']:.3f}/{r['p90_error_m']:.3f}"
        lines.append(f"{name:<22}{r['n_pred']:>5}{r['n_gt']:>5}{cells}  {err}")
    rows = []
    if "medians" in m:
        rows += [
            ("median footprints", m["medians"]["footprints"]),
            ("median centre lines", m["medians"]["centerlines"]),
        ]
    if "lane_markings" in m:
        rows.append(("lane markings", m["lane_markings"]))
    if rows:
        head = "".join(f"  AP@{t:g}m" for t in CHAMFER_THRESHOLDS_M)
        lines.append(f"{'layer':<22}{'pred':>5}{'gt':>5}{head}    IoU")
        for name, r in rows:
            aps = "".join(
                "      -" if r[f"AP@{t:g}m"] is None else f"  {r[f'AP@{t:g}m']:.3f}"
                for t in CHAMFER_THRESHOLDS_M
            )
            iou = r.get("iou")
            lines.append(
                f"{name:<22}{r['n_pred']:>5}{r['n_gt']:>5}{aps}  {'' if iou is None else f'{iou:.3f}'}"
            )
    if "changes" in m:
        c = m["changes"]
        for which in ("applied", "reported"):
            r = c[which]
            kinds = ", ".join(f"{k} {r[k]['tp']}/{r[k]['n_pred']} of {r[k]['n_edits']}" for k in CHANGE_KINDS)
            p = "-" if r["precision"] is None else f"{r['precision']:.2f}"
            rec = "-" if r["recall"] is None else f"{r['recall']:.2f}"
            lines.append(f"changes {which:<14} P {p} R {rec}  (true/predicted of edits: {kinds})")
        lines.append(f"removals outside the reporting drive's coverage: {c['removed_outside_coverage']}")
    return "\n".join(lines)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """The console script: exits 0 when done (the summary goes to stdout and a file), 2 on a user error."""
    run(argv)


def run(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` and do the work; returns the summary."""
    args = build_parser().parse_args(argv)
    metrics = evaluate_maps(args.pred, args.gt, use_roi=not args.no_roi)
    if args.edits is not None:
        metrics["changes"] = evaluate_changes(args.pred, args.edits)
    out = args.out or args.pred / "eval"
    frame = LocalFrame(**metrics.pop("_frame"))
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    plot_map(args.pred, args.gt, frame, out / "map.png")
    print(format_table(metrics))
    print(f"-> {out / 'metrics.json'}, {out / 'map.png'}")
    return metrics


if __name__ == "__main__":
    main()
