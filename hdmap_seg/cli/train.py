"""``hdmap-train`` / ``python train.py``: train a segmenter (conf/train.yaml).

python train.py data=roads model=twins_svt_s [key=value ...]
"""

from __future__ import annotations

from omegaconf import DictConfig

from hdmap_seg.cli.hydra_app import hydra_command


@hydra_command("train")
def main(cfg: DictConfig) -> float | None:
    """Train; returns the best validation mIoU (what a Hydra sweeper optimises)."""
    from hdmap_seg.training import train

    return train(cfg).get("val/mIoU")
