"""`mstagger predict` and `mstagger info`: tag files and folders with a bundle, tables, decisions."""

import contextlib
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import psutil
import pytest
import soundfile as sf
import torch

from helpers import write_params
from mstagger.commands.main import main as cli_main
from mstagger.data.audio import MEL_DTYPE, load_audio, log_mel
from mstagger.inference import tagging
from mstagger.inference.bundle import load_bundle, save_bundle
from mstagger.inference.library import FIXED_COLUMNS
from mstagger.inference.tagger import Tagger
from mstagger.inference.tagging import predict_file, tag_files
from mstagger.inference.windows import windows
from mstagger.model import MultiScaleCNN
from mstagger.params import SpectrogramParams

SPEC = SpectrogramParams(n_mels=32, clip_seconds=3.0)  # 66 frames: a tiny network
TAGS = ["guitar", "drum", "piano"]


def make_bundle(path, thresholds=None, params=None, training=None, precision="fp32"):
    torch.manual_seed(0)
    model = MultiScaleCNN(n_tags=3, n_mels=SPEC.n_mels, n_frames=SPEC.n_frames).eval()
    tagger = Tagger(model, np.full(32, -5.0, np.float32), np.full(32, 3.0, np.float32))
    params = {"lr": 1e-3} if params is None else params
    save_bundle(path, tagger, TAGS, SPEC, precision, params, training or {}, "rev", thresholds=thresholds)
    return path


@pytest.fixture
def bundle_path(tmp_path):
    return make_bundle(tmp_path / "model.pt")


def tone(path, seconds, sr=22050, hz=330.0, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), sr, **kwargs)
    return path


def rows_of(table):
    with open(table, newline="") as f:
        return list(csv.reader(f))


def test_predict_file_averages_the_windows(bundle_path, tmp_path):
    bundle = load_bundle(bundle_path)
    probs, n_windows = predict_file(bundle, tone(tmp_path / "song.wav", 10.0))
    assert n_windows == 3  # 10 s in windows of 65 * 512 / 11025 = 3.02 s; a 0.9 s tail is dropped
    assert probs.shape == (3,) and np.all((probs > 0) & (probs < 1))
    # The same as decoding the whole file, predicting the three windows directly (their spectrograms
    # stored as extract stores a clip's) and averaging.
    y = load_audio(tmp_path / "song.wav", SPEC.sample_rate)
    mels = np.stack([log_mel(w, SPEC) for w in windows([y], (SPEC.n_frames - 1) * SPEC.hop_length)])
    mels = mels.astype(MEL_DTYPE)
    np.testing.assert_allclose(probs, bundle.predict(mels).mean(axis=0), rtol=1e-6)


def test_cli_prints_top_tags_and_json(bundle_path, tmp_path, capsys):
    song = tone(tmp_path / "song.wav", 4.0)
    assert cli_main(["predict", str(song), "--model", str(bundle_path), "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(str(song)) and len(out) == 3
    assert cli_main(["predict", str(song), "--model", str(bundle_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["files"][str(song)]["tags"]) == {"guitar", "drum", "piano"}
    assert result["git_rev"] == "rev" and result["failed"] == {}


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


def test_bad_flags_and_paths_are_one_line_and_status_2(bundle_path, tmp_path, capsys):
    song = tone(tmp_path / "song.wav", 4.0)
    assert cli_main(["predict", str(song), "--model", str(bundle_path), "--device", "auto"]) == 0
    capsys.readouterr()
    for flags, message in [
        (["--top", "0"], "error: --top must be at least 1, got 0"),
        (["--workers", "-1"], "error: --workers must be at least 0, got -1"),
        (["--batch-size", "0"], "error: --batch-size must be at least 1, got 0"),
        (["--force"], "error: --force needs --csv"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["predict", str(song), "--model", str(bundle_path), *flags])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1
    assert cli_main(["predict", str(tmp_path / "nowhere"), "--model", str(bundle_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nowhere'}: no such file or folder\n"
    (tmp_path / "empty_folder").mkdir()
    assert cli_main(["predict", str(tmp_path / "empty_folder"), "--model", str(bundle_path)]) == 2
    assert "no audio files in" in capsys.readouterr().err


def test_predict_and_info_from_any_folder(tmp_path, capsys, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    write_params(project)  # paths.model: models/model.pt, relative to the project
    model = make_bundle(project / "models" / "model.pt")
    song = tone(tmp_path / "music" / "song.wav", 4.0)
    # inside the project, in a subfolder: its params.yaml names the model
    (project / "notes").mkdir()
    monkeypatch.chdir(project / "notes")
    assert cli_main(["predict", str(song)]) == 0
    assert cli_main(["info"]) == 0
    assert str(model) in capsys.readouterr().out
    # outside any project: --model works; without it, the error says how to name the model
    monkeypatch.chdir(tmp_path / "music")
    assert cli_main(["predict", "song.wav", "--model", str(model), "--top", "1"]) == 0
    assert cli_main(["info", str(model)]) == 0
    capsys.readouterr()
    assert cli_main(["predict", "song.wav"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no params.yaml in" in err and "name it: --model PATH" in err
    assert cli_main(["info"]) == 2
    assert "name it: mstagger info PATH" in capsys.readouterr().err


def make_library(root):
    """Nested folders: four good files in three formats, a broken file and a non-audio file."""
    good = [
        tone(root / "a.wav", 4.0),
        tone(root / "rock" / "b.flac", 7.0, hz=440.0),
        tone(root / "rock" / "live" / "c.mp3", 10.0, sr=16000, hz=220.0, format="MP3"),
        tone(root / "jazz" / "d.wav", 2.0, sr=44100, hz=660.0),
    ]
    (root / "rock" / "live" / "broken.mp3").write_bytes(b"ID3 not really an mp3" * 40)
    (root / "jazz" / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    return good


def test_a_library_folder_to_a_csv(bundle_path, tmp_path, capsys):
    good = make_library(tmp_path / "lib")
    table = tmp_path / "tags.csv"
    code = cli_main(["predict", str(tmp_path / "lib"), "--model", str(bundle_path), "--csv", str(table),
                     "--workers", "2", "--batch-size", "4"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1  # the broken file failed, and says why; the others are tagged
    broken = tmp_path / "lib" / "rock" / "live" / "broken.mp3"
    assert f"{broken}: cannot tag: not an audio file that can be decoded" in captured.err
    assert "tagged 4 files" in captured.err and "1 failed" in captured.err
    assert "1 file ignored, not audio (.jpg 1)" in captured.err
    assert captured.out == ""  # the table is the output
    rows = rows_of(table)
    assert rows[0] == [*FIXED_COLUMNS, *TAGS]
    by_path = {row[0]: row for row in rows[1:]}
    assert sorted(by_path) == sorted(str(p.resolve()) for p in good)
    bundle = load_bundle(bundle_path)
    for path in good:
        row = by_path[str(path.resolve())]
        probs, n_windows = predict_file(bundle, path)
        assert int(row[1]) == path.stat().st_size and int(row[2]) == path.stat().st_mtime_ns
        assert float(row[4]) == pytest.approx(sf.info(path).duration, abs=0.01) and int(row[5]) == n_windows
        np.testing.assert_allclose([float(x) for x in row[7:]], probs, atol=2e-6)  # batched across files
    # a rerun has nothing left to do but the broken file
    assert cli_main(["predict", str(tmp_path / "lib"), "--model", str(bundle_path), "--csv", str(table)]) == 1
    assert "4 files skipped, already in" in capsys.readouterr().err
    assert len(rows_of(table)) == 5


# What docs/decisions.md states for the CPU: identical copies of a file tagged in one predict run, their
# windows in batches of other company and position, and runs with other --batch-size values, agree
# within this (the demo model on the 2-core AMD EPYC: 3.6e-12; this small model in fp32: 3e-8).
PREDICT_TOLERANCE = 1e-6


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_identical_copies_in_mixed_batches_agree_within_the_stated_tolerance(tmp_path, precision):
    model = make_bundle(tmp_path / "model.pt", precision=precision)
    bundle = load_bundle(model, device="cpu")
    original = tone(tmp_path / "original.wav", 7.0, hz=300.0)  # 2 windows
    files = []
    for i in range(5):  # 0 to 2 other files before each copy: every copy meets other company
        files += [tone(tmp_path / f"other{i}_{j}.wav", 3.5, hz=200.0 + 50 * i + j) for j in range(i % 3)]
        files.append(shutil.copy(original, tmp_path / f"copy{i}.wav"))
    copies = [k for k, f in enumerate(files) if f.name.startswith("copy")]
    probs = []
    for batch_size in (1, 3, 4):
        results = {r.index: r.probs for r in tag_files(bundle, files, workers=0, batch_size=batch_size)}
        probs += [results[k] for k in copies]
    assert np.ptp(np.stack(probs), axis=0).max() <= PREDICT_TOLERANCE


def test_the_command_exits_quickly_with_everything_written(bundle_path, tmp_path):
    """``mstagger predict`` leaves with os._exit (no interpreter teardown): its piped output is whole,
    its table complete, its exit status kept, and no process of it stays behind."""
    songs = [str(tone(tmp_path / f"song{i}.wav", 4.0, hz=300.0 + 50 * i)) for i in range(3)]
    table = tmp_path / "tags.csv"
    run = [sys.executable, "-m", "mstagger", "predict", "--model", str(bundle_path), *songs]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered
    done = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)["files"]) == set(songs)  # flushed before the exit
    assert "tagged 3 files" in done.stderr
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"ID3 not audio" * 100)
    proc = psutil.Popen(
        [*run, str(broken), "--csv", str(table)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    family = {proc}
    while proc.poll() is None:  # its forkserver and workers, as they come (its output fits the pipes)
        with contextlib.suppress(psutil.Error):
            family.update(proc.children(recursive=True))
        time.sleep(0.01)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 1 and b"1 failed" in err, err  # a failed file says so, by exit status too
    assert len(rows_of(table)) == 4
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive


def test_a_killed_run_resumes_and_tags_every_file_once(bundle_path, tmp_path, capsys):
    lib = tmp_path / "lib"
    n = 40
    for i in range(n):
        tone(lib / f"{i // 10}" / f"song{i:02d}.wav", 12.0, sr=16000, hz=200.0 + 10 * i)
    table = tmp_path / "tags.csv"
    command = [sys.executable, "-m", "mstagger", "predict", str(lib), "--model", str(bundle_path),
               "--csv", str(table), "--workers", "1", "--batch-size", "2", "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if table.exists() and len(table.read_bytes().splitlines()) > 3:  # header and three rows
            break
        time.sleep(0.01)
    family = psutil.Process(proc.pid).children(recursive=True)  # the forkserver and the worker
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    tagged = len(rows_of(table)) - 1
    assert 3 <= tagged < n, "the run was not killed partway"
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, "worker processes outlived the killed predict"
    assert cli_main(command[3:]) == 0  # the rerun
    err = capsys.readouterr().err
    assert f"tagged {n - tagged} files" in err and f"{tagged} files skipped" in err
    paths = Counter(row[0] for row in rows_of(table)[1:])
    assert len(paths) == n and set(paths.values()) == {1}  # every file exactly once


def test_thresholds_are_stored_and_applied(tmp_path, capsys):
    song = tone(tmp_path / "song.wav", 4.0)
    probs, _ = predict_file(load_bundle(make_bundle(tmp_path / "plain.pt")), song)
    # guitar always, drum just above its probability (not asserted), piano exactly at it (asserted)
    thresholds = [0.0, float(np.float32(probs[1])) + 1e-6, float(np.float32(probs[2]))]
    model = make_bundle(tmp_path / "model.pt", thresholds=thresholds)
    bundle = load_bundle(model)
    np.testing.assert_array_equal(bundle.thresholds, np.asarray(thresholds, np.float32))
    asserted = ["guitar", "piano"] if probs[0] >= probs[2] else ["piano", "guitar"]  # most probable first
    args = ["predict", str(song), "--model", str(model), "--workers", "0"]
    assert cli_main([*args, "--decide"]) == 0
    assert capsys.readouterr().out == f"{song}: {', '.join(asserted)}\n"
    assert cli_main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"][str(song)]["asserted"] == asserted
    assert cli_main([*args, "--csv", str(tmp_path / "t.csv")]) == 0
    assert rows_of(tmp_path / "t.csv")[1][6] == ";".join(asserted)
    # a bundle without thresholds cannot decide
    assert cli_main(["predict", str(song), "--model", str(tmp_path / "plain.pt"), "--decide"]) == 2
    assert "holds no decision thresholds" in capsys.readouterr().err


def test_a_demo_model_warns_once(tmp_path, capsys):
    songs = [str(tone(tmp_path / f"{i}.wav", 4.0)) for i in range(3)]
    demo = make_bundle(tmp_path / "demo.pt", params={"dataset": "demo"})
    assert cli_main(["predict", *songs, "--model", str(demo), "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1
    assert "synthetic demo dataset" in err and "not meaningful on real music" in err and "dataset=mtat" in err
    mtat = make_bundle(tmp_path / "mtat.pt", params={"dataset": "mtat"})
    assert cli_main(["predict", *songs, "--model", str(mtat), "--workers", "0"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_info_prints_what_the_bundle_knows(tmp_path, capsys, monkeypatch):
    params = {"dataset": "demo", "seed": 7, "split": {"method": "folder"}}
    training = {
        "epochs": 40,
        "best_epoch": 18,
        "val_roc_auc": 0.71,
        "val_pr_auc": 0.69,
        "thresholds_default": 1,
    }
    model = make_bundle(tmp_path / "models" / "model.pt", [0.25, 0.5, 0.125], params, training)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["info", "models/model.pt"]) == 0
    out = capsys.readouterr().out
    for text in ["mstagger-bundle/3", "demo: the synthetic demo dataset", "folder (seed 7)", "40 epochs",
                 "kept epoch 18", "ROC-AUC 0.7100", "git revision   rev", "guitar  0.25", "piano   0.125",
                 "1 without a validation positive", "test scores    unknown: no dvc.lock"]:  # fmt: skip
        assert text in out, text
    # test scores when dvc.lock records that evaluate scored this very file
    (tmp_path / "metrics").mkdir()
    test_json = tmp_path / "metrics" / "test.json"
    test_json.write_text(
        json.dumps(
            {
                "roc_auc": 0.88,
                "pr_auc": 0.7,
                "n_clips": 24,
                "at_thresholds": {"f1_micro": 0.6, "f1_macro": 0.5},
            }
        )
    )

    def md5(path):
        return hashlib.md5(path.read_bytes()).hexdigest()

    lock = {"schema": "2.0", "stages": {"evaluate": {
        "deps": [{"path": "models/model.pt", "hash": "md5", "md5": md5(model)}],
        "outs": [{"path": "metrics/test.json", "hash": "md5", "md5": md5(test_json)}]}}}  # fmt: skip
    (tmp_path / "dvc.lock").write_text(json.dumps(lock))  # JSON is YAML
    assert cli_main(["info", "models/model.pt", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["test"]["roc_auc"] == 0.88 and info["thresholds"] == [0.25, 0.5, 0.125] and info["tags"] == TAGS
    )
    assert info["dataset"] == "demo" and info["split"] == "folder" and info["best_epoch"] == 18
    digest = load_bundle(model).weights_sha256  # the numbers' digest, as train.json records it
    assert info["weights_sha256"] == digest and len(digest) == 64
    assert cli_main(["info", "models/model.pt"]) == 0
    assert (
        "test scores    ROC-AUC 0.8800, PR-AUC 0.7000, F1 micro 0.6000, macro 0.5000"
        in capsys.readouterr().out
    )
    make_bundle(model, [0.3, 0.3, 0.3], params, training)  # retrained since: those scores are not its own
    assert cli_main(["info", "models/model.pt"]) == 0
    out = capsys.readouterr().out
    # the same weights (seed 0) with other thresholds: the file differs, the weights digest does not
    assert "test scores    unknown: " in out and f"weights        sha256 {digest}" in out
    assert cli_main(["info", "nowhere.pt"]) == 2
    assert "not found" in capsys.readouterr().err


def test_info_tells_a_tiny_threshold_from_zero_and_marks_the_fallbacks(tmp_path, capsys):
    training = {"thresholds_default": 1, "thresholds_fallback": ["piano"]}
    model = make_bundle(tmp_path / "model.pt", [1.15e-17, 0.5, 0.123456789], {}, training)
    assert cli_main(["info", str(model)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "1 marked * fell back to 0.5" in "\n".join(lines)
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("    ")}
    assert rows == {"guitar": ["1.15e-17"], "drum": ["0.5"], "piano": ["0.123", "*"]}
    assert cli_main(["info", str(model), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["thresholds"][0] == pytest.approx(1.15e-17) and info["thresholds_fallback"] == ["piano"]


@pytest.mark.parametrize(("cpus", "on_cpu", "on_gpu"), [(1, 1, 1), (2, 2, 2), (3, 2, 3), (16, 11, 16)])
def test_default_workers_leave_a_third_of_the_cpus_to_the_network_on_the_cpu(
    monkeypatch, cpus, on_cpu, on_gpu
):
    monkeypatch.setattr(tagging, "available_cpus", lambda: cpus)
    assert tagging.default_workers(torch.device("cpu")) == on_cpu
    assert tagging.default_workers(torch.device("cuda")) == on_gpu
