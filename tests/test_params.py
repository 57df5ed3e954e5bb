"""params.yaml is validated into frozen dataclasses; errors name the key."""

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from mstagger.params import PAPER_SYNONYMS, ParamsError, load_params, params_from_dict

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_params_load_and_keep_the_paper_defaults():
    p = load_params(ROOT / "params.yaml")
    assert p.dataset == "demo"
    assert (p.lr, p.epochs, p.batch_size, p.lr_milestones, p.lr_gamma) == (1e-3, 40, 32, [20, 30, 35], 0.1)
    assert p.spectrogram.n_frames == 628
    assert [tuple(g) for g in p.tags.synonyms] == list(PAPER_SYNONYMS)
    assert len(PAPER_SYNONYMS) == 29
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.lr = 0.1  # type: ignore[misc]


def test_lr_is_a_top_level_key_so_dvc_exp_run_s_lr_works():
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert "lr" in data and isinstance(data["lr"], float)


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
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"split": {"size": 3}}, "split.size"),
        ({"paths": "data"}, "paths"),
    ],
)
def test_bad_values_name_the_key(data, key):
    with pytest.raises(ParamsError) as err:
        params_from_dict(data)
    assert re.match(rf"params: {re.escape(key)}: ", str(err.value)), str(err.value)


def test_unknown_key_lists_the_known_ones():
    known = r"\(known: method, test_size, valid_size\)"
    with pytest.raises(ParamsError, match=rf"split.seed: unknown key {known}"):
        params_from_dict({"split": {"seed": 1}})


def test_missing_or_broken_file_is_a_clear_error(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("lr: [1\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_stage_prints_one_line_and_exits_2_on_a_bad_param(tmp_path, monkeypatch, capsys):
    from mstagger.util import stage_main

    (tmp_path / "params.yaml").write_text("spectrogram:\n  n_mels: 0\n")
    monkeypatch.chdir(tmp_path)

    @stage_main
    def main():
        load_params()

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: params: spectrogram.n_mels: must be at least 1, got 0"]
