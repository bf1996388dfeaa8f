"""End-to-end batch inference against the bare model, and memory over 100 vs 1,000 frames.

    python bench/bench_infer.py [--model twins_svt_tiny] [--scale 0.5] [--frames 400] [--workers 2] [--rounds 3] [--memory-frames 100 1000]

1. Throughput: ``tools/infer.py`` on a synthetic KITTI drive (frames/s of its predict phase: decoding,
   DataLoader workers, model, mask PNG writing) against the bare ``model(x)`` forward on the same frames,
   already decoded and batched, in this process, in ``--rounds`` interleaved rounds (one bare pass, then one
   tools/infer.py run; medians): the machine drifts by 10-15 % over minutes. Goal: infer >= 0.9 x bare.
2. Memory: peak RSS of ``tools/infer.py`` (model, predict and vectorization) over a 100- and a 1,000-frame log.

The checkpoint is the model config with random weights, saved in the training layout: speed does not depend on
the weights. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hdmap_seg.data.classes import ROAD_CLASSES
from hdmap_seg.inference import FrameDataset, FrameJob
from hdmap_seg.paths import CONF_DIR, PROJECT_ROOT
from hdmap_seg.synthetic import SynthConfig, write_drive_log


def make_checkpoint(model_name: str, path: Path) -> torch.nn.Module:
    cfg = OmegaConf.load(CONF_DIR / "model" / f"{model_name}.yaml")
    cfg.num_classes = ROAD_CLASSES.num_classes
    model_config = OmegaConf.to_container(cfg, resolve=True)
    model = instantiate(model_config).eval()
    torch.save(
        {
            "hyper_parameters": {"model_config": model_config, "classes": ROAD_CLASSES.to_dict()},
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        },
        path,
    )
    return model


def run_infer(
    ckpt: Path,
    log: Path | str,
    out: Path,
    batch_size: int,
    workers: int,
    *overrides: str,
    env: dict[str, str] | None = None,
    accelerator: str = "cpu",
) -> tuple[dict, float]:
    """Run tools/infer.py on one device of ``accelerator`` (with further ``key=value`` overrides, in
    ``env``); returns its run summary and the child's peak RSS in MiB. ``log``: a log folder or a glob."""
    cmd = [
        sys.executable,
        str(PROJECT_ROOT / "tools/infer.py"),
        f"ckpt_path={ckpt}",
        f"logs={log}",
        f"out_dir={out}",
        f"hydra.run.dir={out}/hydra",
        f"trainer.accelerator={accelerator}",
        "trainer.devices=1",
        f"batch_size={batch_size}",
        f"num_workers={workers}",
        *overrides,
    ]
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(
            f"tools/infer.py {' '.join(overrides)} failed: {proc.stderr.read().decode()[-2000:]}"
        )
    return json.loads((out / "summary.json").read_text()), usage.ru_maxrss / 1024


def decoded_frames(logs: list[Path]) -> torch.Tensor:
    """``(N, 3, H, W)`` the logs' camera frames as tools/infer.py feeds them to the model (decoded, normalised)."""
    frames = [p for log in logs for p in sorted((log / "image_02/data").glob("*.png"))]
    dataset = FrameDataset([FrameJob(p, p) for p in frames])
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def bare_pass_fps(model: torch.nn.Module, batches: Sequence[torch.Tensor]) -> float:
    """Frames/s of one timed pass of ``model`` over ``batches`` (warm it up first)."""
    start = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model(b)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def median_cell(values: Sequence[float]) -> str:
    """A table cell of interleaved rounds: the median in bold, then every round's figure."""
    return f"**{statistics.median(values):.2f}** ({', '.join(f'{x:.2f}' for x in values)})"


def warm_up(model: torch.nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Two calls on the first batch: the exported runtimes compile a model for a shape met twice."""
    with torch.inference_mode():
        for _ in range(2):
            model(batches[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="twins_svt_tiny")
    p.add_argument(
        "--scale", type=float, default=0.5, help="camera scale of the throughput log (1 = 1242x375)"
    )
    p.add_argument("--frames", type=int, default=400, help="throughput log (400: amortises the start-up)")
    p.add_argument("--memory-frames", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--memory-scale", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds (median)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_infer_"))
    ckpt = work / "model.ckpt"
    model = make_checkpoint(args.model, ckpt)

    log = write_drive_log(
        SynthConfig(seed=21, scale=args.scale, train=0, val=0, frames_per_log=args.frames), 0, work / "fps"
    )
    batches = decoded_frames([log]).split(args.batch_size)
    warm_up(model, batches)
    infer_fps, bare_fps = [], []
    for _ in range(args.rounds):
        bare_fps.append(bare_pass_fps(model, batches))
        summary, _ = run_infer(ckpt, log, work / "out_fps", args.batch_size, args.workers, "overwrite=true")
        infer_fps.append(summary["frames_per_s"])

    memory = {}
    for n in args.memory_frames:
        mlog = write_drive_log(
            SynthConfig(seed=22, scale=args.memory_scale, train=0, val=0, frames_per_log=n),
            0,
            work / f"mem{n}",
        )
        _, rss = run_infer(ckpt, mlog, work / f"out_mem{n}", args.batch_size, args.workers)
        memory[n] = rss

    size = summary["logs"][log.name]
    print(
        f"\n## Batch inference ({date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads)\n"
    )
    print(
        f"Command: `python bench/bench_infer.py --model {args.model} --scale {args.scale} --frames {args.frames} "
        f"--workers {args.workers} --rounds {args.rounds} --memory-frames {' '.join(map(str, args.memory_frames))}`\n"
    )
    infer, bare = statistics.median(infer_fps), statistics.median(bare_fps)
    print(
        "| model | frames | infer frames/s (predict phase), rounds | bare forward frames/s, rounds | ratio of the medians |"
    )
    print("| --- | ---: | --- | --- | ---: |")
    print(
        f"| {args.model} | {size['frames']} | {median_cell(infer_fps)} | {median_cell(bare_fps)} "
        f"| {infer / bare:.2f} |\n"
    )
    print(f"| frames (scale {args.memory_scale}) | peak RSS of tools/infer.py (MiB) |")
    print("| ---: | ---: |")
    for n, rss in memory.items():
        print(f"| {n} | {rss:.0f} |")


if __name__ == "__main__":
    main()
