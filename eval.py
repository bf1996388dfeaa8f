"""Evaluate a segmenter: ``python eval.py ckpt_path=CKPT data=camvid split=test [key=value ...]`` (conf/eval.yaml)."""

from hdmap_seg.commands import eval_main

if __name__ == "__main__":
    eval_main()
