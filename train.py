"""Train a segmenter: `python train.py data=roads model=twins_svt_s [key=value ...]` (= hdmap-train; hdmap_seg/cli/train.py)."""

from hdmap_seg.cli.train import main

if __name__ == "__main__":
    main()
