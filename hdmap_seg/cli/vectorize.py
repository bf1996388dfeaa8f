"""``hdmap-vectorize`` / ``python tools/vectorize.py``: a drive log and its label masks -> map layers (GeoJSON + GeoPackage).

hdmap-vectorize LOG [--masks DIR] [--config road|FILE.yaml] [--class-map FILE.yaml] [--set pole.min_obs=3] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hdmap_seg.data.class_map import load_class_map
from hdmap_seg.errors import exit_on_user_error
from hdmap_seg.geo.drivelog import open_drive_log
from hdmap_seg.geo.frames import LocalFrame
from hdmap_seg.io import exclusive_lock, remove_stale_temps
from hdmap_seg.mapping import map_log
from hdmap_seg.vectorize.config import for_mask_classes, load_vectorize_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hdmap-vectorize",
        description="Turn a drive log's label masks into map layers: poles, signs, medians, lane markings (GeoJSON, GeoPackage).",
        epilog="Layouts, layer properties and every config key: docs/map.md.",
    )
    p.add_argument("log", type=Path, help="drive log folder (KITTI raw, or generic with poses.csv)")
    p.add_argument(
        "--masks", type=Path, help="PNG masks named like the frames (default: the log's label_02/data)"
    )
    p.add_argument(
        "--config", default="road", help="conf/vectorize/<name>.yaml or a YAML path (default: road)"
    )
    p.add_argument(
        "--class-map",
        type=Path,
        help="masks in a data set's own classes: its class map (conf/class_map/*.yaml, as training reads it) "
        "says which feed which layer",
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key"
    )
    p.add_argument("--out", type=Path, help="output folder (default: LOG/map)")
    p.add_argument("--camera", type=int, default=2, help="KITTI camera index: image_0N (default: 2)")
    p.add_argument(
        "--calib", type=Path, help="folder of KITTI calib_*.txt (default: the log's, else its parent)"
    )
    p.add_argument("--origin", type=float, nargs=3, metavar=("LAT", "LON", "ALT"), help="world frame origin")
    p.add_argument("--no-gpkg", action="store_true", help="GeoJSON only")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """The console script: exits 0 when done (the summary goes to stdout and a file), 2 on a user error."""
    run(argv)


def run(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` and do the work; returns the summary."""
    args = build_parser().parse_args(argv)
    config = load_vectorize_config(args.config, args.overrides)
    if args.class_map:
        class_map = load_class_map(args.class_map)
        config = for_mask_classes(config, class_map.source, class_map)
    origin = LocalFrame(*args.origin) if args.origin else None
    log = open_drive_log(args.log, camera=args.camera, calib_dir=args.calib, origin=origin)
    out = args.out or args.log / "map"
    with exclusive_lock(out, "hdmap-vectorize"):
        remove_stale_temps(out)  # of a killed run; the lock says none is live
        summary = map_log(
            log,
            args.masks,
            config,
            out,
            out / "vectorize.json",
            gpkg=not args.no_gpkg,
            progress=not args.quiet,
        )
    print(f"{len(log)} frames in {summary['seconds']:.1f} s ({summary['frames_per_s']} frames/s) -> {out}")
    for name, n in summary["features"].items():
        print(f"  {name:<10} {n}")
    return summary


if __name__ == "__main__":
    main()
