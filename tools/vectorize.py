"""Drive log + label masks -> map layers. Same as the ``hdmap-vectorize`` console script; see docs/map.md."""

from hdmap_seg.vectorize.cli import main

if __name__ == "__main__":
    main()
