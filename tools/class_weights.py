"""Median-frequency class weights as a Hydra config (= hdmap-class-weights; hdmap_seg/cli/class_weights.py)."""

from hdmap_seg.cli.class_weights import main

if __name__ == "__main__":
    main()
