"""Training: schedule, loss, selection, determinism and the model bundle."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import make_params
from mstagger.bundle import load_bundle
from mstagger.train import TrainData, Trainer, _selection_key, epoch_batches, lr_at, train
from mstagger.util import UserError

N_MELS, N_FRAMES, N_TAGS = 16, 64, 4


def make_data(n: int = 48, seed: int = 0) -> TrainData:
    """Tiny learnable data: tag j raises the energy of mel bands 4j..4j+3."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, N_TAGS)) < 0.4).astype(np.uint8)
    mel = rng.normal(size=(n, N_MELS, N_FRAMES)).astype(np.float32)
    for j in range(N_TAGS):
        mel[labels[:, j] == 1, 4 * j : 4 * j + 4] += 2.0
    split = np.array(["train"] * (n - 16) + ["valid"] * 8 + ["test"] * 8)
    return TrainData(
        mel=mel.astype(np.float16),
        labels=labels,
        tags=[f"tag{j}" for j in range(N_TAGS)],
        split=split,
        mean=np.zeros(N_MELS, np.float32),
        std=np.ones(N_MELS, np.float32),
    )


def small_params(**overrides):
    base = {"epochs": 3, "batch_size": 8, "lr_milestones": [2], "precision": "fp32", "device": "cpu"}
    return make_params(**{**base, **overrides})


def test_lr_schedule_divides_by_ten_after_milestones():
    lrs = [lr_at(e, 1e-3, [20, 30, 35], 0.1) for e in range(1, 41)]
    assert lrs[0] == lrs[19] == 1e-3
    assert lrs[20] == pytest.approx(1e-4) and lrs[29] == pytest.approx(1e-4)
    assert lrs[30] == pytest.approx(1e-5) and lrs[34] == pytest.approx(1e-5)
    assert lrs[35] == pytest.approx(1e-6) and lrs[39] == pytest.approx(1e-6)


def test_epoch_batches_are_a_pure_function_of_seed_and_epoch():
    rows = np.arange(33)
    a, b = epoch_batches(rows, 8, 1, 1), epoch_batches(rows, 8, 1, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(np.concatenate(a), np.concatenate(epoch_batches(rows, 8, 1, 2)))
    # 33 = 4 x 8 + 1: the single-clip remainder is dropped (BatchNorm needs two).
    assert [len(x) for x in a] == [8, 8, 8, 8]


def test_one_training_step_reduces_the_loss_on_a_tiny_batch():
    data = make_data()
    trainer = Trainer(data, small_params(), torch.device("cpu"))
    rows = data.rows("train")[:8]
    x = torch.from_numpy(data.mel[rows])
    y = torch.from_numpy(data.labels[rows].astype(np.float32))
    trainer.tagger.eval()  # same BatchNorm statistics and no dropout before and after the step
    before = torch.nn.functional.binary_cross_entropy_with_logits(trainer.tagger(x), y)
    trainer.tagger.train()
    trainer.optimizer.zero_grad()
    torch.nn.functional.binary_cross_entropy_with_logits(trainer.tagger(x), y).backward()
    trainer.optimizer.step()
    trainer.tagger.eval()
    after = torch.nn.functional.binary_cross_entropy_with_logits(trainer.tagger(x), y)
    assert after.item() < before.item()


def test_selection_prefers_auc_then_loss_and_survives_undefined_auc():
    assert _selection_key({"roc_auc": 0.8}, 0.5) > _selection_key({"roc_auc": 0.7}, 0.1)
    assert _selection_key({"roc_auc": 0.8}, 0.1) > _selection_key({"roc_auc": 0.8}, 0.2)
    assert _selection_key({"roc_auc": math.nan}, 0.1) > _selection_key({"roc_auc": math.nan}, 0.2)
    assert _selection_key({"roc_auc": 0.5}, 9.0) > _selection_key({"roc_auc": math.nan}, 0.0)


def run(tmp_path: Path, name: str, data: TrainData, **overrides) -> tuple[dict, Path]:
    out = tmp_path / name
    summary = train(data, small_params(**overrides), out / "model.pt", out / "log", "test-rev")
    return summary, out


def test_training_keeps_the_best_validation_epoch_and_logs_curves(tmp_path):
    summary, out = run(tmp_path, "a", make_data(), epochs=4)
    curve = pd.read_csv(out / "log/plots/metrics/val/roc_auc.tsv", sep="\t")
    loss = pd.read_csv(out / "log/plots/metrics/val/loss.tsv", sep="\t")
    assert len(curve) == len(loss) == 4
    # Best ROC-AUC; among equal ones the lowest validation loss; among equal both the first epoch.
    keys = list(zip(curve["roc_auc"], -loss["loss"], strict=True))
    best_step = keys.index(max(keys))
    assert summary["best_epoch"] == best_step + 1
    assert summary["val_roc_auc"] == pytest.approx(curve["roc_auc"].max())
    for tsv in ("train/loss.tsv", "val/loss.tsv", "val/pr_auc.tsv", "lr.tsv"):
        assert (out / "log/plots/metrics" / tsv).is_file()
    metrics = json.loads((out / "log/metrics.json").read_text())
    assert metrics["best"]["best_epoch"] == summary["best_epoch"]


def test_training_is_deterministic_on_cpu(tmp_path):
    data = make_data()
    _, a = run(tmp_path, "a", data, precision="bf16")
    _, b = run(tmp_path, "b", data, precision="bf16")
    assert (a / "log/metrics.json").read_text() == (b / "log/metrics.json").read_text()
    wa, wb = load_bundle(a / "model.pt").model.state_dict(), load_bundle(b / "model.pt").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    _, c = run(tmp_path, "c", data, precision="bf16", seed=7)
    assert (a / "log/metrics.json").read_text() != (c / "log/metrics.json").read_text()


def test_the_bundle_loads_alone_and_predicts(tmp_path):
    data = make_data()
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
    """One inference path: what selects the model is what evaluate and predict compute."""
    data = make_data()
    _, out = run(tmp_path, "a", data, precision=precision, epochs=2, bn_recalibration_clips=0)
    bundle = load_bundle(out / "model.pt")
    assert bundle.precision == precision
    # The training-time validation of the very weights in the bundle.
    trainer = Trainer(data, small_params(precision=precision), torch.device("cpu"))
    trainer.model.load_state_dict(bundle.model.state_dict())
    rows = data.rows("valid")
    _, during_training = trainer.score(rows)
    loaded = bundle.predict(data.mel[rows])
    np.testing.assert_allclose(loaded, during_training, rtol=0, atol=1e-6)
    # and the precision matters: the other precision gives other numbers
    other = "fp32" if precision == "bf16" else "bf16"
    trainer_other = Trainer(data, small_params(precision=other), torch.device("cpu"))
    trainer_other.model.load_state_dict(bundle.model.state_dict())
    assert np.abs(trainer_other.score(rows)[1] - loaded).max() > 1e-6


def test_corrupt_or_missing_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_bundle(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a bundle")
    with pytest.raises(UserError, match="not a readable model bundle"):
        load_bundle(bad)


def test_non_finite_loss_stops_training_and_keeps_the_last_good_model(tmp_path):
    data = make_data()
    _, out = run(tmp_path, "a", data, epochs=1)
    good = (out / "model.pt").read_bytes()
    broken = replace(data, mel=data.mel.copy())
    broken.mel[broken.rows("train")] = np.float16(np.inf)
    with pytest.raises(UserError, match="training loss became nan"):
        train(broken, small_params(epochs=1), out / "model.pt", out / "log2", "rev")
    assert (out / "model.pt").read_bytes() == good


def test_batch_dataset_pickles_a_memmap_as_its_path(tmp_path):
    import pickle

    from mstagger.train import BatchDataset

    path = tmp_path / "mel.npy"
    np.save(path, np.ones((64, N_MELS, N_FRAMES), np.float16))
    mel = np.load(path, mmap_mode="r")
    dataset = BatchDataset(mel, np.zeros((64, N_TAGS), np.uint8), [np.arange(4)])
    blob = pickle.dumps(dataset)
    assert len(blob) < mel.nbytes / 10  # the path travels, not the array
    clone = pickle.loads(blob)
    assert isinstance(clone.mel, np.memmap)
    assert torch.equal(clone[0][0], dataset[0][0])
