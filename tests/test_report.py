"""The demo report: the overlay strip (frames stacked as they are, a failed write publishes nothing) and the metrics table."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from hdmap_seg.report import overlay_strip, write_report


def _frames(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(40, 100), (30, 50)]):
        path = tmp_path / f"frame{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), np.uint8))
        paths.append(path)
    return paths


def test_overlay_strip_stacks_the_frames_resized_in_their_own_colours(tmp_path):
    frames = _frames(tmp_path)
    out = overlay_strip(frames, tmp_path / "out" / "strip.png", width=50)
    expected = np.concatenate(
        [
            cv2.resize(cv2.imread(str(p)), (50, 20 if i == 0 else 30), interpolation=cv2.INTER_AREA)
            for i, p in enumerate(frames)
        ]
    )
    assert np.array_equal(cv2.imread(str(out)), expected)


def test_overlay_strip_that_cannot_be_written_publishes_no_file(tmp_path, monkeypatch):
    # cv2.imwrite only returns False; the strip must fail loudly and leave neither a file nor a temporary.
    monkeypatch.setattr(cv2, "imencode", lambda *args, **kwargs: (False, None))
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match="could not encode"):
        overlay_strip(_frames(tmp_path), out_dir / "strip.png", width=50)
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_the_report_shows_the_lane_marking_layer_beside_the_others(tmp_path):
    medians = {"AP@0.5m": 0.5, "AP@1m": 0.75, "AP@1.5m": 1.0, "iou": 0.9}
    lanes = {"AP@0.5m": 0.625, "AP@1m": 0.875, "AP@1.5m": None, "n_pred": 9, "n_gt": 8}
    page = write_report(tmp_path, {"medians": {"footprints": medians}, "lane_markings": lanes}, {}, {})
    html = Path(page).read_text()
    assert "lane markings" in html and "0.625 / 0.875 / -" in html and "9 / 8" in html
    assert "0.500 / 0.750 / 1.000" in html
