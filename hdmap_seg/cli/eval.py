"""``hdmap-eval`` / ``python eval.py``: a segmenter's IoU on a data set's split (conf/eval.yaml).

python eval.py ckpt_path=CKPT data=camvid split=test [backend=onnxruntime] [key=value ...]
"""

from __future__ import annotations

from omegaconf import DictConfig

from hdmap_seg.cli.hydra_app import hydra_command


@hydra_command("eval")
def main(cfg: DictConfig) -> float | None:
    """Evaluate and print the table; returns the mIoU."""
    from hdmap_seg.evaluate.segmentation import evaluate, format_table

    metrics = evaluate(cfg)
    if not metrics:  # not global rank 0
        return None
    print(f"{metrics['frames']} frames of {metrics['data_root']} ({metrics['split']}), {metrics['backend']}")
    print(format_table(metrics))
    print(f"outputs: {cfg.out_dir}")
    return metrics["mIoU"]
