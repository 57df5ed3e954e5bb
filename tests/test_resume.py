"""Resume after a crash: real training processes are killed (SIGKILL) and the next run continues.

On the CPU a resumed run must end with exactly the weights and curves of a run that was never stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from helpers import tiny_train_data, write_params, write_train_inputs
from mstagger.training import checkpoint

EPOCHS = 8
TRAIN = {"epochs": EPOCHS, "batch_size": 8, "lr_milestones": [4], "precision": "bf16", "device": "cpu"}
CHECKPOINT = Path(".cache/train/checkpoint.pt")
CURVES = ("train/loss.tsv", "val/loss.tsv", "val/roc_auc.tsv", "val/pr_auc.tsv", "lr.tsv")


def make_project(root: Path, **overrides) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_train_inputs(root, tiny_train_data(n=208))
    write_params(root, **{**TRAIN, **overrides})
    return root


def start(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mstagger.train"]
    return subprocess.Popen(
        cmd, cwd=root, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )


def finish(root: Path) -> str:
    proc = start(root)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return err


def kill_after(root: Path, marker: str, delay: float) -> str:
    """Start training, SIGKILL it ``delay`` seconds after a stderr line containing ``marker``."""
    proc = start(root)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    return "".join(seen)


def results(root: Path) -> tuple[dict, dict, dict]:
    """Bundle weights, dvclive metrics.json and the curves' (step, value) columns of a finished run."""
    weights = torch.load(root / "models/model.pt", weights_only=True)["state_dict"]
    metrics = json.loads((root / "metrics/train/metrics.json").read_text())
    curves = {}
    for name in CURVES:
        frame = pd.read_csv(root / "metrics/train/plots/metrics" / name, sep="\t")
        curves[name] = frame.to_dict("list")
    return weights, metrics, curves


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, dict, dict]:
    root = make_project(tmp_path_factory.mktemp("uninterrupted"))
    finish(root)
    assert not (root / CHECKPOINT).exists()  # a finished run leaves none behind
    return results(root)


@pytest.mark.parametrize(
    ("marker", "delay"),
    [("epoch  2 ", 0.0), ("epoch  4 ", 0.02), ("epoch  6 ", 0.2), ("train / ", 0.0)],
    ids=["after-epoch-2", "in-the-checkpoint-write-of-epoch-4", "during-epoch-7", "before-epoch-1"],
)
def test_a_killed_run_resumes_to_exactly_the_uninterrupted_result(tmp_path, reference, marker, delay):
    root = make_project(tmp_path / "p")
    kill_after(root, marker, delay)
    assert not (root / "models/model.pt").exists()  # no half-trained bundle for predict to pick up
    ckpt = root / CHECKPOINT
    done = torch.load(ckpt, weights_only=True)["epoch"] if ckpt.exists() else 0
    # dvc repro deletes the stage's outputs before running it again: do the same
    shutil.rmtree(root / "metrics/train", ignore_errors=True)
    log = finish(root)
    if done:
        assert f"resuming from {CHECKPOINT} after epoch {done} of {EPOCHS}" in log
    assert f"epoch {done + 1:2d} " in log and f"epoch {done:2d} " not in log.split("resuming")[-1]
    weights, metrics, curves = results(root)
    ref_weights, ref_metrics, ref_curves = reference
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights)
    assert metrics == ref_metrics
    assert curves == ref_curves
    assert not (root / CHECKPOINT).exists()


def test_a_checkpoint_of_other_params_is_set_aside_not_resumed(tmp_path):
    root = make_project(tmp_path / "p")
    kill_after(root, "epoch  3 ", 0.0)
    assert (root / CHECKPOINT).exists()
    params = yaml.safe_load((root / "params.yaml").read_text())
    write_params(root, **{**TRAIN, "lr": params["lr"] / 2})
    log = finish(root)
    assert "was written with other params or other inputs; not resuming from it" in log
    assert "resuming" not in log.replace("not resuming", "")
    assert (root / ".cache/train/checkpoint.pt.set-aside").is_file()  # kept, not deleted
    steps = pd.read_csv(root / "metrics/train/plots/metrics/val/loss.tsv", sep="\t")["step"].tolist()
    assert steps == list(range(EPOCHS))  # all epochs trained afresh


def test_a_kill_in_the_middle_of_a_checkpoint_write_leaves_a_whole_checkpoint(tmp_path):
    """``checkpoint.save`` is atomic: whenever the writer dies, the file on disk is the old or the new one."""
    path = tmp_path / "ckpt.pt"
    writer = (
        "import sys, torch\n"
        "from mstagger.training import checkpoint\n"
        "print('imported', flush=True)\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    state = {'fingerprint': 'f', 'epoch': i, 'w': torch.full((4_000_000,), i)}\n"
        "    checkpoint.save(sys.argv[1], state)\n"
    )
    rng = np.random.default_rng(0)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", writer, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "imported\n"  # however long the imports take on a busy machine
        while not path.exists():  # one whole checkpoint to compare with
            time.sleep(0.01)
        time.sleep(0.2 + rng.random())  # somewhere in a later write (one takes about 0.1 s)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = checkpoint.load(path, expected="f")
        assert state is not None and torch.all(state["w"] == state["epoch"])
    checkpoint.remove(path)
    assert list(tmp_path.iterdir()) == []  # the leftovers of the killed writes go too
