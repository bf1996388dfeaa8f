"""User-facing errors and the one place that turns them into a clean exit."""

from __future__ import annotations

import errno
import functools
import os
import select
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

R = TypeVar("R")

#: Exit status of a command that stopped on a user mistake (bad file, bad option).
USER_ERROR_EXIT = 2

#: Exit status when the reader of stdout went away (``| head``): what SIGPIPE's default action gives.
BROKEN_PIPE_EXIT = 128 + 13

#: errno values of a full disk or an exhausted quota: the user's to fix, not our bug.
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class HdmapError(Exception):
    """A mistake in the user's input: a bad file, a missing key, an inconsistent option.

    The message names the file and what is wrong; command-line entry points print it
    without a traceback and exit with status 2.
    """


def _is_wrapper(err: BaseException) -> bool:
    """Exceptions that only wrap the error that happened inside them (Hydra's ``instantiate``)."""
    from hydra.errors import InstantiationException

    return isinstance(err, InstantiationException)


def _chain(err: BaseException):
    """``err`` and the errors it was raised from: every ``__cause__`` (``raise ... from``), and the
    ``__context__`` of known wrappers. Not the context of any other error: an exception raised while
    handling a user error may well be a bug, which must not pass for the user's mistake."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        nxt = err.__cause__
        if nxt is None and _is_wrapper(err) and not err.__suppress_context__:
            nxt = err.__context__
        err = nxt


def _worker_original(message: str, type_name: str) -> str | None:
    """The original message of an error that torch re-raised from a DataLoader worker.

    torch (``torch._utils.ExceptionWrapper.reraise``) re-raises ``Caught <Type> in DataLoader worker
    process N.\\nOriginal Traceback ...`` with the whole formatted traceback; its last entry is
    ``<module>.<Type>: <original message>``. None if ``message`` is not such a message.
    """
    if not message.startswith("Caught ") or "\nOriginal Traceback" not in message:
        return None
    marker = f"\n{type_name}: "
    at = message.rfind(marker)
    return message[at + len(marker) :].strip() if at >= 0 else None


def _hdmap_message(err: BaseException) -> str | None:
    """The one-line message of the :class:`HdmapError` in ``err``'s chain, if there is one."""
    qualified = f"{HdmapError.__module__}.{HdmapError.__qualname__}"
    for e in _chain(err):
        if isinstance(e, HdmapError):
            message = str(e)
            own = f"{type(e).__module__}.{type(e).__qualname__}"
            return _worker_original(message, own) or message
        # torch re-raises a worker's error as RuntimeError when it cannot rebuild the original type.
        original = _worker_original(str(e), qualified)
        if original is not None and str(e).startswith("Caught HdmapError "):
            return original
    return None


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def free_space_of(path: str | os.PathLike) -> str:
    """``"12.3 MiB free"`` on the file system of ``path`` (or of its nearest existing folder)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return f"{_human_bytes(shutil.disk_usage(probe).free)} free"
    except OSError:
        return "free space unknown"


def _no_space_message(err: BaseException) -> str | None:
    """One line for an ``OSError`` of a full disk or quota (anywhere in ``err``'s chain)."""
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
            what = "disk quota exceeded" if e.errno == errno.EDQUOT else "no space left on the device"
            if e.filename:
                return f"{e.filename}: {what} ({free_space_of(e.filename)} on its file system)"
            return f"{what} ({e.strerror or os.strerror(e.errno)}); free some space and run again"
    return None


def user_error_message(err: BaseException) -> str | None:
    """The one line to show for ``err`` if it is the user's to fix (an :class:`HdmapError`, also one
    wrapped by Hydra or re-raised from a DataLoader worker; a full disk), else None (a bug)."""
    return _hdmap_message(err) or _no_space_message(err)


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end was closed (``hdmap-... | head`` once head exits)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), stdout replaced or closed
        return False


def exit_on_user_error(main: Callable[..., R]) -> Callable[..., R]:
    """Decorate a command's ``main`` so that a user error prints one line ``error: ...`` and exits 2.

    User errors: :class:`HdmapError` (also wrapped by Hydra's ``instantiate`` or re-raised from a
    DataLoader worker) and a full disk or quota (``OSError`` ENOSPC / EDQUOT). Anything else is a bug
    and keeps its traceback. A reader of stdout that stops early (``| head``) ends the command quietly
    with :data:`BROKEN_PIPE_EXIT`, as it ends ``cat``; a broken pipe elsewhere (a DataLoader worker's)
    is still a bug.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            result = main(*args, **kwargs)
            sys.stdout.flush()  # a closed reader shows here, not in Python's flush at exit
            return result
        except BrokenPipeError:
            if not stdout_reader_gone():
                raise
            # Python would try to flush stdout again at exit and print that it failed.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(BROKEN_PIPE_EXIT) from None
        except Exception as err:
            message = user_error_message(err)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(USER_ERROR_EXIT) from None

    return wrapper
