"""What a user sees after `dvc exp run -S lr=0.002`: the real commands on the tiny demo pipeline.

The repository's params.yaml goes in verbatim (the tiny sizes set through DVC's own writer, as -S
would), so the test sees how `dvc exp run -S` rewrites the committed file; then `dvc exp show
--only-changed` must be a table a terminal of 120 columns shows whole.
"""

import json
import shutil
from pathlib import Path

import pytest

from helpers import REPO, TINY_PIPELINE, git_commit, merged, sh

pytestmark = pytest.mark.slow

HEADLINE = ["roc_auc", "roc_lo", "roc_hi", "pr_auc", "pr_lo", "pr_hi", "roc_gain"]


def _overrides(values: dict, prefix: str = "") -> list[str]:
    """Hydra override strings (`-S` syntax) for a nested mapping: {"a": {"b": 1}} -> ["a.b=1"]."""
    out = []
    for key, value in values.items():
        if isinstance(value, dict):
            out += _overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    from dvc.utils.hydra import apply_overrides

    repo = tmp_path_factory.mktemp("experiments")
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    # a few more test clips than the tiny pipeline's 3, so the bootstrap interval moves with the lr
    sizes = {"demo": {"n_artists": 4}, "split": {"valid_size": 3, "test_size": 5}}
    apply_overrides(repo / "params.yaml", _overrides(merged(TINY_PIPELINE, sizes)))
    (repo / ".gitignore").write_text("__pycache__/\n/.cache/\n")
    sh(["git", "init", "-q", "-b", "main"], repo)
    sh(["dvc", "init", "-q"], repo)
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    git_commit(repo, "tiny pipeline")
    sh(["dvc", "repro"], repo)
    git_commit(repo, "tiny run")
    sh(["dvc", "exp", "run", "-n", "lr2", "-S", "lr=0.002"], repo)
    return repo


def test_set_param_changes_exactly_one_line_of_params_yaml(repo):
    numstat = sh(["git", "diff", "--numstat", "--", "params.yaml"], repo).stdout.split()
    assert numstat == ["1", "1", "params.yaml"]
    diff = sh(["git", "diff", "-U0", "--", "params.yaml"], repo).stdout
    assert "+lr: 0.002" in diff and "-lr: 1.0e-3" in diff


def _header(text: str) -> list[str]:
    return next(line for line in text.splitlines() if "Experiment" in line).split()


def test_exp_show_only_changed_fits_120_columns_and_shows_the_headline(repo):
    narrow = sh(["dvc", "exp", "show", "--only-changed", "--no-pager"], repo, env_extra={"COLUMNS": "120"})
    text = narrow.stdout
    assert max(len(line) for line in text.splitlines()) <= 120, text
    shown = _header(text)
    # every changed param and metric is in view; only the changed dependencies' hashes (the model's,
    # the training log's) may fold into the '…' column, the first thing rich folds when space is short
    wide = _header(
        sh(["dvc", "exp", "show", "--only-changed", "--no-pager"], repo, env_extra={"COLUMNS": "999"}).stdout
    )
    deps = {"models/model.pt", "metrics/train"}
    assert [c for c in wide if c not in deps] == [c for c in shown if c not in deps | {"…"}], text
    assert "lr" in shown and not {"seconds", "clips_per_second", "best_epoch", "n_clips"} & set(wide)
    before = json.loads(sh(["git", "show", "HEAD:metrics/scores.json"], repo).stdout)
    after = json.loads((repo / "metrics/scores.json").read_text())
    assert set(after) == set(HEADLINE) | {"baseline_roc", "baseline_pr"}
    changed = [k for k in HEADLINE if after[k] != before[k]]
    assert "roc_auc" in changed and "roc_gain" in changed  # the gain over the baseline moves with it
    for name in changed:
        assert name in shown, text
    assert "0.002" in next(line for line in text.splitlines() if "[lr2]" in line)


def test_metrics_show_compares_the_headline_and_lists_the_rest_on_request(repo):
    shown = sh(["dvc", "metrics", "show", "--json"], repo).stdout
    files = {path for rev in json.loads(shown).values() for path in rev["data"]}
    assert files == {"metrics/scores.json"}
    plain = sh(["dvc", "metrics", "show"], repo).stdout
    assert max(len(line) for line in plain.splitlines()) <= 120, plain
    on_request = sh(["dvc", "metrics", "show", "metrics/train.json", "metrics/evaluate.json"], repo).stdout
    assert "seconds" in on_request and "best_epoch" in on_request
    scores = json.loads((repo / "metrics/scores.json").read_text())
    test = json.loads((repo / "metrics/test.json").read_text())
    assert scores["roc_auc"] == round(test["roc_auc"], 4)
    assert [scores["roc_lo"], scores["roc_hi"]] == [round(x, 4) for x in test["roc_auc_ci"]]
    assert scores["roc_gain"] == pytest.approx(test["roc_auc"] - test["baseline"]["roc_auc"], abs=1e-4)
