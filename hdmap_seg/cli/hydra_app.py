"""What every Hydra command shares: :func:`hydra_command`, the checks it runs before any work, and
:func:`compose_config` for the commands that read a Hydra config without being one.

:func:`hydra_command` checks what would otherwise fail with a traceback: the run folder
(``hydra.run.dir``) and ``out_dir`` being folders we can write, the sliding window, and the arguments
given to the trainer, callbacks and loggers.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import hydra
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from hdmap_seg.errors import HdmapError, exit_on_user_error
from hdmap_seg.paths import CONF_DIR, PROJECT_ROOT

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


def use_project_root() -> None:
    """Resolve ``paths.root_dir`` (data/, logs/, outputs/; conf/paths/default.yaml) to the project,
    unless the user's environment names another folder in ``HDMAP_ROOT``."""
    os.environ.setdefault("HDMAP_ROOT", str(PROJECT_ROOT))


def compose_config(
    config_name: str, overrides: Sequence[str] = (), return_hydra_config: bool = False
) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, composed as the Hydra command of that name would,
    for code that only reads it (``paths.output_dir``, Hydra's run folder, stays unset)."""
    from hydra import compose, initialize_config_dir

    use_project_root()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def check_run_dir(config_name: str, argv: Sequence[str]) -> None:
    """The folder Hydra makes before the command starts (``hydra.run.dir``, ``hydra.sweep.dir`` with
    ``-m``) must not be or lie under a file: Hydra's own ``mkdir`` would fail with a traceback.

    Composes the command's config as Hydra will; when that fails, Hydra reports why, in its own words.
    """
    from hdmap_seg.checks import check_output_dir

    if any(a.split("=", 1)[0] in _NO_RUN_FLAGS for a in argv):
        return
    key = "hydra.sweep.dir" if any(a in ("-m", "--multirun") for a in argv) else "hydra.run.dir"
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        cfg = compose_config(config_name, overrides, return_hydra_config=True)
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
            use_project_root()
            if cfg_passthrough is None:
                exit_on_user_error(check_run_dir)(config_name, sys.argv[1:])
            return main(cfg_passthrough)

        return entry

    return decorate
