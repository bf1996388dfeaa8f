"""File I/O shared by every stage: atomic output (a reader never sees a half-written file, a crash
never leaves one) and YAML mappings read with errors that name the file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from hdmap_seg.errors import HdmapError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file keeps ``path``'s suffix, so writers that pick a format from the
    suffix (OpenCV, pyogrio) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); outputs are for map builders, so give them the
        # permissions an ordinary write would (0666 less the umask).
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict:
    """Read a YAML file that must hold a mapping; clear errors name the file and ``what`` it should be."""
    path = Path(path)
    if not path.is_file():
        raise HdmapError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise HdmapError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise HdmapError(f"{path}: expected a mapping ({what})")
    return data
