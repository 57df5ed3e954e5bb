"""Small shared helpers: atomic writes, stage summaries, logging and the stage entry point."""

from __future__ import annotations

import functools
import json
import logging
import os
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


def setup_logging() -> None:
    """Log INFO lines to stderr as ``stage: message``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)


@contextmanager
def timed() -> Iterator[Callable[[], float]]:
    """Yield a function returning the seconds elapsed since entering the block."""
    start = time.perf_counter()
    yield lambda: round(time.perf_counter() - start, 3)


def stage_main(func: Callable[[], Any]) -> Callable[[], None]:
    """Wrap a stage's ``main``: expected failures become one ``error: ...`` line and exit status 2."""

    @functools.wraps(func)
    def wrapper() -> None:
        setup_logging()
        try:
            func()
        except (ParamsError, UserError) as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
