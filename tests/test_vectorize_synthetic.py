"""End to end on a small synthetic drive (tools/make_synthetic.py) fed its ground-truth masks.

The full-size bar (docs/map.md, "Accuracy") is measured on 200-frame logs at full resolution; this
test keeps to 80 half-size frames. On so short a drive the signs at its ends are seen over little
parallax, and one pair of plates (seed 0) overlaps in the image from 30 m down to 12 m, so that most
views of the one behind are merged with the front one (it lands 2.8 m off): signs are held to recall
0.85 at 2 m (one miss in 9) and to F1 0.8 at 1 m.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hdmap_seg.cli.vectorize import main as vectorize_main
from hdmap_seg.evaluate import evaluate_maps

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_synthetic_drive_from_ground_truth_masks(tmp_path):
    cmd = [sys.executable, str(REPO / "tools" / "make_synthetic.py"), "--out", str(tmp_path / "roads")]
    cmd += ["--train", "0", "--val", "0", "--logs", "1", "--workers", "1"]
    cmd += ["--frames-per-log", "80", "--scale", "0.5"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    (log,) = (tmp_path / "roads" / "logs").iterdir()
    vectorize_main([str(log), "--quiet", "--no-gpkg"])
    m = evaluate_maps(log / "map", log / "gt")
    assert m["poles"]["n_gt"] >= 3
    assert m["poles"]["@1m"]["f1"] >= 0.9 and m["poles"]["mean_error_m"] <= 0.3
    # Precision of signs is not asserted: the generator's truth leaves out plates seen from behind.
    assert m["signs"]["@2m"]["recall"] >= 0.85 and m["signs"]["@1m"]["f1"] >= 0.8
    assert m["signs"]["mean_error_m"] <= 0.3
    assert m["medians"]["footprints"]["AP@1m"] >= 0.9 and m["medians"]["centerlines"]["AP@1m"] >= 0.9
