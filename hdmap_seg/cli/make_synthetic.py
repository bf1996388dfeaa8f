"""``hdmap-make-synthetic`` / ``python tools/make_synthetic.py``: the synthetic road data: a training data set and KITTI-raw drive logs with ground truth.

    python tools/make_synthetic.py                       # the demo's data in data/roads (about a minute)
    python tools/make_synthetic.py --out /tmp/r --seed 7 --train 1000 --val 200 --logs 3 --frames-per-log 300
    python tools/make_synthetic.py --camera wide1024 --scale 0.5 --train 0 --val 0 --logs 1
    python tools/make_synthetic.py --terrain flat --pose-noise 0.3 0.5   # level ground, a noisy OXTS unit
    python tools/make_synthetic.py --out /tmp/m --train 0 --val 0 --drives 4 --edits 2 2 1   # one world, 4 drives

Reruns resume: frames already written are skipped. docs/synthetic.md describes the output.
"""

from __future__ import annotations

import argparse
import os

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hdmap_seg.errors import HdmapError, exit_on_user_error
from hdmap_seg.synthetic import SynthConfig, make_all
from hdmap_seg.synthetic.camera import RIGS
from hdmap_seg.synthetic.world import TERRAIN_FORMS, parse_terrain


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = SynthConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/roads", help="data-set folder (default: %(default)s)")
    p.add_argument("--logs-out", default=None, help="folder of the drive logs (default: OUT/logs)")
    p.add_argument("--seed", type=int, default=d.seed, help="world seed (default: %(default)s)")
    p.add_argument(
        "--camera", choices=sorted(RIGS), default=d.camera, help="camera rig (default: %(default)s)"
    )
    p.add_argument("--scale", type=float, default=d.scale, help="resize the camera's images by this factor")
    p.add_argument("--train", type=int, default=d.train, help="training frames (default: %(default)s)")
    p.add_argument("--val", type=int, default=d.val, help="validation frames (default: %(default)s)")
    p.add_argument(
        "--frames-per-world",
        type=int,
        default=d.frames_per_world,
        help="data-set frames drawn from each world (default: %(default)s)",
    )
    p.add_argument(
        "--logs", type=int, default=None, help=f"drive logs, each of its own world (default: {d.logs})"
    )
    p.add_argument(
        "--drives",
        type=int,
        default=None,
        help="N drive logs of one world instead (the world of log 0), each in another lane or direction, "
        "light, start and speed",
    )
    p.add_argument(
        "--edits",
        type=int,
        nargs=3,
        metavar=("REMOVE_POLES", "ADD_SIGNS", "MOVE_SIGNS"),
        default=(d.edit_remove_poles, d.edit_add_signs, d.edit_move_signs),
        help="with --drives: edit the world for the later drives: remove poles, add signs, move signs by "
        "2-4 m; listed in LOGS_OUT/edits.geojson (default: %(default)s = none)",
    )
    p.add_argument(
        "--edit-from-drive",
        type=int,
        default=d.edit_from_drive,
        help="the first drive that sees the edited world (default: %(default)s)",
    )
    p.add_argument("--frames-per-log", type=int, default=d.frames_per_log, help="frames per log at 10 Hz")
    p.add_argument(
        "--origin",
        type=float,
        nargs=3,
        metavar=("LAT", "LON", "ALT"),
        default=(d.lat0, d.lon0, d.alt0),
        help="WGS84 origin of the world frame (ground level) (default: %(default)s)",
    )
    p.add_argument(
        "--gt-range",
        type=float,
        default=d.gt_range_m,
        help="ground truth holds objects seen within this distance, metres (default: %(default)s)",
    )
    p.add_argument(
        "--terrain",
        default=d.terrain,
        help=f"ground: {TERRAIN_FORMS} (default: %(default)s)",
    )
    p.add_argument(
        "--pose-noise",
        type=float,
        nargs=2,
        metavar=("POS_M", "YAW_DEG"),
        default=(d.pose_noise_pos_m, d.pose_noise_yaw_deg),
        help="std of the white noise on the logs' OXTS positions (m; east, north, up) and yaw (deg; roll and "
        "pitch get a tenth); frames stay rendered from the true poses (default: %(default)s = off)",
    )
    p.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (default: %(default)s)"
    )
    return p.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.drives is not None and a.logs is not None:
        raise HdmapError("--logs and --drives exclude each other: --drives N makes N logs of one world")
    if a.drives is not None and a.drives < 1:
        raise HdmapError(f"--drives must be at least 1, got {a.drives}")
    one_world = a.drives is not None
    a.logs = a.drives if one_world else (a.logs if a.logs is not None else SynthConfig().logs)
    for name in ("train", "val", "logs", "frames_per_log", "frames_per_world", "workers"):
        if getattr(a, name) < (1 if name in ("frames_per_world", "workers") else 0):
            raise HdmapError(f"--{name.replace('_', '-')} must not be {getattr(a, name)}")
    if a.logs and a.frames_per_log < 2:
        raise HdmapError("--frames-per-log must be at least 2 for a drive log")
    parse_terrain(a.terrain)
    if min(a.pose_noise) < 0:
        raise HdmapError(f"--pose-noise must not be negative, got {a.pose_noise[0]:g} {a.pose_noise[1]:g}")
    cfg = SynthConfig(
        seed=a.seed,
        camera=a.camera,
        scale=a.scale,
        train=a.train,
        val=a.val,
        frames_per_world=a.frames_per_world,
        logs=a.logs,
        frames_per_log=a.frames_per_log,
        lat0=a.origin[0],
        lon0=a.origin[1],
        alt0=a.origin[2],
        gt_range_m=a.gt_range,
        terrain=a.terrain,
        pose_noise_pos_m=a.pose_noise[0],
        pose_noise_yaw_deg=a.pose_noise[1],
        one_world=one_world,
        edit_remove_poles=a.edits[0],
        edit_add_signs=a.edits[1],
        edit_move_signs=a.edits[2],
        edit_from_drive=a.edit_from_drive,
    )
    cfg.check_drives()
    rig = cfg.rig()  # validates camera and scale before any work
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        result = make_all(cfg, a.out, a.logs_out, workers=a.workers, progress=progress)
    print(f"data set: {result['root']} ({cfg.train} train + {cfg.val} val frames, {rig.width}x{rig.height})")
    for log in result["logs"]:
        print(f"drive log: {log}")
    print(f"took {result['seconds']:.1f} s")


if __name__ == "__main__":
    main()
