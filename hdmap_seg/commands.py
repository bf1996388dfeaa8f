"""Hydra entry points: ``train.py`` / ``hdmap-train``, ``tools/infer.py`` / ``hdmap-infer`` and
``eval.py`` / ``hdmap-eval``."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from hdmap_seg.errors import exit_on_user_error

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(PROJECT_ROOT / "conf")
# conf/paths/default.yaml resolves data/ and logs/ under the project.
os.environ.setdefault("HDMAP_ROOT", str(PROJECT_ROOT))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exit_on_user_error
def train_main(cfg: DictConfig) -> float | None:
    """``python train.py data=roads model=twins_svt_s [key=value ...]`` (conf/train.yaml)."""
    from hdmap_seg.training import train

    return train(cfg).get("val/mIoU")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="infer")
@exit_on_user_error
def infer_main(cfg: DictConfig) -> None:
    """``python tools/infer.py ckpt_path=CKPT logs=LOG_OR_GLOB [key=value ...]`` (conf/infer.yaml)."""
    from hdmap_seg.inference import run_inference

    summary = run_inference(cfg)
    if summary:
        fps = summary["frames_per_s"]
        print(f"{summary['frames_predicted']} frames predicted" + (f" at {fps} frames/s" if fps else ""))
        for name, log in summary["logs"].items():
            print(f"  {name}: {log['features']} -> {Path(log['outputs'][0]).parent}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
@exit_on_user_error
def eval_main(cfg: DictConfig) -> float | None:
    """``python eval.py ckpt_path=CKPT data=camvid split=test [key=value ...]`` (conf/eval.yaml)."""
    from hdmap_seg.evaluate.segmentation import evaluate, format_table

    metrics = evaluate(cfg)
    if not metrics:  # not global rank 0
        return None
    print(f"{metrics['frames']} frames of {metrics['data_root']} ({metrics['split']}), {metrics['backend']}")
    print(format_table(metrics))
    print(f"outputs: {cfg.out_dir}")
    return metrics["mIoU"]
