"""Training through Hydra: configs compose, the real command line runs, resuming continues."""

from __future__ import annotations

import subprocess

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import OmegaConf, open_dict

from conftest import REPO_ROOT, compose_train, run_script, tiny_overrides
from hdmap_seg.data.classes import ROAD_CLASSES
from hdmap_seg.errors import HdmapError
from hdmap_seg.module import load_segmenter
from hdmap_seg.training import train

CONF = REPO_ROOT / "conf"


def all_group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("model", all_group_options("model"))
def test_every_model_config_composes_and_builds(model):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}"])
    assert cfg.model._target_ == "hdmap_seg.models.Segmenter"
    assert cfg.model.num_classes == cfg.data.num_classes


@pytest.mark.parametrize(
    "override",
    [f"trainer={t}" for t in all_group_options("trainer")]
    + [f"logger={t}" for t in all_group_options("logger")]
    + [f"data={d}" for d in all_group_options("data")]
    + [f"experiment={e}" for e in all_group_options("experiment")],
)
def test_every_config_group_composes(override, tmp_path):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[override])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)  # Hydra sets it inside a real run
        cfg.paths.root_dir = str(REPO_ROOT)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    targets = [resolved[k]["_target_"] for k in ("data", "model", "module", "trainer")]
    targets += [
        c["_target_"] for group in ("callbacks", "logger") for c in (resolved[group] or {}).values() if c
    ]
    for target in targets:
        assert callable(get_object(target)), target


def run_train_cli(*overrides: str) -> subprocess.CompletedProcess:
    return run_script("train.py", *overrides)


@pytest.mark.slow
def test_fast_dev_run_through_the_command_line(toy_dataset, tmp_path):
    proc = run_train_cli(*tiny_overrides(toy_dataset, tmp_path), "trainer.fast_dev_run=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val/mIoU" in proc.stdout + proc.stderr


def test_bad_data_set_exits_2_with_one_line_and_no_traceback(toy_dataset, tmp_path):
    (toy_dataset / "masks/train/0001.png").unlink()
    proc = run_train_cli(*tiny_overrides(toy_dataset, tmp_path), "trainer.fast_dev_run=1")
    assert proc.returncode == 2
    assert "masks/train/0001.png: mask missing" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_resume_continues_from_the_checkpoint(toy_dataset, tmp_path):
    cfg = compose_train(toy_dataset, tmp_path, "trainer.max_steps=3", "callbacks.progress_bar=null")
    train(cfg)
    last = tmp_path / "run/checkpoints/last.ckpt"
    ckpt = torch.load(last, weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 3
    assert (tmp_path / "run/learning_curve.png").stat().st_size > 0
    assert (tmp_path / "run/csv/metrics.csv").is_file()

    out2 = tmp_path / "second"
    cfg2 = compose_train(
        toy_dataset, out2, "trainer.max_steps=6", f"ckpt_path={last}", "callbacks.progress_bar=null"
    )
    train(cfg2)
    resumed = torch.load(out2 / "run/checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    assert resumed["global_step"] == 6
    # The schedule continued: the scheduler counted all six steps, not three.
    (sched,) = resumed["lr_schedulers"]
    assert sched["last_epoch"] == 6


@pytest.mark.slow
def test_load_segmenter_rebuilds_the_trained_network(toy_dataset, tmp_path):
    cfg = compose_train(toy_dataset, tmp_path, "trainer.max_steps=2", "callbacks.progress_bar=null")
    train(cfg)
    last = tmp_path / "run/checkpoints/last.ckpt"
    model, classes = load_segmenter(last)
    assert classes == ROAD_CLASSES
    state = torch.load(last, weights_only=True, map_location="cpu")["state_dict"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[f"model.{name}"]), name
    logits = model(torch.randn(1, 3, 37, 45))
    assert logits.shape == (1, 6, 37, 45)


@pytest.mark.slow
def test_weight_averaging_is_what_checkpoints_and_inference_get(toy_dataset, tmp_path):
    """experiment=demo's EMA callback: the checkpoint's weights are the average, and so are the loaded ones."""
    cfg = compose_train(
        toy_dataset,
        tmp_path,
        "trainer.max_steps=3",
        "callbacks.progress_bar=null",
        "+callbacks.ema._target_=lightning.pytorch.callbacks.EMAWeightAveraging",
        "+callbacks.ema.decay=0.5",
    )
    train(cfg)
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    averaged, current = ckpt["state_dict"], ckpt["current_model_state"]
    name = "model.decode_head.classifier.weight"
    assert not torch.equal(averaged[name], current[name])
    model, _ = load_segmenter(tmp_path / "run/checkpoints/last.ckpt")
    assert torch.equal(model.state_dict()[name.removeprefix("model.")], averaged[name])


def test_load_segmenter_rejects_what_is_no_training_checkpoint(tmp_path):
    bogus = tmp_path / "weights.ckpt"
    bogus.write_text("not a checkpoint")
    with pytest.raises(HdmapError, match="weights.ckpt: not a loadable checkpoint"):
        load_segmenter(bogus)
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(HdmapError, match="plain.ckpt: not a hdmap_seg training checkpoint"):
        load_segmenter(tmp_path / "plain.ckpt")
    with pytest.raises(HdmapError, match="missing.ckpt: checkpoint not found"):
        load_segmenter(tmp_path / "missing.ckpt")


@pytest.mark.slow
def test_ddp_training_on_two_cpu_processes(toy_dataset, tmp_path):
    proc = run_train_cli(
        *tiny_overrides(toy_dataset, tmp_path),
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.sync_batchnorm=false",  # SyncBatchNorm needs GPUs
        "trainer.max_steps=2",
        "callbacks.progress_bar=null",
        "validate_best=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log, "a second process joined the run"
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 2
    # The sampler shards the 6 frames: 3 per process, one batch of 2 per epoch, so two steps take
    # two epochs (one process alone would take both steps in its first epoch of 3 batches).
    assert ckpt["epoch"] == 1
