"""Twins-SVT-S on an NVIDIA GPU: eager PyTorch in fp32, TF32, bf16/fp16 autocast and fp16 weights,
torch.compile, and TensorRT fp16 where it is installed; then ``tools/infer.py`` on the GPU against its bare
forward, with its masks and map layers compared to the CPU's.

    python bench/bench_gpu.py                                  # the table of docs/benchmarks.md ("GPU")
    python bench/bench_gpu.py --configs seg:512x1024x1 --rounds 3 --no-compile
    python bench/bench_gpu.py --e2e-ckpt outputs/demo/train/checkpoints/last.ckpt --e2e-scale 0.5

Configurations ``MODEL:HxWxBATCH``: ``cls`` is timm's ``twins_svt_small`` classifier, the network of the Twins
authors' TensorRT figure (224x224, batch 64: 1059 -> 1732 images/s on a V100); ``seg`` is the product's
Twins-SVT-S + light head (``conf/model/twins_svt_s.yaml``). Weights are random: speed does not depend on them.

Method: every mode is warmed up at every configuration, then ``--rounds`` rounds each time every
(configuration, mode) in turn; one timing is enough back-to-back calls for ``--min-s`` seconds between CUDA
events, and the figure is the median over rounds. % of peak: achieved FLOP/s (``FlopCounterMode``, 2 per
multiply-add) against this GPU's matmul rate in the same dtype, measured here (8192^3, best of 5).
Agreement: each mode's labels and logits against fp32 eager on the same random frame (random weights give
close logits, so this is a lower bound of what a trained model shows; the end-to-end part uses a trained one).

End to end (``--e2e-ckpt``, default: Twins-SVT-S with random weights): synthetic KITTI drive logs at
``--e2e-scale``; ``tools/infer.py`` on the CPU (fp32, the reference) and on the GPU at each precision; frames/s
of its predict phase against the bare forward on the same decoded frames already on the GPU; per-pixel
label agreement with the CPU masks; the poles and signs layers against the CPU's (count and largest shift).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch
from bench_infer import decoded_frames, make_checkpoint, run_infer
from torch import nn

from hdmap_seg.data.classes import ROAD_CLASSES
from hdmap_seg.models import create_model
from hdmap_seg.paths import PROJECT_ROOT

#: mode -> what it is (also the column order)
MODES = {
    "fp32": "eager, fp32 (TF32 off: PyTorch's default for matmuls)",
    "tf32": "eager, TF32 matmuls and convolutions",
    "bf16": "eager, bf16 autocast",
    "fp16": "eager, fp16 autocast",
    "half": "eager, fp16 weights and input (model.half())",
    "compile_fp16": "torch.compile (default mode) under fp16 autocast",
    "tensorrt_fp16": "TensorRT fp16 (torch_tensorrt, or onnxruntime's TensorRT provider)",
}
#: the dtype whose matmul peak a mode is measured against
PEAK_OF = {"fp32": "fp32", "tf32": "tf32", "bf16": "bf16", "fp16": "fp16", "half": "fp16"}
DEFAULT_CONFIGS = ["cls:224x224x64", "seg:224x224x64", "seg:512x1024x1", "seg:512x1024x8"]


def parse_config(text: str) -> tuple[str, int, int, int]:
    model, _, shape = text.partition(":")
    h, w, b = (int(v) for v in shape.lower().split("x"))
    if model not in ("cls", "seg"):
        raise SystemExit(f"--configs {text}: the model is cls or seg")
    return model, h, w, b


def build(model: str) -> nn.Module:
    torch.manual_seed(0)
    if model == "cls":
        net = timm.create_model("twins_svt_small", pretrained=False)
    else:
        net = create_model("twins_svt_s", ROAD_CLASSES.num_classes)
    return net.eval().cuda()


@contextlib.contextmanager
def tf32(enabled: bool):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot run here, or None."""
    with contextlib.suppress(ImportError):
        import torch_tensorrt  # noqa: F401

        return None
    try:
        import onnxruntime as ort
    except ImportError:
        return "neither torch_tensorrt nor onnxruntime is installed"
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        return None
    return (
        f"no torch_tensorrt, and onnxruntime {ort.__version__} has only {', '.join(ort.get_available_providers())} "
        "(pip install onnxruntime-gpu tensorrt)"
    )


def make_call(mode: str, net: nn.Module, x: torch.Tensor, work: Path) -> Callable[[], torch.Tensor]:
    """One forward of ``net`` on ``x`` in ``mode``, returning fp32 output."""
    if mode in ("fp32", "tf32"):

        def call() -> torch.Tensor:
            with tf32(mode == "tf32"):
                return net(x)

        return call
    if mode in ("bf16", "fp16"):
        dtype = torch.bfloat16 if mode == "bf16" else torch.float16

        def call() -> torch.Tensor:
            with torch.autocast("cuda", dtype):
                return net(x).float()

        return call
    if mode == "half":
        half, xh = copy.deepcopy(net).half(), x.half()
        return lambda: half(xh).float()
    if mode == "compile_fp16":
        compiled = torch.compile(net)

        def call() -> torch.Tensor:
            with torch.autocast("cuda", torch.float16):
                return compiled(x).float()

        return call
    if mode == "tensorrt_fp16":
        why = tensorrt_missing()
        if why:
            raise RuntimeError(why)
        return _tensorrt_call(net, x, work)
    raise ValueError(mode)


def _tensorrt_call(net: nn.Module, x: torch.Tensor, work: Path) -> Callable[[], torch.Tensor]:
    with contextlib.suppress(ImportError):
        import torch_tensorrt

        trt = torch_tensorrt.compile(net, inputs=[x], enabled_precisions={torch.float16})
        return lambda: trt(x).float()
    # onnxruntime's TensorRT provider on an export of the same network (hdmap_seg.export.onnx)
    import onnxruntime as ort

    path = work / f"trt_{x.shape[0]}x{x.shape[2]}x{x.shape[3]}.onnx"
    torch.onnx.export(copy.deepcopy(net).cpu(), (x.cpu(),), str(path), opset_version=17, dynamo=False)
    session = ort.InferenceSession(
        str(path),
        providers=[("TensorrtExecutionProvider", {"trt_fp16_enable": True}), "CUDAExecutionProvider"],
    )
    name = session.get_inputs()[0].name
    binding = session.io_binding()
    binding.bind_input(name, "cuda", 0, np.float32, list(x.shape), x.data_ptr())
    binding.bind_output(session.get_outputs()[0].name, "cuda")

    def call() -> torch.Tensor:
        session.run_with_iobinding(binding)
        return torch.from_dlpack(binding.get_outputs()[0].to_dlpack())

    return call


def time_call(call: Callable[[], object], min_s: float) -> float:
    """Seconds per call: back-to-back calls between CUDA events, at least ``min_s`` seconds of them."""
    n = 1
    while True:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            call()
        end.record()
        end.synchronize()
        s = start.elapsed_time(end) / 1e3
        if s >= min_s or n >= 1024:
            return s / n
        n = max(n * 2, int(n * min_s / max(s, 1e-6)) + 1)


def matmul_peak_tflops(dtype_name: str, n: int = 8192) -> float:
    dtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    a = torch.randn(n, n, device="cuda", dtype=dtype[dtype_name])
    b = torch.randn(n, n, device="cuda", dtype=dtype[dtype_name])
    with tf32(dtype_name == "tf32"):
        best = min(time_call(lambda: a @ b, 0.2) for _ in range(5))
    return 2 * n**3 / best / 1e12


def count_flops(net: nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        net(x)
    return float(counter.get_total_flops())


def kernels(
    configs: list[str],
    modes: list[str],
    rounds: int,
    min_s: float,
    work: Path,
    emit: Callable[[str], None] = lambda table: None,
) -> str:
    """The throughput table, one row per (configuration, mode); ``emit`` gets it after every round, so a run
    cut short (a lent GPU's time limit) keeps the rounds it finished."""
    peaks = {d: matmul_peak_tflops(d) for d in ("fp32", "tf32", "bf16", "fp16")}
    nets = {m: build(m) for m in {parse_config(c)[0] for c in configs}}
    calls, errors, flops, agreement = {}, {}, {}, {}
    with torch.inference_mode():
        for config in configs:
            model, h, w, b = parse_config(config)
            x = torch.randn(b, 3, h, w, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
            flops[config] = count_flops(nets[model], x) / b
            reference = None
            for mode in modes:
                start = time.perf_counter()
                try:
                    call = make_call(mode, nets[model], x, work)
                    for _ in range(3):  # warm-up: cuDNN/cuBLAS choices, compilation, engine builds
                        out = call()
                    torch.cuda.synchronize()
                except Exception as err:  # record it and go on: one mode failing must not lose the others
                    errors[(config, mode)] = (
                        f"{type(err).__name__}: {str(err).splitlines()[0][:240] if str(err) else ''}"
                    )
                    print(f"{config} {mode}: FAILED\n{traceback.format_exc(limit=4)}", file=sys.stderr)
                    continue
                calls[(config, mode)] = call
                if reference is None:
                    reference = out.float()
                labels = (out.argmax(1) == reference.argmax(1)).float().mean()
                agreement[(config, mode)] = (float(labels), float((out.float() - reference).abs().max()))
                print(
                    f"{config} {mode}: ready in {time.perf_counter() - start:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
        times: dict[tuple[str, str], list[float]] = {}
        for r in range(rounds):
            for key, call in calls.items():
                times.setdefault(key, []).append(time_call(call, min_s))
            print(f"round {r + 1}/{rounds}", file=sys.stderr, flush=True)
            emit(
                _kernel_table(
                    configs, modes, peaks, times, errors, flops, agreement, f"{r + 1} of {rounds} rounds"
                )
            )
    return _kernel_table(configs, modes, peaks, times, errors, flops, agreement, f"median of {rounds} rounds")


def _kernel_table(configs, modes, peaks, times, errors, flops, agreement, rounds_done: str) -> str:
    rows = [
        f"Matmul peaks measured here (TFLOP/s): {', '.join(f'{d} {v:.0f}' for d, v in peaks.items())}; "
        f"{rounds_done}.",
        "",
        "| model | input | batch | mode | ms / batch | images/s | vs fp32 eager | vs bf16 autocast "
        "| GFLOPs / image | % of its dtype's matmul peak | labels = fp32 | max abs logit diff |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for config in configs:
        model, h, w, b = parse_config(config)
        name = "timm twins_svt_small (classifier)" if model == "cls" else "Twins-SVT-S + light head"
        for mode in modes:
            key = (config, mode)
            if key in errors:
                rows.append(f"| {name} | {h}x{w} | {b} | {mode} | not run: {errors[key]} | | | | | | | |")
                continue
            if key not in times:  # its warm-up did not finish
                continue
            s = statistics.median(times[key])
            fp32 = statistics.median(times[(config, "fp32")]) if (config, "fp32") in times else None
            bf16 = statistics.median(times[(config, "bf16")]) if (config, "bf16") in times else None
            peak = peaks.get(PEAK_OF.get(mode, "fp16"))
            pct = 100 * flops[config] * b / s / (peak * 1e12)
            agree, diff = agreement[key]
            rows.append(
                f"| {name} | {h}x{w} | {b} | {mode} | {1e3 * s:.2f} | {b / s:.0f} "
                f"| {fp32 / s if fp32 else float('nan'):.2f}x | {bf16 / s if bf16 else float('nan'):.2f}x "
                f"| {flops[config] / 1e9:.1f} | {pct:.0f} % | {100 * agree:.2f} % | {diff:.2g} |"
            )
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------- end to end
def write_logs(root: Path, scale: float, logs: int, frames: int, workers: int) -> list[Path]:
    cmd = [sys.executable, str(PROJECT_ROOT / "tools/make_synthetic.py"), "--out", str(root), "--train", "0"]
    cmd += ["--val", "0", "--scale", str(scale), "--logs", str(logs), "--frames-per-log", str(frames)]
    subprocess.run([*cmd, "--workers", str(workers), "--seed", "21"], check=True, stdout=subprocess.DEVNULL)
    return sorted((root / "logs").iterdir())


def bare_forward_fps(ckpt: Path, logs: list[Path], batch_size: int, precision: str) -> float:
    """The model alone on the same decoded frames, already batched on the GPU, at ``precision``."""
    from hdmap_seg.module import load_segmenter

    net, _ = load_segmenter(ckpt)
    net = net.cuda().eval()
    images = decoded_frames(logs).cuda()
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    autocast = torch.autocast("cuda", dtype) if dtype else contextlib.nullcontext()

    def all_batches() -> None:
        for batch in images.split(batch_size):
            net(batch).argmax(1)

    with torch.inference_mode(), autocast:
        all_batches()  # warm-up
        s = min(time_call(all_batches, 0.0) for _ in range(3))
    return len(images) / s


def read_labels(out: Path) -> dict[str, np.ndarray]:
    import cv2

    return {
        f"{p.parent.parent.name}/{p.name}": cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        for p in sorted(out.glob("*/masks/*.png"))
    }


def point_layers(out: Path) -> dict[str, list[tuple[float, float]]]:
    points: dict[str, list[tuple[float, float]]] = {}
    for layer in ("poles", "signs"):
        for path in sorted(out.glob(f"*/map/{layer}.geojson")):
            features = json.loads(path.read_text())["features"]
            points.setdefault(layer, []).extend(tuple(f["geometry"]["coordinates"][:2]) for f in features)
    return points


def layer_shift_m(ref: list[tuple[float, float]], other: list[tuple[float, float]]) -> float:
    """Largest distance from a point of either layer to the nearest of the other (lon/lat -> metres)."""
    if not ref or not other:
        return 0.0 if len(ref) == len(other) else float("inf")
    a, b = np.radians(np.array(ref)), np.radians(np.array(other))
    lat0 = a[:, 1].mean()
    a = np.stack([a[:, 0] * np.cos(lat0), a[:, 1]], 1) * 6_371_000
    b = np.stack([b[:, 0] * np.cos(lat0), b[:, 1]], 1) * 6_371_000
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    return float(max(d.min(1).max(), d.min(0).max()))


def end_to_end(
    work: Path, ckpt: Path | None, scale: float, logs_n: int, frames: int, batch_size: int, workers: int
) -> str:
    if ckpt is None:
        ckpt = work / "twins_svt_s.ckpt"
        make_checkpoint("twins_svt_s", ckpt)
    start = time.perf_counter()
    logs = write_logs(work / "e2e_data", scale, logs_n, frames, workers)
    made_s = time.perf_counter() - start
    glob = str(work / "e2e_data/logs/*")
    runs = [("cpu", "32-true"), ("gpu", "32-true"), ("gpu", "bf16-mixed"), ("gpu", "16-mixed")]
    results = {}
    for accelerator, precision in runs:
        out = work / f"e2e_{accelerator}_{precision}"
        try:
            summary, rss = run_infer(
                ckpt,
                glob,
                out,
                batch_size,
                workers,
                f"trainer.precision={precision}",
                accelerator=accelerator,
            )
        except RuntimeError as err:
            results[(accelerator, precision)] = f"failed: {str(err)[-400:]!r}"
            continue
        results[(accelerator, precision)] = (summary, out)
        print(
            f"e2e {accelerator} {precision}: {summary['frames_per_s']} frames/s", file=sys.stderr, flush=True
        )
    reference = results.get(("cpu", "32-true"))
    ref_labels = read_labels(reference[1]) if isinstance(reference, tuple) else {}
    ref_points = point_layers(reference[1]) if isinstance(reference, tuple) else {}
    first = next(iter(ref_labels.values()), None)
    rows = [
        f"{sum(1 for _ in ref_labels)} frames of {first.shape[1] if first is not None else '?'}x"
        f"{first.shape[0] if first is not None else '?'} in {logs_n} synthetic KITTI drive logs (written in "
        f"{made_s:.0f} s), checkpoint `{ckpt.name}`, batch {batch_size}, {workers} DataLoader workers.",
        "",
        "| device | precision | tools/infer.py frames/s (predict phase) | bare forward frames/s | ratio "
        "| labels = CPU fp32 | poles / signs (CPU: {}) | largest pole/sign shift vs CPU (m) |".format(
            " / ".join(str(len(ref_points.get(k, []))) for k in ("poles", "signs"))
        ),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (accelerator, precision), result in results.items():
        if isinstance(result, str):
            rows.append(f"| {accelerator} | {precision} | {result} | | | | | |")
            continue
        summary, out = result
        bare = bare_forward_fps(ckpt, logs, batch_size, precision) if accelerator == "gpu" else float("nan")
        labels = read_labels(out)
        agree = np.mean([np.mean(labels[k] == v) for k, v in ref_labels.items() if k in labels])
        points = point_layers(out)
        shift = max(layer_shift_m(ref_points.get(k, []), points.get(k, [])) for k in ("poles", "signs"))
        fps = summary["frames_per_s"]
        rows.append(
            f"| {accelerator} | {precision} | {fps:.1f} | {bare:.1f} | {fps / bare:.2f} | {100 * agree:.3f} % "
            f"| {len(points.get('poles', []))} / {len(points.get('signs', []))} | {shift:.3f} |"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--configs", nargs="+", default=DEFAULT_CONFIGS, help="MODEL:HxWxBATCH (default: %(default)s)"
    )
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), metavar="MODE")
    p.add_argument(
        "--no-compile", action="store_true", help="leave out torch.compile (it compiles per shape)"
    )
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (median; default 5)")
    p.add_argument("--min-s", type=float, default=0.25, help="seconds of back-to-back calls per timing")
    p.add_argument("--e2e-ckpt", type=Path, default=None, help="checkpoint for the end-to-end part")
    p.add_argument("--e2e-scale", type=float, default=1.0, help="camera scale of the e2e logs (1 = 1242x375)")
    p.add_argument("--e2e-logs", type=int, default=4)
    p.add_argument("--e2e-frames", type=int, default=60, help="frames per e2e log")
    p.add_argument("--e2e-batch", type=int, default=8)
    p.add_argument("--e2e-workers", type=int, default=8)
    p.add_argument("--no-e2e", action="store_true")
    p.add_argument("--no-kernels", action="store_true", help="only the end-to-end part")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA GPU here")
    modes = [m for m in args.modes if not (args.no_compile and m.startswith("compile"))]
    started = time.time()
    props = torch.cuda.get_device_properties(0)
    header = [
        f"## GPU (bench/bench_gpu.py, {datetime.datetime.now():%Y-%m-%d %H:%M})\n",
        f"Machine: {props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs), "
        f"{os.cpu_count()} CPUs; torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version()}), timm {timm.__version__}, {platform.python_implementation()} "
        f"{platform.python_version()}. TensorRT: {tensorrt_missing() or 'available'}.\n",
        f"Command: `python bench/bench_gpu.py {' '.join(sys.argv[1:])}`\n",
    ]
    sections = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        work = Path(tmp)
        if not args.no_kernels:
            emit = lambda table: _write(args.out, [*header, table], quiet=True)  # noqa: E731
            sections.append(kernels(args.configs, modes, args.rounds, args.min_s, work, emit))
            sections += ["", *[f"- {m}: {MODES[m]}" for m in modes]]
            _write(args.out, header + sections)
        if not args.no_e2e:
            torch.cuda.empty_cache()
            sections += ["", "### End to end: tools/infer.py on the GPU", ""]
            sections.append(
                end_to_end(
                    work,
                    args.e2e_ckpt,
                    args.e2e_scale,
                    args.e2e_logs,
                    args.e2e_frames,
                    args.e2e_batch,
                    args.e2e_workers,
                )
            )
    sections.append(f"\nTotal {time.time() - started:.0f} s.")
    _write(args.out, header + sections)


def _write(out: Path | None, lines: list[str], quiet: bool = False) -> None:
    text = "\n".join(lines) + "\n"
    if not quiet:
        print(text, flush=True)
    if out:
        out.write_text(text)


if __name__ == "__main__":
    main()
