"""The Python API: ``mstagger.load_model(...).tag(...)`` on files, lists and arrays, as ``predict`` tags."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

import mstagger
from mstagger.commands.main import main as cli_main
from mstagger.core.errors import UserError
from test_predict import TAGS, make_bundle, tone


def test_importing_the_package_loads_neither_torch_nor_the_api() -> None:
    code = "import sys, mstagger; print(sorted(m for m in ('torch', 'mstagger.api') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_file_and_its_samples_give_what_predict_prints(tmp_path, capsys) -> None:
    bundle = make_bundle(tmp_path / "model.pt")
    song = tone(tmp_path / "song.wav", 8.0, sr=22050, hz=440.0)  # three 3 s windows
    model = mstagger.load_model(bundle, device="cpu")
    assert model.tags == TAGS
    from_file = model.tag(song)
    assert list(from_file) == TAGS

    assert cli_main(["predict", str(song), "--model", str(bundle), "--json", "--workers", "0"]) == 0
    printed = json.loads(capsys.readouterr().out)["files"][str(song)]["tags"]
    assert from_file == printed  # exactly: the same windows, batches and network

    samples, rate = sf.read(song, dtype="float32")
    assert model.tag(samples, sample_rate=rate) == from_file
    stereo = np.stack([samples, samples], axis=1)  # (n, channels): mixed down as a file's channels are
    assert model.tag(stereo, sample_rate=rate) == from_file
    assert model.tag(samples.astype(np.float64), sample_rate=rate) == from_file


def test_the_float16_rounding_and_resampling_happen_inside(tmp_path) -> None:
    """An array at another rate is resampled as a file at that rate is: the same numbers."""
    bundle = make_bundle(tmp_path / "model.pt")
    song = tone(tmp_path / "song.wav", 5.0, sr=16000, hz=300.0)
    model = mstagger.load_model(bundle, device="cpu")
    samples, rate = sf.read(song, dtype="float32")
    assert rate == 16000
    assert model.tag(samples, sample_rate=16000) == model.tag(song)
    other = model.tag(samples, sample_rate=22050)  # the same samples read as another rate: other audio
    assert other != model.tag(song)


def test_a_list_from_a_script_without_a_main_guard(tmp_path) -> None:
    """Workers start without re-running the caller's script (which would tag again in each one)."""
    bundle = make_bundle(tmp_path / "model.pt")
    songs = [tone(tmp_path / f"s{i}.wav", 4.0 + i, hz=200.0 + 50 * i) for i in range(3)]
    script = tmp_path / "tag_my_music.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json
            import mstagger

            model = mstagger.load_model({str(bundle)!r}, device="cpu")
            print(json.dumps(model.tag({[str(s) for s in songs]!r}, workers=2)))
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    model = mstagger.load_model(bundle, device="cpu")
    for song, probs in zip(songs, listed, strict=True):
        alone = model.tag(song)
        assert list(probs) == TAGS
        np.testing.assert_allclose([probs[t] for t in TAGS], [alone[t] for t in TAGS], atol=1e-5)


def test_decide_and_thresholds(tmp_path) -> None:
    bundle = make_bundle(tmp_path / "model.pt", thresholds=[0.0, 1.0, 0.5])
    model = mstagger.load_model(bundle, device="cpu")
    assert model.thresholds == {"guitar": 0.0, "drum": 1.0, "piano": 0.5}
    probs = {"guitar": 0.2, "drum": 0.99, "piano": 0.7}
    assert model.decide(probs) == ["piano", "guitar"]  # most probable first; drum is below 1.0
    assert model.decide([probs, {"guitar": 0.1, "drum": 0.1, "piano": 0.1}]) == [
        ["piano", "guitar"],
        ["guitar"],
    ]


def test_a_demo_model_warns_python_users(tmp_path) -> None:
    bundle = make_bundle(tmp_path / "model.pt", params={"dataset": "demo"})
    with pytest.warns(UserWarning, match="synthetic demo dataset"):
        mstagger.load_model(bundle, device="cpu")


def test_what_cannot_be_tagged_says_so(tmp_path, monkeypatch) -> None:
    bundle = make_bundle(tmp_path / "model.pt")
    model = mstagger.load_model(bundle, device="cpu")
    with pytest.raises(mstagger.AudioError, match=r"missing\.wav: cannot tag: missing file"):
        model.tag(tmp_path / "missing.wav")
    with pytest.raises(UserError, match="sample_rate"):
        model.tag(np.zeros(16000, np.float32))
    with pytest.raises(UserError, match="shape"):
        model.tag(np.zeros((2, 3, 4), np.float32), sample_rate=16000)
    with pytest.raises(mstagger.AudioError, match="the array: cannot tag: silent"):
        model.tag(np.zeros(32000, np.float32), sample_rate=16000)
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the default model cannot be found
    with pytest.raises(
        UserError, match=r"pass the bundle's path, e.g. mstagger.load_model\('models/model.pt'\)"
    ):
        mstagger.load_model()
