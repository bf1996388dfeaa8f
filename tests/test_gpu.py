"""On an NVIDIA GPU: inference through the one Lightning predict path gives the CPU's masks and map layers,
and training in mixed precision learns. Skipped, with the reason, where CUDA is absent (CI's machines); the
exported-model backends keep their CPU tests through onnxruntime (test_deploy.py)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from test_infer import read_masks

from conftest import common, compose_train, run_infer
from hdmap_seg.training import train

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU on this machine (bench/bench_gpu.py measures one)"
)


def on_gpu(overrides: list[str], precision: str) -> list[str]:
    return [
        *(o for o in overrides if not o.startswith("trainer.accelerator=")),
        "trainer.accelerator=gpu",
        "trainer.devices=1",
        f"trainer.precision={precision}",
    ]


# Random tiny weights leave many pixels with near-tied logits: bf16's 8-bit mantissa flips some of them
# (0.994 of the labels agreed under CPU bf16 autocast on such a checkpoint; Twins-SVT-S on the H200: 0.993).
@pytest.mark.parametrize(("precision", "agreement"), [("32-true", 0.999), ("bf16-mixed", 0.98)])
def test_infer_on_the_gpu_gives_the_cpu_masks_and_layers(
    drive_log, checkpoint, tmp_path, precision, agreement
):
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    proc = run_infer(*common(checkpoint, drive_log, cpu), "trainer.devices=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_infer(*on_gpu(common(checkpoint, drive_log, gpu), precision))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = read_masks(cpu / drive_log.name / "masks"), read_masks(gpu / drive_log.name / "masks")
    assert sorted(a) == sorted(b) and a
    assert np.mean([np.mean(a[k] == b[k]) for k in a]) >= agreement
    if all(np.array_equal(a[k], b[k]) for k in a):  # the same masks make the same layers
        for layer in ("poles", "signs", "medians"):
            name = f"map/{layer}.geojson"
            assert (cpu / drive_log.name / name).read_bytes() == (gpu / drive_log.name / name).read_bytes()
    run = json.loads((gpu / "run.json").read_text())
    assert run["options"]["precision"] == precision


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_training_on_the_gpu_learns(toy_dataset, tmp_path, precision):
    cfg = compose_train(
        toy_dataset,
        tmp_path,
        "trainer.accelerator=gpu",
        "trainer.devices=1",
        f"trainer.precision={precision}",
        "trainer.max_steps=40",
        "callbacks.progress_bar=null",
    )
    train(cfg)
    with open(tmp_path / "run/csv/metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) >= 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    state = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == 40
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point())
