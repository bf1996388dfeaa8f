"""Hydra entry points: ``train.py`` / ``hdmap-train``, ``tools/infer.py`` / ``hdmap-infer`` and
``eval.py`` / ``hdmap-eval``.

Every command passes through :func:`hydra_command`, which checks what would otherwise fail with a
traceback, before any work: the run folder (``hydra.run.dir``) and ``out_dir`` being folders we can
write, the sliding window, and the arguments given to the trainer, callbacks and loggers.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import hydra
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from hdmap_seg.errors import HdmapError, exit_on_user_error
from hdmap_seg.paths import CONF_DIR, PROJECT_ROOT

# conf/paths/default.yaml resolves data/ and logs/ under the project.
os.environ.setdefault("HDMAP_ROOT", str(PROJECT_ROOT))

R = TypeVar("R")

# Hydra flags that print something instead of running the command, or that point it at another
# config: no run folder is made, or we would not compose the same config.
_NO_RUN_FLAGS = {
    "-h",
    "--help",
    "--hydra-help",
    "--version",
    "-c",
    "--cfg",
    "-i",
    "--info",
    "-sc",
    "--shell-completion",
    "--experimental-rerun",
    "-cp",
    "--config-path",
    "-cn",
    "--config-name",
    "-cd",
    "--config-dir",
    "-p",
    "--package",
}


def check_run_dir(config_name: str, argv: Sequence[str]) -> None:
    """The folder Hydra makes before the command starts (``hydra.run.dir``, ``hydra.sweep.dir`` with
    ``-m``) must not be or lie under a file: Hydra's own ``mkdir`` would fail with a traceback.

    Composes the command's config as Hydra will; when that fails, Hydra reports why, in its own words.
    """
    from hydra import compose, initialize_config_dir

    from hdmap_seg.checks import check_output_dir

    if any(a.split("=", 1)[0] in _NO_RUN_FLAGS for a in argv):
        return
    key = "hydra.sweep.dir" if any(a in ("-m", "--multirun") for a in argv) else "hydra.run.dir"
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        folder = OmegaConf.select(cfg, key)
    except OverrideParseException as err:
        # Hydra's grammar takes unquoted values of ASCII letters, digits and a few symbols only.
        raise HdmapError(
            f"cannot parse the override {_bad_override(overrides)!r}: quote a value holding spaces or "
            f"non-ASCII characters, e.g. key=\"'/data/straße/log'\" ({str(err).splitlines()[0]})"
        ) from None
    except Exception:  # Hydra reports a config that does not compose, with its own message
        return
    if folder:
        check_output_dir(folder, key)


def _bad_override(overrides: Sequence[str]) -> str:
    """The first override Hydra's parser rejects."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_overrides([o])
        except OverrideParseException:
            return o
    return " ".join(overrides)


def preflight(cfg: DictConfig) -> None:
    """Checks of the composed config that every command shares, before anything is built or read."""
    from hdmap_seg.checks import check_instantiated_groups, check_output_dir, check_window

    if cfg.get("out_dir"):
        check_output_dir(cfg.out_dir, "out_dir")
    if "window" in cfg:
        check_window(cfg.window, cfg.get("stride"))
    check_instantiated_groups(cfg)


def hydra_command(config_name: str) -> Callable[[Callable[[DictConfig], R]], Callable[..., R]]:
    """``@hydra.main`` of ``conf/<config_name>.yaml`` with the project's checks and its one-line
    user errors (:func:`hdmap_seg.errors.exit_on_user_error`, exit status 2)."""

    def decorate(body: Callable[[DictConfig], R]) -> Callable[..., R]:
        @functools.wraps(body)
        def task(cfg: DictConfig) -> R:
            preflight(cfg)
            return body(cfg)

        main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(
            exit_on_user_error(task)
        )

        @functools.wraps(body)
        def entry(cfg_passthrough: DictConfig | None = None) -> R:
            if cfg_passthrough is None:
                exit_on_user_error(check_run_dir)(config_name, sys.argv[1:])
            return main(cfg_passthrough)

        return entry

    return decorate


@hydra_command("train")
def train_main(cfg: DictConfig) -> float | None:
    """``python train.py data=roads model=twins_svt_s [key=value ...]`` (conf/train.yaml)."""
    from hdmap_seg.training import train

    return train(cfg).get("val/mIoU")


@hydra_command("infer")
def infer_main(cfg: DictConfig) -> None:
    """``python tools/infer.py ckpt_path=CKPT logs=LOG_OR_GLOB [key=value ...]`` (conf/infer.yaml)."""
    from hdmap_seg.inference import run_inference

    summary = run_inference(cfg)
    if summary:
        fps = summary["frames_per_s"]
        print(f"{summary['frames_predicted']} frames predicted" + (f" at {fps} frames/s" if fps else ""))
        for name, log in summary["logs"].items():
            print(f"  {name}: {log['features']} -> {Path(log['outputs'][0]).parent}")


@hydra_command("eval")
def eval_main(cfg: DictConfig) -> float | None:
    """``python eval.py ckpt_path=CKPT data=camvid split=test [key=value ...]`` (conf/eval.yaml)."""
    from hdmap_seg.evaluate.segmentation import evaluate, format_table

    metrics = evaluate(cfg)
    if not metrics:  # not global rank 0
        return None
    print(f"{metrics['frames']} frames of {metrics['data_root']} ({metrics['split']}), {metrics['backend']}")
    print(format_table(metrics))
    print(f"outputs: {cfg.out_dir}")
    return metrics["mIoU"]
