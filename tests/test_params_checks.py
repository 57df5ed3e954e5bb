"""Issue 22, part A: params read as DVC reads them, every number in the range its stage can use, every
``paths.*`` key checked like the others. Each case was reproduced on the code before the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import REPO, git_commit, repo_params_dict, sh
from mstagger.params import ParamsError, load_params

# -- params.yaml is read the way DVC reads it ------------------------------------------------------------


def dvc_reading(repo: Path) -> dict:
    """``dvc params diff --all``'s reading of the workspace's params.yaml (None where it cannot read it)."""
    out = sh(["dvc", "params", "diff", "--all", "--json"], repo).stdout
    values = json.loads(out or "{}").get("params.yaml", {})
    return {key: change["new"] for key, change in values.items()}


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """A git + DVC repository with one stage that reads seed and epochs."""
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: echo\n    params: [seed, epochs]\n")
    (tmp_path / "params.yaml").write_text("seed: 1\nepochs: 1\n")
    sh(["git", "init", "-q", "-b", "main"], tmp_path)
    sh(["dvc", "init", "-q"], tmp_path)
    git_commit(tmp_path, "params")
    return tmp_path


def test_seed_010_is_ten_for_mstagger_as_for_dvc(dvc_repo):
    """YAML 1.1 (PyYAML) read ``010`` as octal 8; DVC reads YAML 1.2: ten."""
    params = {k: v for k, v in repo_params_dict().items() if k not in ("seed", "epochs")}
    text = "seed: 010\nepochs: 3\n" + yaml.safe_dump(params, sort_keys=False)
    (dvc_repo / "params.yaml").write_text(text)
    assert dvc_reading(dvc_repo)["seed"] == 10
    assert load_params(dvc_repo / "params.yaml").seed == 10


def test_epochs_1_00_is_the_string_dvc_sees_and_refused(dvc_repo):
    """YAML 1.1 read ``1:00`` as sexagesimal 60; DVC sees the string "1:00", which is no epoch count."""
    params = {k: v for k, v in repo_params_dict().items() if k not in ("seed", "epochs")}
    (dvc_repo / "params.yaml").write_text("seed: 1\nepochs: 1:00\n" + yaml.safe_dump(params, sort_keys=False))
    assert dvc_reading(dvc_repo)["epochs"] == "1:00"
    with pytest.raises(ParamsError, match=r"^params: epochs: must be an integer, got '1:00'$"):
        load_params(dvc_repo / "params.yaml")


def test_a_duplicate_key_is_refused_as_dvc_refuses_it(dvc_repo):
    """PyYAML kept the last of two ``seed:`` lines; DVC cannot read such a file at all."""
    params = {k: v for k, v in repo_params_dict().items() if k not in ("seed", "epochs")}
    (dvc_repo / "params.yaml").write_text(
        "seed: 1\nepochs: 3\nseed: 2\n" + yaml.safe_dump(params, sort_keys=False)
    )
    assert dvc_reading(dvc_repo) == {"seed": None, "epochs": None}  # "YAML file structure is corrupted"
    with pytest.raises(ParamsError, match=r'duplicate key "seed".*\(line 3\)') as err:
        load_params(dvc_repo / "params.yaml")
    assert "\n" not in str(err.value)


def test_numbers_without_a_dot_are_numbers_as_for_dvc(tmp_path):
    """YAML 1.2 reads ``1e-3`` as a float (YAML 1.1 read a string)."""
    text = (REPO / "params.yaml").read_text().replace("lr: 1.0e-3", "lr: 1e-3")
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").lr == 1e-3
