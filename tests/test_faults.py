"""The fault table, each row for real: bad params, users' files in the way, read-only and full disks,
and stage processes killed (SIGKILL) at chosen moments. Each test asserts what the user sees, what is
kept, and that the next `dvc repro` recovers with nothing stale.

Every test works on its own copy of one tiny pipeline repository that has run once.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import make_pipeline_repo, sh, tmpfs

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_pipeline_repo(tmp_path_factory.mktemp("faults") / "repo")


@pytest.fixture
def repo(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(pristine, copy, symlinks=True)
    return copy


def set_params(repo: Path, **changes) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in changes.items():
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def recovers(repo: Path) -> None:
    """The pipeline is back to its committed state, and nothing temporary is left anywhere."""
    sh(["git", "checkout", "--", "params.yaml"], repo)
    sh(["dvc", "repro"], repo)
    assert "up to date" in sh(["dvc", "status"], repo).stdout
    leftovers = [p for p in repo.rglob("*.tmp") if ".dvc" not in p.parts and ".git" not in p.parts]
    assert leftovers == []


def lock_hash(repo: Path, stage: str, out: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == out)


def tree_digest(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def session_processes(sid: int) -> dict[int, str]:
    """{pid: command line} of the live processes of session ``sid``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return found


def wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


# --- bad params ------------------------------------------------------------------------------------


def test_a_users_folder_named_as_paths_raw_survives_dvc_repro(repo):
    precious = repo / "notes" / "precious"
    precious.mkdir(parents=True)
    (precious / "thesis.txt").write_text("years of work")
    set_params(repo, **{"paths.raw": "notes"})
    result = sh(["dvc", "repro"], repo, check=False)
    assert result.returncode != 0
    assert "error: paths.raw: notes already exists and holds files the download stage did not write" in (
        result.stderr
    )
    assert "Running stage 'download'" not in result.stdout  # stopped before DVC deleted anything
    assert (precious / "thesis.txt").read_text() == "years of work"
    recovers(repo)
    assert (precious / "thesis.txt").read_text() == "years of work"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"paths.raw": "/tmp/victim"}, "params: paths.raw: must be a relative path inside the repository"),
        ({"paths.raw": "../victim"}, "params: paths.raw: must be a relative path inside the repository"),
        ({"batch_size": 1}, "params: batch_size: must be at least 2 (BatchNorm needs two clips per batch)"),
        ({"learning_rate": 0.1}, "params: learning_rate: unknown key"),
        # (an output inside another DVC refuses by itself; the checkpoint is no output, so we check)
        ({"paths.checkpoint": "data/raw/c.pt"}, "params: paths.checkpoint: data/raw/c.pt lies in paths.raw"),
        # issue 22: train deleted the model it wrote; the network refused 3 frames after 3 stages reran
        (
            {"paths.checkpoint": "models/model.pt"},
            "params: paths.checkpoint: models/model.pt is also paths.model",
        ),
        ({"spectrogram.clip_seconds": 0.05}, "params: spectrogram: 32 mel bands x 3 frames"),
        ({"weight_decay": float("nan")}, "params: weight_decay: must be a finite number, got nan"),
    ],
    ids=[
        "absolute-path",
        "dotdot-path",
        "batch-size-1",
        "unknown-top-level-key",
        "checkpoint-inside-raw",
        "checkpoint-is-the-model",
        "spectrogram-too-small-for-the-network",
        "weight-decay-nan",
    ],
)
def test_a_bad_param_is_one_line_before_any_work(repo, changes, message):
    outside = repo.parent / "victim"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    set_params(repo, **changes)
    result = sh(["dvc", "repro"], repo, check=False)
    assert result.returncode != 0
    assert f"error: {message}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Running stage 'download'" not in result.stdout
    assert (outside / "keep.txt").read_text() == "mine"
    recovers(repo)


# --- the disk -------------------------------------------------------------------------------------


def test_an_unwritable_model_folder_fails_at_the_start_not_after_training(repo):
    before = (repo / "models" / "model.pt").read_bytes()
    backup = repo.parent / "models-backup"
    shutil.copytree(repo / "models", backup)
    set_params(repo, lr=0.002)  # something for train to do
    with tmpfs(repo / "models", "1m", read_only=True):
        result = sh(["dvc", "repro", "train"], repo, check=False)
    shutil.rmtree(repo / "models", ignore_errors=True)
    shutil.copytree(backup, repo / "models")
    assert result.returncode != 0
    assert "error: cannot write into models" in result.stderr
    assert "Read-only file system" in result.stderr
    assert "epoch  1" not in result.stderr  # not a single epoch was spent
    assert "Traceback" not in result.stderr
    assert (repo / "models" / "model.pt").read_bytes() == before
    recovers(repo)


def test_a_full_disk_stops_extract_before_it_decodes_anything(repo):
    set_params(repo, **{"paths.features": "small/features"})
    with tmpfs(repo / "small", "32k"):
        result = sh(["dvc", "repro", "extract"], repo, check=False)
        assert sorted(p.name for p in (repo / "small").iterdir()) == []  # no staging folder left
    assert result.returncode != 0
    assert "error: not enough disk space in small/.features." in result.stderr
    assert "Traceback" not in result.stderr
    assert "skipped clip" not in result.stderr  # it stopped before decoding
    shutil.rmtree(repo / "small", ignore_errors=True)
    recovers(repo)


def test_a_disk_that_fills_up_while_writing_is_one_line_and_keeps_the_old_outputs(repo):
    before = tree_digest(repo / "data" / "prepared")
    set_params(repo, **{"paths.prepared": "tiny/prepared", "seed": 7})
    with tmpfs(repo / "tiny", "8k"):  # room for the staging folder, not for the files
        result = sh([sys.executable, "-m", "mstagger.prepare"], repo, check=False)
        assert sorted(p.name for p in (repo / "tiny").iterdir()) == []  # the staging folder went
    assert result.returncode == 2
    # (it names the file in the staging folder the output is built in: tiny/.prepared.<random>.tmp)
    assert re.search(
        r"error: disk full while writing into tiny/\.prepared\.\w+\.tmp/\S+; free some", result.stderr
    )
    assert "Traceback" not in result.stderr
    assert tree_digest(repo / "data" / "prepared") == before
    shutil.rmtree(repo / "tiny", ignore_errors=True)
    recovers(repo)


def test_predict_names_the_bad_device_flag(repo):
    song = repo / "data" / "raw" / next(p for p in (repo / "data" / "raw").rglob("*.mp3") if p.stat().st_size)
    for device, message in (
        ("bogus", "error: --device: must be auto, cpu, cuda or cuda:N, got 'bogus'"),
        ("cuda:0", "error: --device: 'cuda:0' asked for, but PyTorch sees no CUDA device; use auto or cpu"),
    ):
        if device.startswith("cuda") and __import__("torch").cuda.is_available():
            continue
        result = sh(["mstagger", "predict", str(song), "--device", device], repo, check=False)
        assert result.returncode == 2
        assert result.stderr.strip() == message


# --- killed processes -----------------------------------------------------------------------------


def test_extract_killed_midway_leaves_no_worker_and_the_next_repro_recovers(repo):
    set_params(repo, **{"extract.workers": 2})
    features_hash = lock_hash(repo, "extract", "data/features")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        ["dvc", "repro", "-f", "-s", "extract"],
        cwd=repo,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    data = repo / "data"
    wait_for(
        lambda: any(p.name.startswith(".features.") and (p / "mel.npy").exists() for p in data.iterdir())
    )
    time.sleep(0.5)  # the workers are decoding
    procs = session_processes(proc.pid)
    stage_pid = next(
        p for p, cmd in procs.items() if "mstagger.extract" in cmd and "python" in cmd.split()[0]
    )
    assert any("multiprocessing" in cmd for cmd in procs.values()), procs  # it decodes in worker processes
    os.kill(stage_pid, signal.SIGKILL)  # the stage dies, as in a crash or an OOM kill
    proc.wait(timeout=60)
    assert proc.returncode != 0
    wait_for(lambda: not session_processes(proc.pid), timeout=10)  # the workers ended with their parent
    # dvc deleted the old features before running the stage; the next repro brings them back (from
    # DVC's run cache, so the stage does not start and its staging folder stays until it does)
    sh(["git", "checkout", "--", "params.yaml"], repo)
    sh(["dvc", "repro"], repo)
    assert lock_hash(repo, "extract", "data/features") == features_hash
    assert "up to date" in sh(["dvc", "status"], repo).stdout
    sh(["dvc", "repro", "-f", "-s", "extract"], repo)  # the stage's next start removes the leftovers
    assert lock_hash(repo, "extract", "data/features") == features_hash
    recovers(repo)


def probe(repo: Path, mode: str) -> None:
    """Run the fault probe in ``repo`` until it pauses at its moment, then SIGKILL it."""
    flag = repo / "paused.flag"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "fault_probe.py"), mode, str(flag)],
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: flag.exists() or proc.poll() is not None)
    assert proc.poll() is None, "the probe ended before its moment"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    flag.unlink()


def test_prepare_killed_between_its_writes_leaves_the_old_outputs_whole(repo):
    before = tree_digest(repo / "data" / "prepared")
    set_params(repo, seed=7)  # a new split and new statistics, had it finished
    probe(repo, "prepare-between-writes")
    assert tree_digest(repo / "data" / "prepared") == before  # the old split beside the old statistics
    leftovers = [p.name for p in (repo / "data").iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".prepared.")  # its staging folder
    # the next run of the stage removes the leftovers and writes the new outputs whole
    sh([sys.executable, "-m", "mstagger.prepare"], repo)
    assert [p for p in (repo / "data").iterdir() if p.name.endswith(".tmp")] == []
    assert tree_digest(repo / "data" / "prepared") != before
    recovers(repo)


def test_train_killed_mid_save_of_the_bundle_keeps_the_old_bundle(repo):
    before = (repo / "models" / "model.pt").read_bytes()
    set_params(repo, lr=0.002)
    probe(repo, "train-mid-bundle-save")
    assert (repo / "models" / "model.pt").read_bytes() == before  # never half a bundle in its place
    assert len(list((repo / "models").glob(".model.pt.*.tmp"))) == 1
    assert (repo / ".cache" / "train" / "checkpoint.pt").is_file()  # the finished training is kept
    result = sh(["dvc", "repro"], repo)
    assert "resuming from .cache/train/checkpoint.pt after epoch 2 of 2" in result.stdout + result.stderr
    assert list((repo / "models").glob(".model.pt.*.tmp")) == []
    assert not (repo / ".cache" / "train" / "checkpoint.pt").exists()
    recovers(repo)
