"""The real `dvc repro` end to end on a tiny configuration, in a temporary git repo.

One module-scoped run feeds the tests: a second repro runs nothing, the data round-trips through a
local DVC remote into a fresh clone, and `dvc exp run -S lr=...` / `dvc exp show` work.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import make_pipeline_repo, sh

STAGES = ["check_params", "download", "extract", "prepare", "train", "evaluate"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make_pipeline_repo(tmp_path_factory.mktemp("pipeline"))


def test_repro_runs_every_stage_and_writes_the_artifacts(repo):
    log = (repo / "repro.log").read_text()
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log
    mel = np.load(repo / "data/features/mel.npy", mmap_mode="r")
    labels = np.load(repo / "data/prepared/labels.npy")
    assert mel.dtype == np.float16 and mel.shape[1:] == (32, 131)
    assert labels.shape == (len(mel), 5)
    skipped = (repo / "data/features/skipped.csv").read_text().splitlines()
    assert len(skipped) == 1 + 2  # header + the demo's empty and truncated clips
    test = json.loads((repo / "metrics/test.json").read_text())
    assert {"roc_auc", "pr_auc", "n_clips", "n_tags_scored"} <= set(test)
    assert test["n_clips"] == 3
    assert (repo / "models/model.pt").is_file()
    assert (repo / "metrics/train/metrics.json").is_file()
    assert (repo / "dvc.lock").is_file()


def test_second_repro_runs_nothing(repo):
    result = sh(["dvc", "repro"], repo)
    assert "Running stage" not in result.stdout + result.stderr
    assert sh(["dvc", "status"], repo).stdout.strip() in ("", "Data and pipelines are up to date.")


def test_a_forced_rerun_with_identical_output_stops_the_cascade(repo):
    # The demo is byte-identical for a seed and the stage's summary (with its seconds) lives in
    # metrics/download.json, not in data/raw, so re-running download changes nothing downstream.
    before = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    sh(["dvc", "repro", "-f", "-s", "download"], repo)
    assert "up to date" in sh(["dvc", "status"], repo).stdout
    after = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert after["download"]["outs"][0] == before["download"]["outs"][0]  # data/raw hashes the same
    assert {k: v for k, v in after.items() if k != "download"} == {
        k: v for k, v in before.items() if k != "download"
    }
    sh(["git", "checkout", "--", "dvc.lock", "metrics"], repo)


def test_push_then_pull_into_a_fresh_clone_restores_everything(repo, tmp_path):
    remote = tmp_path / "remote"
    sh(["dvc", "remote", "add", "-f", "-d", "local", str(remote)], repo)
    sh(["dvc", "push"], repo)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    sh(["dvc", "remote", "add", "-f", "-d", "local", str(remote)], clone)
    assert not (clone / "models/model.pt").exists()
    sh(["dvc", "pull"], clone)
    assert (clone / "models/model.pt").read_bytes() == (repo / "models/model.pt").read_bytes()
    assert (clone / "data/features/mel.npy").read_bytes() == (repo / "data/features/mel.npy").read_bytes()
    assert "up to date" in sh(["dvc", "status"], clone).stdout
    result = sh(["dvc", "repro"], clone)
    assert "Running stage" not in result.stdout + result.stderr


def test_exp_run_with_a_new_lr_and_exp_show(repo):
    sh(["dvc", "exp", "run", "-n", "lr2", "-S", "lr=0.002"], repo)
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo).stdout)
    text = json.dumps(shown)
    assert '"lr2"' in text and "0.002" in text
    assert "roc_auc" in text
    assert yaml.safe_load((repo / "params.yaml").read_text())["lr"] == 0.002
