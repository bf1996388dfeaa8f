"""Training checkpoint -> self-contained ONNX model (= hdmap-export; hdmap_seg/cli/export.py)."""

from hdmap_seg.cli.export import main

if __name__ == "__main__":
    main()
