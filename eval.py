"""Evaluate a segmenter: `python eval.py ckpt_path=CKPT data=camvid split=test` (= hdmap-eval; hdmap_seg/cli/eval.py)."""

from hdmap_seg.cli.eval import main

if __name__ == "__main__":
    main()
