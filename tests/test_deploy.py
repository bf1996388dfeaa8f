"""Export to ONNX and the inference backends: parity with PyTorch at odd sizes, metadata, the same
masks and map layers through tools/infer.py, and one-line errors for bad models and missing runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hydra.utils import instantiate
from test_infer import read_masks

from conftest import FRAMES, common, run_infer, run_script, write_checkpoint
from hdmap_seg.data.classes import ROAD_CLASSES
from hdmap_seg.data.layouts import CAMVID_CLASSES
from hdmap_seg.data.transforms import IMAGENET_MEAN
from hdmap_seg.errors import HdmapError
from hdmap_seg.export.onnx import META_CLASSES, META_DIVISOR, META_MEAN, META_MODEL, export_onnx, parity
from hdmap_seg.runtime import compare_backends, load_model

# Two blocks a stage: each stage has a locally-grouped (windowed) and a global sub-sampled attention.
TWO_BLOCKS = {
    "_target_": "hdmap_seg.models.Segmenter",
    "backbone": "twins_svt_small",
    "num_classes": 6,
    "embed_dim": 16,
    "backbone_kwargs": {"embed_dims": [16, 32, 48, 64], "depths": [2, 2, 2, 2], "num_heads": [1, 2, 3, 4]},
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = instantiate(TWO_BLOCKS).eval()
    path = export_onnx(model, ROAD_CLASSES, tmp_path_factory.mktemp("onnx") / "m.onnx", TWO_BLOCKS)
    return model, path


def stage_padding(h: int, w: int, window: int = 7) -> list[tuple[int, int]]:
    """Rows and columns each stage's windows pad (the input is padded to a multiple of 32 first)."""
    hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
    return [(-(hp // r) % window, -(wp // r) % window) for r in (4, 8, 16, 32)]


# The frame sizes users feed (KITTI, CamVid, Cityscapes-like), and sizes whose windows pad nowhere, in one
# axis only (either), or both, at every stage.
SIZES = [(375, 1242), (360, 480), (512, 1024), (224, 224), (224, 250), (250, 224), (97, 61)]


def test_padding_cases_are_covered():
    cases = {(bool(b), bool(r)) for h, w in SIZES for b, r in stage_padding(h, w)}
    assert cases == {(False, False), (True, False), (False, True), (True, True)}


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_onnx_matches_pytorch_at_any_size(exported, size):
    model, path = exported
    onnx_model, _ = load_model(path, "onnxruntime")
    r = parity(model, onnx_model, size)
    assert r["max_abs_logit_diff"] <= 1e-4 and r["label_agreement"] >= 0.999, r


def test_batch_is_dynamic_and_openvino_agrees(exported):
    model, path = exported
    x = torch.randn(3, 3, 64, 96)
    with torch.inference_mode():
        ref = model(x)
    for backend in ("onnxruntime", "openvino"):
        out = load_model(path, backend)[0](x)
        assert out.shape == ref.shape
        assert float((out - ref).abs().max()) <= 1e-4, backend


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_recurring_shapes_get_a_model_compiled_for_them_with_the_same_logits(exported, backend):
    model, path = exported
    runtime, _ = load_model(path, backend)
    runtime.MAX_SPECIALISED = 2
    gen = torch.Generator().manual_seed(0)
    for h, w in [(64, 96), (64, 96), (64, 96), (97, 61), (97, 61), (40, 56), (40, 56), (64, 96), (64, 96)]:
        x = torch.randn(1, 3, h, w, generator=gen)
        with torch.inference_mode():
            assert float((runtime(x) - model(x)).abs().max()) <= 1e-4, (backend, h, w)
    # the second meeting compiles; the least recently used of more than two is dropped
    assert runtime.specialised_shapes == [(1, 3, 40, 56), (1, 3, 64, 96)]
    # a model compiled for one shape is one for that shape only
    with pytest.raises(Exception):  # noqa: B017, PT011 - each runtime raises its own type
        runtime.compile((1, 3, 64, 96))(np.zeros((1, 3, 40, 56), np.float32))


def test_compare_backends_times_each_and_measures_agreement_with_the_reference(exported):
    model, path = exported
    flipped = lambda x: -model(x)  # noqa: E731 - the opposite ranking: labels rarely agree
    stats = compare_backends(
        {"torch": model, "onnxruntime": load_model(path, "onnxruntime")[0], "wrong": flipped},
        torch.randn(2, 3, 40, 56),
        repeats=1,
    )
    assert stats["torch"]["agreement"] == 1.0 and stats["onnxruntime"]["agreement"] >= 0.999
    assert stats["wrong"]["agreement"] < 0.5
    assert all(r["s_per_frame"] > 0 for r in stats.values())


def test_the_file_carries_checked_graph_and_metadata(exported):
    _, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta[META_CLASSES]) == ROAD_CLASSES.to_dict()
    assert json.loads(meta[META_MEAN]) == list(IMAGENET_MEAN)
    assert int(meta[META_DIVISOR]) == 32
    assert json.loads(meta[META_MODEL])["backbone"] == "twins_svt_small"
    _, classes = load_model(path, "onnxruntime")
    assert classes == ROAD_CLASSES


def test_bad_models_and_backends_are_one_line_errors(exported, tmp_path, monkeypatch):
    _, path = exported
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(HdmapError, match="corrupt.onnx: not a readable ONNX model"):
        load_model(corrupt, "onnxruntime")
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(HdmapError, match="without hdmap_seg metadata"):
        load_model(foreign, "onnxruntime")
    with pytest.raises(HdmapError, match="backend=onnxruntime runs an exported model"):
        load_model(tmp_path / "model.ckpt", "onnxruntime")
    with pytest.raises(HdmapError, match="not torch"):
        load_model(path, "torch")
    with pytest.raises(HdmapError, match="backend=tflite: unknown"):
        load_model(path, "tflite")
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(HdmapError, match="TensorRT execution provider.*pip install onnxruntime-gpu"):
            load_model(path, "tensorrt")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a)
    )
    with pytest.raises(
        HdmapError, match=r'needs openvino, which is not installed: pip install -e ".\[deploy\]"'
    ):
        load_model(path, "openvino")


@pytest.mark.slow
def test_export_command_then_infer_with_onnxruntime_gives_torch_masks_and_layers(drive_log, tmp_path):  # noqa: F811
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt", ROAD_CLASSES)
    proc = run_script("tools/export.py", str(ckpt), "--check", "375x1242", "93x311")
    assert proc.returncode == 0, proc.stderr[-3000:]
    onnx_path = tmp_path / "tiny.onnx"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["onnx"] == str(onnx_path) and set(report["parity"]) == {"375x1242", "93x311"}

    outs = {}
    for backend, model in (("torch", ckpt), ("onnxruntime", onnx_path)):
        outs[backend] = tmp_path / backend
        proc = run_infer(*common(model, drive_log, outs[backend]), f"backend={backend}", "trainer.devices=1")
        assert proc.returncode == 0, proc.stderr[-3000:]
    a = read_masks(outs["torch"] / drive_log.name / "masks")
    b = read_masks(outs["onnxruntime"] / drive_log.name / "masks")
    assert sorted(a) == sorted(b) and len(a) == FRAMES
    assert np.mean([np.mean(a[k] == b[k]) for k in a]) >= 0.999
    # Same masks give the same layers; byte-identical unless a pixel differed.
    if all(np.array_equal(a[k], b[k]) for k in a):
        for layer in ("poles", "signs", "medians"):
            name = f"map/{layer}.geojson"
            assert (outs["torch"] / drive_log.name / name).read_bytes() == (
                outs["onnxruntime"] / drive_log.name / name
            ).read_bytes()
    summary = json.loads((outs["onnxruntime"] / "summary.json").read_text())
    assert summary["backend"] == "onnxruntime"


def test_export_and_infer_errors_exit_2(drive_log, tmp_path):  # noqa: F811
    bogus = tmp_path / "bogus.ckpt"
    bogus.write_text("nope")
    proc = run_script("tools/export.py", str(bogus))
    assert proc.returncode == 2 and "bogus.ckpt: not a loadable checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "bogus.onnx").exists()
    proc = run_script("tools/export.py", str(bogus), "--check", "12by5")
    assert proc.returncode == 2 and "expected HEIGHTxWIDTH" in proc.stderr

    # An exported model of CamVid's classes: which ids feed the layers needs CamVid's class map.
    torch.manual_seed(0)
    camvid = export_onnx(
        instantiate({**TWO_BLOCKS, "num_classes": 11}).eval(), CAMVID_CLASSES, tmp_path / "camvid.onnx"
    )
    proc = run_infer(*common(camvid, drive_log, tmp_path / "out"), "backend=onnxruntime")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "need its class map" in proc.stderr
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage")
    proc = run_infer(*common(corrupt, drive_log, tmp_path / "out2"), "backend=onnxruntime")
    assert proc.returncode == 2 and "corrupt.onnx" in proc.stderr and "Traceback" not in proc.stderr


def _tensorrt_missing() -> str | None:
    import onnxruntime as ort

    if not torch.cuda.is_available():
        return "no GPU on this machine: TensorRT runs only on NVIDIA GPUs (the CPU path is tested through onnxruntime)"
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no TensorRT provider here (pip install onnxruntime-gpu tensorrt)"
    return None


@pytest.mark.skipif(_tensorrt_missing() is not None, reason=str(_tensorrt_missing()))
def test_tensorrt_fp16_agrees_with_pytorch_on_gpu(exported):
    model, path = exported
    trt, _ = load_model(path, "tensorrt")
    x = torch.randn(1, 3, 375, 1242)
    with torch.inference_mode():
        ref = model(x)
    out = trt(x)
    # fp16: logits differ in the third digit; labels still agree almost everywhere.
    assert float((ref.argmax(1) == out.argmax(1)).float().mean()) >= 0.99


def test_export_command_writes_an_int8_copy_beside_the_model(tmp_path, toy_dataset):
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt", ROAD_CLASSES)
    export = [str(ckpt), "--check", "40x56"]
    proc = run_script("tools/export.py", *export, "--int8", "static")
    assert proc.returncode == 2 and "name their data config with --data" in proc.stderr
    assert "Traceback" not in proc.stderr
    calib = ["--data", "roads", "--data-root", str(toy_dataset), "--calib-frames", "4"]
    proc = run_script("tools/export.py", *export, "--int8", "static", *calib)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])["int8"]
    int8 = tmp_path / "tiny.int8.onnx"
    assert report["onnx"] == str(int8) and report["mode"] == "static"
    assert int8.stat().st_size < (tmp_path / "tiny.onnx").stat().st_size
    model, classes = load_model(int8, "onnxruntime")
    assert classes == ROAD_CLASSES and model(torch.zeros(1, 3, 40, 56)).shape == (1, 6, 40, 56)
    proc = run_script("tools/export.py", *export, "--int8", "static", "--data", "nope")
    assert proc.returncode == 2 and "--data nope: no such data config" in proc.stderr
