"""Shared fixtures: a tiny road data set drawn with OpenCV, a small synthetic drive log with a tiny
checkpoint to run inference on, and paths to ../shared."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from hdmap_seg.data.classes import ROAD_CLASSES, ClassSet, save_classes
from hdmap_seg.synthetic import SynthConfig, write_drive_log

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    """``python <script> <args>`` from the repository root (``train.py``, ``tools/infer.py``, ...), output captured."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )


# Tiny widths keep every model test to seconds on two cores.
TINY_TWINS = {
    "backbone": "twins_svt_small",
    "backbone_kwargs": {"embed_dims": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 3, 4]},
    "embed_dim": 32,
}


def draw_toy_frame(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One RGB frame and its mask: sky/background, a road with a lane marking, a median, poles, a sign.

    Each class has a distinct colour (with noise) so that a tiny network can learn it in a few steps.
    """
    image = np.empty((height, width, 3), np.uint8)
    image[:] = rng.integers(90, 140, 3)
    mask = np.zeros((height, width), np.uint8)
    horizon = height // 2 + int(rng.integers(-3, 4))
    road = np.array(
        [[0, height], [width // 2 - 3, horizon], [width // 2 + 3, horizon], [width, height]], np.int32
    )
    cv2.fillPoly(image, [road], (80, 80, 85))
    cv2.fillPoly(mask, [road], 1)
    x_median = width // 2 + int(rng.integers(-width // 8, width // 8))
    median = np.array([[x_median - 4, height], [width // 2, horizon], [x_median + 4, height]], np.int32)
    cv2.fillPoly(image, [median], (40, 150, 40))
    cv2.fillPoly(mask, [median], 3)
    cv2.line(image, (width // 4, height), (width // 2 - 1, horizon), (250, 250, 250), 2)
    cv2.line(mask, (width // 4, height), (width // 2 - 1, horizon), 2, 2)
    for _ in range(2):
        x = int(rng.integers(2, width - 4))
        top = int(rng.integers(2, horizon))
        cv2.rectangle(image, (x, top), (x + 2, horizon + 6), (160, 120, 60), -1)
        cv2.rectangle(mask, (x, top), (x + 2, horizon + 6), 4, -1)
    cx, cy = int(rng.integers(6, width - 6)), int(rng.integers(5, horizon - 2))
    cv2.circle(image, (cx, cy), 4, (220, 30, 30), -1)
    cv2.circle(mask, (cx, cy), 4, 5, -1)
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), mask


def write_toy_dataset(
    root: Path, n_train: int = 6, n_val: int = 2, height: int = 40, width: int = 56
) -> Path:
    """A data set in the project's format (docs/conventions.md) with odd-sized frames."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, mask = draw_toy_frame(rng, height, width)
            cv2.imwrite(str(root / "images" / split / f"{i:04d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(root / "masks" / split / f"{i:04d}.png"), mask)
    save_classes(ROAD_CLASSES, root / "classes.yaml")
    return root


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    return write_toy_dataset(tmp_path / "roads")


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the shared data sets are not available here")
    return SHARED


# ------------------------------------------------------------------------------ inference

#: Frames of the ``drive_log`` fixture.
FRAMES = 8


@pytest.fixture(scope="module")
def drive_log(tmp_path_factory) -> Path:
    cfg = SynthConfig(seed=3, camera="kitti", scale=0.25, train=0, val=0, logs=1, frames_per_log=FRAMES)
    return write_drive_log(cfg, 0, tmp_path_factory.mktemp("logs"), workers=1)


def write_checkpoint(path: Path, classes: ClassSet, seed: int = 0) -> Path:
    """A checkpoint in the layout training writes (hyper-parameters + ``model.``-prefixed state)."""
    torch.manual_seed(seed)
    model_config = {
        "_target_": "hdmap_seg.models.Segmenter",
        "num_classes": classes.num_classes,
        **TINY_TWINS,
    }
    model = instantiate(model_config)
    torch.save(
        {
            "hyper_parameters": {"model_config": model_config, "classes": classes.to_dict()},
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", ROAD_CLASSES)


def run_infer(*overrides: str) -> subprocess.CompletedProcess:
    """``python tools/infer.py <overrides>``."""
    return run_script("tools/infer.py", *overrides)


def common(checkpoint: Path, log: Path, out: Path) -> list[str]:
    """The overrides of a small, quiet CPU inference run of ``checkpoint`` on ``log`` into ``out``."""
    return [
        f"ckpt_path={checkpoint}",
        f"logs={log}",
        f"out_dir={out}",
        f"hydra.run.dir={out}/hydra",
        "trainer.accelerator=cpu",
        "batch_size=2",
        "num_workers=0",
        "vectorize=road",
    ]


# ------------------------------------------------------------------------------ training


def tiny_overrides(data_root: Path, out: Path) -> list[str]:
    """``train.py`` overrides of a tiny, quick CPU run on ``data_root``, writing under ``out``."""
    return [
        f"data.root={data_root}",
        "model=twins_svt_tiny",
        "trainer=cpu",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.train_transforms.1.height=32",
        "data.train_transforms.1.width=32",
        "module.lr=1e-3",
        "module.warmup_steps=2",
        f"paths.log_dir={out}/logs",
        f"hydra.run.dir={out}/run",
        "trainer.log_every_n_steps=1",
    ]


def compose_train(data_root: Path, out: Path, *extra: str):
    """conf/train.yaml with :func:`tiny_overrides` and ``extra``, composed as ``train.py`` composes it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*tiny_overrides(data_root, out), *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out / "run")  # Hydra sets it inside a real run
    return cfg
