"""``make demo`` (``hdmap-demo``, ``python tools/demo.py``): the whole product on built-in synthetic data, image to map, in about 20 minutes on 2 CPU cores.

1. generate a synthetic world: a training data set and a held-out drive log (tools/make_synthetic.py);
2. train the tiny Twins (train.py experiment=demo; a GPU is used when present);
3. export the model to ONNX (tools/export.py) and time each installed backend on a few frames of the
   held-out log: the fastest whose labels equal PyTorch's on every pixel runs step 4;
4. batch inference on the held-out log: masks, overlays, GeoJSON layers (tools/infer.py);
5. evaluate the layers against the log's ground truth (tools/eval_map.py);
6. write a report (HTML with PNGs) and print the bar.

Every step prints the command it runs; a rerun resumes (data and masks already written are kept,
training continues from its last checkpoint).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from hdmap_seg.paths import PROJECT_ROOT
from hdmap_seg.report import check_bar, overlay_strip, write_report

# A backend runs the demo's inference only if its labels equal PyTorch's on every pixel: which backend
# is fastest depends on the machine and its load, and the demo's metrics must not.
MIN_AGREEMENT = 1.0


def pick_backend(ckpt: Path, onnx_path: Path, log: Path, n_frames: int = 4) -> tuple[str, Path, dict]:
    """The fastest backend on ``n_frames`` of ``log`` whose labels equal PyTorch's."""
    import torch

    from hdmap_seg.geo.drivelog import open_drive_log
    from hdmap_seg.inference import FrameDataset, FrameJob
    from hdmap_seg.runtime import compare_backends, installed, load_model

    drive = open_drive_log(log)
    step = max(1, len(drive) // n_frames)
    frames = FrameDataset([FrameJob(f.image_path, Path()) for f in drive.frames[::step][:n_frames]])
    images = torch.stack([frames[i]["image"] for i in range(len(frames))])
    paths = {"torch": ckpt, "onnxruntime": onnx_path, "openvino": onnx_path}
    models = {name: load_model(path, name)[0] for name, path in paths.items() if installed(name)}
    stats = compare_backends(models, images)
    ok = [name for name, r in stats.items() if r["agreement"] >= MIN_AGREEMENT]
    best = min(ok, key=lambda name: stats[name]["s_per_frame"])
    for name, r in stats.items():
        mark = "<- runs the inference" if name == best else ""
        print(f"  {name:<12} {r['s_per_frame']:.3f} s/frame, labels agree {r['agreement']:.4%} {mark}")
    return best, paths[best], stats


def run(cmd: list[str]) -> float:
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT)
    if proc.returncode != 0:
        # The step printed its own error; its status says whose it is (2: the user's input, 1: a bug).
        print(f"demo: step failed (exit {proc.returncode}): {shlex.join(cmd)}", file=sys.stderr)
        raise SystemExit(proc.returncode)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", type=Path, default=Path("data/roads"), help="synthetic data set (default: data/roads)"
    )
    p.add_argument(
        "--out", type=Path, default=Path("outputs/demo"), help="run folder (default: outputs/demo)"
    )
    p.add_argument("--train-frames", type=int, default=400)
    p.add_argument("--val-frames", type=int, default=60)
    p.add_argument("--log-frames", type=int, default=150)
    args = p.parse_args()
    py = sys.executable
    timings = {}
    start = time.perf_counter()

    timings["1 data"] = run(
        [
            py,
            "tools/make_synthetic.py",
            "--out",
            str(args.data),
            "--scale",
            "0.5",
            "--train",
            str(args.train_frames),
            "--val",
            str(args.val_frames),
            "--logs",
            "1",
            "--frames-per-log",
            str(args.log_frames),
            "--workers",
            "1",
        ]
    )
    log = sorted((args.data / "logs").iterdir())[0]

    train_dir = args.out / "train"
    last = train_dir / "checkpoints" / "last.ckpt"
    timings["2 train"] = run(
        [
            py,
            "train.py",
            "experiment=demo",
            f"data.root={args.data}",
            f"hydra.run.dir={train_dir}",
            *([f"ckpt_path={last}"] if last.is_file() else []),
        ]
    )
    best = [c for c in sorted((train_dir / "checkpoints").glob("*.ckpt")) if c.name != "last.ckpt"]
    ckpt = best[-1] if best else last

    onnx_path = args.out / "model.onnx"
    timings["3 export"] = run([py, "tools/export.py", str(ckpt), "--out", str(onnx_path)])
    print("\nBackends on frames of the held-out log:", flush=True)
    backend, model_path, backend_stats = pick_backend(ckpt, onnx_path, log)

    infer_dir = args.out / "infer"
    timings["4 infer"] = run(
        [
            py,
            "tools/infer.py",
            f"ckpt_path={model_path}",
            f"backend={backend}",
            f"logs={log}",
            f"out_dir={infer_dir}",
            "overlays=true",
            "flip=true",
            f"hydra.run.dir={args.out / 'infer_hydra'}",
        ]
    )

    eval_dir = args.out / "eval"
    timings["5 eval"] = run(
        [py, "tools/eval_map.py", str(infer_dir / log.name / "map"), str(log / "gt"), "--out", str(eval_dir)]
    )

    metrics = json.loads((eval_dir / "metrics.json").read_text())
    summary = json.loads((infer_dir / log.name / "summary.json").read_text())
    overlays = sorted((infer_dir / log.name / "overlays").glob("*.jpg"))
    report_dir = args.out / "report"
    pictures = {
        "Predicted masks over held-out frames": overlay_strip(
            overlays[:: max(1, len(overlays) // 4)][:4], report_dir / "overlays.png"
        ),
        "Learning curve (train.py experiment=demo)": train_dir / "learning_curve.png",
        "Map: predicted layers over the ground truth": eval_dir / "map.png",
    }
    facts = {
        "checkpoint": str(ckpt),
        "held-out log": f"{log} ({summary['frames']} frames)",
        "inference": f"{summary['run']['frames_per_s']} frames/s on {backend}"
        if summary["run"]["frames_per_s"]
        else "resumed",
        "backends (s per frame, labels agreeing with torch)": ", ".join(
            f"{k} {v['s_per_frame']:.3f} s, {v['agreement']:.2%}" for k, v in backend_stats.items()
        ),
        "features": json.dumps(summary["features"]),
        **{f"time: {k}": f"{v:.0f} s" for k, v in timings.items()},
        "time: total": f"{time.perf_counter() - start:.0f} s",
    }
    page = write_report(report_dir, metrics, {k: v for k, v in pictures.items() if Path(v).is_file()}, facts)

    print("\nThe bar, from predicted masks:")
    rows = check_bar(metrics)
    for name, value, minimum, ok in rows:
        print(
            f"  {name:<28} {'-' if value is None else f'{value:.3f}':>6}  (>= {minimum})  {'pass' if ok else 'FAIL'}"
        )
    print(f"\nreport: {page}\ntotal: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
