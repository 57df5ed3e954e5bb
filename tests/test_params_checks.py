"""Issue 22, part A: params read as DVC reads them, every number in the range its stage can use, every
``paths.*`` key checked like the others. Each case was reproduced on the code before the fix."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from helpers import (
    REPO,
    git_commit,
    merged,
    repo_params_dict,
    sh,
    tiny_train_data,
    write_params,
    write_train_inputs,
)
from mstagger import params as params_module
from mstagger.params import Params, ParamsError, load_params, params_from_dict

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


# -- every number in the range its stage can use, decided by check_params before any stage runs ---------


def run_stage(root: Path, stage: str = "check_params") -> subprocess.CompletedProcess:
    """Run ``python -m mstagger.<stage>`` in ``root`` as DVC runs it."""
    return subprocess.run(
        [sys.executable, "-m", f"mstagger.{stage}"], cwd=root, capture_output=True, text=True, timeout=300
    )


def refused(result: subprocess.CompletedProcess, key: str) -> str:
    """The one error line of a stage that refused ``key`` with status 2."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: params: {key}: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"spectrogram": {"clip_seconds": float("nan")}}, "spectrogram.clip_seconds"),
        ({"spectrogram": {"log_floor": float("nan")}}, "spectrogram.log_floor"),
        ({"extract": {"min_seconds": float("nan")}}, "extract.min_seconds"),
        ({"evaluate": {"baseline_c": float("nan")}}, "evaluate.baseline_c"),
        ({"split": {"valid_size": float("nan")}}, "split.valid_size"),
        ({"split": {"valid_size": float("inf")}}, "split.valid_size"),
        ({"seed": 2**64}, "seed"),
        ({"device": "cuda:x"}, "device"),
        ({"demo": {"sample_rate": 9000}}, "demo.sample_rate"),
        ({"spectrogram": {"clip_seconds": 0.05}}, "spectrogram"),  # 3 frames: the network needs 64
        ({"spectrogram": {"n_mels": 8}}, "spectrogram"),  # the network needs 16 mel bands
    ],
)
def test_check_params_refuses_values_that_failed_later(tmp_path, overrides, key):
    """Each passed check_params before and failed in a later stage (or corrupted its output)."""
    write_params(tmp_path, **overrides)
    refused(run_stage(tmp_path), key)
    assert not (tmp_path / "metrics" / "params.json").exists()


def fields_of(cls: type, tp: type, prefix: str = "") -> list[str]:
    """Every param of type ``tp`` below ``cls``, as dotted keys."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += fields_of(hints[f.name], tp, f"{prefix}{f.name}.")
        elif hints[f.name] is tp:
            keys.append(prefix + f.name)
    return keys


def with_value(key: str, value: object) -> dict:
    """The repository's params with ``key`` (dotted) set to ``value``."""
    data = repo_params_dict()
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return data


@pytest.mark.parametrize("key", fields_of(Params, float))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 10**400])
def test_no_float_param_takes_a_non_finite_value(key, value):
    with pytest.raises(ParamsError, match=rf"^params: {re.escape(key)}: must be a finite number"):
        params_from_dict(with_value(key, value))


@pytest.mark.parametrize("key", fields_of(Params, int))
def test_no_int_param_takes_more_than_64_bits(key):
    """NumPy and PyTorch take int64 (torch.manual_seed raised on 2**64, after DVC deleted the model)."""
    with pytest.raises(ParamsError, match=rf"^params: {re.escape(key)}: must fit in 64 bits"):
        params_from_dict(with_value(key, 2**64))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"spectrogram": {"log_floor": 0.0}}, "spectrogram.log_floor"),  # log(0) = -inf out of silence
        ({"spectrogram": {"log_floor": -1.0}}, "spectrogram.log_floor"),
        ({"spectrogram": {"clip_seconds": 1e300}}, "spectrogram.clip_seconds"),  # frames overflow
        ({"device": "cuda:01"}, "device"),
        ({"device": "cuda:128"}, "device"),  # torch.device("cuda:128") is cuda:-128
        ({"device": "cuda: 1"}, "device"),
        ({"download": {"timeout": 1e10}}, "download.timeout"),  # socket: timestamp out of range
        ({"download": {"retries": 1100}}, "download.retries"),  # the backoff overflows time.sleep
        ({"lr_gamma": float("nan")}, "lr_gamma"),
        ({"extract": {"workers": 10**6}}, "extract.workers"),  # a million decoding processes
        ({"num_workers": 10**6}, "num_workers"),
        ({"nproc_per_node": 10**6}, "nproc_per_node"),  # on the CPU, a million trainers
    ],
)
def test_values_no_stage_can_use_name_the_key(overrides, key):
    with pytest.raises(ParamsError, match=rf"^params: {re.escape(key)}: "):
        params_from_dict(merged(repo_params_dict(), overrides))


def test_the_devices_accepted_are_those_torch_parses_as_written():
    torch = pytest.importorskip("torch")
    for name in ("cpu", "cuda", "cuda:0", "cuda:7", "cuda:127"):
        assert str(torch.device(name)) == name
        params_from_dict(with_value("device", name))


def test_the_demo_rates_are_those_the_mp3_writer_takes():
    """MP3_SAMPLE_RATES is what libsndfile's MP3 writer accepts among common and near-miss rates."""
    sf = pytest.importorskip("soundfile")
    import io

    import numpy as np

    rates = params_module.MP3_SAMPLE_RATES
    candidates = {*rates, 1, 7999, 8001, 9000, 10000, 11024, 20000, 44000, 64000, 88200, 96000}
    taken = []
    for rate in sorted(candidates):
        try:
            sf.write(
                io.BytesIO(), np.zeros(rate // 10, np.float32), rate, format="MP3", subtype="MPEG_LAYER_III"
            )
        except sf.LibsndfileError:
            continue
        taken.append(rate)
    assert tuple(taken) == rates


def test_check_params_refuses_a_gpu_this_machine_lacks(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    write_params(tmp_path, device="cuda")
    assert "PyTorch sees no CUDA device" in refused(run_stage(tmp_path), "device")


# -- every paths.* entry checked like the others ---------------------------------------------------------


def test_a_checkpoint_at_the_model_path_is_refused_before_training(tmp_path):
    """Training used to write the bundle, then delete "its checkpoint", which was the bundle (exit 0)."""
    write_train_inputs(tmp_path, tiny_train_data())
    paths = {**repo_params_dict()["paths"], "checkpoint": "models/model.pt"}
    write_params(tmp_path, paths=paths, epochs=1, batch_size=8, lr_milestones=[1], bn_recalibration_clips=0)
    line = refused(run_stage(tmp_path, "train"), "paths.checkpoint")
    assert "models/model.pt is also paths.model" in line
    refused(run_stage(tmp_path), "paths.checkpoint")


def test_a_checkpoint_at_params_yaml_is_refused_and_the_file_kept(tmp_path):
    """Train set the user's params.yaml aside as an unreadable checkpoint."""
    write_params(tmp_path, paths={**repo_params_dict()["paths"], "checkpoint": "params.yaml"})
    before = (tmp_path / "params.yaml").read_bytes()
    assert "project's own params.yaml" in refused(run_stage(tmp_path), "paths.checkpoint")
    assert (tmp_path / "params.yaml").read_bytes() == before
    assert not (tmp_path / "params.yaml.set-aside").exists()


@pytest.mark.parametrize(
    ("local_dir", "relation"),
    [("data/raw", "is paths.raw"), ("data/raw/mtat", "lies in paths.raw"), ("data", "holds paths.raw")],
)
def test_an_mtat_copy_that_meets_an_output_is_refused_and_kept(tmp_path, local_dir, relation):
    """download replaces paths.raw whole: an MTAT copy there was deleted with it (check_params passed)."""
    copy = tmp_path / local_dir / "annotations_final.csv"
    copy.parent.mkdir(parents=True)
    copy.write_text("the user's own file\n")
    write_params(tmp_path, dataset="mtat", download={"local_dir": local_dir})
    line = refused(run_stage(tmp_path), "download.local_dir")
    assert f"{local_dir} {relation} (data/raw)" in line
    assert copy.read_text() == "the user's own file\n"


def test_an_mtat_copy_outside_the_outputs_passes(tmp_path):
    (tmp_path / "mtat").mkdir()
    write_params(tmp_path, dataset="mtat", download={"local_dir": str(tmp_path / "mtat")})
    assert run_stage(tmp_path).returncode == 0


def test_a_checkpoint_path_holding_a_users_file_is_refused(tmp_path):
    write_params(tmp_path, paths={**repo_params_dict()["paths"], "checkpoint": "notes/todo.txt"})
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("my notes\n")
    assert refused(run_stage(tmp_path), "paths.checkpoint") == (
        "error: params: paths.checkpoint: notes/todo.txt exists and is no training checkpoint; train would "
        "move it aside and delete the file it writes there when done. Move it away or point "
        "paths.checkpoint elsewhere"
    )
    assert (tmp_path / "notes" / "todo.txt").read_text() == "my notes\n"


@pytest.mark.parametrize(
    ("paths", "key"),
    [
        ({"checkpoint": "models/model.pt"}, "paths.checkpoint"),
        ({"checkpoint": "params.yaml"}, "paths.checkpoint"),
        ({"checkpoint": "dvc.lock"}, "paths.checkpoint"),
        ({"checkpoint": ".dvc/cache/x.pt"}, "paths.checkpoint"),
        ({"checkpoint": "src/mstagger/train.py"}, "paths.checkpoint"),
        ({"checkpoint": "metrics/train.json"}, "paths.checkpoint"),  # the train stage's summary
        ({"checkpoint": "data/raw/checkpoint.pt"}, "paths.checkpoint"),  # download replaces data/raw
        ({"checkpoint": "./models//model.pt"}, "paths.checkpoint"),
        ({"model": "metrics/test.json"}, "paths.model"),
        ({"model": "data"}, "paths.model"),  # a file where folders must be
        ({"model": "plots"}, "paths.model"),
        ({"features": "models/model.pt/features"}, "paths.model"),
        ({"metrics": "plots/metrics"}, "paths.plots"),
        ({"raw": "metrics"}, "paths.raw"),
        ({"plots": "metrics/train"}, "paths.plots"),
        ({"train_log": "dvc.yaml"}, "paths.train_log"),
    ],
)
def test_no_two_paths_name_the_same_file_or_one_inside_another(paths, key):
    with pytest.raises(ParamsError, match=rf"^params: {re.escape(key)}: "):
        params_from_dict(merged(repo_params_dict(), {"paths": paths}))


def test_the_download_cache_must_survive_the_download_stage():
    expected = r"^params: download.cache_dir: data/raw/cache lies in paths.raw \(data/raw\)"
    with pytest.raises(ParamsError, match=expected):
        params_from_dict(merged(repo_params_dict(), {"download": {"cache_dir": "data/raw/cache"}}))


def test_metrics_may_hold_the_training_log_and_the_model():
    """paths.metrics is no whole folder: only the files the stages write there are claimed."""
    p = params_from_dict(merged(repo_params_dict(), {"paths": {"model": "metrics/model.pt"}}))
    assert (p.paths.train_log, p.paths.model) == ("metrics/train", "metrics/model.pt")


@pytest.mark.parametrize("key", ["raw", "features", "model", "checkpoint", "train_log", "metrics", "plots"])
def test_a_path_through_a_link_out_of_the_repository_is_refused(tmp_path, key):
    """extract wrote 20 MB through such a link before DVC refused the output."""
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    repo.mkdir()
    outside.mkdir()
    (repo / "out").symlink_to(outside, target_is_directory=True)
    defaults = repo_params_dict()["paths"]
    write_params(repo, paths={**defaults, key: f"out/{Path(defaults[key]).name}"})
    line = refused(run_stage(repo), f"paths.{key}")
    assert f"out is a link to {outside}" in line
    assert list(outside.iterdir()) == []


def test_the_metrics_folder_itself_may_not_be_a_link_out(tmp_path):
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    repo.mkdir()
    outside.mkdir()
    (repo / "metrics").symlink_to(outside, target_is_directory=True)
    write_params(repo, paths={**repo_params_dict()["paths"], "train_log": "logs/train"})
    refused(run_stage(repo), "paths.metrics")
    assert list(outside.iterdir()) == []


def test_links_inside_the_repository_are_fine(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "data").symlink_to(tmp_path / "store", target_is_directory=True)
    write_params(tmp_path)
    result = run_stage(tmp_path)
    assert result.returncode == 0, result.stderr
