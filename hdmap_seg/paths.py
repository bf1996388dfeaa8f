"""Where the project's own files are: the repository root and its Hydra configs (``conf/``).

``make`` installs the package editable (``pip install -e .``), so ``conf/`` sits beside it; every
module finds it here.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"
