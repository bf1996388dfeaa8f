"""`make demo`: the whole path on synthetic data, image to map (= hdmap-demo; hdmap_seg/cli/demo.py)."""

from hdmap_seg.cli.demo import main

if __name__ == "__main__":
    main()
