"""Benchmark the registered segmenters on this machine's CPU (or GPU with --device cuda).

For each model, in a fresh process (so that its peak memory is its own):
- inference: forward latency and throughput at 512x1024, batch 1 (eval, inference_mode);
- training: one step (forward, cross-entropy, backward, AdamW) at 512x512, batch 2;
- peak resident memory of the process (ru_maxrss; on CUDA also torch's peak allocated memory).

    python bench/bench_models.py                                  # the six Twins, 3 timed repeats
    python bench/bench_models.py --models twins_svt_s twins_svt_tiny --repeats 5 --json out.json
    python bench/bench_models.py --lsa        # cost of the masked window attention against timm's

Prints a Markdown table for docs/benchmarks.md with ratios against twins_svt_s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TWINS = ["twins_svt_s", "twins_svt_b", "twins_svt_l", "twins_pcpvt_s", "twins_pcpvt_b", "twins_pcpvt_l"]
NUM_CLASSES = 6
INFER_SHAPE = (1, 3, 512, 1024)
TRAIN_SHAPE = (2, 3, 512, 512)


def timed(step, warmup: int, repeats: int, sync) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def measure(name: str, warmup: int, repeats: int, device: str, threads: int | None) -> dict:
    """Measure one model in this process; returns a JSON-able dict."""
    import torch
    import torch.nn.functional as F

    from hdmap_seg.models import create_model

    if threads:
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    rss_before_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = create_model(name, NUM_CLASSES).to(device)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6

    model.eval()
    image = torch.randn(INFER_SHAPE, device=device)

    def infer() -> None:
        with torch.inference_mode():
            model(image)

    infer_s = timed(infer, warmup, repeats, sync)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5, weight_decay=0.01)
    images = torch.randn(TRAIN_SHAPE, device=device)
    masks = torch.randint(0, NUM_CLASSES, (TRAIN_SHAPE[0], *TRAIN_SHAPE[2:]), device=device)

    def train_step() -> None:
        loss = F.cross_entropy(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train_s = timed(train_step, warmup, repeats, sync)
    result = {
        "model": name,
        "backbone": model.backbone.encoder.pretrained_cfg.get("architecture"),
        "params_m": round(params_m, 2),
        "infer_ms": round(1000 * statistics.median(infer_s), 1),
        "infer_img_s": round(1 / statistics.median(infer_s), 3),
        "train_step_s": round(statistics.median(train_s), 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_before_model_mib": round(rss_before_mib),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "infer_times_s": [round(t, 4) for t in infer_s],
        "train_times_s": [round(t, 4) for t in train_s],
    }
    if device == "cuda":
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return result


def lsa_cost(repeats: int) -> str:
    """Masked window attention against timm's at the four SVT-S stage sizes of a 512x1024 frame."""
    import torch
    from timm.models.twins import LocallyGroupedAttn

    from hdmap_seg.models import MaskedLocallyGroupedAttn

    rows = [
        "| stage | tokens | timm LSA (ms) | masked LSA (ms) | masked / timm |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for stage, (dim, heads) in enumerate([(64, 2), (128, 4), (256, 8), (512, 16)]):
        H, W = 512 // 4 // 2**stage, 1024 // 4 // 2**stage
        timm_lsa = LocallyGroupedAttn(dim, heads, ws=7).eval()
        masked = MaskedLocallyGroupedAttn(timm_lsa)
        x = torch.randn(1, H * W, dim)
        times = {}
        with torch.inference_mode():
            for _ in range(repeats):  # interleaved, so that other jobs on the machine hit both alike
                for name, attn in (("timm", timm_lsa), ("masked", masked)):
                    start = time.perf_counter()
                    attn(x, (H, W))
                    times.setdefault(name, []).append(time.perf_counter() - start)
        t, m = (1000 * statistics.median(times[k]) for k in ("timm", "masked"))
        rows.append(f"| {stage + 1} | {H}x{W} | {t:.1f} | {m:.1f} | {m / t:.2f} |")
    return "\n".join(rows)


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def table(results: list[dict]) -> str:
    """Markdown table, with ratios against twins_svt_s where it was measured."""
    ref = next((r for r in results if r["model"] == "twins_svt_s"), None)
    rows = [
        "| model | params with head (M) | fwd 512x1024 b1 (ms) | img/s | train step 512x512 b2 (s) | peak RSS (MiB) "
        "| fwd / SVT-S | train / SVT-S |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        fwd = f"{r['infer_ms'] / ref['infer_ms']:.2f}" if ref else "-"
        train = f"{r['train_step_s'] / ref['train_step_s']:.2f}" if ref else "-"
        rows.append(
            f"| {r['model']} | {r['params_m']:.1f} | {r['infer_ms']:.0f} | {r['infer_img_s']:.2f} "
            f"| {r['train_step_s']:.2f} | {r['peak_rss_mib']} | {fwd} | {train} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="+", default=TWINS, help="registry names (hdmap_seg.models.list_models())"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each measurement (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--lsa", action="store_true", help="only time the masked window attention against timm's"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    args = parser.parse_args()

    if args.lsa:
        print(lsa_cost(max(args.repeats, 20)))
        return
    if args.one:
        print(json.dumps(measure(args.one, args.warmup, args.repeats, args.device, args.threads)))
        return

    from rich.progress import Progress

    from hdmap_seg.models import list_models

    unknown = sorted(set(args.models) - set(list_models()))
    if unknown:
        parser.error(f"unknown models {unknown}; registered: {list_models()}")
    # Spinning OpenMP threads stall each other when other jobs share the cores; passive waiting
    # keeps the figures meaningful there (set OMP_WAIT_POLICY yourself to override).
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    results = []
    started = time.time()
    load_before = os.getloadavg()[0]
    with Progress() as progress:
        task = progress.add_task("benchmark", total=len(args.models))
        for name in args.models:
            progress.update(task, description=name)
            child = [sys.executable, __file__, "--one", name, "--repeats", str(args.repeats)]
            child += ["--warmup", str(args.warmup), "--device", args.device]
            child += ["--threads", str(args.threads)] if args.threads else []
            out = subprocess.run(child, check=True, capture_output=True, text=True, env=env).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            progress.advance(task)
    import torch

    # other jobs on the machine slow every figure: the 1-minute load average says how busy it was
    print(
        f"\n{cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
        f"threads, OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}, torch {torch.__version__}, {args.device}, repeats {args.repeats}, warm-up {args.warmup}, "
        f"total {time.time() - started:.0f} s, load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after\n"
    )
    print(table(results))
    if args.json:
        from hdmap_seg.io import write_text_atomic

        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
