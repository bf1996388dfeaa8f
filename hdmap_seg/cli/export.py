"""``hdmap-export`` / ``python tools/export.py``: a training checkpoint -> a self-contained ``.onnx`` (README, "Deploy").

hdmap-export CKPT [--out MODEL.onnx] [--check 375x1242 512x1024 ...]
hdmap-export CKPT --int8 static --data roads --data-root data/roads [--calib-frames 32]   # + MODEL.int8.onnx
hdmap-export CKPT --int8 dynamic                                                          # no calibration

After writing, the exported model is run in onnxruntime beside the checkpoint in PyTorch on random
frames of each ``--check`` size: the largest logit difference and the share of pixels whose label
agrees are printed, and a file that misses the bars (:func:`hdmap_seg.export.onnx.parity_passes`) is
removed again. An int8 copy (``--int8``, :mod:`hdmap_seg.export.quantize`) is written beside it as
``<name>.int8.onnx``; static quantization calibrates on ``--calib-frames`` frames of the training split
of a data config (``conf/data/<name>.yaml``, as ``train.py data=<name>`` reads it), and its label
agreement with the fp32 file is printed at each ``--check`` size (no bar: measure its accuracy with
``eval.py backend=onnxruntime``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hdmap_seg.errors import HdmapError, exit_on_user_error
from hdmap_seg.export.onnx import MAX_LOGIT_DIFF, MIN_LABEL_AGREEMENT, export_onnx, parity, parity_passes


def parse_size(text: str) -> tuple[int, int]:
    """``"375x1242"`` -> ``(375, 1242)`` (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise HdmapError(f"size {text!r}: expected HEIGHTxWIDTH, e.g. 375x1242") from None
    if h < 1 or w < 1:
        raise HdmapError(f"size {text!r}: height and width must be positive")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hdmap-export",
        description="Export a training checkpoint to ONNX (opset 17, any batch and frame size, classes and "
        "normalisation in the file's metadata), checked against PyTorch.",
    )
    p.add_argument("ckpt", type=Path, help="training checkpoint (.ckpt)")
    p.add_argument("--out", type=Path, help="output .onnx (default: beside the checkpoint)")
    p.add_argument(
        "--check",
        nargs="*",
        default=["375x1242"],
        metavar="HxW",
        help="frame sizes to check against PyTorch (default: 375x1242; none: no check)",
    )
    p.add_argument(
        "--int8",
        choices=("static", "dynamic"),
        help="also write an int8 copy: static (QDQ, calibrated on --data) or dynamic (no calibration)",
    )
    p.add_argument(
        "--data", help="static int8: data config to calibrate on (conf/data/<name>.yaml), e.g. roads"
    )
    p.add_argument(
        "--data-root", type=Path, help="static int8: the data set's folder (default: the config's)"
    )
    p.add_argument(
        "--calib-split", default="train", help="static int8: split to calibrate on (default: train)"
    )
    p.add_argument("--calib-frames", type=int, default=32, help="static int8: frames (default: 32)")
    return p


def calibration_datamodule(name: str, root: Path | None):
    """The data module of ``conf/data/<name>.yaml`` (with ``root`` instead of the config's folder)."""
    from hydra.errors import MissingConfigException
    from hydra.utils import instantiate

    from hdmap_seg.cli.hydra_app import compose_config
    from hdmap_seg.paths import CONF_DIR

    overrides = [f"data={name}", *([f"data.root={root.resolve()}"] if root else [])]
    try:
        cfg = compose_config("train", overrides)
    except MissingConfigException:
        names = sorted(q.stem for q in (CONF_DIR / "data").glob("*.yaml"))
        raise HdmapError(f"--data {name}: no such data config; there are {', '.join(names)}") from None
    return instantiate(cfg.data, _convert_="all")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """The console script: exits 0 when done (the summary goes to stdout and a file), 2 on a user error."""
    run(argv)


def run(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` and do the work; returns the summary."""
    from hdmap_seg.module import read_checkpoint, segmenter_from_checkpoint
    from hdmap_seg.runtime import load_model

    args = build_parser().parse_args(argv)
    sizes = [parse_size(s) for s in args.check]
    out = args.out or args.ckpt.with_suffix(".onnx")
    if out.suffix != ".onnx":
        raise HdmapError(f"{out}: the exported model's file name must end in .onnx")
    ckpt = read_checkpoint(args.ckpt)
    model, classes = segmenter_from_checkpoint(ckpt, str(args.ckpt))
    start = time.perf_counter()
    export_onnx(model, classes, out, model_config=ckpt["hyper_parameters"]["model_config"])
    summary = {
        "checkpoint": str(args.ckpt),
        "onnx": str(out),
        "export_s": round(time.perf_counter() - start, 1),
    }
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB, {classes.num_classes} classes {classes.names}")
    if sizes:
        exported, _ = load_model(out, "onnxruntime")
        checks = {}
        for h, w in sizes:
            checks[f"{h}x{w}"] = r = parity(model, exported, (h, w))
            print(
                f"  {h}x{w}: max |logit diff| {r['max_abs_logit_diff']:.2e}, labels agree {r['label_agreement']:.5f}"
            )
        summary["parity"] = checks
        bad = [s for s, r in checks.items() if not parity_passes(r)]
        if bad:
            out.unlink()
            # Not the user's mistake: the exporter or the runtime got the graph wrong.
            raise RuntimeError(
                f"{out}: onnxruntime disagrees with PyTorch at {', '.join(bad)} "
                f"(bars: logits within {MAX_LOGIT_DIFF}, labels {MIN_LABEL_AGREEMENT:.1%}); the file was removed"
            )
    if args.int8:
        summary["int8"] = _int8(args, out, sizes)
    print(json.dumps(summary))
    return summary


def _int8(args: argparse.Namespace, fp32: Path, sizes: list[tuple[int, int]]) -> dict:
    from hdmap_seg.export.quantize import calibration_frames, quantize_dynamic_onnx, quantize_static_onnx
    from hdmap_seg.runtime import load_model

    dst = fp32.with_suffix(".int8.onnx")
    start = time.perf_counter()
    if args.int8 == "dynamic":
        quantize_dynamic_onnx(fp32, dst)
    else:
        if not args.data:
            raise HdmapError(
                "--int8 static calibrates on training frames: name their data config with --data"
            )
        frames = calibration_frames(
            calibration_datamodule(args.data, args.data_root), args.calib_frames, args.calib_split
        )
        quantize_static_onnx(fp32, dst, frames)
    print(f"{dst}: {dst.stat().st_size / 1e6:.1f} MB, int8 {args.int8}")
    report = {"onnx": str(dst), "mode": args.int8, "seconds": round(time.perf_counter() - start, 1)}
    reference, _ = load_model(fp32, "onnxruntime")
    int8, _ = load_model(dst, "onnxruntime")
    for h, w in sizes:
        r = parity(reference, int8, (h, w))
        report[f"{h}x{w}"] = r
        print(f"  {h}x{w}: labels agree with fp32 {r['label_agreement']:.5f} (random frame)")
    return report


if __name__ == "__main__":
    main()
