"""The synthetic road data set and drive logs (= hdmap-make-synthetic; hdmap_seg/cli/make_synthetic.py)."""

from hdmap_seg.cli.make_synthetic import main

if __name__ == "__main__":
    main()
