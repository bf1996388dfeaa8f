"""The layers of many drives -> one map (= hdmap-merge; hdmap_seg/cli/merge.py)."""

from hdmap_seg.cli.merge import main

if __name__ == "__main__":
    main()
