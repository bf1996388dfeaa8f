"""Merged map against its single drives: the bar of docs/map.md, "Merging drives".

    python tools/make_synthetic.py --out /tmp/md0 --train 0 --val 0 --drives 3 --frames-per-log 200 --seed 0
    python bench/bench_merge.py /tmp/md0 /tmp/md1 /tmp/md2

For each data set: every log is vectorized from its true masks (``tools/vectorize.py LOG --quiet``, kept
if LOG/map/vectorize.json exists), the logs are merged (``tools/merge.py --out ROOT/merged``), and the
merged map and each single drive are scored (``tools/eval_map.py``) against the union of the logs'
truth (``map_metrics.union_ground_truth``: a single drive is clipped to its own coverage, so it is not
blamed for what it never saw). Prints one row a map and writes ``--out`` (default ``merge_bar.json`` here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tool(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / script), *args], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise SystemExit(f"{script} {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("roots", type=Path, nargs="+", help="make_synthetic --drives output folders")
    p.add_argument("--out", type=Path, default=Path("merge_bar.json"))
    args = p.parse_args()
    from hdmap_seg.evaluate.map_metrics import union_ground_truth

    rows = []
    for root in args.roots:
        logs = sorted((root / "logs").glob("synthetic_drive_*"))
        for log in logs:
            if not (log / "map" / "vectorize.json").is_file():
                tool("vectorize.py", str(log), "--quiet")
        gt = union_ground_truth([log / "gt" for log in logs], root / "gt_union")
        merged = root / "merged"
        if not (merged / "merge.json").is_file():
            tool("merge.py", "--out", str(merged), *(str(log / "map") for log in logs))
        for name, pred in [("merged", merged)] + [(log.name, log / "map") for log in logs]:
            tool("eval_map.py", str(pred), str(gt), "--out", str(root / "eval" / name))
            m = json.loads((root / "eval" / name / "metrics.json").read_text())
            row = {"data": root.name, "map": name}
            for layer in ("poles", "signs"):
                r = m.get(layer, {})
                row |= {
                    f"{layer}_pred": r.get("n_pred"),
                    f"{layer}_gt": r.get("n_gt"),
                    f"{layer}_f1@0.5": r.get("@0.5m", {}).get("f1"),
                    f"{layer}_f1@1": r.get("@1m", {}).get("f1"),
                    f"{layer}_mean_err_m": r.get("mean_error_m"),
                }
            lanes = m.get("lane_markings", {})
            row |= {f"lanes_{k}": lanes.get(k) for k in ("n_pred", "n_gt", "AP@0.5m", "AP@1m", "AP@1.5m")}
            rows.append(row)
            print(
                f"{root.name:<8} {name:<22} poles {row['poles_pred']}/{row['poles_gt']} F1@0.5 {row['poles_f1@0.5']}"
                f" F1@1 {row['poles_f1@1']} err {row['poles_mean_err_m']}   signs {row['signs_pred']}/"
                f"{row['signs_gt']} F1@0.5 {row['signs_f1@0.5']} F1@1 {row['signs_f1@1']} err {row['signs_mean_err_m']}"
                f"   lanes {row['lanes_n_pred']}/{row['lanes_n_gt']} AP@0.5/1/1.5 {row['lanes_AP@0.5m']}"
                f" {row['lanes_AP@1m']} {row['lanes_AP@1.5m']}",
                flush=True,
            )
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
