"""Small shared helpers: atomic writes, stage summaries, logging and the stage entry point."""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mstagger.params import ParamsError

log = logging.getLogger("mstagger")


class UserError(RuntimeError):
    """An expected failure (missing file, bad checksum, bad input): printed as one line, no traceback."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def setup_logging(stage: str) -> None:
    """Log INFO lines to stderr as ``<stage>: message``: the logger adds the stage's name."""
    logging.basicConfig(level=logging.INFO, format=f"{stage}: %(message)s", stream=sys.stderr, force=True)


@contextmanager
def timed() -> Iterator[Callable[[], float]]:
    """Yield a function returning the seconds elapsed since entering the block."""
    start = time.perf_counter()
    yield lambda: round(time.perf_counter() - start, 3)


def _stage_name(func: Callable[..., Any]) -> str:
    """The stage a ``main`` belongs to: its module's last name, also when run as ``python -m``."""
    module = func.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    return module.rsplit(".", 1)[-1]


def stage_main(func: Callable[[], Any]) -> Callable[[], None]:
    """Wrap a stage's ``main``: expected failures become one ``error: ...`` line and exit status 2."""

    @functools.wraps(func)
    def wrapper() -> None:
        setup_logging(_stage_name(func))
        try:
            func()
        except (ParamsError, UserError) as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
