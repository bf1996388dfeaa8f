"""Batch inference over drive logs: masks, overlays, map layers and a run summary.

    python tools/infer.py ckpt_path=CKPT logs='data/logs/*' out_dir=outputs/infer overlays=true
    python tools/infer.py ckpt_path=CKPT logs=LOG trainer.strategy=ddp trainer.devices=4 trainer.precision=bf16-mixed

Configuration: conf/infer.yaml. A rerun skips the frames already written.
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from hdmap_seg.errors import exit_on_user_error
from hdmap_seg.inference import run_inference

os.environ.setdefault("HDMAP_ROOT", str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../conf", config_name="infer")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    summary = run_inference(cfg)
    if summary:
        fps = summary["frames_per_s"]
        print(f"{summary['frames_predicted']} frames predicted" + (f" at {fps} frames/s" if fps else ""))
        for name, log in summary["logs"].items():
            print(f"  {name}: {log['features']} -> {Path(log['outputs'][0]).parent}")


if __name__ == "__main__":
    main()
