"""`mstagger predict` when its output fails or its inputs are odd, for real: a reader that goes away,
a full file system, /dev/full, Ctrl-C, a second writer of the same table, links, loops, unreadable
folders and samples that overflow. Each run is a real process with a timeout, so a hang fails."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf
import torch

from helpers import tmpfs
from mstagger.inference.bundle import save_bundle
from mstagger.inference.tagger import Tagger
from mstagger.model import MultiScaleCNN
from mstagger.params import SpectrogramParams
from test_predict import make_bundle, tone

TIMEOUT = 120  # seconds any run may take here; a hang fails the test instead of blocking it


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "model.pt")


@pytest.fixture(scope="module")
def full_size_bundle(tmp_path_factory) -> Path:
    """A bundle of MTAT's input size: a window's spectrogram (160 kB) overfills a pipe (64 kB)."""
    torch.manual_seed(0)
    spec = SpectrogramParams()  # 128 mels x 628 frames
    network = MultiScaleCNN(n_tags=3, n_mels=spec.n_mels, n_frames=spec.n_frames).eval()
    tagger = Tagger(network, np.full(spec.n_mels, -5.0, np.float32), np.full(spec.n_mels, 3.0, np.float32))
    path = tmp_path_factory.mktemp("full") / "model.pt"
    save_bundle(path, tagger, ["guitar", "drum", "piano"], spec, "fp32", {}, {}, "rev")
    return path


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """60 short songs in six folders."""
    root = tmp_path_factory.mktemp("library")
    for i in range(60):
        tone(root / f"{i // 10}" / f"song{i:02d}.wav", 4.0, sr=16000, hz=200.0 + 10 * i)
    return root


def predict(bundle: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mstagger.commands.main",
        "predict",
        "--model",
        str(bundle),
        *map(str, args),
    ]


def rows_of(table: Path) -> list[list[str]]:
    with open(table, newline="") as f:
        return list(csv.reader(f))


def ends_with_its_processes(proc: psutil.Popen, family: set[psutil.Process]) -> None:
    """Wait for ``proc``; then none of the processes it started may be left."""
    watch(proc, family)
    try:
        proc.wait(timeout=TIMEOUT)
    except psutil.TimeoutExpired:
        for p in [proc, *family]:
            with contextlib.suppress(psutil.Error):
                p.kill()
        raise AssertionError("predict hung") from None
    _, alive = psutil.wait_procs(family, timeout=10)
    for p in alive:
        p.kill()
    assert not alive, [p.pid for p in alive]


def watch(proc: psutil.Popen, family: set[psutil.Process]) -> None:
    with contextlib.suppress(psutil.Error):
        family.update(proc.children(recursive=True))


# --- the output fails --------------------------------------------------------------------------


def watch_until_rows(proc: psutil.Popen, table: Path, rows: int) -> set[psutil.Process]:
    """Wait (at most TIMEOUT) until ``table`` holds its header and ``rows`` rows, watching the processes
    of ``proc``; returns them (its family)."""
    family: set[psutil.Process] = set()
    end = time.monotonic() + TIMEOUT
    while time.monotonic() < end and not (table.exists() and len(table.read_bytes().splitlines()) > rows):
        watch(proc, family)
        time.sleep(0.01)
    return family


def test_a_reader_that_goes_away_ends_predict_with_one_line(full_size_bundle, library):
    """`mstagger predict LIB --top 1 | head -2` ended never: workers blocked on a full queue pipe."""
    proc = psutil.Popen(
        predict(full_size_bundle, library, "--top", "1", "--workers", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    family: set[psutil.Process] = set()
    head = [proc.stdout.readline() for _ in range(2)]  # what `head -2` reads, then it exits
    watch(proc, family)
    proc.stdout.close()
    ends_with_its_processes(proc, family)
    err = proc.stderr.read().decode()
    assert head[0].startswith(str(library).encode())
    assert proc.returncode == 2
    assert "error: the output was closed (broken pipe); stopped" in err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_stdout_on_a_full_device_is_one_line_and_a_status(bundle, library):
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            predict(bundle, library / "0", "--workers", "1"),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=TIMEOUT,
        )
    assert done.returncode == 2
    assert "error: cannot write the output: No space left on device; stopped" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_table_on_a_file_system_that_fills_up_ends_with_one_line_and_keeps_its_rows(
    bundle, library, tmp_path
):
    """The run stopped at 96 of 1,024 files and slept with no message."""
    with tmpfs(tmp_path / "small", "8k") as small:  # two pages: the lock file's and one of the table
        table = small / "tags.csv"
        proc = psutil.Popen(
            predict(bundle, library, "--csv", table, "--workers", "2"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        family: set[psutil.Process] = set()
        watch(proc, family)
        ends_with_its_processes(proc, family)
        err = proc.stderr.read().decode()
        rows = rows_of(table)
    assert proc.returncode == 2
    kept = len(rows) - 1
    assert 0 < kept < 60
    assert f"error: disk full while writing --csv {table}; free some space; {table} keeps the " in err
    assert "Traceback" not in err


def test_ctrl_c_stops_predict_at_once_without_a_traceback(full_size_bundle, library, tmp_path):
    table = tmp_path / "tags.csv"
    proc = psutil.Popen(
        predict(full_size_bundle, library, "--csv", table, "--workers", "2", "--batch-size", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    family = watch_until_rows(proc, table, 3)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: every process of the group gets it
    ends_with_its_processes(proc, family)
    err = proc.stderr.read().decode()
    assert proc.returncode == 130
    assert "interrupted; " in err and "keeps the" in err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_a_second_writer_of_the_same_table_is_refused(bundle, library, tmp_path):
    """Two `predict --csv same.csv` at once wrote every row twice."""
    table = tmp_path / "tags.csv"
    first = psutil.Popen(
        predict(bundle, library, "--csv", table, "--workers", "1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    family = watch_until_rows(first, table, 1)
    first.suspend()  # SIGSTOP: it stays in the middle of its run, holding the table, while the second starts
    try:
        second = subprocess.run(
            predict(bundle, library, "--csv", table), capture_output=True, text=True, timeout=TIMEOUT
        )
    finally:
        first.resume()
    assert second.returncode == 2
    assert second.stderr == (
        f"error: --csv {table} is being written by another mstagger predict (pid {first.pid}); wait for "
        "it to end or use another --csv\n"
    )
    ends_with_its_processes(first, family)
    assert first.returncode == 0
    paths = [row[0] for row in rows_of(table)[1:]]
    assert len(paths) == len(set(paths)) == 60  # every file once
    assert not (tmp_path / ".tags.csv.lock").exists()


def test_a_table_that_is_a_symlink_is_written_through(bundle, library, tmp_path):
    (tmp_path / "real").mkdir()
    link = tmp_path / "out.csv"
    link.symlink_to(tmp_path / "real" / "tags.csv")  # dangling until the first run writes the table
    for folder in ("0", "1"):
        done = subprocess.run(predict(bundle, library / folder, "--csv", link), capture_output=True,
                              text=True, timeout=TIMEOUT)  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "real" / "tags.csv")
    assert len(rows_of(tmp_path / "real" / "tags.csv")) == 21


# --- odd inputs ----------------------------------------------------------------------------------


def test_entries_predict_cannot_tag_are_one_line_each_and_the_run_goes_on(bundle, tmp_path):
    lib = tmp_path / "lib"
    good = tone(lib / "good.wav", 4.0)
    (lib / "dangling.mp3").symlink_to(lib / "nowhere.mp3")
    (lib / "loop.mp3").symlink_to(lib / "loop.mp3")
    (lib / "deeper").mkdir()
    (lib / "deeper" / "back").symlink_to(lib)  # a folder link back up: searched once
    tone(lib / "locked" / "inside.wav", 4.0)
    loud = lib / "loud.wav"  # finite float samples whose power overflowed float32 (a row of NaN before)
    t = np.arange(4 * 16000) / 16000
    sf.write(loud, (1e30 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, subtype="FLOAT")
    (lib / "locked").chmod(0)
    command = predict(bundle, lib, "--json", "--workers", "2")
    if os.geteuid() == 0:  # root reads any folder: drop the capabilities that let it
        if shutil.which("setpriv") is None:
            (lib / "locked").chmod(0o755)
            pytest.skip("running as root without setpriv (util-linux): no folder is unreadable")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    finally:
        (lib / "locked").chmod(0o755)
    assert done.returncode == 1, done.stderr
    err = done.stderr
    assert f"error: {lib / 'dangling.mp3'}: cannot tag: dangling symlink (its target " in err
    assert f"error: {lib / 'loop.mp3'}: cannot tag: symlink loop\n" in err
    assert f"error: {lib / 'locked'}: cannot tag: cannot read this folder: Permission denied\n" in err
    assert f"{loud}: cannot tag" not in err  # the float64 log-mel keeps any finite signal finite
    assert f"error: {lib / 'deeper' / 'back'}: cannot tag: symlink loop: leads back to {lib}, searched" in err
    assert "Traceback" not in err and "Warning" not in err
    assert "tagged 2 files " in err and "4 failed" in err

    def no_nan(name: str):
        raise AssertionError(f"{name} in the JSON")

    report = json.loads(done.stdout, parse_constant=no_nan)
    assert set(report["files"]) == {str(good), str(loud)}  # loud's probabilities: finite (no NaN above)
    assert report["failed"][str(lib / "loop.mp3")] == "symlink loop"
    assert set(report["failed"]) == {
        str(lib / n) for n in ("dangling.mp3", "loop.mp3", "locked", "deeper/back")
    }


@pytest.mark.parametrize("output", ["/dev/full", "a closed pipe"])
def test_info_whose_output_fails_is_one_line_and_status_2(bundle, output):
    """`mstagger info` lost its output silently on a full disk (exit 0)."""
    if output == "/dev/full":
        out = os.open("/dev/full", os.O_WRONLY)
    else:
        read_end, out = os.pipe()
        os.close(read_end)  # the reader went away before the first line
    try:
        done = subprocess.run([sys.executable, "-m", "mstagger", "info", str(bundle)], stdout=out,
                              stderr=subprocess.PIPE, text=True, timeout=TIMEOUT)  # fmt: skip
    finally:
        os.close(out)
    assert done.returncode == 2
    expected = "No space left on device" if output == "/dev/full" else "the output was closed (broken pipe)"
    assert done.stderr.startswith("error: ") and expected in done.stderr and done.stderr.count("\n") == 1
