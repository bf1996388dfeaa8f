"""int8 versions of an exported model (:mod:`hdmap_seg.export.onnx`), made by onnxruntime's quantization tools.

- :func:`quantize_dynamic_onnx`: the baseline. Weights of MatMul/Conv become int8 ahead of time; activations
  are quantized at run time, per call, from their own range. No calibration data.
- :func:`quantize_static_onnx`: QDQ format (QuantizeLinear/DequantizeLinear pairs around the quantized
  ops, which onnxruntime and OpenVINO both fuse into int8 kernels). Activation ranges are fixed ahead of
  time from calibration frames (:func:`calibration_frames`).

Both keep the source's ``metadata_props`` (classes, normalisation, model config), so
:func:`hdmap_seg.runtime.load_model` runs an int8 file exactly as the fp32 one, and both write atomically.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hdmap_seg.errors import HdmapError
from hdmap_seg.export.onnx import INPUT
from hdmap_seg.io import atomic_path

if TYPE_CHECKING:
    from hdmap_seg.data.datamodule import SegDataModule

#: Op types the static quantizer makes int8. Only the weighted ops: with onnxruntime's default list, the
#: QDQ pairs also go around Reshape/Transpose/Pad/Slice/Resize outputs, whose int8 activations then feed
#: float LayerNorms, residual Adds and Softmaxes. On the demo checkpoint (60 val frames) that lost 3.8 mIoU
#: points against 0.08 for Conv and MatMul alone.
STATIC_OP_TYPES = ("Conv", "MatMul")


def _copy_metadata(src: Path, dst: Path) -> None:
    """Give ``dst`` the ``metadata_props`` of ``src`` (the quantizers drop them)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    proto = onnx.load(str(dst))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(dst))


def quantize_dynamic_onnx(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write a dynamically quantized (int8 weights, run-time activation ranges) copy of ``src`` to ``dst``.

    The graph keeps its interface: ``image (B, 3, H, W)`` float32 -> ``logits (B, C, H, W)`` float32.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    with atomic_path(dst) as tmp:
        # onnxruntime's defaults: u8 activations (quantized per call) x s8 weights, one scale per tensor.
        quantize_dynamic(src, tmp, weight_type=QuantType.QInt8, per_channel=False)
        _copy_metadata(src, tmp)
    return dst


class _FramesReader:
    """onnxruntime's ``CalibrationDataReader`` protocol over an iterable of ``(1, 3, H, W)`` frames."""

    def __init__(self, frames: Iterable[np.ndarray]) -> None:
        self._frames: Iterator[np.ndarray] = iter(frames)

    def get_next(self) -> dict[str, np.ndarray] | None:
        frame = next(self._frames, None)
        if frame is None:
            return None
        return {INPUT: np.ascontiguousarray(frame, dtype=np.float32)}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def quantize_static_onnx(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration_images: Iterable[np.ndarray],
    *,
    per_channel: bool = False,
    calibrate_method: str = "MinMax",
    op_types: Sequence[str] = STATIC_OP_TYPES,
    weights_only_matmul: bool = True,
    preprocess: bool = True,
) -> Path:
    """Write a statically quantized (QDQ, int8 weights and activations) copy of ``src`` to ``dst``.

    Args:
        calibration_images: frames ``(1, 3, H, W)`` float32, normalised as the model expects
            (:func:`calibration_frames`); their activation ranges become the fixed quantization ranges.
        per_channel: one weight scale per output channel. Off by default: measured on the demo
            checkpoint, per-channel lost 0.32 mIoU points and per-tensor 0.08 (the small sign class most).
        calibrate_method: ``MinMax``, ``Percentile`` or ``Entropy`` (onnxruntime's ``CalibrationMethod``);
            MinMax by default: Percentile and Entropy were no closer to fp32 on the demo checkpoint and
            calibrate 3-5 times slower.
        op_types: op types to quantize (:data:`STATIC_OP_TYPES`).
        weights_only_matmul: leave in float the MatMuls of two activations (attention's ``q @ k`` and
            ``attn @ v``), whose ranges depend on the frame most; quantizing them measured the same
            accuracy on the demo checkpoint, so this is the cautious default.
        preprocess: run onnxruntime's ``quant_pre_process`` (ONNX shape inference and graph
            optimisation) first. Its symbolic shape inference is skipped: it cannot follow the
            padding arithmetic of the dynamic-size graph and fails.

    The graph keeps its interface: ``image (B, 3, H, W)`` float32 -> ``logits (B, C, H, W)`` float32.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix="hdmap_quant_") as work, atomic_path(dst) as tmp:
        model_in = src
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            model_in = Path(work) / "pre.onnx"
            quant_pre_process(str(src), str(model_in), skip_symbolic_shape=True)
        graph = onnx.load(str(model_in), load_external_data=False).graph
        weights = {init.name for init in graph.initializer}
        excluded = [
            n.name
            for n in graph.node
            if weights_only_matmul and n.op_type == "MatMul" and not any(i in weights for i in n.input)
        ]
        # The stem (the first Conv, on the image's pixels; nodes are in topological order) stays float.
        # Quantized, it cost a CamVid checkpoint 4.7 mIoU points (17.51 -> 12.82, road IoU 68 -> 36:
        # road and pavement merged); float, 0.04 (docs/benchmarks.md). It is 0.3 % of Twins-SVT-S's FLOPs.
        excluded += [n.name for n in graph.node if n.op_type == "Conv"][:1]
        quantize_static(
            model_in,
            tmp,
            _FramesReader(calibration_images),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types),
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod[calibrate_method],
            # Symmetric weights (zero point 0: the int8 kernels' fast path), asymmetric activations
            # (after GELU they are far from symmetric).
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        _copy_metadata(src, tmp)
    return dst


def calibration_frames(
    datamodule: SegDataModule, n: int, split: str = "train", size: tuple[int, int] | None = None
) -> list[np.ndarray]:
    """``n`` frames of ``split``, evenly spaced over it, as ``(1, 3, H, W)`` float32 arrays normalised by the
    data module's own pipeline (:func:`hdmap_seg.data.transforms.build_transform`).

    ``size``: ``(H, W)`` to resize every frame to (all frames alike keep calibration fast), or None for
    the frames' own sizes.
    """
    import albumentations as A

    steps = [] if size is None else [A.Resize(*size)]
    dataset = datamodule.dataset(split, steps)
    if len(dataset) == 0:
        raise HdmapError(f"{datamodule.root}: split {split!r} has no frames to calibrate on")
    picks = np.unique(np.linspace(0, len(dataset) - 1, num=min(n, len(dataset))).round().astype(int))
    return [dataset[int(i)]["image"].numpy()[None].astype(np.float32) for i in picks]
