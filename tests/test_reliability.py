"""Faults made real: reruns that verify what they reuse, a second writer, a full disk, and kill -9.

After each fault the rerun must give byte-identical masks, overlays and layers, and leave no
temporary file behind.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pyogrio
import pytest

from conftest import FRAMES, common, compose_train, run_infer, run_script, write_checkpoint
from hdmap_seg.data.classes import ROAD_CLASSES
from hdmap_seg.io import TEMP_MARK, exclusive_lock


def outputs(log_out: Path) -> dict[str, bytes]:
    """Every mask, overlay and layer file of one log's outputs, by relative path. The GeoPackage
    by its layers' contents: SQLite pages also hold the time each table was last written."""
    files = {}
    for folder in ("masks", "overlays", "map"):
        for p in sorted((log_out / folder).glob("*")):
            if p.suffix == ".gpkg":
                files[str(p.relative_to(log_out))] = gpkg_contents(p)
            elif p.is_file():
                files[str(p.relative_to(log_out))] = p.read_bytes()
    return files


def gpkg_contents(path: Path) -> bytes:
    """Each layer's geometries (WKB) and attribute values."""
    contents = []
    for name in sorted(pyogrio.list_layers(path)[:, 0]):
        _, _, geometry, fields = pyogrio.raw.read(path, layer=name)
        contents.append((name, list(geometry), [list(f) for f in fields]))
    return repr(contents).encode()


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(f".*{TEMP_MARK}*") if p.is_file()]


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def reference(checkpoint, drive_log, tmp_path_factory) -> Path:
    """An uninterrupted run with overlays: the outputs every fault's rerun must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    proc = run_infer(*common(checkpoint, drive_log, out), "overlays=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_rerun_redoes_torn_and_foreign_masks_and_redraws_lost_overlays(
    checkpoint, drive_log, reference, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    log_out = out / drive_log.name
    masks = sorted((log_out / "masks").glob("*.png"))
    overlays = sorted((log_out / "overlays").glob("*.jpg"))
    torn = masks[0].read_bytes()
    masks[0].write_bytes(torn[: len(torn) // 2])  # a torn write
    cv2.imwrite(str(masks[1]), np.zeros((1, 1), np.uint8))  # an earlier bad frame's 1x1 mask
    cv2.imwrite(str(masks[2]), np.full(cv2.imread(str(masks[2]), 0).shape, 200, np.uint8))  # not a class id
    overlays[3].unlink()
    overlays[4].write_bytes(overlays[4].read_bytes()[:-100])  # a JPEG cut short
    (log_out / "masks" / f".x{TEMP_MARK}.png").write_bytes(b"left by a kill -9")

    proc = run_infer(*common(checkpoint, drive_log, out), "overlays=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((log_out / "summary.json").read_text())
    assert summary["run"]["frames_predicted"] == 3 and summary["frames_redone"] == 3
    assert summary["frames_resumed"] == FRAMES - 3 and summary["overlays_redrawn"] == 2
    runs = json.loads((out / "ranks" / "rank0.json").read_text())["runs"]
    assert [len(r["frames"]) for r in runs] == [FRAMES, 3], "each run keeps its own record"
    assert outputs(log_out) == outputs(reference / drive_log.name)
    assert not temp_files(out)


@pytest.mark.slow
def test_overlays_asked_for_on_a_rerun_are_drawn_from_the_masks(checkpoint, drive_log, reference, tmp_path):
    out = tmp_path / "out"
    proc = run_infer(*common(checkpoint, drive_log, out), "overlays=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / drive_log.name / "overlays").exists()
    proc = run_infer(*common(checkpoint, drive_log, out), "overlays=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / drive_log.name / "summary.json").read_text())
    assert summary["run"]["frames_predicted"] == 0 and summary["overlays_redrawn"] == FRAMES
    assert outputs(out / drive_log.name) == outputs(reference / drive_log.name)


@pytest.mark.slow
def test_a_rerun_with_another_model_refuses_then_overwrite_redoes_everything(
    checkpoint, drive_log, reference, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    other = tmp_path / "other.ckpt"
    write_checkpoint(other, ROAD_CLASSES, seed=1)
    line = one_line_error(run_infer(*common(other, drive_log, out), "overlays=true"))
    assert line.startswith(f"error: {out}: holds the outputs of another run (model: ")
    assert "other.ckpt" in line and "overwrite=true" in line
    line = one_line_error(run_infer(*common(checkpoint, drive_log, out), "overlays=true", "flip=true"))
    assert "flip: False -> True" in line

    proc = run_infer(*common(other, drive_log, out), "overlays=false", "overwrite=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / drive_log.name / "summary.json").read_text())
    assert summary["run"]["frames_predicted"] == FRAMES
    assert not (out / drive_log.name / "overlays").exists(), "the old model's overlays are gone"
    fresh = tmp_path / "fresh"
    proc = run_infer(*common(other, drive_log, fresh), "overlays=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert outputs(out / drive_log.name) == outputs(fresh / drive_log.name)
    assert json.loads((out / "run.json").read_text())["model_path"] == str(other)


def test_a_second_writer_of_one_out_dir_stops_with_one_line(checkpoint, drive_log, tmp_path):
    out = tmp_path / "out"
    with exclusive_lock(out, "hdmap-infer"):
        line = one_line_error(run_infer(*common(checkpoint, drive_log, out)))
    assert line == (
        f"error: {out}: another hdmap-infer is writing here (pid {os.getpid()} on {os.uname().nodename}); "
        "wait for it or choose another folder"
    )
    assert not (out / drive_log.name).exists()


def test_a_frame_of_the_wrong_size_stops_before_any_prediction(checkpoint, drive_log, tmp_path):
    log = tmp_path / "log"
    shutil.copytree(drive_log, log)
    bad = sorted((log / "image_02/data").glob("*.png"))[5]
    cv2.imwrite(str(bad), np.zeros((1, 1, 3), np.uint8))
    out = tmp_path / "out"
    line = one_line_error(run_infer(*common(checkpoint, log, out)))
    assert line.startswith(f"error: {bad}: the frame is 1x1 pixels but its camera is ")
    assert not (out / "log" / "masks").exists(), "nothing was predicted"


def test_frames_beyond_the_size_limit_are_refused_with_the_way_out(checkpoint, drive_log, tmp_path):
    line = one_line_error(run_infer(*common(checkpoint, drive_log, tmp_path / "out"), "scale=40"))
    assert "outside what inference takes" in line and "set scale=" in line


def test_vectorize_out_that_is_a_file_is_one_line(drive_log, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    proc = run_script("tools/vectorize.py", str(drive_log), "--out", str(afile / "map"))
    line = one_line_error(proc)
    assert line.startswith(
        f"error: {afile / 'map' / '.lock'}: cannot write here, a file stands where a folder is needed"
    )


# ------------------------------------------------------------------------------ a full disk


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of ``size`` at ``path`` (root only): a real ENOSPC for every writer, libraries included."""
    path.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_with_one_line_and_publishes_no_torn_file(
    checkpoint, drive_log, reference, tmp_path
):
    """A real full disk: a tmpfs smaller than the outputs (this test needs root, as CI has; elsewhere it
    skips). Every file under its final name is complete; a rerun with room finishes the job."""
    need = sum(p.stat().st_size for p in (reference / drive_log.name).rglob("*") if p.is_file())
    with small_disk(tmp_path / "disk", f"{need // 2 // 1024}k") as disk:
        out = disk / "out"
        line = one_line_error(run_infer(*common(checkpoint, drive_log, out), "overlays=true"))
        assert "no space left on the device" in line and " free" in line
        log_out = out / drive_log.name
        assert list((log_out / "masks").glob("*.png")), "the disk filled part-way through"
        for mask in (log_out / "masks").glob("*.png"):
            assert cv2.imread(str(mask), cv2.IMREAD_UNCHANGED) is not None, mask
            assert mask.read_bytes() == (reference / drive_log.name / "masks" / mask.name).read_bytes()
        assert not temp_files(out)
        moved = tmp_path / "moved"
        shutil.copytree(out, moved, ignore=shutil.ignore_patterns("hydra"))
    proc = run_infer(*common(checkpoint, drive_log, moved), "overlays=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert outputs(moved / drive_log.name) == outputs(reference / drive_log.name)


# ------------------------------------------------------------------------------ kill -9


def infer_config(*overrides: str):
    """conf/infer.yaml composed as ``tools/infer.py`` composes it."""
    from hydra import compose, initialize_config_dir

    from hdmap_seg.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # Hydra's run folder is Hydra's to make; outside a Hydra run, name it (paths.output_dir).
        overrides = [o.replace("hydra.run.dir=", "paths.output_dir=") for o in overrides]
        return compose(config_name="infer", overrides=overrides)


@pytest.fixture(scope="module")
def preloaded():
    """A fork server that has imported the inference code: each run forked from it starts at once,
    so the kill points land in inference rather than in Python's start-up. (Not forked from this
    process: its OpenMP threads would deadlock a child.)"""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["hdmap_seg.inference", "hdmap_seg.models", "hdmap_seg.cli.vectorize", "hdmap_seg.training"]
    )
    warm_up = ctx.Process(target=os.getpid)  # starts the server, so that no run below times its imports
    warm_up.start()
    warm_up.join()
    return ctx


def run_killed_at(ctx, target, args: tuple, after_s: float) -> bool:
    """Run ``target(*args)`` in a process forked from ``ctx`` and SIGKILL it ``after_s`` seconds in;
    whether it was killed (else it finished, and must have succeeded)."""
    proc = ctx.Process(target=target, args=args)
    proc.start()
    proc.join(timeout=after_s)
    if proc.exitcode is not None:
        assert proc.exitcode == 0
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    return True


@pytest.mark.slow
def test_infer_killed_at_20_random_points_then_rerun_gives_the_same_outputs(
    checkpoint, drive_log, reference, preloaded, tmp_path
):
    from hdmap_seg.inference import run_inference

    out = tmp_path / "out"
    cfg = infer_config(*common(checkpoint, drive_log, out), "overlays=true")
    start = time.perf_counter()
    assert not run_killed_at(preloaded, run_inference, (cfg,), 600)
    full_s = time.perf_counter() - start
    shutil.rmtree(out)
    rng = random.Random(0)
    kills = 0
    while kills < 20:
        # Kill points spread over the whole run: model loading, prediction, vectorization, layers.
        if run_killed_at(preloaded, run_inference, (cfg,), rng.uniform(0.0, full_s)):
            kills += 1
        else:  # it finished: start over from nothing, so that later kills hit every phase again
            shutil.rmtree(out)
    proc = run_infer(*common(checkpoint, drive_log, out), "overlays=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert outputs(out / drive_log.name) == outputs(reference / drive_log.name)
    assert not temp_files(out)


@pytest.mark.slow
def test_vectorize_killed_at_random_points_then_rerun_gives_the_same_layers(drive_log, preloaded, tmp_path):
    from hdmap_seg.cli.vectorize import run as vectorize

    def run_vectorize(out: Path, after_s: float) -> bool:
        return run_killed_at(preloaded, vectorize, ([str(drive_log), "--quiet", "--out", str(out)],), after_s)

    start = time.perf_counter()
    assert not run_vectorize(tmp_path / "reference", 600)
    full_s = time.perf_counter() - start
    rng = random.Random(1)
    out, kills = tmp_path / "out", 0
    while kills < 6:
        kills += run_vectorize(out, rng.uniform(0.0, full_s))
    assert not run_vectorize(out, 600)
    layers = {p.name: p.read_bytes() for p in sorted(out.glob("*.geojson"))}
    assert layers == {p.name: p.read_bytes() for p in sorted((tmp_path / "reference").glob("*.geojson"))}
    assert gpkg_contents(out / "map.gpkg") == gpkg_contents(tmp_path / "reference" / "map.gpkg")
    assert not temp_files(out)


@pytest.mark.slow
def test_train_killed_at_random_points_resumes_from_a_whole_checkpoint(toy_dataset, preloaded, tmp_path):
    """Checkpoints every step, kills anywhere (also inside a save): every checkpoint on disk loads, and
    resuming from ``last.ckpt`` each time reaches the last step."""
    import torch

    from hdmap_seg.training import train

    steps = 8
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"

    def run_train(after_s: float) -> bool:
        resume = [f"ckpt_path={last}"] if last.is_file() else []
        cfg = compose_train(
            toy_dataset,
            tmp_path,
            f"trainer.max_steps={steps}",
            "+callbacks.model_checkpoint.every_n_train_steps=1",
            "callbacks.progress_bar=null",
            "validate_best=false",
            *resume,
        )
        return run_killed_at(preloaded, train, (cfg,), after_s)

    start = time.perf_counter()
    assert not run_train(600)
    full_s = time.perf_counter() - start
    shutil.rmtree(run_dir)
    rng = random.Random(2)
    kills = 0
    while kills < 4:
        if run_train(rng.uniform(0.0, full_s)):
            kills += 1
            # A kill inside a save leaves its half-written temporary file (the next run sweeps it, checked
            # below); every checkpoint published under its own name is whole.
            unfinished = set(temp_files(run_dir))
            for ckpt in run_dir.glob("checkpoints/*.ckpt"):
                if ckpt not in unfinished:
                    torch.load(ckpt, weights_only=True, map_location="cpu")  # whole, never torn
        else:
            shutil.rmtree(run_dir)
    assert not run_train(600)
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == steps
    assert not temp_files(run_dir)
