"""Issue 22, defect 9: a bundle that cannot be used is one ``error:`` line and status 2, whatever was
edited in it. Each case is a bundle file of the right format, edited by hand as a user (or a damaged
copy) would, then opened by the commands that load bundles."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mstagger.commands.main import main as cli_main
from mstagger.inference.bundle import load_bundle, save_bundle
from mstagger.inference.tagger import Tagger
from mstagger.model import MultiScaleCNN
from mstagger.params import SpectrogramParams

SPEC = SpectrogramParams(n_mels=32, clip_seconds=3.0)  # 66 frames: a tiny network
TAGS = ["guitar", "drum", "piano"]


def make_bundle(path: Path) -> Path:
    torch.manual_seed(0)
    model = MultiScaleCNN(n_tags=len(TAGS), n_mels=SPEC.n_mels, n_frames=SPEC.n_frames).eval()
    tagger = Tagger(model, np.full(32, -5.0, np.float32), np.full(32, 3.0, np.float32))
    params = {"dataset": "mtat", "seed": 1, "split": {"method": "folder"}}
    training = {"epochs": 2, "best_epoch": 1, "val_roc_auc": 0.9, "val_pr_auc": 0.5, "val_loss": 0.3}
    save_bundle(path, tagger, TAGS, SPEC, "fp32", params, training, "rev", thresholds=[0.5, 0.25, 0.125])
    return path


def edited(path: Path, edit: Callable[[dict], None]) -> Path:
    """The bundle at ``path`` with ``edit`` applied to its payload, saved as torch.save writes it."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    edit(payload)
    out = path.with_name("edited.pt")
    torch.save(payload, out)
    return out


def _drop_weight(p: dict) -> None:
    del p["state_dict"][next(iter(p["state_dict"]))]


EDITS = {
    "49 names for 50 outputs": lambda p: p["tags"].pop(),
    "a tag twice": lambda p: p["tags"].__setitem__(1, "guitar"),
    "no precision": lambda p: p.pop("precision"),
    "precision fp8": lambda p: p.__setitem__("precision", "fp8"),
    "n_mels a string": lambda p: p["model_config"].__setitem__("n_mels", "32"),
    "unknown model_config key": lambda p: p["model_config"].__setitem__("width", 2),
    "dropout 2": lambda p: p["model_config"].__setitem__("dropout", 2.0),
    "no n_tags outputs": lambda p: p["model_config"].__setitem__("n_tags", 4),
    "a weight missing": _drop_weight,
    "a weight nan": lambda p: p["state_dict"]["head.4.bias"].fill_(float("nan")),
    "unknown spectrogram key": lambda p: p["spectrogram"].__setitem__("fmax", 5000),
    "spectrogram None": lambda p: p.__setitem__("spectrogram", None),
    "mean of another length": lambda p: p.__setitem__("mean", torch.zeros(31)),
    "mean a list": lambda p: p.__setitem__("mean", [0.0] * 32),
    "std zero": lambda p: p["std"].__setitem__(0, 0.0),
    "thresholds short": lambda p: p["thresholds"].pop(),
    "threshold nan": lambda p: p["thresholds"].__setitem__(0, float("nan")),
    "tags a string": lambda p: p.__setitem__("tags", "guitar,drum,piano"),
    "params a list": lambda p: p.__setitem__("params", []),
    "params.split a string": lambda p: p["params"].__setitem__("split", "folder"),
    "val_roc_auc a string": lambda p: p["training"].__setitem__("val_roc_auc", "high"),
    "git_rev a number": lambda p: p.__setitem__("git_rev", 1),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "model.pt")


def test_the_unedited_bundle_loads(good, capsys):
    assert load_bundle(good).tags == TAGS
    assert cli_main(["info", str(good)]) == 0


@pytest.mark.parametrize("name", EDITS)
def test_info_refuses_an_unusable_bundle_in_one_line(good, tmp_path, capsys, name):
    bundle = edited(Path(str(good)), EDITS[name])
    capsys.readouterr()
    assert cli_main(["info", str(bundle)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bundle} is not a usable model bundle: "), err


def mstagger(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mstagger", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("name", ["49 names for 50 outputs", "no precision", "n_mels a string"])
def test_predict_and_info_processes_exit_2_without_a_traceback(good, tmp_path, name):
    """The commands as a user runs them (rc 1 and a KeyError/TypeError traceback before)."""
    bundle = edited(Path(str(good)), EDITS[name])
    song = tmp_path / "song.wav"
    sf.write(song, np.zeros(22050 * 4, np.float32), 22050)
    for args in (["info", str(bundle)], ["predict", str(song), "--model", str(bundle)]):
        result = mstagger(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: {bundle} is not a usable")
        assert "Traceback" not in result.stderr


def test_a_bundle_whose_windows_its_network_cannot_take_ends_predict_in_one_line(good, tmp_path):
    """The spectrogram section edited to 5 s windows (109 frames) for a network of 66: a ValueError
    traceback per batch before. info still reports it: nothing it prints needs the two to agree."""
    bundle = edited(Path(str(good)), lambda p: p["spectrogram"].__setitem__("clip_seconds", 5.0))
    song = tmp_path / "song.wav"
    t = np.arange(22050 * 6) / 22050
    sf.write(song, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 22050)
    result = mstagger("predict", str(song), "--model", str(bundle))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the model bundle's spectrogram gives 32 x 109 windows, its network takes 32 x 66; "
        "retrain it with `dvc repro` (extract, then train)"
    )
    assert "Traceback" not in result.stderr
