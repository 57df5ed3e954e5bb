"""One writer at a time: an exclusive lock on a file or a stage that a second writer is refused by.

:func:`exclusive` takes ``flock`` on a lock file beside what is written. The kernel drops the lock when
the holder's last descriptor closes, so a killed holder (SIGKILL, OOM) never leaves a lock that blocks
the next run; the lock file it leaves is taken over. A holder removes its lock file when it is done.
:func:`stage_lock` holds the lock of a pipeline stage in its repository.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from mstagger.core.errors import UserError

# Set by a stage that relaunches itself (train under torchrun): its children run under its lock.
HELD_ENV = "MSTAGGER_STAGE_LOCK_HELD"


class Busy(UserError):
    """Another process holds the lock."""


def _holder(fd: int) -> str:
    """The holder's pid as it wrote it into the lock file ("" when unknown)."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip() or "x")
        return f" (pid {pid})"
    return ""


@contextlib.contextmanager
def exclusive(lock_file: str | Path, busy: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``lock_file`` (created if missing) for the ``with`` block.

    Args:
        lock_file: the lock file; its folder must exist.
        busy: the error message when another process holds it; `` (pid N)`` is added after its first
            clause (before the first ``;``).

    Raises:
        Busy: another process holds the lock.
        OSError: the lock file cannot be created (read-only folder, no permission).
    """
    lock_file = Path(lock_file)
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _holder(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            head, sep, tail = busy.partition(";")
            raise Busy(f"{head}{holder}{sep}{tail}") from None
        # The holder before us may have removed the file between our open and our lock: then we hold
        # a lock on a file nobody else will ever open. Lock the file that is there now instead.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_file))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock_file
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_file)  # while still holding it: a waiting opener then retries on a new file
        os.close(fd)


# Stage locks live beside the other state kept out of the stages' outputs (downloads, checkpoints).
STAGE_LOCKS = Path(".cache") / "locks"


def stage_lock(stage: str) -> contextlib.AbstractContextManager:
    """The lock of ``stage`` in this repository (``.cache/locks/<stage>.lock`` below the folder the
    stages run in, the repository root), held while it runs.

    Under torchrun only rank 0 takes it, and none does when the stage relaunched itself holding it
    already.

    Raises:
        Busy: the stage is already running here (``python -m mstagger.<stage>`` started twice).
    """
    if os.environ.get(HELD_ENV) or os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    STAGE_LOCKS.mkdir(parents=True, exist_ok=True)
    return exclusive(
        STAGE_LOCKS / f"{stage}.lock",
        f"the {stage} stage is already running in this repository; wait for it to end (or stop it) "
        "before starting it again",
    )
