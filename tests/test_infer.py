"""Batch inference: outputs per log, resuming, sliding window, and DDP sharding on two CPU processes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from conftest import FRAMES, common, run_infer, write_checkpoint
from hdmap_seg.data.layouts import CAMVID_CLASSES
from hdmap_seg.inference import sliding_window_logits


def read_masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("*.png"))}


@pytest.mark.slow
def test_infer_writes_masks_overlays_layers_and_resumes(checkpoint, drive_log, tmp_path):
    out = tmp_path / "out"
    proc = run_infer(*common(checkpoint, drive_log, out), "overlays=true", "trainer.devices=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log_out = out / drive_log.name
    masks = read_masks(log_out / "masks")
    frames = sorted(p.stem for p in (drive_log / "image_02/data").glob("*.png"))
    assert sorted(masks) == frames
    h, w = cv2.imread(str(drive_log / "image_02/data" / f"{frames[0]}.png")).shape[:2]
    assert all(m.shape == (h, w) and m.max() < 6 for m in masks.values())
    assert sorted(p.stem for p in (log_out / "overlays").glob("*.jpg")) == frames
    summary = json.loads((log_out / "summary.json").read_text())
    assert summary["frames"] == FRAMES and summary["run"]["frames_predicted"] == FRAMES
    for layer in ("poles", "signs", "medians"):
        geojson = json.loads((log_out / "map" / f"{layer}.geojson").read_text())
        assert geojson["type"] == "FeatureCollection"
        # a median is one feature with its centre line, as hdmap-vectorize's vectorize.json counts it
        kinds = [f["properties"].get("kind") for f in geojson["features"]]
        assert summary["features"][layer] == len(kinds) - kinds.count("centerline")
    layers_before = {p.name: p.read_bytes() for p in (log_out / "map").glob("*.geojson")}

    # A crash half-way: some masks and the layers are missing. The rerun predicts only those frames.
    for stem in frames[::3]:
        (log_out / "masks" / f"{stem}.png").unlink()
    for p in (log_out / "map").iterdir():
        p.unlink()
    proc = run_infer(*common(checkpoint, drive_log, out), "trainer.devices=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((log_out / "summary.json").read_text())
    assert summary["run"]["frames_predicted"] == len(frames[::3])
    assert summary["frames_resumed"] == FRAMES - len(frames[::3])
    again = read_masks(log_out / "masks")
    assert all(np.array_equal(again[k], masks[k]) for k in frames)
    assert {p.name: p.read_bytes() for p in (log_out / "map").glob("*.geojson")} == layers_before


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_writes_every_frame_once_and_the_same_layers(
    checkpoint, drive_log, tmp_path
):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    proc = run_infer(*common(checkpoint, drive_log, single), "trainer.devices=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_infer(*common(checkpoint, drive_log, ddp), "trainer.strategy=ddp", "trainer.devices=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(p.read_text()) for p in sorted((ddp / "ranks").glob("rank*.json"))]
    assert [r["rank"] for r in ranks] == [0, 1]
    written = [f for r in ranks for f in r["runs"][-1]["frames"]]
    assert len(written) == FRAMES and len(set(written)) == FRAMES, "every frame exactly once"
    assert all(r["runs"][-1]["frames"] for r in ranks), "both processes did work"
    a, b = read_masks(single / drive_log.name / "masks"), read_masks(ddp / drive_log.name / "masks")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    for layer in ("poles", "signs", "medians"):
        one = (single / drive_log.name / "map" / f"{layer}.geojson").read_bytes()
        assert one == (ddp / drive_log.name / "map" / f"{layer}.geojson").read_bytes(), layer


@pytest.mark.slow
def test_mixed_precision_predicts_the_same_labels(checkpoint, drive_log, tmp_path):
    """``trainer.precision=bf16-mixed`` (GPU: 16-mixed too) runs the forward under autocast; on this
    CPU it is bf16 autocast, which rounds logits to 8 bits of mantissa: labels change only at near-ties."""
    full, mixed = tmp_path / "full", tmp_path / "mixed"
    proc = run_infer(*common(checkpoint, drive_log, full), "trainer.devices=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_infer(
        *common(checkpoint, drive_log, mixed), "trainer.devices=1", "trainer.precision=bf16-mixed"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = read_masks(full / drive_log.name / "masks"), read_masks(mixed / drive_log.name / "masks")
    assert sorted(a) == sorted(b)
    agree = np.mean([np.mean(a[k] == b[k]) for k in a])
    # Most labels agree, and not every frame is identical: the forward did run in bf16.
    assert agree > 0.95 and not all(np.array_equal(a[k], b[k]) for k in a)


def test_bad_checkpoint_exits_2_naming_the_file(drive_log, tmp_path):
    bogus = tmp_path / "nope.ckpt"
    bogus.write_text("not a checkpoint")
    proc = run_infer(*common(bogus, drive_log, tmp_path / "out"))
    assert proc.returncode == 2
    assert "nope.ckpt: not a loadable checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_layer_classes_come_from_the_checkpoint_not_an_override(checkpoint, drive_log, tmp_path):
    out = tmp_path / "out"
    proc = run_infer(*common(checkpoint, drive_log, out), "vectorize.classes={pole: [1]}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "vectorize.classes: inference takes the layers' class ids from the checkpoint" in proc.stderr
    assert not (out / drive_log.name).exists(), "nothing was predicted"


@pytest.mark.slow
def test_a_model_of_native_camvid_classes_maps_through_its_class_map(drive_log, tmp_path):
    """The layers' mask ids come from the checkpoint's class names; CamVid's need the class map training reads."""
    ckpt = write_checkpoint(tmp_path / "camvid.ckpt", CAMVID_CLASSES)
    proc = run_infer(*common(ckpt, drive_log, tmp_path / "bare"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "feeds a map layer" in proc.stderr and "need its class map" in proc.stderr
    out = tmp_path / "mapped"
    proc = run_infer(*common(ckpt, drive_log, out), "class_map_path=conf/class_map/camvid_to_roads.yaml")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / drive_log.name / "summary.json").read_text())
    # CamVid has Pole and SignSymbol but no median class: the median layer is not built.
    assert set(summary["features"]) == {"poles", "signs", "coverage"}


def test_sliding_window_equals_whole_image_for_a_pointwise_model():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, kernel_size=1)
    images = torch.randn(2, 3, 37, 61)
    with torch.no_grad():
        whole = model(images)
        windows = sliding_window_logits(model, images, window=(16, 24), stride=(10, 14))
    assert windows.shape == whole.shape
    assert torch.allclose(windows, whole, atol=1e-6)


def test_sliding_window_averages_overlaps():
    """A model that outputs a constant per call: each pixel gets the mean over the windows covering it."""
    calls = []

    def model(x):
        calls.append(x.shape)
        return torch.full((x.shape[0], 1, *x.shape[-2:]), float(len(calls)))

    out = sliding_window_logits(model, torch.zeros(1, 3, 10, 10), window=(6, 6), stride=(4, 4))
    # rows start 0 and 4; cols start 0 and 4: windows 1..4; pixel (5,5) is covered by all four.
    assert all(s[-2:] == (6, 6) for s in calls) and len(calls) == 4
    assert out[0, 0, 5, 5].item() == pytest.approx(2.5)
    assert out[0, 0, 0, 0].item() == 1.0 and out[0, 0, 9, 9].item() == 4.0
