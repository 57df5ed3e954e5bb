"""One writer at a time: a second run of a stage is refused with one line while the first runs, and a
killed run leaves no lock behind. (``predict --csv``'s lock: tests/test_predict_faults.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import tiny_train_data, wait_until, write_params, write_train_inputs
from mstagger.core.locks import Busy, exclusive

TRAIN = {"epochs": 200, "batch_size": 8, "lr_milestones": [1], "precision": "fp32", "device": "cpu"}


def holder(lock: Path) -> str:
    try:
        return lock.read_text().strip()
    except FileNotFoundError:
        return ""


def test_a_second_train_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    write_train_inputs(root, tiny_train_data(n=112))
    write_params(root, **TRAIN)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = [sys.executable, "-m", "mstagger.train"]
    lock = root / ".cache" / "locks" / "train.lock"
    first = subprocess.Popen(train, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    third = None
    try:
        wait_until(lambda: holder(lock) == str(first.pid), 120, "the first run to take the lock")
        second = subprocess.run(train, cwd=root, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr == (
            f"error: the train stage is already running in this repository (pid {first.pid}); wait for "
            "it to end (or stop it) before starting it again\n"
        )
        assert first.poll() is None  # the first run goes on
        first.kill()  # SIGKILL: the kernel drops its lock; the file stays
        first.wait()
        assert lock.exists()
        third = subprocess.Popen(
            train, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: holder(lock) == str(third.pid), 120, "a new run to take the killed run's lock")
        third.terminate()
        third.wait(timeout=60)
    finally:
        for proc in (first, third):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_lock_file_is_removed_after_use_and_a_held_lock_refuses(tmp_path):
    lock = tmp_path / ".x.lock"
    with exclusive(lock, "x is busy; try later"):
        assert lock.read_text() == f"{os.getpid()}\n"
        # another open file description of the same file (as another process has) is refused
        code = "from mstagger.core.locks import exclusive\n"
        code += f"with exclusive({str(lock)!r}, 'x is busy; try later'): pass"
        child = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert child.returncode == 1
        assert f"Busy: x is busy (pid {os.getpid()}); try later" in child.stderr
    assert not lock.exists()
    with exclusive(lock, "x is busy"), pytest.raises(Busy), exclusive(lock, "x is busy"):
        pass  # the same process twice: also refused
