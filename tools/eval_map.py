"""Map metrics of predicted layers against ground truth. Same as the ``hdmap-eval-map`` console script."""

from hdmap_seg.evaluate.cli import main

if __name__ == "__main__":
    main()
