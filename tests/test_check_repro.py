"""CI's reproduction check (.ci/check_repro.py) on a tiny git repository: it names the stage whose
data differ from the committed dvc.lock, and bounds the test ROC-AUC by the measured spread."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, git_commit, sh

SCRIPT = REPO / ".ci" / "check_repro.py"
PATHS = {
    "raw": "data/raw",
    "features": "data/features",
    "prepared": "data/prepared",
    "model": "models/model.pt",
}
# Spread settings as bench/spread.py writes them: the bound is the range of the non-seed ones, 0.02.
SPREAD = {
    "results": [
        {"setting": "bf16", "roc_auc": 0.89},
        {"setting": "fp32", "roc_auc": 0.87},
        {"setting": "fp32-avx2", "roc_auc": 0.88},
        {"setting": "seed1", "roc_auc": 0.95},
    ]
}


def _lock(hashes: dict[str, str]) -> dict:
    outs = {"download": "raw", "extract": "features", "prepare": "prepared", "train": "model"}
    return {
        "schema": "2.0",
        "stages": {
            stage: {
                "cmd": f"python -m mstagger.{stage}",
                "outs": [{"path": PATHS[key], "md5": hashes[stage]}],
            }
            for stage, key in outs.items()
        },
    }


def _write(repo: Path, hashes: dict[str, str], roc_auc: float, weights: str | None = None) -> None:
    (repo / "dvc.lock").write_text(yaml.safe_dump(_lock(hashes)))
    (repo / "metrics" / "test.json").write_text(json.dumps({"roc_auc": roc_auc}))
    if weights:
        (repo / "metrics" / "train.json").write_text(json.dumps({"weights_sha256": weights}))


HASHES = {"download": "a.dir", "extract": "b.dir", "prepare": "c.dir", "train": "d"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "metrics").mkdir()
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "spread-cpu.json").write_text(json.dumps(SPREAD))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"paths": {**PATHS, "metrics": "metrics"}}))
    sh(["git", "init", "-q", "-b", "main"], tmp_path)
    _write(tmp_path, HASHES, 0.89, weights="f" * 64)
    git_commit(tmp_path, "committed run")
    return tmp_path


def _check(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT)], cwd=repo, capture_output=True, text=True)


def test_a_run_that_reproduces_says_so(repo: Path) -> None:
    done = _check(repo)
    assert done.returncode == 0, done.stderr
    assert "extract: data/features is bit-identical" in done.stdout
    assert "are bit-identical to the committed run" in done.stdout


@pytest.mark.parametrize("stage", ["download", "extract", "prepare"])
def test_other_data_bits_fail_naming_the_stage(repo: Path, stage: str) -> None:
    _write(repo, {**HASHES, stage: "other.dir"}, 0.89)
    done = _check(repo)
    assert done.returncode == 1
    assert f"stage {stage}: {PATHS[dict(download='raw', extract='features', prepare='prepared')[stage]]}" in (
        done.stderr
    )
    assert "other.dir" in done.stderr and done.stderr.count("not reproduced") == 1


def test_scores_may_move_within_the_measured_spread_and_no_further(repo: Path) -> None:
    _write(repo, {**HASHES, "train": "e"}, 0.89 - 0.015, weights="e" * 64)
    done = _check(repo)
    assert done.returncode == 0, done.stderr
    assert "differs from the committed one" in done.stdout and "allowed: 0.0200" in done.stdout
    _write(repo, {**HASHES, "train": "e"}, 0.89 + 0.021, weights="e" * 64)
    done = _check(repo)
    assert done.returncode == 1
    assert "stage evaluate: test ROC-AUC moved by +0.0210, more than 0.0200" in done.stderr


def test_the_weights_digest_decides_not_the_model_files_hash(repo: Path) -> None:
    """The bundle records the git revision, so its file hash changes with every commit; the weights
    digest the train stage writes changes only when a number does."""
    _write(repo, {**HASHES, "train": "e"}, 0.89, weights="f" * 64)  # another commit, the same weights
    done = _check(repo)
    assert done.returncode == 0, done.stderr
    assert (
        "the model's weights (sha256 ffffffffffff in metrics/train.json) and the test ROC-AUC" in done.stdout
    )
    assert "are bit-identical to the committed run" in done.stdout
    _write(repo, HASHES, 0.89, weights="0" * 64)  # the same file hash cannot hide other weights
    done = _check(repo)
    assert done.returncode == 0, done.stderr
    assert "the model's weights (sha256 000000000000 in metrics/train.json): differs from the" in done.stdout
