"""params.yaml is validated into frozen dataclasses; errors name the key."""

import ast
import dataclasses
import re

import pytest
import yaml

from helpers import REPO, repo_params_dict
from mstagger.params import ParamsError, load_params, params_from_dict

ROOT = REPO
SEED_README = REPO.parent / "shared" / "seeds" / "001_863f53848ad5100a.txt"


def test_the_committed_params_load_and_keep_the_paper_defaults():
    p = load_params(ROOT / "params.yaml")
    assert p.dataset == "demo"
    assert (p.lr, p.epochs, p.batch_size, p.lr_milestones, p.lr_gamma) == (1e-3, 40, 32, [20, 30, 35], 0.1)
    assert p.spectrogram.n_frames == 628
    assert len(p.tags.synonyms) == 29
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.lr = 0.1  # type: ignore[misc]


def test_the_synonym_groups_are_the_papers():
    """params.yaml's groups are exactly the list in the original code's README."""
    if not SEED_README.is_file():
        pytest.skip(f"the original README is not at {SEED_README}")
    text = SEED_README.read_text(encoding="utf-8")
    block = text[text.index("synonyms = [") + len("synonyms = ") :]
    block = block[: block.index("]]") + 2]
    paper = ast.literal_eval(block.replace("\n", " "))
    assert load_params(ROOT / "params.yaml").tags.synonyms == paper


def test_lr_is_a_top_level_key_so_dvc_exp_run_s_lr_works():
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert "lr" in data and isinstance(data["lr"], float)


@pytest.mark.parametrize(
    "override", ["lr=0.002", "evaluate.curve_tags=5", "tags.top_n=40", "download.retries=3"]
)
def test_dvc_s_rewrites_exactly_one_line_of_the_committed_params(tmp_path, override):
    """`dvc exp run -S` writes params.yaml back through DVC's own writer (ruamel round trip, lists
    replaced whole, 80-column folding); the committed file is in the style that writer keeps, so only the
    set key's line changes and every comment stays. tests/test_experiments.py runs the real command."""
    from dvc.utils.hydra import apply_overrides

    copy = tmp_path / "params.yaml"
    before = (ROOT / "params.yaml").read_text(encoding="utf-8")
    copy.write_text(before, encoding="utf-8")
    apply_overrides(copy, [override])
    old, new = before.splitlines(), copy.read_text(encoding="utf-8").splitlines()
    assert len(old) == len(new)
    changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    key = override.split("=")[0].split(".")[-1]
    assert len(changed) == 1 and changed[0][1].lstrip().startswith(f"{key}: "), changed
    assert yaml.safe_load(copy.read_text()) != yaml.safe_load(before)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"lr": -0.001}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"dataset": "gtzan"}, "dataset"),
        ({"spectrogram": {"n_mels": 0}}, "spectrogram.n_mels"),
        ({"spectrogram": {"hop_length": 4096}}, "spectrogram.hop_length"),
        ({"split": {"method": "by-mood"}}, "split.method"),
        ({"split": {"valid_size": 0.6, "test_size": 0.5}}, "split.test_size"),
        ({"split": {"valid_size": 2.5}}, "split.valid_size"),
        ({"tags": {"top_n": 0}}, "tags.top_n"),
        ({"tags": {"synonyms": [["drum"]]}}, "tags.synonyms[0]"),
        ({"tags": {"synonyms": [["a", "b"], ["b", "c"]]}}, "tags.synonyms[1]"),
        ({"tags": {"synonyms": "drum,drums"}}, "tags.synonyms"),
        ({"extract": {"workers": 0}}, "extract.workers"),
        ({"download": {"sha256": {"mp3.zip.001": "abc"}}}, "download.sha256.mp3.zip.001"),
        ({"download": {"base_url": "ftp://x"}}, "download.base_url"),
        ({"lr_milestones": [30, 20]}, "lr_milestones"),
        ({"device": "tpu"}, "device"),
        ({"precision": "fp8"}, "precision"),
        ({"deterministic": "yes"}, "deterministic"),
        ({"cpu_threads": -1}, "cpu_threads"),
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"split": {"size": 3}}, "split.size"),
        ({"paths": "data"}, "paths"),
        ({"paths": {"raw": "data/raw"}}, "paths.features"),
        ({"paths": {**repo_params_dict()["paths"], "raw": "/tmp/victim"}}, "paths.raw"),
        ({"paths": {**repo_params_dict()["paths"], "raw": "../victim"}}, "paths.raw"),
        ({"paths": {**repo_params_dict()["paths"], "model": "models/../../x.pt"}}, "paths.model"),
        ({"paths": {**repo_params_dict()["paths"], "plots": "."}}, "paths.plots"),
    ],
)
def test_bad_values_name_the_key(data, key):
    with pytest.raises(ParamsError) as err:
        params_from_dict({**repo_params_dict(), **data})
    assert re.match(rf"params: {re.escape(key)}: ", str(err.value)), str(err.value)


def test_unknown_key_lists_the_known_ones():
    known = r"\(known: method, test_size, valid_size\)"
    with pytest.raises(ParamsError, match=rf"split.seed: unknown key {known}"):
        params_from_dict({**repo_params_dict(), "split": {"seed": 1}})


def test_missing_or_broken_file_is_a_clear_error(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("lr: [1\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_stage_prints_one_line_and_exits_2_on_a_bad_param(tmp_path, monkeypatch, capsys):
    from mstagger.core.log import stage_main

    data = {**repo_params_dict(), "spectrogram": {"n_mels": 0}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)

    @stage_main
    def main():
        load_params()

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: params: spectrogram.n_mels: must be at least 1, got 0"]
