"""Merging many drives over one city grid: peak memory and time at 10 vs 100 drives (docs/benchmarks.md).

    python bench/bench_merge_scale.py --out /tmp/city [--drives 10 100] [--grid-km 3]

A city of streets every 150 m (``--grid-km`` square) has poles on both sides every 30 m and a sign
every 120 m. Each drive follows a random 1 km route along the streets, turning at crossings; its
layers are what stands within 20 m of the route (positions with 0.1 m of noise, ``sigma_m`` 0.1)
and its coverage the route buffered by 25 m, written as ``hdmap-vectorize`` writes them. Every merge
runs as ``hdmap-merge --out`` in a child process; its peak RSS (``ru_maxrss``) and wall time are
reported, and the map's size, for each number of drives.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import LineString, Point

from hdmap_seg.export import write_layers
from hdmap_seg.geo.frames import LocalFrame
from hdmap_seg.maplayers import COVERAGE, POLES, SIGNS, Feature

ORIGIN = LocalFrame(48.137, 11.575, 520.0)
BLOCK_M, POLE_STEP_M, SIGN_STEP_M, ROUTE_M = 150.0, 30.0, 120.0, 1000.0


def city(grid_m: float) -> tuple[np.ndarray, np.ndarray]:
    """The true poles ``(P, 2)`` and signs ``(S, 3)`` (x, y, facing deg) of the grid."""
    streets = np.arange(0.0, grid_m + 1.0, BLOCK_M)
    along = np.arange(0.0, grid_m, POLE_STEP_M) + POLE_STEP_M / 2
    poles, signs = [], []
    for c in streets:
        for side in (-6.0, 6.0):
            poles += [(a, c + side) for a in along] + [(c + side, a) for a in along]
        for a in np.arange(SIGN_STEP_M / 3, grid_m, SIGN_STEP_M):
            signs += [(a, c - 7.0, 90.0), (c + 7.0, a, 180.0)]
    return np.array(poles), np.array(signs)


def route(rng: np.random.Generator, grid_m: float) -> LineString:
    """A random route of ``ROUTE_M`` along the streets, turning at crossings."""
    n = int(grid_m // BLOCK_M)
    at = rng.integers(0, n + 1, size=2).astype(float) * BLOCK_M
    heading = rng.integers(4)
    pts = [at.copy()]
    steps = [(1, 0), (0, 1), (-1, 0), (0, -1)]
    while len(pts) <= ROUTE_M / BLOCK_M:
        for _ in range(4):
            nxt = at + BLOCK_M * np.array(steps[heading])
            if (nxt >= 0).all() and (nxt <= grid_m).all():
                break
            heading = (heading + 1) % 4
        at = nxt
        pts.append(at.copy())
        heading = (heading + rng.choice([-1, 0, 0, 1])) % 4
    return LineString(pts)


def write_drive(folder: Path, path: LineString, poles: np.ndarray, signs: np.ndarray, rng) -> None:
    seen = path.buffer(20.0)
    coverage = path.buffer(25.0)

    def near(xy: np.ndarray) -> np.ndarray:
        return shapely.contains_xy(seen, xy[:, 0], xy[:, 1])

    t = "2026-12-04T12:00:00.000Z"
    common = {"n_obs": 10, "first_seen": t, "last_seen": t, "confidence": 0.9, "sigma_m": 0.1}
    layers = {
        POLES: [
            Feature(Point(*(p + rng.normal(0, 0.1, 2)), 0.0), {"type": "pole", **common})
            for p in poles[near(poles)]
        ],
        SIGNS: [
            Feature(
                Point(*(s[:2] + rng.normal(0, 0.1, 2)), 2.5),
                {"type": "sign", "facing_deg": float(s[2]), "height_m": 2.5, **common},
            )
            for s in signs[near(signs[:, :2])]
        ],
        COVERAGE: [Feature(coverage, {"area_m2": round(coverage.area, 1)})],
    }
    write_layers(layers, folder, ORIGIN, gpkg=False)
    (folder / "vectorize.json").write_text(json.dumps({"log": folder.name, "origin": ORIGIN.to_dict()}))


def merge(out: Path, folders: list[Path]) -> tuple[float, float]:
    """``hdmap-merge --out`` in a child: (peak RSS MiB of that child, wall seconds)."""
    cmd = [sys.executable, "-m", "hdmap_seg.cli.merge", "--out", str(out), *map(str, folders), "--no-gpkg"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"merge of {len(folders)} drives failed: {err[-2000:]}")
    # The children's peak so far: runs go in increasing size, so the last is this one's.
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, wall


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="a scratch folder for the drives and maps")
    p.add_argument("--drives", type=int, nargs="+", default=[10, 100])
    p.add_argument("--grid-km", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    grid_m = args.grid_km * 1000.0
    poles, signs = city(grid_m)
    folders = []
    for k in range(max(args.drives)):
        folder = args.out / "drives" / f"drive_{k:03d}"
        if not (folder / "vectorize.json").is_file():
            write_drive(folder, route(rng, grid_m), poles, signs, rng)
        folders.append(folder)
    print(f"CPU: {cpu_model()}; city {args.grid_km:g} km square: {len(poles)} poles, {len(signs)} signs")
    for n in sorted(args.drives):
        out = args.out / f"map_{n}"
        if out.exists():
            shutil.rmtree(out)
        rss, wall = merge(out, folders[:n])
        state = json.loads((out / "merge.json").read_text())
        mapped = {k: sum(f["status"] == "mapped" for f in v) for k, v in state["points"].items()}
        print(
            f"{n:>4} drives: peak RSS {rss:.0f} MiB, {wall:.1f} s ({wall / n:.2f} s a drive); "
            f"map {mapped['poles']} poles, {mapped['signs']} signs; merge.json "
            f"{(out / 'merge.json').stat().st_size / 1e6:.1f} MB",
            flush=True,
        )


if __name__ == "__main__":
    main()
