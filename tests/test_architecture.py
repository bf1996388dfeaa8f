"""The import arrows of the package point down the stages that docs/architecture.md draws."""

from __future__ import annotations

import ast
import re

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "hdmap_seg"
DOC = REPO_ROOT / "docs" / "architecture.md"


def stage_levels() -> dict[str, int]:
    """``{module or subpackage: level}`` from the diagram under "## The stages" in docs/architecture.md."""
    text = DOC.read_text()
    diagram = text.split("## The stages", 1)[1].split("```")[1]
    levels, level = {}, None
    for line in diagram.splitlines():
        m = re.match(r"\s*(\d+)?\s+([a-z_]+)(?:\.py|/)\s", line + " ")
        if not m:
            continue
        level = int(m.group(1)) if m.group(1) else level
        levels[m.group(2)] = level
        # a second unit on the same row ("errors.py ... paths.py: ...")
        for extra in re.findall(r";\s+([a-z_]+)\.py:", line):
            levels[extra] = level
    return levels


def unit_of(module: str) -> str:
    """``hdmap_seg.vectorize.poles`` -> ``vectorize``; ``hdmap_seg.io`` -> ``io``."""
    return module.split(".")[1]


def package_imports() -> list[tuple[str, str, str]]:
    """``(file, importing unit, imported unit)`` for every import of hdmap_seg inside the package."""
    edges = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(REPO_ROOT)
        unit = rel.parts[1].removesuffix(".py")
        if unit == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
                if node.module == "hdmap_seg":
                    names = [f"hdmap_seg.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("hdmap_seg.") and unit_of(name) != unit:
                    edges.append((str(rel), unit, unit_of(name)))
    return edges


def test_the_diagram_names_every_module_and_subpackage():
    levels = stage_levels()
    units = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    units -= {"__init__", "__pycache__"}
    assert set(levels) == units


def test_every_import_points_to_a_lower_stage():
    levels = stage_levels()
    edges = package_imports()
    assert len(edges) > 50  # the walk found the package's imports
    upward = [
        f"{f}: {a} (level {levels[a]}) imports {b} (level {levels[b]})"
        for f, a, b in edges
        if levels[b] >= levels[a]
    ]
    assert not upward, "\n".join(upward)
