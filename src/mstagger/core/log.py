"""Logging (``<stage>: message`` on stderr) and the stage entry point that ends expected failures
with one line (:func:`mstagger.core.errors.exit_status`)."""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from mstagger.core.errors import guarded
from mstagger.core.locks import stage_lock

log = logging.getLogger("mstagger")


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
        stage = _stage_name(func)
        setup_logging(stage)
        status = guarded(_locked)(stage, func)
        if isinstance(status, int):
            raise SystemExit(status)

    return wrapper


def _locked(stage: str, func: Callable[[], Any]) -> Any:
    with stage_lock(stage):
        return func()
