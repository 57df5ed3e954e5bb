"""Files and disk space: digests, human-readable sizes, and a full disk as a one-line error."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mstagger.core.errors import DISK_FULL, UserError


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
        if err.errno not in DISK_FULL:
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
