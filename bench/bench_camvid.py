#!/usr/bin/env python
"""Train on CamVid train for a fixed wall-clock budget, one model at a time, and evaluate on CamVid val.

Every run goes through the project's own training stack (conf/experiment/camvid.yaml: data, crops,
loss, optimiser, schedule; hdmap_seg.training.build; SegmentationModule), so runs differ only in what
the run table says. Training stops at ``trainer.max_time``; validation is switched off during training
(it would eat the budget) and runs once on the final weights, over the whole val split.

    python bench/bench_camvid.py --root ../shared/data/camvid --minutes 30                 # the comparison's protocol
    nice -n 10 python bench/bench_camvid.py --root ../shared/data/camvid --steps 200 --suite ablation
    python bench/bench_camvid.py --root ../shared/data/camvid --minutes 1 --runs twins_svt_tiny --no-docs

Suites: ``benchmark`` (our Twins-SVT-S with the light head, smp's SegFormer on tu-twins_svt_small,
torchvision's DeepLabV3-ResNet50; ``--runs twins_svt_tiny`` adds the CPU model) and ``ablation`` (the thin-class recipe on
twins_svt_tiny: plain CE, class-weighted CE, OHEM, and the recipe's crops + weights).

``--steps N`` trains for N optimiser steps instead, with the recipe's poly decay over them: the fair
budget for an ablation on a machine shared with other jobs, where minutes buy an unsteady amount of work.

Each run writes ``<out>/<budget>/<run>/result.json`` and ``learning_curve.png`` (training loss
against wall-clock minutes); a rerun skips runs whose result exists (``--force`` redoes them). The
suite's table goes to stdout and, unless ``--no-docs``, into its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

import lightning as L
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from torch.utils.data import DataLoader, Subset

from hdmap_seg.data.transforms import pad_collate
from hdmap_seg.errors import HdmapError, exit_on_user_error
from hdmap_seg.io import atomic_path, write_text_atomic
from hdmap_seg.paths import CONF_DIR, PROJECT_ROOT
from hdmap_seg.training import build

TINY = ["model=twins_svt_tiny"]
NO_WEIGHTS = ["module.class_weights=null"]
#: name -> what differs from experiment=camvid: Hydra overrides, a model node (peers), the plain crops.
RUNS: dict[str, dict] = {
    "twins_svt_s": {"overrides": ["model=twins_svt_s"], "what": "Twins-SVT-S + light head (E=256)"},
    "twins_svt_tiny": {"overrides": TINY, "what": "Twins-SVT tiny + light head (E=64): the full recipe"},
    "smp_segformer": {
        "model": {"_target_": "peers.SmpSegformer", "num_classes": "${data.num_classes}"},
        "what": 'smp Segformer(encoder_name="tu-twins_svt_small")',
    },
    "deeplabv3_resnet50": {
        "model": {"_target_": "peers.DeepLabV3ResNet50", "num_classes": "${data.num_classes}"},
        "what": "torchvision DeepLabV3-ResNet50",
    },
    "tiny_plain_ce": {
        "overrides": TINY + NO_WEIGHTS,
        "plain_crops": True,
        "what": "plain CE, plain crops (conf/data/camvid.yaml)",
    },
    "tiny_weighted_ce": {
        "overrides": TINY,
        "plain_crops": True,
        "what": "median-frequency weighted CE, plain crops",
    },
    "tiny_ohem": {
        "overrides": TINY + NO_WEIGHTS + ["module.ohem_thresh=0.7"],
        "plain_crops": True,
        "what": "OHEM (p < 0.7, >= 100k pixels), plain crops",
    },
}
SUITES = {
    "benchmark": ["twins_svt_s", "smp_segformer", "deeplabv3_resnet50"],
    "ablation": ["tiny_plain_ce", "tiny_weighted_ce", "tiny_ohem", "twins_svt_tiny"],
}
REPORTED = ["Pole", "SignSymbol", "Road"]


class LossClock(L.Callback):
    """Records (seconds since the first batch, step, training loss) after every optimiser step."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, int, float]] = []
        self._start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)
        self.rows.append((time.perf_counter() - self._start, trainer.global_step, loss))


def budget_overrides(minutes: float | None, steps: int | None) -> list[str]:
    """A wall-clock budget (constant learning rate after warm-up: the end is unknown in steps), or a
    step budget (poly decay to zero over the steps)."""
    if steps is not None:
        return [f"trainer.max_steps={steps}", "trainer.max_time=null"]
    seconds = round(minutes * 60)
    return [
        "trainer.max_steps=-1",
        f"trainer.max_time=00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}",
    ]


def budget_name(args: argparse.Namespace) -> str:
    return f"{args.steps}steps" if args.steps is not None else f"{args.minutes:g}min"


def compose_run(name: str, args: argparse.Namespace, out_dir: Path):
    """The run's config: experiment=camvid, the budget protocol, then the run's own differences."""
    spec = RUNS[name]
    overrides = [
        "experiment=camvid",
        f"data.root={args.root}",
        *budget_overrides(args.minutes, args.steps),
        # validation once, after training: during training it would eat the budget
        "trainer.check_val_every_n_epoch=100000",
        "trainer.log_every_n_steps=1",
        "data.val_batch_size=4",
        f"module.warmup_steps={args.warmup_steps}",
        "callbacks.model_checkpoint=null",
        "callbacks.learning_curve=null",
        *spec.get("overrides", []),
    ]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.root_dir = str(PROJECT_ROOT)
        if "model" in spec:
            cfg.model = spec["model"]
        if spec.get("plain_crops"):
            plain = yaml.safe_load((CONF_DIR / "data/camvid.yaml").read_text())
            cfg.data.train_transforms = plain["train_transforms"]
    return cfg, overrides


def run_one(name: str, args: argparse.Namespace, out_dir: Path) -> dict:
    cfg, overrides = compose_run(name, args, out_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, module, trainer = build(cfg)
    clock = LossClock()
    trainer.callbacks.append(clock)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    train_s = time.perf_counter() - start
    evaluator = L.Trainer(
        accelerator=cfg.trainer.accelerator, devices=1, logger=False, enable_checkpointing=False
    )
    val = datamodule.dataset(datamodule.val_split, datamodule.val_transforms)
    val = Subset(val, range(0, len(val), args.val_stride))
    loader = DataLoader(
        val,
        batch_size=cfg.data.val_batch_size,
        num_workers=cfg.data.num_workers,
        collate_fn=functools.partial(pad_collate, ignore_index=datamodule.classes.ignore_index),
    )
    start = time.perf_counter()
    (metrics,) = evaluator.validate(module, dataloaders=loader, verbose=False)
    val_s = time.perf_counter() - start
    steps = trainer.global_step
    result = {
        "run": name,
        "what": RUNS[name]["what"],
        "params_m": sum(p.numel() for p in module.model.parameters()) / 1e6,
        "budget": budget_name(args),
        "train_s": train_s,
        "val_s": val_s,
        "steps": steps,
        "frames_per_s": steps * cfg.data.batch_size / max(clock.rows[-1][0] if clock.rows else train_s, 1e-9),
        "batch_size": cfg.data.batch_size,
        "val_frames": len(val),
        "val_stride": args.val_stride,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "curve": clock.rows,
        "overrides": overrides,
        "device": device_name(cfg.trainer.accelerator),
    }
    plot_curves([result], out_dir / "learning_curve.png", title=f"{name}: {summary(result)}")
    write_text_atomic(out_dir / "result.json", json.dumps(result, indent=1))
    return result


def device_name(accelerator: str) -> str:
    import torch

    if accelerator != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def iou(result: dict, cls: str | None = None) -> float:
    key = "val/mIoU" if cls is None else f"val/IoU/{cls}"
    return result["metrics"].get(key, float("nan"))


def pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}"


def summary(result: dict) -> str:
    parts = [f"mIoU {pct(iou(result))}"] + [f"{c} {pct(iou(result, c))}" for c in REPORTED]
    return ", ".join(parts) + f" ({result['steps']} steps)"


def plot_curves(results: list[dict], out_png: Path, title: str, by_step: bool = False) -> None:
    """Training loss (exponential moving average) against wall-clock minutes (or optimiser steps,
    for step budgets on a machine whose load varies), one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        if not r["curve"]:
            continue
        t, step, loss = zip(*r["curve"], strict=True)
        smooth, ema = [], loss[0]
        for v in loss:
            ema = 0.9 * ema + 0.1 * v
            smooth.append(ema)
        x = step if by_step else [s / 60 for s in t]
        ax.plot(x, smooth, label=f"{r['run']}: mIoU {pct(iou(r))}")
    xlabel = "optimiser step" if by_step else "wall-clock minutes of training"
    ax.set(xlabel=xlabel, ylabel="training loss (EMA 0.9)", title=title)
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def table(results: list[dict]) -> str:
    head = (
        "| run | what | params (M) | steps (batch 8) | train frames/s | val mIoU | Pole | SignSymbol | Road |"
    )
    rows = [head, "|" + " --- |" * 9]
    for r in results:
        rows.append(
            f"| {r['run']} | {r['what']} | {r['params_m']:.1f} | {r['steps']} | {r['frames_per_s']:.2f} | "
            f"{pct(iou(r))} | " + " | ".join(pct(iou(r, c)) for c in REPORTED) + " |"
        )
    return "\n".join(rows)


def val_desc(result: dict) -> str:
    stride = result.get("val_stride", 1)
    if stride == 1:
        return f"all {result['val_frames']} val frames"
    return f"{result['val_frames']} val frames (every {stride}th, sequence 0016E5 throughout)"


def update_docs(docs: Path, suite: str, text: str) -> None:
    """Replace (or append) the suite's section between its markers in docs/benchmarks.md."""
    begin, end = f"<!-- bench_camvid:{suite}:begin -->", f"<!-- bench_camvid:{suite}:end -->"
    old = docs.read_text() if docs.is_file() else "# Benchmarks\n"
    block = f"{begin}\n{text.strip()}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    write_text_atomic(docs, new)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="CamVid in the SegNet layout (e.g. ../shared/data/camvid)")
    p.add_argument("--minutes", type=float, default=30.0, help="training budget per run (default: 30)")
    p.add_argument("--steps", type=int, help="a budget in optimiser steps instead of minutes")
    p.add_argument("--suite", choices=sorted(SUITES), default="benchmark")
    p.add_argument("--runs", nargs="+", choices=sorted(RUNS), help="these runs instead of the suite's")
    p.add_argument("--val-stride", type=int, default=1, help="evaluate every k-th val frame (default: all)")
    p.add_argument("--warmup-steps", type=int, default=10, help="linear warm-up (the budget is short)")
    p.add_argument("--out", default=str(PROJECT_ROOT / "logs" / "bench_camvid"), help="run folders")
    p.add_argument("--docs", default=str(PROJECT_ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--no-docs", action="store_true", help="print the table only")
    p.add_argument("--note", default="", help="a sentence for the docs (e.g. how loaded the machine was)")
    p.add_argument("--force", action="store_true", help="redo runs that have a result")
    args = p.parse_args(argv)
    if not Path(args.root).is_dir():
        raise HdmapError(f"{args.root}: CamVid folder not found")

    names = args.runs or SUITES[args.suite]
    budget = budget_name(args)
    per_run = f"{args.steps} steps of batch 8" if args.steps is not None else f"{args.minutes:g} min"
    budget_dir = Path(args.out) / budget
    results = []
    for name in names:
        out_dir = budget_dir / name
        cached = out_dir / "result.json"
        if cached.is_file() and not args.force:
            print(f"{name}: result exists, skipped ({cached})", flush=True)
            results.append(json.loads(cached.read_text()))
            continue
        print(f"{name}: training for {per_run} ...", flush=True)
        results.append(run_one(name, args, out_dir))
        print(f"{name}: {summary(results[-1])}", flush=True)

    suite = args.suite if not args.runs else "runs"
    combined = budget_dir / f"{suite}_curves.png"
    by_step = args.steps is not None
    plot_curves(results, combined, title=f"CamVid, {per_run} per run", by_step=by_step)
    command = shlex.join(["python", "bench/bench_camvid.py", *(argv if argv is not None else sys.argv[1:])])
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    md = table(results)
    print(md)
    if args.no_docs:
        return
    heading = {
        "benchmark": "CamVid: models at a fixed training budget",
        "ablation": "CamVid: thin-class recipe ablation",
    }
    # The pictures go beside the numbers: copied next to docs/benchmarks.md (the run folders are logs).
    assets = Path(args.docs).parent / "bench_camvid"
    assets.mkdir(parents=True, exist_ok=True)
    prefix = f"{budget}_"
    shutil.copyfile(combined, assets / f"{prefix}{suite}.png")
    for r in results:
        plot_curves(
            [r], assets / f"{prefix}{r['run']}.png", title=f"{r['run']}: {summary(r)}", by_step=by_step
        )
    text = (
        f"### {heading.get(suite, 'CamVid runs')} ({per_run} per run)\n\n"
        f"{when}, {results[0]['device']}; `{command}`. Train on CamVid train (367 frames), evaluate the "
        f"final weights on {val_desc(results[0])} (IoU in %). {args.note}\n\n"
        f"{md}\n\nLearning curves (training loss against {'steps' if by_step else 'minutes'}): all runs in "
        f"[bench_camvid/{prefix}{suite}.png](bench_camvid/{prefix}{suite}.png), one per run in "
        f"`bench_camvid/{prefix}<run>.png`.\n"
    )
    update_docs(Path(args.docs), suite, text)


if __name__ == "__main__":
    main()
