"""Batch inference over drive logs: masks, overlays, map layers and a run summary (= ``hdmap-infer``).

    python tools/infer.py ckpt_path=CKPT logs='data/logs/*' out_dir=outputs/infer overlays=true
    python tools/infer.py ckpt_path=CKPT logs=LOG trainer.strategy=ddp trainer.devices=4 trainer.precision=bf16-mixed

Configuration: conf/infer.yaml. A rerun skips the frames already written.
"""

from hdmap_seg.commands import infer_main

if __name__ == "__main__":
    infer_main()
