"""A drive log's masks to its map on disk: the one path of ``hdmap-vectorize`` and batch inference.

It sits above :mod:`hdmap_seg.vectorize` (masks -> layers) and :mod:`hdmap_seg.export` (layers ->
files), which do not import each other, so that both commands write the same layers and count
their features the same way.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from hdmap_seg.export import write_layers
from hdmap_seg.geo.drivelog import DriveLog
from hdmap_seg.io import write_text_atomic
from hdmap_seg.maplayers import count_features
from hdmap_seg.vectorize.builder import vectorize_log
from hdmap_seg.vectorize.config import VectorizeConfig


def map_log(
    log: DriveLog,
    masks_dir: str | os.PathLike | None,
    config: VectorizeConfig,
    out_dir: str | os.PathLike,
    summary_path: str | os.PathLike,
    about: dict | None = None,
    gpkg: bool = True,
    progress: bool = True,
) -> dict:
    """Vectorize ``log``'s masks (None: the log's own labels), write its layers into ``out_dir`` and
    the summary to ``summary_path`` (JSON); returns the summary.

    The summary: the log and masks, ``about`` (what the caller adds), the frames, vectorization time
    and speed, the world frame's origin, the features per layer (a median counted once with its
    centre line: :func:`~hdmap_seg.maplayers.count_features`), the files and the config.
    """
    start = time.perf_counter()
    layers = vectorize_log(log, masks_dir, config, progress=progress)
    seconds = time.perf_counter() - start
    paths = write_layers(layers, out_dir, log.origin, gpkg=gpkg)
    summary = {
        "log": str(log.root),
        "masks": str(Path(masks_dir) if masks_dir is not None else log.default_masks_dir),
        **(about or {}),
        "frames": len(log),
        "seconds": round(seconds, 2),
        "frames_per_s": round(len(log) / max(seconds, 1e-9), 1),
        "origin": log.origin.to_dict(),
        "features": count_features(layers),
        "outputs": [str(p) for p in paths],
        "config": asdict(config),
    }
    write_text_atomic(Path(summary_path), json.dumps(summary, indent=2) + "\n")
    return summary
