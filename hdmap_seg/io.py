"""File I/O shared by every stage: atomic output (a reader never sees a half-written file, a crash
never leaves one, a full disk never publishes one), an exclusive lock on an output folder, and text
and YAML mappings read with errors that name the file. Images are read and written through
:mod:`hdmap_seg.imageio`, which publishes them with :func:`write_bytes_atomic`."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from hdmap_seg.errors import NO_SPACE_ERRNOS, HdmapError, free_space_of

#: The name every temporary file of :func:`atomic_path` carries, so that a rerun can find the ones
#: a killed process left behind (:func:`remove_stale_temps`).
TEMP_MARK = ".tmp"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _disk_is_full(path: Path) -> bool:
    """Whether ``path``'s file system has no room left: libraries (pyogrio, matplotlib) report a full
    disk with their own errors, which do not carry ENOSPC."""
    try:
        return shutil.disk_usage(path.parent).free < 2**16
    except OSError:
        return False


def disk_full_error(path: str | os.PathLike) -> HdmapError:
    """The one-line error of a write that ran out of space."""
    return HdmapError(
        f"{path}: no space left on the device ({free_space_of(path)}); nothing was written there"
    )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; publish it as ``path`` only if the block succeeds.

    The temporary file keeps ``path``'s suffix, so writers that pick a format from the suffix
    (pyogrio, matplotlib) still work. Before the rename the file is fsynced: a write that
    the disk could not hold fails here, not later under the final name. Running out of space
    anywhere in the block is an :class:`HdmapError` naming ``path`` and the free space.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.stem}.", suffix=f"{TEMP_MARK}{path.suffix}", dir=path.parent
        )
    except OSError as err:
        raise _user_error(err, path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); outputs are for map builders, so give them the
        # permissions an ordinary write would (0666 less the umask).
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        _fsync(tmp_path)
        os.replace(tmp_path, path)
    except HdmapError:
        raise
    except Exception as err:
        if getattr(err, "errno", None) in NO_SPACE_ERRNOS or _disk_is_full(path):
            raise disk_full_error(path) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def _user_error(err: OSError, path: Path) -> HdmapError | OSError:
    """A folder we cannot create or write into is the user's to fix; anything else stays an OSError."""
    if err.errno in NO_SPACE_ERRNOS:
        return disk_full_error(path)
    if isinstance(err, FileExistsError | NotADirectoryError):
        return HdmapError(
            f"{path}: cannot write here, a file stands where a folder is needed ({err.strerror})"
        )
    if isinstance(err, PermissionError):
        return HdmapError(f"{path}: cannot write here ({err.strerror})")
    return err


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; the write is checked to have reached the disk."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete the temporary files that killed writers left directly in ``folder``; returns how many.

    Only call this while holding the folder's lock (:func:`exclusive_lock`): a live writer's
    temporary file looks the same.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.glob(f".*{TEMP_MARK}*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


@contextlib.contextmanager
def exclusive_lock(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold ``folder/.lock`` for the block, so that a second ``command`` writing there stops at once.

    An advisory ``flock``: the kernel drops it when the holder exits, even on ``kill -9``, so a rerun
    after a crash never finds a stale lock. (On network file systems ``flock`` may not be shared
    between machines; give each machine its own output folder there.)
    """
    folder = Path(folder)
    lock_path = folder / ".lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    except OSError as err:
        raise _user_error(err, lock_path) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise HdmapError(
                f"{folder}: another {command} is writing here ({holder}); wait for it or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield lock_path
    finally:
        os.close(fd)  # releases the lock


def read_text(path: str | os.PathLike, what: str) -> str:
    """A text file's contents; one clear line for a file that is missing, unreadable or not UTF-8 text."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HdmapError(f"{path}: {what} not found") from None
    except OSError as err:
        raise HdmapError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HdmapError(
            f"{path}: not a text file (byte 0x{data[err.start]:02x} at offset {err.start} is not UTF-8)"
        ) from None


def yaml_error(path: str | os.PathLike, err: yaml.YAMLError) -> str:
    """YAML's error in one line, ``path:line: not valid YAML (problem)`` (its own messages run to five)."""
    mark = getattr(err, "problem_mark", None)
    line = f":{mark.line + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or type(err).__name__
    return f"{path}{line}: not valid YAML ({' '.join(str(problem).split())})"


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict:
    """Read a YAML file that must hold a mapping; one clear line naming the file and ``what`` it should be."""
    path = Path(path)
    text = read_text(path, what)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise HdmapError(yaml_error(path, err)) from None
    except (ValueError, OverflowError, RecursionError) as err:  # a value YAML's own types reject (a month 13)
        raise HdmapError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise HdmapError(f"{path}: expected a mapping ({what})")
    return data
