"""Write what the synthetic world makes: a training data set (:mod:`.dataset`), KITTI-raw drive logs
(:mod:`.logs`) with their ground truth (:mod:`.truth`), contact sheets (:mod:`.sheet`); what they share
(settings, seeds, manifest, worker pool) is in :mod:`.base`.

Layouts are those of docs/conventions.md; docs/synthetic.md describes the files in full.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from hdmap_seg.synthetic.base import SynthConfig
from hdmap_seg.synthetic.dataset import write_dataset
from hdmap_seg.synthetic.logs import world_versions, write_drive_log, write_world_edits


def make_all(
    cfg: SynthConfig,
    out: str | os.PathLike,
    logs_out: str | os.PathLike | None = None,
    workers: int = 1,
    progress=None,
) -> dict[str, object]:
    """Everything ``cfg`` asks for: the data set in ``out`` and the logs in ``logs_out`` (default
    ``out/logs``); with ``cfg.one_world``, the world's edits in ``logs_out/edits.geojson``."""
    cfg.check_drives()
    if cfg.one_world:
        world_versions(cfg)  # edits that do not fit the world fail before any work
    out = Path(out)
    logs_root = Path(logs_out) if logs_out is not None else out / "logs"
    start = dt.datetime.now()
    write_dataset(cfg, out, workers, progress)
    logs = [write_drive_log(cfg, i, logs_root, workers, progress) for i in range(cfg.logs)]
    if cfg.one_world and cfg.logs:
        write_world_edits(cfg, logs_root)
    return {"root": out, "logs": logs, "seconds": (dt.datetime.now() - start).total_seconds()}
