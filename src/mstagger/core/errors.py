"""Expected failures and how each one ends a stage or a command: one ``error: ...`` line and a status.

Every entry point (a pipeline stage's ``main`` through :func:`mstagger.core.log.stage_main`, every
``mstagger`` subcommand through :func:`mstagger.commands.main.main`) maps exceptions to exit statuses
with :func:`exit_status`, so the same failure reads and exits the same way everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec

P = ParamSpec("P")


class UserError(RuntimeError):
    """An expected failure (missing file, bad checksum, bad input): printed as one line, no traceback."""


class Interrupted(Exception):
    """A Ctrl-C that a command caught to say what it kept: printed as its message, exit status 130."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# Errors of a write to standard output (an OSError without a file name): the reader went away, the
# disk it redirects to is full, or a file-size limit.
OUTPUT_ERRORS = (errno.EPIPE, errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def describe_os_error(err: OSError) -> str:
    """One line for an operating-system error: what failed, on which file, and what to do."""
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f) or "a file"
    if err.errno in DISK_FULL:
        return f"disk full while writing {where}; free some space and run again"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where}: {err.strerror}; make it writable or change its paths.* entry"
    return f"{err.strerror or err} ({where})"


def output_error(err: BaseException) -> str | None:
    """The reason, when ``err`` is a write to standard output that failed (an ``OSError`` without a file
    name: the reader went away, a full disk); None otherwise. Standard output then goes to
    ``/dev/null``, so that nothing fails again at exit."""
    if not (isinstance(err, OSError) and err.filename is None and err.errno in OUTPUT_ERRORS):
        return None
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if isinstance(err, BrokenPipeError):
        return "the output was closed (broken pipe)"
    return f"cannot write the output: {err.strerror}"


def exit_status(err: BaseException) -> int | None:
    """Print the one line an expected failure gets and return its exit status; None: not expected.

    - :class:`UserError` (a bad file, flag or parameter: ``ParamsError`` is one): ``error: ...``, 2;
    - standard output that fails (the reader went away: ``mstagger info | head``; a full disk;
      ``/dev/full``): one line, 2;
    - any other ``OSError`` (a read-only folder, a full disk, a file removed under our feet): 2;
    - ``KeyboardInterrupt`` or :class:`Interrupted`: ``interrupted`` (or what was kept), 130.
    """
    if isinstance(err, UserError):
        print(f"error: {err}", file=sys.stderr)
        return 2
    if (reason := output_error(err)) is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    if isinstance(err, OSError):
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    if isinstance(err, KeyboardInterrupt | Interrupted):
        print(str(err) or "interrupted", file=sys.stderr)
        return 130
    return None


def guarded(func: Callable[P, int]) -> Callable[P, int]:
    """Wrap an entry point: an expected failure returns its :func:`exit_status` instead of raising."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return func(*args, **kwargs)
        except (Exception, KeyboardInterrupt) as err:
            status = exit_status(err)
            if status is None:
                raise
            return status

    return wrapper
