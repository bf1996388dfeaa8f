"""Train a segmenter: ``python train.py data=roads model=twins_svt_s [key=value ...]`` (conf/train.yaml)."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from hdmap_seg.errors import exit_on_user_error
from hdmap_seg.training import train

os.environ.setdefault("HDMAP_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get("val/mIoU")


if __name__ == "__main__":
    main()
