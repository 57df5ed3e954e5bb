"""Where the code runs: the torch device a name asks for, and the git revision a model is trained at."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from mstagger.core.errors import UserError

if TYPE_CHECKING:
    import torch


def git_revision(cwd: str | Path = ".") -> str:
    """The current git commit (with ``-dirty`` when the work tree has changes), or ``unknown``."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}-dirty" if dirty else rev


def resolve_device(name: str, source: str = "params: device") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cpu``, ``cuda`` or ``cuda:N`` as given.

    Args:
        name: the device name.
        source: names where the value came from in errors (the param, or a CLI flag).

    Raises:
        UserError: an unknown name, or CUDA asked for where there is none.
    """
    import torch  # here: importing this module stays light

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise UserError(f"{source}: must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"{source}: {name!r} asked for, but PyTorch sees no CUDA device; use auto or cpu")
        index = int(name[5:] or 0)
        if index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise UserError(f"{source}: {name!r} asked for, but only {count} GPU(s) exist")
    return torch.device(name)
