"""What every benchmark shares: a description of the machine, and writing its results file whole.

The benchmarks run as scripts (``python bench/<name>.py``), so ``bench/`` is on ``sys.path`` and they
import this module as ``common``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from mstagger.core.outputs import write_json


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def machine() -> dict[str, Any]:
    """CPUs, CPU model, Python and platform: what a result file says about where it was measured."""
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_results(path: str | Path, doc: dict[str, Any]) -> None:
    """Write a benchmark's figures as JSON, atomically (a killed run leaves the previous file)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, doc)


def failure(err: BaseException) -> str:
    """One line for a results file: the exception's type and the first line of its message."""
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
