"""Inference backends: the network's forward on PyTorch, onnxruntime, OpenVINO or TensorRT.

Every backend gives an ``nn.Module`` whose ``forward(images (B, 3, H, W) float32) -> logits
(B, C, H, W)`` is all that changes: batching, sharding, sliding windows, flips, resume and the
writers around it are the same Lightning predict path (:mod:`hdmap_seg.inference`) and the same
evaluation (:mod:`hdmap_seg.evaluate.segmentation`).

- ``torch``: a training checkpoint (``.ckpt``).
- ``onnxruntime``: an exported model (``.onnx``, ``hdmap-export``); CPU, or CUDA where
  ``onnxruntime-gpu`` is installed and the images are on a GPU.
- ``openvino``: an exported model on OpenVINO's CPU device.
- ``tensorrt``: an exported model through onnxruntime's TensorRT execution provider, fp16.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hdmap_seg.data.classes import ClassSet
from hdmap_seg.errors import HdmapError
from hdmap_seg.export.onnx import (
    DYNAMIC_AXES,
    INPUT,
    META_DIVISOR,
    check_normalisation,
    classes_of,
    read_metadata,
)

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
# the Python package each exported-model backend runs on
_PACKAGE = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "onnxruntime"}
#: what to install for each backend (the pip extras of pyproject.toml)
INSTALL = {
    "onnxruntime": 'pip install -e ".[deploy]"  (onnxruntime)',
    "openvino": 'pip install -e ".[deploy]"  (openvino)',
    "tensorrt": "pip install onnxruntime-gpu tensorrt  (on a machine with an NVIDIA GPU)",
}
#: a compiled model's forward: images (B, 3, H, W) float32 -> logits (B, C, H, W)
Runner = Callable[[np.ndarray], np.ndarray]


class ExportedModel(nn.Module):
    """Base of the exported-model runtimes: numpy in, numpy out, tensors on the caller's device.

    The exported graph takes any size. A runtime that knows the input's exact shape folds the shape
    arithmetic (padding, window partitions, the window mask) into constants and picks kernels for it:
    OpenVINO runs Twins-SVT-S about 10 % faster so. A drive has one frame size, so a shape met a second
    time gets a model compiled for it (OpenVINO: 0.6 s for Twins-SVT-S at 512x1024, about a frame's time);
    the first time, and for shapes met once, the general model runs. Subclasses with
    ``specialise`` compile both through :meth:`compile`.
    """

    backend = ""
    #: compile a model for each recurring input shape (see the class docstring)
    specialise = False
    #: shapes that keep their compiled model, the least recently used dropped first
    MAX_SPECIALISED = 4
    #: the model compiled for any shape (set by subclasses)
    general: Runner

    def __init__(self, path: Path, size_divisor: int) -> None:
        super().__init__()
        self.path = path
        self.size_divisor = size_divisor  # as Segmenter's: frames are padded to multiples of it
        self._specialised: OrderedDict[tuple[int, ...], Runner] = OrderedDict()
        self._seen: set[tuple[int, ...]] = set()

    def compile(self, shape: tuple[int, ...] | None) -> Runner:  # pragma: no cover - overridden
        """A function running the model on inputs of ``shape`` (``None``: any shape)."""
        raise NotImplementedError

    def _runner_for(self, shape: tuple[int, ...]) -> Runner:
        if not self.specialise:
            return self.general
        if shape in self._specialised:
            self._specialised.move_to_end(shape)
            return self._specialised[shape]
        if shape not in self._seen:
            self._seen.add(shape)
            return self.general
        runner = self._specialised[shape] = self.compile(shape)
        if len(self._specialised) > self.MAX_SPECIALISED:
            self._specialised.popitem(last=False)
        return runner

    @property
    def specialised_shapes(self) -> list[tuple[int, ...]]:
        """The shapes with a model compiled for them, least recently used first."""
        return list(self._specialised)

    def run(self, images: np.ndarray) -> np.ndarray:
        return self._runner_for(images.shape)(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.run(np.ascontiguousarray(images.detach().float().cpu().numpy()))
        return torch.from_numpy(logits).to(images.device)

    def extra_repr(self) -> str:
        return f"{self.backend}: {self.path}"


class OnnxRuntimeModel(ExportedModel):
    """An ``.onnx`` in an onnxruntime session (``providers`` in order of preference).

    Only a session on the CPU alone is specialised to recurring shapes (free-dimension overrides): the
    GPU providers were not measured so, and TensorRT builds an engine per shape itself.
    """

    backend = "onnxruntime"

    def __init__(self, path: Path, size_divisor: int, providers: list, threads: int | None = None) -> None:
        super().__init__(path, size_divisor)
        self.requested_providers, self.threads = providers, threads
        self.specialise = providers == ["CPUExecutionProvider"]
        session = self._session(None)
        self.providers = session.get_providers()
        self.general = self._runner(session)

    def _session(self, shape: tuple[int, ...] | None):  # -> onnxruntime.InferenceSession
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        # Idle threads sleep rather than spin: frames are decoded by DataLoader workers on the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if shape is not None:
            for axis, name in DYNAMIC_AXES.items():
                options.add_free_dimension_override_by_name(name, shape[axis])
        try:
            return ort.InferenceSession(str(self.path), options, providers=self.requested_providers)
        except Exception as err:  # onnxruntime's own exception types
            raise HdmapError(
                f"{self.path}: onnxruntime cannot load it ({type(err).__name__}: {err})"
            ) from None

    @staticmethod
    def _runner(session) -> Runner:
        return lambda images: session.run(None, {INPUT: images})[0]

    def compile(self, shape: tuple[int, ...] | None) -> Runner:
        return self._runner(self._session(shape))


class OpenVinoModel(ExportedModel):
    """An ``.onnx`` compiled by OpenVINO for its CPU device (latency hint: one frame at a time)."""

    backend = "openvino"
    specialise = True

    def __init__(self, path: Path, size_divisor: int, threads: int | None = None) -> None:
        super().__init__(path, size_divisor)
        import openvino as ov

        self.core = ov.Core()
        # On CPUs with AVX512-BF16 or AMX, OpenVINO runs an fp32 model in bf16 unless told not to: logits
        # 0.0075 off PyTorch's, and labels that differ from the checkpoint's on the same frames.
        self.config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.source = self.core.read_model(str(self.path))  # parsed once, cloned per compile
        except Exception as err:  # OpenVINO raises RuntimeError subclasses for a bad model
            raise HdmapError(f"{self.path}: OpenVINO cannot read it ({type(err).__name__}: {err})") from None
        self.general = self.compile(None)

    def compile(self, shape: tuple[int, ...] | None) -> Runner:
        try:
            model = self.source.clone()
            if shape is not None:
                model.reshape({INPUT: list(shape)})
            request = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        except Exception as err:  # OpenVINO raises RuntimeError subclasses for a bad model
            raise HdmapError(
                f"{self.path}: OpenVINO cannot compile it ({type(err).__name__}: {err})"
            ) from None

        def run(images: np.ndarray) -> np.ndarray:
            return request.infer({0: images})[0].copy()

        return run


def installed(backend: str) -> bool:
    """Whether the package that runs ``backend`` is importable here (providers are checked on loading)."""
    import importlib.util

    return backend == "torch" or importlib.util.find_spec(_PACKAGE[backend]) is not None


def load_model(
    path: str | os.PathLike, backend: str = "torch", threads: int | None = None
) -> tuple[nn.Module, ClassSet]:
    """The network of ``path`` on ``backend``, in eval mode, and its classes.

    ``threads`` caps the CPU threads of the exported-model runtimes (default: theirs, all cores).
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise HdmapError(f"backend={backend}: unknown; choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        if path.suffix == ".onnx":
            raise HdmapError(
                f"{path}: an exported model runs on backend=onnxruntime, openvino or tensorrt, not torch"
            )
        from hdmap_seg.module import load_segmenter

        return load_segmenter(path)
    if path.suffix != ".onnx":
        raise HdmapError(
            f"{path}: backend={backend} runs an exported model (.onnx); export the checkpoint first: "
            f"hdmap-export {path}"
        )
    if not installed(backend):
        package = _PACKAGE[backend]
        raise HdmapError(f"backend={backend} needs {package}, which is not installed: {INSTALL[backend]}")
    meta = read_metadata(path)
    classes = classes_of(meta, str(path))
    check_normalisation(meta, str(path))
    size_divisor = int(meta.get(META_DIVISOR, "1"))
    if backend == "openvino":
        return OpenVinoModel(path, size_divisor, threads).eval(), classes
    import onnxruntime as ort

    available = ort.get_available_providers()
    if backend == "tensorrt":
        if "TensorrtExecutionProvider" not in available:
            raise HdmapError(
                f"backend=tensorrt needs onnxruntime's TensorRT execution provider (this onnxruntime has "
                f"{', '.join(available)}): {INSTALL['tensorrt']}"
            )
        providers = [("TensorrtExecutionProvider", {"trt_fp16_enable": True}), "CUDAExecutionProvider"]
    else:
        providers = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []
    return OnnxRuntimeModel(path, size_divisor, [*providers, "CPUExecutionProvider"], threads).eval(), classes


def compare_backends(
    models: dict[str, nn.Module], images: torch.Tensor, reference: str = "torch", repeats: int = 3
) -> dict[str, dict[str, float]]:
    """Seconds per frame (median of ``repeats``, after a warm-up) and label agreement with
    ``reference`` of each model on ``images (B, 3, H, W)``, one frame at a time."""
    labels, stats = {}, {}
    for name, model in models.items():
        with torch.inference_mode():
            model(images[:1])  # warm-up: graph optimisation, memory pools
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                labels[name] = torch.cat([model(x[None]).argmax(1) for x in images])
                times.append((time.perf_counter() - start) / len(images))
        stats[name] = {"s_per_frame": float(np.median(times))}
    for name in models:
        stats[name]["agreement"] = float((labels[name] == labels[reference]).float().mean())
    return stats
