"""Small shared helpers: logging, the stage entry point and its one-line errors, disk-space checks and
process settings (malloc, dying with the parent)."""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mstagger.params import ParamsError

log = logging.getLogger("mstagger")


class UserError(RuntimeError):
    """An expected failure (missing file, bad checksum, bad input): printed as one line, no traceback."""


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a line is logged (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(stage: str) -> None:
    """Log INFO lines to stderr as ``<stage>: message``: the logger adds the stage's name."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter(f"{stage}: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


@contextmanager
def timed() -> Iterator[Callable[[], float]]:
    """Yield a function returning the seconds elapsed since entering the block."""
    start = time.perf_counter()
    yield lambda: round(time.perf_counter() - start, 3)


def describe_os_error(err: OSError) -> str:
    """One line for an operating-system error: what failed, on which file, and what to do."""
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f) or "a file"
    if err.errno in _DISK_FULL:
        return f"disk full while writing {where}; free some space and run again"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where}: {err.strerror}; make it writable or change its paths.* entry"
    return f"{err.strerror or err} ({where})"


def _stage_name(func: Callable[..., Any]) -> str:
    """The stage a ``main`` belongs to: its module's last name, also when run as ``python -m``."""
    module = func.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    return module.rsplit(".", 1)[-1]


def stage_main(func: Callable[[], Any]) -> Callable[[], None]:
    """Wrap a stage's ``main``: expected failures become one ``error: ...`` line and exit status 2; the
    stage runs under its lock (:func:`mstagger.core.locks.stage_lock`): a second start is refused."""

    @functools.wraps(func)
    def wrapper() -> None:
        from mstagger.core.locks import stage_lock

        setup_logging(_stage_name(func))
        try:
            with stage_lock(_stage_name(func)):
                func()
        except (ParamsError, UserError) as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as err:  # a read-only folder, a full disk, a file removed under our feet
            print(f"error: {describe_os_error(err)}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (``hashlib`` algorithm name), read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def human_size(n: float) -> str:
    """``n`` bytes as ``512 B``, ``3.1 MB``, ``4.2 GB`` (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@contextmanager
def disk_guard(folder: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn "no space left on device" into a one-line error naming the folder (and the size, if known)."""
    try:
        yield
    except OSError as err:
        if err.errno not in _DISK_FULL:
            raise
        need = f"; about {human_size(needed)} needed" if needed else ""
        raise UserError(
            f"disk full while writing into {folder}{need}; free some space and run again"
        ) from None


def check_free(folder: str | Path, needed: int) -> None:
    """Fail before writing when ``folder``'s file system cannot hold ``needed`` more bytes."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise UserError(
            f"not enough disk space in {folder}: {human_size(needed)} needed, {human_size(free)} free"
        )


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


def keep_freed_memory(mmap_threshold: int, trim_threshold: int) -> None:
    """Stop glibc's malloc from handing freed memory back to the OS, so big buffers are reused.

    With glibc's adaptive defaults, a block above a few MB is a fresh ``mmap`` each time it is
    allocated and returned to the OS when freed, so a loop that allocates the same big temporaries
    over and over page-faults them in again on every pass. Serving blocks up to ``mmap_threshold``
    bytes from the heap and keeping up to ``trim_threshold`` bytes free at its top avoids that. This
    process's setting; elsewhere than glibc (macOS, musl) nothing is changed.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    except (OSError, AttributeError):
        pass


_PR_SET_PDEATHSIG = 1  # prctl option, from linux/prctl.h


def die_with_parent() -> None:
    """Have the kernel kill this (worker) process when its parent dies (Linux; elsewhere nothing).

    A killed stage must not leave its worker processes running, holding memory and open files.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)
