"""Training: schedule, loss, selection, determinism, the data paths and the model bundle."""

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import make_params, tiny_train_data
from mstagger.core.errors import UserError
from mstagger.evaluation.scores import macro_scores
from mstagger.inference.bundle import load_bundle
from mstagger.train import build_tagger, lr_at, make_optimizer, train
from mstagger.training.batches import DeviceSource, StreamSource, epoch_batches
from mstagger.training.distributed import World
from mstagger.training.epoch import validate
from mstagger.training.selection import selection_key, selects

N_TAGS = 4
CPU = torch.device("cpu")


def small_params(**overrides):
    base = {"epochs": 3, "batch_size": 8, "lr_milestones": [2], "precision": "fp32", "device": "cpu"}
    return make_params(**{**base, **overrides})


def run(tmp_path: Path, name: str, data, **overrides) -> tuple[dict, Path]:
    out = tmp_path / name
    params = small_params(**overrides)
    summary = train(data, params, out / "model.pt", out / "log", out / "ckpt" / "checkpoint.pt", "test-rev")
    return summary, out


def test_lr_schedule_divides_by_ten_after_milestones():
    lrs = [lr_at(e, 1e-3, [20, 30, 35], 0.1) for e in range(1, 41)]
    assert lrs[0] == lrs[19] == 1e-3
    assert lrs[20] == pytest.approx(1e-4) and lrs[29] == pytest.approx(1e-4)
    assert lrs[30] == pytest.approx(1e-5) and lrs[34] == pytest.approx(1e-5)
    assert lrs[35] == pytest.approx(1e-6) and lrs[39] == pytest.approx(1e-6)


def test_one_training_step_reduces_the_loss_on_a_tiny_batch():
    data = tiny_train_data()
    params = small_params()
    tagger = build_tagger(data, params, CPU, World())
    optimizer = make_optimizer(tagger, params, CPU)
    rows = data.rows("train")[:8]
    x = torch.from_numpy(data.mel[rows])
    y = torch.from_numpy(data.labels[rows].astype(np.float32))
    tagger.eval()  # same BatchNorm statistics and no dropout before and after the step
    before = torch.nn.functional.binary_cross_entropy_with_logits(tagger(x), y)
    tagger.train()
    optimizer.zero_grad()
    torch.nn.functional.binary_cross_entropy_with_logits(tagger(x), y).backward()
    optimizer.step()
    tagger.eval()
    after = torch.nn.functional.binary_cross_entropy_with_logits(tagger(x), y)
    assert after.item() < before.item()


def test_selection_prefers_auc_then_loss_and_survives_undefined_auc():
    def key(roc, loss):
        return selection_key({"roc_auc": roc, "loss": loss})

    assert key(0.8, 0.5) > key(0.7, 0.1)
    assert key(0.8, 0.1) > key(0.8, 0.2)
    assert key(math.nan, 0.1) > key(math.nan, 0.2)
    assert key(0.5, 9.0) > key(math.nan, 0.0)


def kept_epoch(rocs: list[float], tolerance: float) -> int:
    """The obvious statement of the rule: the last epoch (1-based) within ``tolerance`` of the best."""
    return max(e for e, roc in enumerate(rocs, 1) if roc >= max(rocs) - tolerance)


def test_selection_keeps_the_last_epoch_within_the_tolerance_of_the_best():
    curves = [
        [0.70, 0.80, 0.79, 0.81, 0.805, 0.80],  # flat end: the last epoch within 0.005 of 0.81
        [0.70, 0.80, 0.79, 0.81, 0.80, 0.78],  # falls off: the best epoch
        [0.70, 0.80, 0.799, 0.797, 0.82, 0.70],  # a later best makes earlier near-bests ineligible
        [0.70, 0.70, 0.70],  # ties
    ]
    for rocs in curves:
        for tolerance in (0.0, 0.005, 0.02):
            kept, best = None, (-math.inf, -math.inf)
            for epoch, roc in enumerate(rocs, 1):
                key = selection_key({"roc_auc": roc, "loss": 1.0})
                if selects(key, best, tolerance):
                    kept, best = epoch, max(best, key)
            expected = kept_epoch(rocs, tolerance) if tolerance else rocs.index(max(rocs)) + 1
            assert kept == expected, (rocs, tolerance)
    # an undefined ROC-AUC is never "within" the tolerance: the loss decides among those alone
    nan = selection_key({"roc_auc": math.nan, "loss": 1.0})
    assert not selects(nan, selection_key({"roc_auc": 0.5, "loss": 1.0}), 0.1)
    assert not selects(nan, selection_key({"roc_auc": math.nan, "loss": 0.5}), 0.1)


@pytest.mark.parametrize("tolerance", [0.0, 0.02])
def test_training_keeps_the_selected_validation_epoch_and_logs_curves(tmp_path, tolerance):
    summary, out = run(tmp_path, "a", tiny_train_data(), epochs=4, selection_tolerance=tolerance)
    curve = pd.read_csv(out / "log/plots/metrics/val/roc_auc.tsv", sep="\t")
    loss = pd.read_csv(out / "log/plots/metrics/val/loss.tsv", sep="\t")
    assert len(curve) == len(loss) == 4 and curve["step"].tolist() == [0, 1, 2, 3]
    if tolerance == 0:  # Best ROC-AUC; among equal ones the lowest validation loss; then the first epoch.
        keys = list(zip(curve["roc_auc"], -loss["loss"], strict=True))
        assert summary["best_epoch"] == keys.index(max(keys)) + 1
    else:
        assert summary["best_epoch"] == kept_epoch(curve["roc_auc"].tolist(), tolerance)
    assert summary["val_roc_auc"] == pytest.approx(curve["roc_auc"][summary["best_epoch"] - 1])
    assert summary["val_roc_auc_max"] == pytest.approx(curve["roc_auc"].max())
    for tsv in ("train/loss.tsv", "val/loss.tsv", "val/pr_auc.tsv", "lr.tsv"):
        assert (out / "log/plots/metrics" / tsv).is_file()
    metrics = json.loads((out / "log/metrics.json").read_text())
    assert metrics["best"]["best_epoch"] == summary["best_epoch"]
    assert not (out / "ckpt" / "checkpoint.pt").exists()  # a finished run leaves no checkpoint


def test_training_is_deterministic_on_cpu(tmp_path):
    data = tiny_train_data()
    sa, a = run(tmp_path, "a", data, precision="bf16")
    sb, b = run(tmp_path, "b", data, precision="bf16")
    assert (a / "log/metrics.json").read_text() == (b / "log/metrics.json").read_text()
    wa, wb = load_bundle(a / "model.pt").model.state_dict(), load_bundle(b / "model.pt").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sc, c = run(tmp_path, "c", data, precision="bf16", seed=7)
    assert (a / "log/metrics.json").read_text() != (c / "log/metrics.json").read_text()
    # The summary's weights digest says the same: equal for equal weights, and it is the bundle's.
    assert sa["weights_sha256"] == sb["weights_sha256"] != sc["weights_sha256"]
    assert sa["weights_sha256"] == load_bundle(a / "model.pt").weights_sha256


def test_cpu_training_gives_the_same_bits_whatever_thread_count_the_machine_has(tmp_path):
    """The backward pass's sums are split by thread, so a step's bits depend on the thread count:
    training uses params' cpu_threads (default 2), not what the process was started with."""
    data = tiny_train_data()
    before = torch.get_num_threads()

    def weights_after(name: str, ambient: int, **extra) -> tuple[dict, dict]:
        torch.set_num_threads(ambient)  # as on a machine with this many cores
        summary, out = run(tmp_path, name, data, epochs=1, lr_milestones=[1], **extra)
        return summary, load_bundle(out / "model.pt").model.state_dict()

    try:
        (s1, one), (s2, two) = weights_after("one", 1), weights_after("two", 2)
        assert all(torch.equal(one[k], two[k]) for k in one)
        assert s1["cpu_threads"] == s2["cpu_threads"] == 2
        _, unpinned = weights_after("unpinned", 1, cpu_threads=0)
        assert not all(torch.equal(one[k], unpinned[k]) for k in one)  # 1 thread: other bits
    finally:
        torch.set_num_threads(before)


def test_deterministic_training_runs_on_the_cpu_with_the_same_bits(tmp_path, monkeypatch):
    """deterministic: true asks for deterministic algorithms (on CUDA also no cuDNN autotuning and
    cuBLAS's fixed workspace); the CPU's numbers are the same either way."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    data = tiny_train_data()
    _, plain = run(tmp_path, "plain", data, epochs=1, lr_milestones=[1])
    try:
        summary, det = run(tmp_path, "det", data, epochs=1, lr_milestones=[1], deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    assert summary["deterministic"] is True
    wa, wb = (
        load_bundle(plain / "model.pt").model.state_dict(),
        load_bundle(det / "model.pt").model.state_dict(),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_data_on_the_device_and_streamed_give_the_same_batches_and_the_same_model(tmp_path):
    data = tiny_train_data()
    path = tmp_path / "mel.npy"
    np.save(path, data.mel)
    memmap = np.load(path, mmap_mode="r")
    batches = epoch_batches(data.rows("train"), 8, 1337, 3)
    resident = np.concatenate([data.rows("train"), data.rows("valid")])
    on_device = list(DeviceSource(memmap, data.labels, resident, CPU).batches(batches))
    streamed = list(StreamSource(memmap, data.labels, CPU, num_workers=2).batches(batches))
    assert len(on_device) == len(streamed) == len(batches)
    for (m1, y1), (m2, y2) in zip(on_device, streamed, strict=True):
        assert m1.dtype == m2.dtype == torch.float16 and torch.equal(m1, m2) and torch.equal(y1, y2)
    # and so the whole run: bit-identical weights and curves
    mapped = replace(data, mel=memmap)
    _, a = run(tmp_path, "device", mapped, data_on_device=True)
    _, b = run(tmp_path, "stream", mapped, data_on_device=False, num_workers=1)
    wa, wb = load_bundle(a / "model.pt").model.state_dict(), load_bundle(b / "model.pt").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "log/metrics.json").read_text() == (b / "log/metrics.json").read_text()


def test_a_failing_run_still_closes_its_batch_source(tmp_path, monkeypatch):
    """The streamed source's DataLoader workers persist through the run: train() stops them even when
    an epoch fails."""
    import mstagger.train as train_module

    closed = []
    monkeypatch.setattr(StreamSource, "close", lambda self: closed.append(self))

    def failing_epochs(*args):
        raise RuntimeError("an epoch failed")

    monkeypatch.setattr(train_module, "epoch_loop", failing_epochs)
    with pytest.raises(RuntimeError, match="an epoch failed"):
        run(tmp_path, "fails", tiny_train_data(), data_on_device=False, num_workers=0)
    assert len(closed) == 1


def test_the_bundle_loads_alone_and_predicts(tmp_path):
    data = tiny_train_data()
    summary, out = run(tmp_path, "a", data)
    bundle_path = tmp_path / "elsewhere.pt"
    (out / "model.pt").rename(bundle_path)
    for p in out.rglob("*"):  # nothing of the run is left but the bundle
        if p.is_file():
            p.unlink()
    bundle = load_bundle(bundle_path)
    assert bundle.tags == data.tags
    assert bundle.git_rev == "test-rev"
    assert bundle.training["best_epoch"] == summary["best_epoch"]
    assert bundle.params["lr"] == 1e-3 and bundle.spectrogram.n_mels == 128
    np.testing.assert_array_equal(bundle.mean, data.mean)
    probs = bundle.predict(data.mel[:5])
    assert probs.shape == (5, N_TAGS) and np.all((probs >= 0) & (probs <= 1))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_validation_and_the_loaded_bundle_give_the_same_probabilities(tmp_path, precision):
    """One inference path: what selected the epoch is what evaluate and predict compute."""
    data = tiny_train_data()
    summary, out = run(tmp_path, "a", data, precision=precision, epochs=2)
    bundle = load_bundle(out / "model.pt")
    assert bundle.precision == precision
    rows = data.rows("valid")
    loaded = bundle.predict(data.mel[rows])
    # the validation numbers recorded during training come back from the loaded bundle
    scores = macro_scores(data.labels[rows], loaded)
    assert scores["roc_auc"] == pytest.approx(summary["val_roc_auc"], abs=1e-9)
    logits = torch.logit(torch.from_numpy(loaded.astype(np.float64)))
    target = torch.from_numpy(data.labels[rows].astype(np.float64))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target).item()
    assert loss == pytest.approx(summary["val_loss"], rel=1e-5)
    # and the training-time validation of the bundle's weights gives the same probabilities
    params = small_params(precision=precision)
    source = DeviceSource(data.mel, data.labels, rows, CPU)
    val = validate(bundle.tagger, source, data.labels, rows, params.precision, params.batch_size)
    assert val["loss"] == pytest.approx(summary["val_loss"], rel=1e-6)


def test_corrupt_or_missing_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_bundle(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a bundle")
    with pytest.raises(UserError, match="not a readable model bundle"):
        load_bundle(bad)


def test_non_finite_loss_stops_training_and_leaves_the_bundle_alone(tmp_path):
    data = tiny_train_data()
    _, out = run(tmp_path, "a", data, epochs=1)
    good = (out / "model.pt").read_bytes()
    broken = replace(data, mel=data.mel.copy())
    broken.mel[broken.rows("train")] = np.float16(np.inf)
    params = small_params(epochs=1)
    with pytest.raises(UserError, match=r"training loss became nan at step 1 of epoch 1/1"):
        train(broken, params, out / "model.pt", out / "log2", out / "ckpt.pt", "rev")
    assert (out / "model.pt").read_bytes() == good


def test_a_split_too_small_for_one_step_is_an_error(tmp_path):
    data = tiny_train_data()
    one_train = replace(data, split=np.array(["train"] + ["valid"] * (len(data.split) - 1)))
    with pytest.raises(UserError, match=r"1 train and \d+ valid clips: training needs a batch of at least 2"):
        run(tmp_path, "a", one_train)
    assert not (tmp_path / "a" / "model.pt").exists()


def test_the_log_reports_the_data_path(tmp_path, caplog):
    caplog.set_level("INFO", logger="mstagger")
    run(tmp_path, "a", tiny_train_data(), epochs=1, data_on_device=True)
    assert "data on cpu: 40 clips" in caplog.text  # the train and valid clips, not the test ones
