"""Segmentation evaluation (eval.py): metrics against an independent numpy computation, outputs, splits,
class checks, the ONNX backend, and DDP."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import REPO_ROOT, run_script, write_checkpoint, write_toy_dataset
from hdmap_seg.data.classes import IGNORE_INDEX, ROAD_CLASSES
from hdmap_seg.data.layouts import (
    CAMVID_CLASSES,
    CamVidLayout,
    CityscapesLayout,
    RoadsLayout,
    VistasLayout,
    require_split,
)
from hdmap_seg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hdmap_seg.errors import HdmapError
from hdmap_seg.evaluate.segmentation import evaluate, segmentation_metrics
from hdmap_seg.module import load_segmenter

C = ROAD_CLASSES.num_classes


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "roads")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", ROAD_CLASSES)


def run_eval(*overrides: str) -> subprocess.CompletedProcess:
    return run_script("eval.py", *overrides)


def common(checkpoint: Path, data: Path, out: Path, split: str = "val") -> list[str]:
    return [
        f"ckpt_path={checkpoint}",
        f"data.root={data}",
        f"split={split}",
        f"out_dir={out}",
        f"hydra.run.dir={out}/hydra",
        "trainer.accelerator=cpu",
        "batch_size=2",
        "num_workers=0",
    ]


def compose_eval(checkpoint: Path, data: Path, out: Path, *overrides: str):
    """The config of ``python eval.py`` with ``common`` overrides, for a run in this process."""
    # paths.output_dir is Hydra's run folder, which only a real run sets.
    args = [a for a in common(checkpoint, data, out) if not a.startswith("hydra.")]
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose(
            "eval", overrides=[*args, f"paths.output_dir={out}/run", "trainer.devices=1", *overrides]
        )


def numpy_confusions(checkpoint: Path, data: Path, split: str) -> dict[str, np.ndarray]:
    """Per frame ``(C, C)`` pixel counts (rows = truth), from a plain forward pass and numpy alone."""
    model, _ = load_segmenter(checkpoint)
    out = {}
    for image_path in sorted((data / "images" / split).glob("*.png")):
        rgb = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
        x = ((rgb / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32).transpose(2, 0, 1)
        with torch.no_grad():
            pred = model(torch.from_numpy(x)[None])[0].argmax(0).numpy()
        truth = cv2.imread(str(data / "masks" / split / image_path.name), cv2.IMREAD_UNCHANGED)
        valid = truth != IGNORE_INDEX
        counts = np.bincount(truth[valid].astype(np.int64) * C + pred[valid], minlength=C * C)
        out[image_path.stem] = counts.reshape(C, C)
    return out


def numpy_iou(confusion: np.ndarray) -> np.ndarray:
    tp = np.diag(confusion).astype(float)
    denom = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def read_confusion_csv(path: Path) -> tuple[list[str], np.ndarray]:
    rows = list(csv.reader(path.read_text().splitlines()))
    assert [r[0] for r in rows[1:]] == rows[0][1:], "rows and columns name the same classes"
    return rows[0][1:], np.array([[int(v) for v in r[1:]] for r in rows[1:]])


@pytest.fixture(scope="module")
def torch_run(checkpoint, dataset, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("eval") / "torch"
    proc = run_eval(*common(checkpoint, dataset, out), "overlays=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_metrics_and_outputs_equal_an_independent_numpy_computation(torch_run, checkpoint, dataset):
    out, stdout = torch_run
    frames = numpy_confusions(checkpoint, dataset, "val")
    expected = sum(frames.values())
    names, confusion = read_confusion_csv(out / "confusion.csv")
    assert names == ROAD_CLASSES.names
    np.testing.assert_array_equal(confusion, expected)

    metrics = json.loads((out / "metrics.json").read_text())
    iou = numpy_iou(expected)
    assert metrics["mIoU"] == pytest.approx(np.nanmean(iou), abs=1e-12)
    assert metrics["pixel_accuracy"] == pytest.approx(np.trace(expected) / expected.sum(), abs=1e-12)
    for name, value in zip(ROAD_CLASSES.names, iou, strict=True):
        assert metrics["IoU"][name] == (None if np.isnan(value) else pytest.approx(value, abs=1e-12))
    assert metrics["frames"] == len(frames) == 2
    assert (metrics["split"], metrics["backend"], metrics["data_root"]) == ("val", "torch", str(dataset))
    assert metrics["checkpoint"] == str(checkpoint) and metrics["options"]["flip"] is False

    # Worst first by per-frame mIoU; the overlays are those frames, image | truth | prediction wide.
    by_frame = {stem: np.nanmean(numpy_iou(c)) for stem, c in frames.items()}
    assert metrics["worst_frames"] == sorted(by_frame, key=by_frame.get)
    overlays = sorted((out / "overlays").glob("*.png"))
    assert [p.stem for p in overlays] == [f"{i:03d}_{s}" for i, s in enumerate(metrics["worst_frames"], 1)]
    h, w = cv2.imread(str(dataset / "images/val/0000.png")).shape[:2]
    assert cv2.imread(str(overlays[0])).shape[1] == 3 * w
    frames_csv = list(csv.DictReader((out / "frames.csv").read_text().splitlines()))
    assert [r["frame"] for r in frames_csv] == metrics["worst_frames"]
    assert [float(r["mIoU"]) for r in frames_csv] == pytest.approx(sorted(by_frame.values()), abs=1e-6)

    png = cv2.imread(str(out / "confusion.png"))
    assert png is not None and png.shape[0] > 100
    table = {line.split()[0]: line.split()[-1] for line in stdout.splitlines() if line.strip()}
    assert table["mIoU"] == f"{metrics['mIoU']:.4f}" and table["sign"] == f"{metrics['IoU']['sign']:.4f}"


def test_metrics_of_a_perfect_and_of_a_partial_prediction():
    perfect = segmentation_metrics(np.diag([5, 3, 0, 7]), ["a", "b", "c", "d"])
    # Class c is in neither truth nor prediction: no IoU, and not in the mean.
    assert perfect == {"mIoU": 1.0, "pixel_accuracy": 1.0, "IoU": {"a": 1.0, "b": 1.0, "c": None, "d": 1.0}}
    partial = segmentation_metrics(np.array([[3, 1], [0, 0]]), ["a", "b"])
    # b never true but predicted once: IoU 0 counts in the mean.
    assert partial == {"mIoU": pytest.approx(0.375), "pixel_accuracy": 0.75, "IoU": {"a": 0.75, "b": 0.0}}


def test_onnx_backend_gives_the_torch_metrics(torch_run, checkpoint, dataset, tmp_path):
    pytest.importorskip("onnxruntime")
    from hdmap_seg.export.onnx import export_onnx

    ckpt = torch.load(checkpoint, weights_only=True)
    model, classes = load_segmenter(checkpoint)
    onnx_path = export_onnx(model, classes, tmp_path / "tiny.onnx", ckpt["hyper_parameters"]["model_config"])
    out = tmp_path / "onnx"
    metrics = evaluate(compose_eval(onnx_path, dataset, out, "backend=onnxruntime"))
    reference = json.loads((torch_run[0] / "metrics.json").read_text())
    assert metrics["backend"] == "onnxruntime"
    assert metrics["mIoU"] == pytest.approx(reference["mIoU"], abs=1e-4)
    assert metrics["pixel_accuracy"] == pytest.approx(reference["pixel_accuracy"], abs=1e-4)


def test_scale_flip_and_window_score_every_labelled_pixel_at_the_label_size(checkpoint, dataset, tmp_path):
    out = tmp_path / "tta"
    metrics = evaluate(compose_eval(checkpoint, dataset, out, "scale=0.8", "flip=true", "window=[32,32]"))
    assert metrics["options"] | {"precision": None} == {
        "scale": 0.8,
        "flip": True,
        "window": [32, 32],  # the model's size divisor; frames of 32x45 take two windows
        "stride": [21, 21],
        "precision": None,
        "batch_size": 2,
    }
    _, confusion = read_confusion_csv(out / "confusion.csv")
    labelled = sum(
        int((cv2.imread(str(p), cv2.IMREAD_UNCHANGED) != IGNORE_INDEX).sum())
        for p in (dataset / "masks/val").glob("*.png")
    )
    assert confusion.sum() == labelled


def test_an_unknown_split_exits_2_naming_the_splits_there_are(checkpoint, dataset, tmp_path):
    proc = run_eval(*common(checkpoint, dataset, tmp_path / "out", split="nonexistent"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {dataset}: no split 'nonexistent' in this RoadsLayout data set; its splits: train, val"
    ]
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_model_of_other_classes_exits_2_naming_both(dataset, tmp_path):
    ckpt = write_checkpoint(tmp_path / "camvid.ckpt", CAMVID_CLASSES)
    proc = run_eval(*common(ckpt, dataset, tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "the model's 11 classes (Sky, Building," in error
    assert "are not the data's 6 (background, road, lane_marking, median, pole, sign)" in error


def write_camvid_like(root: Path, splits: dict[str, int]) -> Path:
    for split, n in splits.items():
        for folder in (split, f"{split}annot"):
            (root / folder).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / split / f"Seq05VD_f{i:05d}.png"), np.zeros((4, 6, 3), np.uint8))
            cv2.imwrite(str(root / f"{split}annot" / f"Seq05VD_f{i:05d}.png"), np.zeros((4, 6), np.uint8))
    return root


def test_camvid_test_split_pairs_test_with_testannot(tmp_path):
    root = write_camvid_like(tmp_path / "camvid", {"train": 2, "val": 1, "test": 3})
    layout = CamVidLayout()
    assert layout.splits(root) == ["test", "train", "val"]
    samples = layout.list_split(root, "test")
    assert [(s.image_path.parent.name, s.mask_path.parent.name) for s in samples] == [
        ("test", "testannot")
    ] * 3
    assert all(s.image_path.name == s.mask_path.name for s in samples)


@pytest.mark.parametrize(
    ("layout", "folders", "expected"),
    [
        (
            RoadsLayout(),
            ["images/train", "images/val", "images/test", "masks/train", "masks/val"],
            ["train", "val"],
        ),
        (
            CityscapesLayout(),
            ["leftImg8bit/train", "leftImg8bit/val", "gtFine/train", "gtFine/val"],
            ["train", "val"],
        ),
        (
            VistasLayout("v1.2"),
            ["training/images", "training/v1.2/labels", "testing/images", "validation/v2.0/labels"],
            ["training"],
        ),
    ],
)
def test_each_layout_lists_the_splits_with_frames_and_masks(layout, folders, expected, tmp_path):
    for folder in folders:
        (tmp_path / folder).mkdir(parents=True)
    assert layout.splits(tmp_path) == expected


def test_real_camvid_splits(shared_dir):
    root = shared_dir / "data" / "camvid"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    layout = CamVidLayout()
    splits = layout.splits(root)
    assert {"train", "val"} <= set(splits)
    if "test" in splits:  # the SegNet release has 233 test frames; ../shared leaves them out
        samples = layout.list_split(root, "test")
        assert samples and all(s.mask_path.parent.name == "testannot" for s in samples)
    else:
        with pytest.raises(HdmapError, match=r"no split 'test' .*; its splits: train, val"):
            require_split(layout, root, "test")


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_counts_every_frame_once(checkpoint, dataset, tmp_path):
    """6 frames in batches of 2 over 2 processes: 2 batches and 1, no frame repeated to even them out."""
    out = tmp_path / "ddp"
    proc = run_eval(
        *common(checkpoint, dataset, out, split="train"),
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "overlays=3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    frames = numpy_confusions(checkpoint, dataset, "train")
    _, confusion = read_confusion_csv(out / "confusion.csv")
    np.testing.assert_array_equal(confusion, sum(frames.values()))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frames"] == 6 and metrics["world_size"] == 2
    by_frame = {stem: np.nanmean(numpy_iou(c)) for stem, c in frames.items()}
    assert metrics["worst_frames"] == sorted(by_frame, key=by_frame.get)[:3]
    assert len(list((out / "overlays").glob("*.png"))) == 3
