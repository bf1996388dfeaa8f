"""Vectorization speed (frames/s on one core at 1242x375) and fusion memory over 1,000 vs 10,000 frames.

    python bench/bench_vectorize.py                      # drawn scene (tests/test_vectorize_scene.py)
    python bench/bench_vectorize.py --log data/roads/logs/synthetic_drive_0000   # + a synthetic log's masks

Speed: masks are decoded beforehand; the clock covers ``MapBuilder.add_frame`` and ``finish``
(per-frame instances, ground projection, fusion, final polygons), with OpenCV held to one thread.
Memory: a drive along a road whose scenery repeats every 100 m (so the map grows with the
distance, as a real map does) is vectorized from 100 pre-drawn masks; tracemalloc's peak of the
fusion state is reported for 1,000 and 10,000 frames together with the map's size.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the drawn scene lives with the tests that check it

from test_vectorize_scene import Scene, default_scene, kitti_like_camera, render_mask  # noqa: E402

from hdmap_seg.geo.frames import make_transform, rotation_from_rpy  # noqa: E402
from hdmap_seg.geo.ground import TrajectoryGround  # noqa: E402
from hdmap_seg.imageio import read_mask  # noqa: E402
from hdmap_seg.vectorize import MapBuilder, VectorizeConfig  # noqa: E402
from hdmap_seg.vectorize.builder import drive_ground  # noqa: E402
from hdmap_seg.vectorize.config import GROUND_MODELS, GroundConfig  # noqa: E402

PERIOD_M = 100.0


def periodic_pose(i: int, step_m: float = 1.0) -> np.ndarray:
    """T_world_from_vehicle with pitch/roll/sway repeating every ``PERIOD_M`` metres of travel."""
    x = i * step_m
    phase = 2 * np.pi * x / PERIOD_M
    R = rotation_from_rpy(0.01 * np.sin(3 * phase), 0.012 * np.sin(2 * phase + 1), 0.02 * np.sin(phase))
    return make_transform(R, [x, -2.0 + 0.3 * np.sin(phase), 0.93])


def periodic_ground(n_frames: int, model: str) -> TrajectoryGround | None:
    """The road surface of the periodic drive's first ``n_frames`` poses (None: the level plane)."""
    if model == "plane":
        return None
    poses = np.stack([periodic_pose(i) for i in range(n_frames)])
    return TrajectoryGround.from_poses(poses, kitti_like_camera().ground_offset_m)


def cpu_model() -> str:
    """The processor's name (figures differ between machines)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def periodic_scene(length_m: float) -> Scene:
    base = default_scene()
    k = np.arange(int(np.ceil(length_m / PERIOD_M)) + 2)
    return Scene(
        np.concatenate([base.poles + [j * PERIOD_M, 0, 0, 0] for j in k]),
        np.concatenate([base.signs + [j * PERIOD_M, 0, 0, 0, 0] for j in k]),
        [m + [j * PERIOD_M, 0] for j in k for m in base.medians],
    )


def bench_speed(camera, masks, poses, ground, repeat: int = 3) -> tuple[float, float]:
    """Best of ``repeat``: (frames per wall-clock second, frames per CPU second of this process).

    On a shared machine the wall clock counts other people's work; with one thread the CPU time
    is the one-core figure.
    """
    best_wall = best_cpu = np.inf
    for _ in range(repeat):
        builder = MapBuilder(camera, None, ground)
        t0, c0 = time.perf_counter(), time.process_time()
        for i, (m, T) in enumerate(zip(masks, poses, strict=True)):
            builder.add_frame(i, m, T)
        builder.finish()
        best_wall = min(best_wall, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return len(masks) / best_wall, len(masks) / best_cpu


def bench_memory(camera, cycle: list[np.ndarray], n_frames: int, ground_model: str) -> dict:
    tracemalloc.start()
    builder = MapBuilder(camera, None, periodic_ground(n_frames, ground_model))
    t0 = time.perf_counter()
    for i in range(n_frames):
        builder.add_frame(i, cycle[i % len(cycle)], periodic_pose(i) @ camera.T_vehicle_from_cam)
    state = builder.state_size()
    _, peak_add = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    layers = builder.finish()
    _, peak_finish = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "frames": n_frames,
        "seconds": time.perf_counter() - t0,
        "peak_MB_frames": peak_add / 1e6,
        "peak_MB_finish": peak_finish / 1e6,
        "poles": len(layers["poles"]),
        "signs": len(layers["signs"]),
        "medians": sum(f.properties["kind"] == "footprint" for f in layers["medians"]),
        **state,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", type=Path, help="also time a drive log's own masks (label_02/data)")
    ap.add_argument(
        "--frames", type=int, nargs="*", default=[1000, 10000], help="memory runs (none: speed only)"
    )
    ap.add_argument(
        "--ground", choices=GROUND_MODELS, default="trajectory", help="ground model (default: %(default)s)"
    )
    args = ap.parse_args()
    cv2.setNumThreads(1)
    camera = kitti_like_camera()
    cycle = [render_mask(camera, periodic_pose(i), periodic_scene(200.0)) for i in range(int(PERIOD_M))]
    poses = [periodic_pose(i) @ camera.T_vehicle_from_cam for i in range(len(cycle))]
    wall, cpu = bench_speed(camera, cycle, poses, periodic_ground(len(cycle), args.ground))
    print(f"CPU: {cpu_model()}; ground model: {args.ground}")
    print(
        f"drawn scene, 1242x375, one thread: {wall:.0f} frames/s wall clock, {cpu:.0f} frames per CPU second"
    )
    if args.log:
        from hdmap_seg.geo.drivelog import open_drive_log

        log = open_drive_log(args.log)
        masks = [read_mask(log.mask_path(log.default_masks_dir, i)) for i in range(len(log))]
        config = VectorizeConfig(ground=GroundConfig(model=args.ground))
        poses = [log.T_world_from_cam(i) for i in range(len(log))]
        wall, cpu = bench_speed(log.camera, masks, poses, drive_ground(log, config))
        print(
            f"{args.log.name} ({len(log)} frames), one thread: {wall:.0f} frames/s wall, {cpu:.0f} frames/CPU s"
        )
    for n in args.frames:
        r = bench_memory(camera, cycle, n, args.ground)
        print(
            f"{n:>6} frames: peak {r['peak_MB_frames']:.1f} MB while adding, {r['peak_MB_finish']:.1f} MB in finish; "
            f"map {r['poles']} poles, {r['signs']} signs, {r['medians']} medians; active tiles {r['ground_tiles']}, "
            f"{r['seconds']:.0f} s"
        )


if __name__ == "__main__":
    main()
