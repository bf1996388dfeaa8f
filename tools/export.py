"""Training checkpoint -> self-contained ONNX model. Same as the ``hdmap-export`` console script; README, "Deploy"."""

from hdmap_seg.export.cli import main

if __name__ == "__main__":
    main()
