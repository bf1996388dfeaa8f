"""int8 copies of an exported model: they load like the fp32 file, keep its metadata, are smaller, and a trained
model's int8 predictions stay close to its fp32 ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchmetrics.classification import MulticlassConfusionMatrix

from conftest import TINY_TWINS, write_toy_dataset
from hdmap_seg.data.datamodule import SegDataModule
from hdmap_seg.export.onnx import export_onnx
from hdmap_seg.export.quantize import calibration_frames, quantize_dynamic_onnx, quantize_static_onnx
from hdmap_seg.module import iou_from_confusion
from hdmap_seg.runtime import load_model

pytest.importorskip("onnxruntime")

STEPS = 100
#: int8 against fp32 on the toy val split. The demo checkpoint (a real training run, 60 val frames) lost
#: 0.1 mIoU points static and 0.1 dynamic; this toy model is far smaller and its val split 4 frames, where
#: one flipped edge pixel of a 4-pixel pole moves the mIoU more. The bounds leave room for that and still
#: fail if quantization breaks a class (a wrong scale or a quantized Softmax costs several points).
MIN_AGREEMENT = 0.97
MAX_MIOU_DROP = 2.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, SegDataModule]:
    """A tiny Segmenter fitted to the toy train split in-process, exported to ONNX."""
    torch.manual_seed(0)
    root = write_toy_dataset(tmp_path_factory.mktemp("data") / "roads", n_train=8, n_val=4)
    dm = SegDataModule(root, num_classes=6, num_workers=0)
    train = dm.dataset("train")
    images = torch.stack([train[i]["image"] for i in range(len(train))])
    masks = torch.stack([train[i]["mask"] for i in range(len(train))]).long()
    model_config = {"_target_": "hdmap_seg.models.Segmenter", "num_classes": 6, "dropout": 0.0, **TINY_TWINS}
    model = instantiate(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(STEPS):
        loss = F.cross_entropy(model(images), masks, ignore_index=dm.classes.ignore_index)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = export_onnx(model.eval(), dm.classes, tmp_path_factory.mktemp("onnx") / "fp32.onnx", model_config)
    return path, dm


def _predict(path: Path, dm: SegDataModule) -> tuple[list[torch.Tensor], float]:
    """Argmax masks of the val split and their mIoU (in points), computed as training does."""
    model, classes = load_model(path, "onnxruntime", threads=1)
    confusion = MulticlassConfusionMatrix(classes.num_classes, ignore_index=classes.ignore_index)
    preds = []
    for sample in dm.dataset("val"):
        pred = model(sample["image"][None]).argmax(1)
        confusion.update(pred, sample["mask"][None].long())
        preds.append(pred)
    return preds, 100 * float(iou_from_confusion(confusion.compute()).nanmean())


@pytest.mark.slow
def test_int8_loads_keeps_metadata_and_agrees(trained, tmp_path):
    fp32, dm = trained
    int8 = {
        "dynamic": quantize_dynamic_onnx(fp32, tmp_path / "dynamic.onnx"),
        "static": quantize_static_onnx(fp32, tmp_path / "static.onnx", calibration_frames(dm, 8)),
    }
    ref_preds, ref_miou = _predict(fp32, dm)
    assert ref_miou > 40  # the model learned something: agreement with a constant guess proves nothing
    meta = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    for name, path in int8.items():
        assert {p.key: p.value for p in onnx.load(str(path)).metadata_props} == meta, name
        _, classes = load_model(path, "onnxruntime")
        assert classes == dm.classes, name
        assert path.stat().st_size < fp32.stat().st_size, name
        preds, miou = _predict(path, dm)
        agreement = np.mean([float((a == b).float().mean()) for a, b in zip(preds, ref_preds, strict=True)])
        assert agreement >= MIN_AGREEMENT, (name, agreement)
        assert miou >= ref_miou - MAX_MIOU_DROP, (name, miou, ref_miou)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dynamic.onnx", "static.onnx"]  # no temporaries
    # static int8: every Conv reads int8 (dequantized) inputs but the stem, which stays float
    graph = onnx.load(str(int8["static"])).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    quantized = [any(producer.get(i) == "DequantizeLinear" for i in node.input) for node in convs]
    assert "patch_embeds.0" in convs[0].name and not quantized[0]
    assert len(convs) > 5 and all(quantized[1:])


def test_calibration_frames_are_normalised_and_spread(toy_dataset):
    dm = SegDataModule(toy_dataset, num_classes=6, num_workers=0)
    frames = calibration_frames(dm, 3, size=(32, 48))
    assert len(frames) == 3
    assert all(f.shape == (1, 3, 32, 48) and f.dtype == np.float32 for f in frames)
    # ImageNet normalisation: roughly zero-centred, not 0-255 or 0-1 pixels
    assert -3 < min(f.min() for f in frames) < 0 < max(f.max() for f in frames) < 3
    # evenly spaced over the 6 train frames: first and last included, none repeated
    assert not np.array_equal(frames[0], frames[-1])
    assert len(calibration_frames(dm, 100)) == 6
