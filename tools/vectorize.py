"""Drive log + label masks -> map layers (= hdmap-vectorize; hdmap_seg/cli/vectorize.py)."""

from hdmap_seg.cli.vectorize import main

if __name__ == "__main__":
    main()
