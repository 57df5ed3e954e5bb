"""The real `dvc repro` end to end on a tiny configuration, in a temporary git repo.

One module-scoped run feeds the tests: a second repro runs nothing, the data round-trips through a
local DVC remote into a fresh clone, and `dvc exp run -S lr=...` / `dvc exp show` work.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["download", "extract", "prepare", "train", "evaluate"]

pytestmark = pytest.mark.slow

TINY = {
    "epochs": 2,
    "batch_size": 4,
    "lr_milestones": [1],
    "demo": {"n_artists": 3, "albums_per_artist": 2, "songs_per_album": 1, "clips_per_song": 2},
    "spectrogram": {"n_mels": 32, "clip_seconds": 6.0},
    "extract": {"workers": 1},
    "tags": {"top_n": 5},
    "split": {"method": "random", "valid_size": 2, "test_size": 3},
    "evaluate": {"curve_tags": 3},
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) else value
    return out


def sh(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["DVC_NO_ANALYTICS"] = "1"
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def git_commit(repo: Path, message: str) -> None:
    sh(["git", "add", "-A"], repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "dvc.yaml", repo)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text("__pycache__/\n/.cache/\n")
    sh(["git", "init", "-q", "-b", "main"], repo)
    sh(["dvc", "init", "-q"], repo)
    sh(["dvc", "config", "core.analytics", "false"], repo)
    shutil.copy(ROOT / ".dvcignore", repo)
    git_commit(repo, "tiny pipeline")
    result = sh(["dvc", "repro"], repo)
    repo.joinpath("repro.log").write_text(result.stdout + result.stderr)
    git_commit(repo, "tiny run")
    return repo


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
    # The demo is byte-identical for a seed and the stage summaries (with their seconds) are kept
    # out of the output hashes, so re-running download changes nothing downstream.
    sh(["dvc", "repro", "-f", "-s", "download"], repo)
    assert "up to date" in sh(["dvc", "status"], repo).stdout
    assert sh(["git", "status", "--porcelain", "dvc.lock"], repo).stdout == ""


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
