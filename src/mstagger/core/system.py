"""Process settings through libc: malloc's thresholds, and dying with the parent process (Linux)."""

from __future__ import annotations

import ctypes
import os
import signal

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
