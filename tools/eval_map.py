"""Map metrics of predicted layers against ground truth (= hdmap-eval-map; hdmap_seg/cli/eval_map.py)."""

from hdmap_seg.cli.eval_map import main

if __name__ == "__main__":
    main()
