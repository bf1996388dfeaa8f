"""``hdmap-merge`` / ``python tools/merge.py``: the layers of many drives -> one map (docs/map.md, "Merging drives").

hdmap-merge --out MAP DRIVE_LAYERS... [--drive-id ID ...]   a new map
hdmap-merge --map MAP --add DRIVE_LAYERS... [--drive-id ID ...]   drives added to a map hdmap-merge wrote
  [--scheduler tcp://HOST:8786]   the tiles on a Dask cluster instead of local threads
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from hdmap_seg.errors import HdmapError, exit_on_user_error
from hdmap_seg.io import exclusive_lock
from hdmap_seg.mapchanges import ADDED, MOVED, REMOVED, ChangeConfig
from hdmap_seg.maplayers import count_features
from hdmap_seg.mapmerge import (
    CHANGES,
    MergeConfig,
    map_layers,
    merge_drives,
    read_map,
    remove_stale_map_copies,
    write_map,
)

#: Options that are distances, angles or margins: a negative one is a mistake (NaN too).
NON_NEGATIVE = (
    "sigma_floor_m",
    "max_gate_m",
    "max_facing_deg",
    "max_height_diff_m",
    "lane_gate_m",
    "change_inside_m",
    "max_move_m",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hdmap-merge",
        description="Merge the layers of many drives (folders hdmap-vectorize wrote) into one map, or add drives to one.",
        epilog="Matching rules, properties and the map folder: docs/map.md, 'Merging drives'.",
    )
    p.add_argument(
        "drives", type=Path, nargs="*", help="drive layers folders (<layer>.geojson, coverage.geojson)"
    )
    p.add_argument("--out", type=Path, help="a new map folder (must not exist or be empty)")
    p.add_argument("--map", type=Path, help="an existing map (written by hdmap-merge) to add drives to")
    p.add_argument(
        "--add", type=Path, nargs="+", default=[], metavar="DRIVE_LAYERS", help="drives to add to --map"
    )
    p.add_argument(
        "--drive-id",
        action="append",
        metavar="ID",
        help="a drive's id, once per drive in order (default: its log's name from vectorize.json, else the folder's)",
    )
    d = MergeConfig()
    p.add_argument(
        "--sigma-floor-m", type=float, default=d.sigma_floor_m, help="added to both sigmas in the gate"
    )
    p.add_argument("--max-gate-m", type=float, default=d.max_gate_m, help="never match points further apart")
    p.add_argument("--max-facing-deg", type=float, default=d.max_facing_deg, help="signs' facing difference")
    p.add_argument(
        "--max-height-diff-m", type=float, default=d.max_height_diff_m, help="signs' height difference"
    )
    p.add_argument(
        "--facing-strict",
        action="store_true",
        help="signs' facings must agree as directions (default: modulo 180 deg, masks not telling a plate's back)",
    )
    p.add_argument(
        "--lane-gate-m",
        type=float,
        default=d.lane_gate_m,
        help="a drive's lane line is a map line where it runs this close to it",
    )
    p.add_argument(
        "--tile-zoom",
        type=int,
        help="web-mercator zoom of a new map's tiles, in which poles and signs are merged, one Dask task each "
        "(0-22; default 15; a map keeps its own)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a Dask distributed scheduler (tcp://host:8786) to run the tiles on (default: local threads)",
    )
    c = d.change
    p.add_argument(
        "--change-drives",
        type=int,
        default=c.min_drives,
        help="drives that must agree before the map itself changes (a feature leaves or enters it)",
    )
    p.add_argument(
        "--change-inside-m",
        type=float,
        default=c.inside_m,
        help="changes are looked for this far inside a drive's coverage",
    )
    p.add_argument(
        "--max-move-m",
        type=float,
        default=c.max_move_m,
        help="a removed and an added feature this close moved",
    )
    p.add_argument("--no-gpkg", action="store_true", help="GeoJSON only")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """The console script: exits 0 when done (the summary goes to stdout), 2 on a user error."""
    run(argv)


def run(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` and do the work; returns the feature counts of the map written."""
    args = build_parser().parse_args(argv)
    if (args.out is None) == (args.map is None):
        raise HdmapError("give either --out MAP DRIVE_LAYERS... or --map MAP --add DRIVE_LAYERS...")
    config = MergeConfig(
        sigma_floor_m=args.sigma_floor_m,
        max_gate_m=args.max_gate_m,
        max_facing_deg=args.max_facing_deg,
        max_height_diff_m=args.max_height_diff_m,
        facing_either_side=not args.facing_strict,
        lane_gate_m=args.lane_gate_m,
        tile_zoom=args.tile_zoom,
        change=ChangeConfig(
            min_drives=args.change_drives, inside_m=args.change_inside_m, max_move_m=args.max_move_m
        ),
    )
    for name in NON_NEGATIVE:
        if not getattr(args, name) >= 0:
            raise HdmapError(f"--{name.replace('_', '-')} must be a number >= 0, got {getattr(args, name)}")
    if args.tile_zoom is not None and not 0 <= args.tile_zoom <= 22:
        raise HdmapError(f"--tile-zoom must be 0 to 22, got {args.tile_zoom}")
    if args.change_drives < 1:
        raise HdmapError(f"--change-drives must be at least 1, got {args.change_drives}")
    if args.out is not None:
        if args.add:
            raise HdmapError("--add goes with --map; a new map (--out) takes its drives as arguments")
        folders, target, state = args.drives, args.out, None
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise HdmapError(
                f"{target}: exists and is not empty; add drives to a map with --map {target} --add ..."
            )
    else:
        if args.drives:
            raise HdmapError("with --map, give the drives after --add")
        folders, target = args.add, args.map
        state = read_map(target)
    if not folders:
        raise HdmapError("no drive layers folders given")
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_dir = target.parent / f".{target.name}.lock.d"
    with exclusive_lock(lock_dir, "hdmap-merge"):
        remove_stale_map_copies(target)  # of a killed merge; the lock says none is live
        state = merge_drives(folders, args.drive_id, state, config, progress=True, scheduler=args.scheduler)
        write_map(state, target, gpkg=not args.no_gpkg)
    counts = count_features(map_layers(state))
    print(f"{len(state.drives)} drives -> {target}")
    for name, n in counts.items():
        print(f"  {name:<10} {n}")
    kinds = Counter((c.change, c.applied) for c in state.changes)
    print(
        f"  changes    {len(state.changes)} reported by the drives added ({CHANGES}.geojson): "
        + ", ".join(
            f"{k} {kinds[(k, True)]} applied / {kinds[(k, False)]} pending" for k in (REMOVED, ADDED, MOVED)
        )
    )
    return counts


if __name__ == "__main__":
    main()
