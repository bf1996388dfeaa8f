"""``hdmap-eval-map PRED GT`` / ``python tools/eval_map.py``: map metrics of predicted layers against ground truth; JSON, table, PNG.

PRED and GT are folders of ``<layer>.geojson`` (what ``hdmap-vectorize`` writes; a synthetic log's ``gt/``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hdmap_seg.errors import exit_on_user_error
from hdmap_seg.evaluate.map_metrics import CHAMFER_THRESHOLDS_M, POINT_THRESHOLDS_M, evaluate_maps, plot_map
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
    return "\n".join(lines)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """The console script: exits 0 when done (the summary goes to stdout and a file), 2 on a user error."""
    run(argv)


def run(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` and do the work; returns the summary."""
    args = build_parser().parse_args(argv)
    metrics = evaluate_maps(args.pred, args.gt, use_roi=not args.no_roi)
    out = args.out or args.pred / "eval"
    frame = LocalFrame(**metrics.pop("_frame"))
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    plot_map(args.pred, args.gt, frame, out / "map.png")
    print(format_table(metrics))
    print(f"-> {out / 'metrics.json'}, {out / 'map.png'}")
    return metrics


if __name__ == "__main__":
    main()
