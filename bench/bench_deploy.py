"""Deployment runtimes on this CPU: Twins-SVT-S + light head on eager PyTorch, torch.compile, onnxruntime,
OpenVINO and int8 (static QDQ and dynamic), against two peers (smp SegFormer on the same timm Twins encoder,
torchvision DeepLabV3-ResNet50), all in one process.

    python bench/bench_deploy.py                                   # the full table (see docs/benchmarks.md)
    python bench/bench_deploy.py --sizes 128x256 --rounds 2        # smoke run: every row, seconds
    python bench/bench_deploy.py --runs eager ort_fp32 ov_fp32 --sizes 512x1024 --out /tmp/deploy.md
    python bench/bench_deploy.py --e2e                             # also tools/infer.py per backend

Method: batch 1, one fixed random frame per size for every run; every run is warmed up at every size first,
then ``--rounds`` rounds each time every (size, run) once in turn, so that other jobs on the machine slow
all runs alike; the figure is the median of the rounds. Every runtime gets ``--threads`` threads
(``torch.set_num_threads``, onnxruntime's intra-op threads, OpenVINO's ``INFERENCE_NUM_THREADS``).

Columns: seconds per frame; speed-up against eager PyTorch of the same model (peers: against our eager
Twins); achieved GFLOP/s = the model's FLOPs at that size (``torch.utils.flop_counter.FlopCounterMode`` on the
eager model: 2 per multiply-add) / seconds; and that as % of this machine's fp32 matmul peak on the same
threads (best of several 2048x2048 ``torch.matmul``, measured in this process). int8 rows use the fp32
model's FLOPs, so their % of the fp32 peak can pass 100.

``--e2e``: ``tools/infer.py`` frames/s (its predict phase: decoding, workers, model, mask writing) per backend on
a small synthetic KITTI drive, against that backend's bare forward on the same decoded frames, in
``--e2e-rounds`` interleaved rounds (median); the checkpoint holds random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from bench_infer import bare_pass_fps, decoded_frames, make_checkpoint, median_cell, run_infer, warm_up
from bench_models import cpu_name
from torch import nn

from hdmap_seg.data.classes import ROAD_CLASSES
from hdmap_seg.export.onnx import export_onnx
from hdmap_seg.export.quantize import quantize_dynamic_onnx, quantize_static_onnx
from hdmap_seg.models import create_model, model_config
from hdmap_seg.runtime import load_model

MODEL = "twins_svt_s"
NUM_CLASSES = ROAD_CLASSES.num_classes
#: run name -> what it is (also the row order)
RUNS = {
    "eager": "Twins-SVT-S + light head, eager PyTorch (inference_mode)",
    "compile": "the same, torch.compile (default mode, one graph per frame size)",
    "ort_fp32": "the same exported (hdmap_seg.export.onnx), onnxruntime fp32",
    "ov_fp32": "the same exported, OpenVINO fp32",
    "ort_int8_static": "static int8 (QDQ, hdmap_seg.export.quantize), onnxruntime",
    "ov_int8_static": "static int8 (QDQ), OpenVINO",
    "ort_int8_dynamic": "dynamic int8, onnxruntime",
    "ov_int8_dynamic": "dynamic int8, OpenVINO",
    "smp_segformer": 'peer: smp.Segformer(encoder_name="tu-twins_svt_small"), eager',
    "deeplabv3_r50": "peer: torchvision deeplabv3_resnet50, eager",
}
#: run -> the eager model whose FLOPs it computes
FLOPS_OF = {"smp_segformer": "smp_segformer", "deeplabv3_r50": "deeplabv3_r50"}
DEFAULT_SIZES = ["512x1024", "375x1242"]
CALIBRATION_FRAMES = 4


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 ``torch.matmul`` rate of ``(n, n) @ (n, n)`` on torch's current threads, GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = min(_seconds(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def count_flops(model: nn.Module, image: torch.Tensor) -> float:
    """FLOPs of one eager forward (``FlopCounterMode``: matmuls, convolutions, attention; 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(image)
    return float(counter.get_total_flops())


class Bench:
    """Builds the runs (one model each, the Twins shared), records why one could not run."""

    def __init__(self, work: Path, threads: int, calib_size: tuple[int, int]) -> None:
        self.work, self.threads, self.calib_size = work, threads, calib_size
        self.errors: dict[str, str] = {}
        self.notes: list[str] = []
        self._eager: nn.Module | None = None
        self._paths: dict[str, Path] = {}

    @property
    def twins(self) -> nn.Module:
        if self._eager is None:
            torch.manual_seed(0)
            self._eager = create_model(MODEL, NUM_CLASSES).eval()
        return self._eager

    def onnx_path(self, kind: str) -> Path:
        """The exported Twins: ``fp32``, ``int8_static`` or ``int8_dynamic`` (made once)."""
        if kind not in self._paths:
            fp32 = self.work / "fp32.onnx"
            if kind == "fp32":
                start = time.perf_counter()
                config = {
                    "_target_": "hdmap_seg.models.Segmenter",
                    "num_classes": NUM_CLASSES,
                    **model_config(MODEL),
                }
                export_onnx(self.twins, ROAD_CLASSES, fp32, config)
                self.notes.append(f"ONNX export: {time.perf_counter() - start:.0f} s")
            elif kind == "int8_dynamic":
                quantize_dynamic_onnx(self.onnx_path("fp32"), self.work / f"{kind}.onnx")
            else:
                # Random normalised frames: enough to time the int8 kernels (the ranges do not change the
                # speed); accuracy needs real frames (hdmap_seg.export.quantize.calibration_frames).
                gen = torch.Generator().manual_seed(1)
                frames = [
                    torch.randn(1, 3, *self.calib_size, generator=gen).numpy()
                    for _ in range(CALIBRATION_FRAMES)
                ]
                quantize_static_onnx(self.onnx_path("fp32"), self.work / f"{kind}.onnx", frames)
            self._paths[kind] = self.work / f"{kind}.onnx"
        return self._paths[kind]

    def build(self, run: str) -> nn.Module:
        """The module of ``run``; its ``forward(image (1, 3, H, W)) -> logits (1, C, H, W)``."""
        if run == "eager":
            return self.twins
        if run == "compile":
            # One graph per frame size (a survey camera has one): the automatic dynamic shapes that a second
            # size triggers fail in this torch's inductor ("TensorReferenceAnalysis has no attribute python_mod").
            return torch.compile(self.twins, dynamic=False)
        if run.startswith(("ort_", "ov_")):
            backend, kind = run.split("_", 1)
            path = self.onnx_path(kind)
            model, _ = load_model(
                path, "onnxruntime" if backend == "ort" else "openvino", threads=self.threads
            )
            return model
        if run == "smp_segformer":
            from peers import SmpSegformer

            return SmpSegformer(NUM_CLASSES).eval()
        if run == "deeplabv3_r50":
            from peers import DeepLabV3ResNet50

            return DeepLabV3ResNet50(NUM_CLASSES).eval()
        raise ValueError(run)


def benchmark(
    bench: Bench, runs: list[str], sizes: list[tuple[int, int]], rounds: int, warmup: int
) -> tuple[dict, dict]:
    """Median seconds per (run, size) and FLOPs per (flops model, size); failed runs in ``bench.errors``."""
    gen = torch.Generator().manual_seed(0)
    frames = {hw: torch.randn(1, 3, *hw, generator=gen) for hw in sizes}
    models: dict[str, nn.Module] = {}
    for run in runs:
        try:
            start = time.perf_counter()
            model = bench.build(run)
            with torch.inference_mode():
                for hw in sizes:  # warm-up: compilation, allocators, OpenVINO's shape-specific kernels
                    for _ in range(warmup):
                        model(frames[hw])
            models[run] = model
            print(f"  {run}: built and warmed up in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        except Exception as err:  # record and go on: one runtime failing must not lose the others
            bench.errors[run] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            print(f"  {run}: FAILED\n{traceback.format_exc(limit=3)}", file=sys.stderr)
    times: dict[tuple[str, tuple[int, int]], list[float]] = {}
    with torch.inference_mode():
        for r in range(rounds):
            for hw in sizes:
                for run, model in models.items():
                    times.setdefault((run, hw), []).append(_seconds(lambda m=model, x=frames[hw]: m(x)))
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
    flops = {}
    for hw in sizes:
        flops[("twins", hw)] = count_flops(bench.twins, frames[hw])
        for run in FLOPS_OF:
            if run in models:
                flops[(run, hw)] = count_flops(models[run], frames[hw])
    medians = {key: statistics.median(values) for key, values in times.items()}
    return medians, flops


def table(
    runs: list[str], sizes: list[tuple[int, int]], medians: dict, flops: dict, peak: float, errors: dict
) -> str:
    rows = [
        "| run | size | s / frame (median) | speed-up vs eager Twins | GFLOPs / frame | achieved GFLOP/s | % of fp32 matmul peak |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        if run in errors:
            rows.append(f"| {run} | all | failed: {errors[run]} | | | | |")
            continue
        for hw in sizes:
            if (run, hw) not in medians:
                continue
            s = medians[(run, hw)]
            eager = medians.get(("eager", hw))
            f = flops.get((FLOPS_OF.get(run, "twins"), hw))
            speedup = f"{eager / s:.2f}" if eager else "-"
            gflops = f / 1e9 if f else float("nan")
            rows.append(
                f"| {run} | {hw[0]}x{hw[1]} | {s:.3f} | {speedup} | {gflops:.1f} | {gflops / s:.1f} "
                f"| {100 * gflops / s / peak:.0f} % |"
            )
    return "\n".join(rows)


def end_to_end(
    work: Path, threads: int, frames: int, scale: float, batch_size: int, workers: int, rounds: int
) -> str:
    """tools/infer.py frames/s per backend against the bare forward of that backend, as a Markdown table.

    Interleaved like the table above: each round runs, for every backend in turn, one bare pass over the
    decoded frames and one tools/infer.py run; the figures are medians over the rounds, so that the
    machine's drift (10-15 % over minutes here) falls on both sides alike.
    """
    from hdmap_seg.synthetic import SynthConfig, write_drive_log

    ckpt = work / "e2e.ckpt"
    model = make_checkpoint(MODEL, ckpt)
    cfg = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["model_config"]
    onnx_path = export_onnx(model, ROAD_CLASSES, work / "e2e.onnx", cfg)
    log = write_drive_log(
        SynthConfig(seed=21, scale=scale, train=0, val=0, frames_per_log=frames), 0, work / "e2e_log"
    )
    batches = decoded_frames([log]).split(batch_size)
    # tools/infer.py gives the exported-model runtimes torch's thread count, which OMP_NUM_THREADS sets
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    backends = {"torch": ckpt, "onnxruntime": onnx_path, "openvino": onnx_path}
    bare, failed = {}, {}
    for backend, path in backends.items():
        try:
            bare[backend], _ = load_model(path, backend, threads=threads)
            warm_up(bare[backend], batches)
        except Exception as err:  # record and go on to the next backend
            failed[backend] = f"{type(err).__name__}: {str(err)[-300:]}"
    infer_fps: dict[str, list[float]] = {b: [] for b in bare}
    bare_fps: dict[str, list[float]] = {b: [] for b in bare}
    for _ in range(rounds):
        for backend in list(bare):
            try:
                bare_fps[backend].append(bare_pass_fps(bare[backend], batches))
                summary, _ = run_infer(
                    backends[backend],
                    log,
                    work / f"e2e_out_{backend}",
                    batch_size,
                    workers,
                    f"backend={backend}",
                    "overwrite=true",
                    env=env,
                )
                infer_fps[backend].append(summary["frames_per_s"])
            except Exception as err:
                failed[backend] = f"{type(err).__name__}: {str(err)[-300:]}"
                del bare[backend]
    rows = [
        "| backend | tools/infer.py frames/s (predict phase), rounds | bare forward frames/s, rounds "
        "| ratio of the medians |",
        "| --- | --- | --- | ---: |",
    ]
    for backend in backends:
        if backend in failed:
            rows.append(f"| {backend} | failed: {failed[backend]!r} | | |")
            continue
        i, b = infer_fps[backend], bare_fps[backend]
        rows.append(
            f"| {backend} | {median_cell(i)} | {median_cell(b)} "
            f"| {statistics.median(i) / statistics.median(b):.2f} |"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--runs", nargs="+", default=list(RUNS), choices=list(RUNS), metavar="RUN", help=", ".join(RUNS)
    )
    p.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="HxW frame sizes (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="timed calls per run and size (median; default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per run and size first")
    p.add_argument("--threads", type=int, default=2, help="threads of every runtime (default 2)")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    p.add_argument(
        "--e2e", action="store_true", help="also tools/infer.py against the bare forward, per backend"
    )
    p.add_argument("--e2e-frames", type=int, default=20)
    p.add_argument("--e2e-rounds", type=int, default=3, help="interleaved rounds end to end (median)")
    p.add_argument(
        "--e2e-scale", type=float, default=0.5, help="camera scale of the e2e drive (1 = 1242x375)"
    )
    args = p.parse_args()
    sizes = [parse_size(s) for s in args.sizes]
    torch.set_num_threads(args.threads)
    started = time.time()
    load_before = os.getloadavg()[0]
    peak_before = matmul_peak_gflops()

    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as tmp:
        work = Path(tmp)
        bench = Bench(work, args.threads, calib_size=sizes[0])
        medians, flops = benchmark(bench, args.runs, sizes, args.rounds, args.warmup)
        peak = max(peak_before, matmul_peak_gflops())  # before and after: the machine's best moment
        e2e = (
            end_to_end(work, args.threads, args.e2e_frames, args.e2e_scale, 4, 2, args.e2e_rounds)
            if args.e2e
            else ""
        )

    import onnxruntime
    import openvino

    lines = [
        f"## Deployment runtimes (bench/bench_deploy.py, {datetime.datetime.now():%Y-%m-%d %H:%M})\n",
        f"Machine: {cpu_name()}, {os.cpu_count()} CPUs; {args.threads} threads for every runtime; torch "
        f"{torch.__version__}, onnxruntime {onnxruntime.__version__}, OpenVINO {openvino.__version__}, "
        f"{platform.python_implementation()} {platform.python_version()}; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after; total {time.time() - started:.0f} s.\n",
        f"Command: `python bench/bench_deploy.py {' '.join(sys.argv[1:])}`\n",
        f"fp32 matmul peak ({args.threads} threads, 2048x2048, best of 5, before and after): {peak:.1f} GFLOP/s."
        f" Batch 1, median of {args.rounds} interleaved rounds after {args.warmup} warm-up calls.\n",
        table(args.runs, sizes, medians, flops, peak, bench.errors),
        "",
        *[f"- {run}: {RUNS[run]}" for run in args.runs],
        *[f"- {note}" for note in bench.notes],
    ]
    if e2e:
        lines += [
            "",
            f"End to end ({args.e2e_frames} frames, camera scale {args.e2e_scale}, batch 4, 2 workers, "
            f"median of {args.e2e_rounds} interleaved rounds):",
            "",
            e2e,
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from hdmap_seg.io import write_text_atomic

        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
