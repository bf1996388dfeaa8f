"""Train a segmenter: ``python train.py data=roads model=twins_svt_s [key=value ...]`` (conf/train.yaml)."""

from hdmap_seg.commands import train_main

if __name__ == "__main__":
    train_main()
