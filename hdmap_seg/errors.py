"""User-facing errors and the one place that turns them into a clean exit."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

R = TypeVar("R")

#: Exit status of a command that stopped on a user mistake (bad file, bad option).
USER_ERROR_EXIT = 2


class HdmapError(Exception):
    """A mistake in the user's input: a bad file, a missing key, an inconsistent option.

    The message names the file and what is wrong; command-line entry points print it
    without a traceback and exit with status 2.
    """


def exit_on_user_error(main: Callable[..., R]) -> Callable[..., R]:
    """Decorate a command's ``main`` so that an :class:`HdmapError` prints one line and exits 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except HdmapError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(USER_ERROR_EXIT) from None

    return wrapper
