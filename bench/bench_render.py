"""Benchmark the synthetic renderer: frames per second on one core.

Renders frames of a few worlds along their drives (each frame: ground, objects, shadows, haze,
blur, noise, JPEG artefacts) with every thread pool limited to one thread, and reports:

- render: ``Renderer.render`` alone;
- render+PNG: plus the PNG encoding of image and label mask, as a drive log stores them (the
  training set stores the renderer's own JPEG file: no extra cost);
- world: generating one 600 m world.

Both wall-clock and process CPU time are given: on a shared machine the CPU time is the better
measure of what one core does.

    python bench/bench_render.py                          # KITTI 1242x375, 60 frames
    python bench/bench_render.py --camera wide1024 --frames 100 --json out.json

Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from hdmap_seg.synthetic.base import png_bytes, rgb_png_bytes  # noqa: E402
from hdmap_seg.synthetic.camera import RIGS, rig_by_name  # noqa: E402
from hdmap_seg.synthetic.drive import make_drive  # noqa: E402
from hdmap_seg.synthetic.render import Renderer  # noqa: E402
from hdmap_seg.synthetic.world import make_world  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--camera", choices=sorted(RIGS), default="kitti")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--frames", type=int, default=60, help="timed frames, spread over --worlds worlds")
    p.add_argument("--worlds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args()
    cv2.setNumThreads(1)
    rig = rig_by_name(a.camera, a.scale)
    renderer = Renderer(rig)

    t0, c0 = time.perf_counter(), time.process_time()
    worlds = [make_world(100 + k, 600.0) for k in range(a.worlds)]
    world_wall = (time.perf_counter() - t0) / a.worlds
    world_cpu = (time.process_time() - c0) / a.worlds

    per_world = -(-a.frames // a.worlds)
    jobs = []
    for k, w in enumerate(worlds):
        drive = make_drive(w, per_world * 5, np.random.default_rng(k), rig.imu_height_m)
        jobs += [(w, drive.T_world_from_imu[i], drive.t_s[i]) for i in range(0, per_world * 5, 5)]
    jobs = jobs[: a.frames]
    renderer.render(*jobs[0], rng=np.random.default_rng(0))  # warm-up

    render_wall, render_cpu, enc_wall, enc_cpu = [], [], [], []
    for i, (w, T, t) in enumerate(jobs):
        rng = np.random.default_rng(i)
        t0, c0 = time.perf_counter(), time.process_time()
        frame = renderer.render(w, T, t, rng)
        t1, c1 = time.perf_counter(), time.process_time()
        rgb_png_bytes(frame.rgb)
        png_bytes(frame.label)
        t2, c2 = time.perf_counter(), time.process_time()
        render_wall.append(t1 - t0)
        render_cpu.append(c1 - c0)
        enc_wall.append(t2 - t0)
        enc_cpu.append(c2 - c0)

    def fps(times: list[float]) -> float:
        return len(times) / sum(times)

    out = {
        "camera": a.camera,
        "size": [rig.width, rig.height],
        "frames": len(jobs),
        "render_fps_wall": round(fps(render_wall), 2),
        "render_fps_cpu": round(fps(render_cpu), 2),
        "render_ms_median_wall": round(1000 * statistics.median(render_wall), 1),
        "render_encode_fps_wall": round(fps(enc_wall), 2),
        "render_encode_fps_cpu": round(fps(enc_cpu), 2),
        "world_s_wall": round(world_wall, 3),
        "world_s_cpu": round(world_cpu, 3),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + " ".join(sys.argv),
    }
    print("| camera | size | frames | render fps (wall / CPU) | render+PNG fps (wall / CPU) | world (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(
        f"| {a.camera} | {rig.width}x{rig.height} | {len(jobs)} | {out['render_fps_wall']} / {out['render_fps_cpu']} "
        f"| {out['render_encode_fps_wall']} / {out['render_encode_fps_cpu']} | {out['world_s_wall']} |"
    )
    print(f"median render time: {out['render_ms_median_wall']} ms; {out['machine']}; {out['date']}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
