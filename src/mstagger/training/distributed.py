"""Data-parallel training over several processes: torchrun's environment, the process group, the launch.

``torchrun --nproc_per_node=N -m mstagger.train`` starts N processes (one per GPU) that find each other
through the environment torchrun sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...).
``python -m mstagger.train`` with ``nproc_per_node: N`` > 1 (what ``dvc repro`` runs) starts that
command itself. NCCL joins processes on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mstagger.core.errors import UserError
from mstagger.core.locks import HELD_ENV
from mstagger.core.runtime import resolve_device
from mstagger.core.system import die_with_parent


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes (one process: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 logs, validates, checkpoints and writes the bundle."""
        return self.rank == 0


def world_from_env() -> World:
    """The :class:`World` torchrun describes in the environment (one process when it is unset)."""
    if "WORLD_SIZE" not in os.environ:
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))


def launched_by_torchrun() -> bool:
    """Whether this process is one of torchrun's."""
    return "LOCAL_RANK" in os.environ


def relaunch_under_torchrun(nproc: int, module: str) -> int:
    """Run ``torchrun --standalone --nproc_per_node=nproc -m module`` and return its exit status.

    The processes end with this one, however it ends. Killed (SIGKILL), the kernel sends torchrun
    SIGTERM and torchrun stops its trainers, which die besides when torchrun dies (:func:`setup`).
    Stopped (SIGTERM, Ctrl-C), this process kills torchrun and its trainers and waits until they are
    gone: a checkpoint is written whole or not at all, so nothing is lost that a graceful stop would
    keep. torchrun runs in its own process group, so a terminal's Ctrl-C reaches this process alone.
    The trainers run under this process's stage lock (:data:`mstagger.core.locks.HELD_ENV`).
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, HELD_ENV: str(os.getpid())}
    proc = subprocess.Popen(
        [*command, "-m", module], env=env, preexec_fn=_end_with(os.getpid()), start_new_session=True
    )
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            _kill_tree(proc)
            print("stopped: torchrun and the training processes have ended", file=sys.stderr)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _children(pid: int) -> set[int]:
    """The child processes of ``pid`` (Linux /proc; elsewhere none)."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found.update(int(c) for c in f.read().split())
    return found


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and its children, and wait until all of them are gone (10 s at most)."""
    trainers = _children(proc.pid)
    proc.kill()
    proc.wait()
    for pid in trainers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in trainers):
        time.sleep(0.02)  # reaped by init once their parent is gone


def _end_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM when ``parent`` dies (Linux; elsewhere nothing)."""

    try:  # looked up before the fork: the child only calls it
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        prctl = None

    def set_death_signal() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return set_death_signal


_PR_SET_PDEATHSIG = 1  # prctl option, from linux/prctl.h


def setup(world: World, device_name: str) -> torch.device:
    """Pick this process's device and, with several processes, join the process group; a process of
    torchrun's ends when torchrun ends.

    Args:
        world: from :func:`world_from_env`.
        device_name: the ``device`` param; with several processes on CUDA each takes ``cuda:LOCAL_RANK``.

    Raises:
        UserError: several processes asked for on one explicitly named GPU, or fewer GPUs than processes.
    """
    if launched_by_torchrun():
        die_with_parent()  # a trainer ends when torchrun does, even killed
    device = resolve_device(device_name)
    if world.size == 1:
        return device
    if device.type == "cuda":
        if device_name.startswith("cuda:"):
            raise UserError(
                f"params: device: {device_name!r} names one GPU but {world.size} processes train; "
                "use auto or cuda"
            )
        if world.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"params: nproc_per_node: process {world.local_rank} has no GPU "
                f"({torch.cuda.device_count()} on this machine); lower nproc_per_node"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def teardown(world: World) -> None:
    """Leave the process group (with several processes)."""
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def sum_over_processes(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over all processes (itself with one process)."""
    if world.size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj: Any, world: World) -> list[Any]:
    """``obj`` of every process, by rank."""
    if world.size == 1:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's ``obj``, on every process."""
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    """Wait until every process is here."""
    if world.size > 1:
        dist.barrier()
