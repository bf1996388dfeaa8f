"""``hdmap-infer`` / ``python tools/infer.py``: batch inference over drive logs (conf/infer.yaml): masks,
overlays, map layers and a run summary. A rerun skips the frames already written.

    python tools/infer.py ckpt_path=CKPT logs='data/logs/*' out_dir=outputs/infer overlays=true
    python tools/infer.py ckpt_path=CKPT logs=LOG trainer.strategy=ddp trainer.devices=4 trainer.precision=bf16-mixed
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from hdmap_seg.cli.hydra_app import hydra_command


@hydra_command("infer")
def main(cfg: DictConfig) -> None:
    """Run inference and print what each log got."""
    from hdmap_seg.inference import run_inference

    summary = run_inference(cfg)
    if summary:  # global rank 0
        fps = summary["frames_per_s"]
        print(f"{summary['frames_predicted']} frames predicted" + (f" at {fps} frames/s" if fps else ""))
        for name, log in summary["logs"].items():
            print(f"  {name}: {log['features']} -> {Path(log['outputs'][0]).parent}")
