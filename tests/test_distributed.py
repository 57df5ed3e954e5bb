"""Data-parallel training: two gloo processes on the CPU, launched the way `dvc repro` launches them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from helpers import tiny_train_data, wait_until, write_params, write_train_inputs

TRAIN = {"epochs": 2, "batch_size": 8, "lr_milestones": [1], "precision": "fp32", "device": "cpu"}
HERE = Path(__file__).resolve().parent


def project(root: Path, **overrides) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_train_inputs(root, tiny_train_data(n=112))
    write_params(root, **{**TRAIN, **overrides})
    return root


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def curves(root: Path) -> dict[str, list[float]]:
    import pandas as pd

    out = {}
    for name in ("train/loss", "val/loss", "val/roc_auc"):
        frame = pd.read_csv(root / f"metrics/train/plots/metrics/{name}.tsv", sep="\t")
        out[name] = frame.iloc[:, -1].tolist()
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    root = project(tmp_path_factory.mktemp("one"))
    run([sys.executable, "-m", "mstagger.train"], root)
    return root


def test_nproc_per_node_2_trains_on_two_processes_with_one_bundle(tmp_path, one_process):
    root = project(tmp_path / "two", nproc_per_node=2)
    result = run([sys.executable, "-m", "mstagger.train"], root)  # what `dvc repro train` runs
    log = result.stderr
    assert "starting 2 processes with torchrun" in log
    assert "cpu x 2" in log  # the training log names the device and the process count
    assert log.count("kept epoch") == 1  # rank 0 alone reports
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.pt")) == ["models/model.pt"]
    # Per-process BatchNorm on the CPU (each normalises over its 4 clips, not the batch of 8) and
    # other dropout masks change the numbers: the training loss (measured in train mode, over those
    # 4-clip statistics) within 0.15 of the one-process run's, the validation loss within 0.1 and the
    # validation ROC-AUC within 0.05. Seeds 1337, 7 and 11 of the one-process run spread as widely
    # (train loss 0.23-0.28, validation loss 0.16-0.25 after 2 epochs).
    two, one = curves(root), curves(one_process)
    for name, tolerance in (("train/loss", 0.15), ("val/loss", 0.1), ("val/roc_auc", 0.05)):
        assert len(two[name]) == len(one[name]) == 2
        for a, b in zip(two[name], one[name], strict=True):
            assert abs(a - b) <= tolerance, (name, two[name], one[name])


def test_the_weights_are_identical_on_both_processes_after_every_step(tmp_path):
    root = project(tmp_path / "probe")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run([*cmd, str(HERE / "ddp_probe.py"), str(root / "digests")], root)
    rank0 = (root / "digests/rank0.txt").read_text().split()
    rank1 = (root / "digests/rank1.txt").read_text().split()
    steps_per_epoch = (112 - 16) // 8
    assert len(rank0) == 2 * steps_per_epoch
    assert rank0 == rank1
    assert len(set(rank0)) == len(rank0)  # the weights did change at every step
    assert torch.load(root / "models/model.pt", weights_only=True)["format"].startswith("mstagger-bundle")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_stopped_two_process_training_leaves_no_process_behind(tmp_path, sig):
    """Killing the stage (what `dvc repro` started) ends torchrun and both trainers, and none of them
    goes on to write the bundle after the stage has failed."""
    root = project(tmp_path / "two", nproc_per_node=2, epochs=200)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (tmp_path / "log").open("w") as log:
        stage = psutil.Popen(
            [sys.executable, "-m", "mstagger.train"], cwd=root, env=env, stdout=log, stderr=log
        )
    try:
        family: set[psutil.Process] = set()

        def trainers_running() -> bool:
            family.update(stage.children(recursive=True))
            return sum("mstagger.train" in " ".join(p.cmdline()) for p in family if p.is_running()) >= 3

        wait_until(trainers_running, 120, "torchrun and two trainers")
        wait_until(lambda: (root / "metrics" / "train").is_dir(), 120, "training to start")
        stage.send_signal(sig)
        stage.wait(timeout=60)
        _, alive = psutil.wait_procs(family, timeout=60)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        for p in [stage, *family]:
            with contextlib.suppress(psutil.Error):
                p.kill()
    assert not (root / "models" / "model.pt").exists()
    if sig == signal.SIGTERM:
        assert stage.returncode == 128 + signal.SIGTERM
        assert "Traceback" not in (tmp_path / "log").read_text()


def test_a_killed_streaming_training_leaves_no_dataloader_worker_behind(tmp_path):
    """With ``num_workers: 2`` the stage streams batches through DataLoader worker processes; SIGKILL
    to the stage must not leave them running (PyTorch's workers watch their parent and exit)."""
    root = tmp_path / "project"
    root.mkdir()
    write_train_inputs(root, tiny_train_data(n=112))
    write_params(
        root, epochs=200, batch_size=8, lr_milestones=[1], precision="fp32", device="cpu",
        data_on_device=False, num_workers=2,
    )  # fmt: skip
    stage = psutil.Popen(
        [sys.executable, "-m", "mstagger.train"],
        cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[psutil.Process] = []
    try:

        def loaders_running() -> bool:
            with contextlib.suppress(psutil.Error):
                workers[:] = stage.children(recursive=True)
            return len(workers) >= 2

        wait_until(loaders_running, 120, "two DataLoader workers")
        stage.kill()
        stage.wait(timeout=30)
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, [p.pid for p in alive]
    finally:
        for p in [stage, *workers]:
            with contextlib.suppress(psutil.Error):
                p.kill()
