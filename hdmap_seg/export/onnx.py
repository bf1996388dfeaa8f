"""A trained segmenter as one self-contained ONNX file: the graph, and in its metadata everything the
inference side needs (classes, normalisation, size divisor, the model's config).

The graph takes ``image (B, 3, H, W)`` float32, normalised, any batch and any size, and returns
``logits (B, C, H, W)``. It is traced (``torch.onnx.export(dynamo=False)``) with the batch, height
and width as symbolic axes: the padding to the size divisor and the masked window attention are
recorded as shape arithmetic, so one file serves every frame size (tests/test_export.py checks
parity at odd sizes). Trace-time branches on shapes would freeze into the graph, which is why
:class:`~hdmap_seg.models.window_attention.MaskedLocallyGroupedAttn` always builds its key mask
while exporting.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hdmap_seg.data.classes import ClassSet
from hdmap_seg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hdmap_seg.errors import HdmapError
from hdmap_seg.io import atomic_path

OPSET = 17
INPUT, OUTPUT = "image", "logits"
#: the symbolic axes of both, by position
DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}
#: metadata_props keys (strings; JSON where structured)
META_CLASSES, META_MEAN, META_STD = "hdmap_seg.classes", "hdmap_seg.mean", "hdmap_seg.std"
META_DIVISOR, META_MODEL = "hdmap_seg.size_divisor", "hdmap_seg.model_config"
#: An exported file is kept only within these of PyTorch on random frames (:func:`parity_passes`).
MAX_LOGIT_DIFF = 1e-4
MIN_LABEL_AGREEMENT = 0.999
# Traced at a size that is not a multiple of the windows at any stage (every branch of the padding taken).
_TRACE_HW = (100, 130)
# elements a folded constant may have: any layer's weights (onnxscript's default, 8192, leaves most of them)
_FOLD_LIMIT = 1 << 24


def export_onnx(
    model: nn.Module,
    classes: ClassSet,
    path: str | os.PathLike,
    model_config: dict | None = None,
    opset: int = OPSET,
) -> Path:
    """Write ``model`` (eval mode, CPU) to ``path`` with its metadata; checked by ``onnx.checker``.

    The file appears only when complete (written beside it, then renamed).
    """
    import onnx
    from onnxscript.optimizer import fold_constants, remove_unused_nodes

    path = Path(path)
    model = model.eval().cpu()
    dummy = torch.zeros(1, 3, *_TRACE_HW)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # The tracer warns about every Python int it records as a shape op; that is what we want.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: DYNAMIC_AXES, OUTPUT: DYNAMIC_AXES},
        )
        proto = onnx.load(str(tmp))
        # The tracer records arithmetic on parameters (the light head's folded weights) as nodes; the
        # quantizers need every Conv weight to be an initializer, so compute such nodes here, once.
        fold_constants(proto, input_size_limit=_FOLD_LIMIT, output_size_limit=_FOLD_LIMIT)
        remove_unused_nodes(proto)  # and initializers: onnxruntime warns about each one left
        meta = {
            META_CLASSES: json.dumps(classes.to_dict()),
            META_MEAN: json.dumps(list(IMAGENET_MEAN)),
            META_STD: json.dumps(list(IMAGENET_STD)),
            META_DIVISOR: str(int(getattr(model, "size_divisor", 1))),
            META_MODEL: json.dumps(model_config or {}),
        }
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of an exported model; a clear error when the file is not an ONNX model of ours."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise HdmapError(f"{path}: model file not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError and others for a damaged file
        raise HdmapError(f"{path}: not a readable ONNX model ({type(err).__name__}: {err})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if META_CLASSES not in meta:
        raise HdmapError(f"{path}: an ONNX model without hdmap_seg metadata (export it with hdmap-export)")
    return meta


def classes_of(meta: dict[str, str], source: str) -> ClassSet:
    """The classes recorded in an exported model's metadata."""
    return ClassSet.from_dict(json.loads(meta[META_CLASSES]), source=source)


def check_normalisation(meta: dict[str, str], source: str) -> None:
    """The exported model must expect the normalisation the frame loaders apply."""
    mean, std = json.loads(meta[META_MEAN]), json.loads(meta[META_STD])
    if not (np.allclose(mean, IMAGENET_MEAN) and np.allclose(std, IMAGENET_STD)):
        raise HdmapError(
            f"{source}: exported for normalisation mean={mean} std={std}; this version feeds "
            f"mean={list(IMAGENET_MEAN)} std={list(IMAGENET_STD)}"
        )


def parity(
    model: torch.nn.Module, exported: torch.nn.Module, size_hw: tuple[int, int], seed: int = 0
) -> dict[str, float]:
    """Largest absolute logit difference and label agreement of two models on one random frame."""
    x = torch.randn(1, 3, *size_hw, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref, out = model(x), exported(x)
    return {
        "max_abs_logit_diff": float((ref - out).abs().max()),
        "label_agreement": float((ref.argmax(1) == out.argmax(1)).float().mean()),
    }


def parity_passes(r: dict[str, float]) -> bool:
    """Whether a :func:`parity` result meets the export's bars."""
    return bool(np.isfinite(r["max_abs_logit_diff"])) and (
        r["max_abs_logit_diff"] <= MAX_LOGIT_DIFF and r["label_agreement"] >= MIN_LABEL_AGREEMENT
    )
