"""Every command lives in hdmap_seg/cli/: one console script and one shim per module, no sys.path edits,
nothing done on import, and each answers --help with exit status 0."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from conftest import REPO_ROOT

CLI_DIR = REPO_ROOT / "hdmap_seg" / "cli"
#: Modules of hdmap_seg/cli/ that are not commands.
NOT_COMMANDS = {"__init__", "hydra_app"}


def console_scripts() -> dict[str, str]:
    """console script -> ``module:function``, as pyproject.toml installs them."""
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def shims() -> list[Path]:
    return [REPO_ROOT / "train.py", REPO_ROOT / "eval.py", *sorted((REPO_ROOT / "tools").glob("*.py"))]


def test_every_command_module_has_one_console_script_and_one_shim():
    modules = {p.stem for p in CLI_DIR.glob("*.py")} - NOT_COMMANDS
    targets = sorted(console_scripts().values())
    assert targets == sorted(f"hdmap_seg.cli.{m}:main" for m in modules)

    shim_targets = []
    for path in shims():
        tree = ast.parse(path.read_text())
        imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
        # A shim imports the command's main and nothing else: no sys.path edits, no logic of its own.
        assert len(imports) == 1 and isinstance(imports[0], ast.ImportFrom), path
        assert [a.name for a in imports[0].names] == ["main"], path
        shim_targets.append(f"{imports[0].module}:main")
        assert len(path.read_text().splitlines()) <= 8, path
    assert sorted(shim_targets) == targets


def test_importing_the_commands_changes_neither_the_environment_nor_sys_path():
    modules = sorted(f"hdmap_seg.cli.{p.stem}" for p in CLI_DIR.glob("*.py") if p.stem != "__init__")
    code = (
        "import os, sys, importlib\n"
        # Libraries edit the environment on import (OpenCV's LD_LIBRARY_PATH): ours is what is measured.
        "import cv2, torch, lightning, hydra\n"
        "env, path = dict(os.environ), list(sys.path)\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())\n"
        "assert sys.path == path, sys.path\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HDMAP_ROOT"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_console_script_answers_help_with_exit_0():
    bin_dir = Path(sys.executable).parent
    procs = {
        name: subprocess.Popen(
            [str(bin_dir / name), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name in console_scripts()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (name, err[-2000:])
        assert "Traceback" not in err and out.strip(), name


@pytest.mark.parametrize("status", [1, 2])
def test_a_failed_demo_step_passes_its_exit_status_on(status, capsys):
    """A step's user error (2) stays a user error of ``make demo``, a bug (1) stays a bug."""
    from hdmap_seg.cli.demo import run

    with pytest.raises(SystemExit) as exit_info:
        run([sys.executable, "-c", f"raise SystemExit({status})"])
    assert exit_info.value.code == status
    assert f"demo: step failed (exit {status})" in capsys.readouterr().err
