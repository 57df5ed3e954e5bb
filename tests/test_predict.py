"""`mstagger predict`: tag a user's own audio file with a bundle."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from mstagger.bundle import Tagger, load_bundle, save_bundle
from mstagger.cli import main as cli_main
from mstagger.model import MultiScaleCNN
from mstagger.params import SpectrogramParams
from mstagger.predict import predict_file, windows

SPEC = SpectrogramParams(n_mels=32, clip_seconds=3.0)  # 66 frames: a tiny network


@pytest.fixture
def bundle_path(tmp_path):
    torch.manual_seed(0)
    model = MultiScaleCNN(n_tags=3, n_mels=SPEC.n_mels, n_frames=SPEC.n_frames).eval()
    path = tmp_path / "model.pt"
    tagger = Tagger(model, np.full(32, -5.0, np.float32), np.full(32, 3.0, np.float32))
    save_bundle(path, tagger, ["guitar", "drum", "piano"], SPEC, "fp32", {"lr": 1e-3}, {}, "rev")
    return path


def tone(path, seconds, sr=22050):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), sr)
    return path


def test_windows_cover_the_signal_and_drop_a_short_tail():
    assert [len(w) for w in windows(np.zeros(100), 30)] == [30, 30, 30]  # tail of 10 < 15 dropped
    assert [len(w) for w in windows(np.zeros(110), 30)] == [30, 30, 30, 20]  # tail of 20 kept
    assert [len(w) for w in windows(np.zeros(12), 30)] == [12]  # shorter than a window


def test_predict_file_averages_the_windows(bundle_path, tmp_path):
    bundle = load_bundle(bundle_path)
    probs, n_windows = predict_file(bundle, tone(tmp_path / "song.wav", 10.0))
    assert n_windows == 3  # 10 s in windows of 65 * 512 / 11025 = 3.02 s; a 0.9 s tail is dropped
    assert probs.shape == (3,) and np.all((probs > 0) & (probs < 1))
    # The same as predicting the three windows directly and averaging.
    from mstagger.audio import load_audio, log_mel

    y = load_audio(tmp_path / "song.wav", SPEC.sample_rate)
    mels = np.stack([log_mel(w, SPEC) for w in windows(y, (SPEC.n_frames - 1) * SPEC.hop_length)])
    np.testing.assert_allclose(probs, bundle.predict(mels).mean(axis=0), rtol=1e-6)


def test_cli_prints_top_tags_and_json(bundle_path, tmp_path, capsys):
    song = tone(tmp_path / "song.wav", 4.0)
    assert cli_main(["predict", str(song), "--model", str(bundle_path), "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(str(song)) and len(out) == 3
    assert cli_main(["predict", str(song), "--model", str(bundle_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["files"][str(song)]["tags"]) == {"guitar", "drum", "piano"}
    assert result["git_rev"] == "rev"


def test_cli_reports_bad_files_and_a_missing_model(bundle_path, tmp_path, capsys):
    good = tone(tmp_path / "good.wav", 4.0)
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(44100, np.float32), 22050)
    code = cli_main(["predict", str(empty), str(silent), str(good), "--model", str(bundle_path)])
    captured = capsys.readouterr()
    assert code == 1  # some files failed; the good one is still tagged
    assert f"{empty}: cannot tag: empty file" in captured.err
    assert f"{silent}: cannot tag: silent" in captured.err
    assert str(good) in captured.out
    assert cli_main(["predict", str(good), "--model", str(tmp_path / "none.pt")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_device_auto_and_bad_top(bundle_path, tmp_path, capsys):
    song = tone(tmp_path / "song.wav", 4.0)
    assert cli_main(["predict", str(song), "--model", str(bundle_path), "--device", "auto"]) == 0
    with pytest.raises(SystemExit):
        cli_main(["predict", str(song), "--model", str(bundle_path), "--top", "0"])
    assert "--top must be at least 1" in capsys.readouterr().err
