"""Batch inference over drive logs: `python tools/infer.py ckpt_path=CKPT logs=LOG_OR_GLOB` (= hdmap-infer; hdmap_seg/cli/infer.py)."""

from hdmap_seg.cli.infer import main

if __name__ == "__main__":
    main()
