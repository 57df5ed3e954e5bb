"""Decision thresholds: chosen per tag on validation for F1, stored in the bundle, scored by evaluate."""

import json
from itertools import pairwise

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score

from helpers import make_params, tiny_train_data
from mstagger.core.errors import UserError
from mstagger.evaluate import evaluate
from mstagger.evaluation.scores import DEFAULT_THRESHOLD, f1_thresholds, scores_at_thresholds
from mstagger.inference.bundle import FORMAT, load_bundle, save_bundle
from mstagger.inference.tagger import Tagger
from mstagger.model import MultiScaleCNN
from mstagger.params import SpectrogramParams
from mstagger.train import train


def brute_force_threshold(truth, score):
    """The lowest of the distinct scores that reaches the best F1 with a precision above chance."""
    candidates = [c for c in np.unique(score) if precision_score(truth, score >= c) > truth.mean()]
    f1 = [f1_score(truth, score >= c) for c in candidates]
    return candidates[int(np.argmax(f1))]


def test_thresholds_maximise_f1_take_the_lower_of_ties_and_default_without_positives():
    rng = np.random.default_rng(0)
    y = (rng.random((120, 5)) < 0.3).astype(np.uint8)
    p = np.clip(0.35 * y + 0.65 * rng.random((120, 5)), 0, 1).astype(np.float32)
    p[:40, 1] = 0.5  # many equal scores
    y[:, 4] = 0  # a tag without a positive
    thresholds, fallback = f1_thresholds(y, p)
    assert thresholds.dtype == np.float32 and thresholds[4] == DEFAULT_THRESHOLD
    assert fallback.tolist() == [False, False, False, False, True]
    for j in range(4):
        assert thresholds[j] == brute_force_threshold(y[:, j], p[:, j])
    # a tie: asserting the top clip or the top three gives the same F1 (2/3); the lower threshold wins
    y, p = np.array([[1], [0], [0], [1], [0]]), np.array([[0.9], [0.8], [0.75], [0.7], [0.1]])
    t, _ = f1_thresholds(y, p, min_positives=1)
    assert f1_score(y[:, 0], p[:, 0] >= 0.9) == f1_score(y[:, 0], p[:, 0] >= 0.7) == pytest.approx(2 / 3)
    assert t[0] == np.float32(0.7)


def test_a_small_validation_split_cannot_make_a_tag_asserted_on_everything():
    """The demo's case: 24 validation clips, a tag's one positive scored last (1.15e-17). The F1 optimum
    is then to assert the tag on every clip, with a threshold of 1.15e-17 (what `calm` got)."""
    rng = np.random.default_rng(3)
    p = rng.uniform(0.02, 0.4, size=(24, 3)).astype(np.float32)
    y = np.zeros((24, 3), np.uint8)
    y[5, 0], p[5, 0] = 1, 1.15e-17  # one positive, scored below every negative
    y[:6, 1] = 1  # six positives, all scored below the negatives: no threshold beats chance
    p[:6, 1] = np.linspace(1e-6, 1e-5, 6)
    y[:8, 2] = 1  # eight positives, scored above the negatives: a real threshold
    p[:8, 2] += 0.5
    thresholds, fallback = f1_thresholds(y, p)
    assert fallback.tolist() == [True, True, False]
    assert thresholds[0] == thresholds[1] == DEFAULT_THRESHOLD
    assert thresholds[2] == p[:8, 2].min()
    asserted = (p >= thresholds).sum(axis=0)
    assert asserted.tolist() == [0, 0, 8]  # before: 24 and 24, every clip


def test_scores_at_thresholds_agree_with_sklearn():
    rng = np.random.default_rng(1)
    y = (rng.random((80, 4)) < 0.3).astype(np.uint8)
    y[:, 3] = 0  # no positive: left out of the macro averages, counted in the micro ones
    p = rng.random((80, 4)).astype(np.float32)
    t = np.array([0.5, 0.7, 0.99, 0.2], np.float32)
    pred = p >= t
    s = scores_at_thresholds(y, p, t)
    assert s["n_tags_scored"] == 3
    assert s["f1_micro"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert s["precision_micro"] == pytest.approx(precision_score(y, pred, average="micro"))
    assert s["recall_micro"] == pytest.approx(recall_score(y, pred, average="micro"))
    kept = slice(0, 3)
    assert s["f1_macro"] == pytest.approx(f1_score(y[:, kept], pred[:, kept], average="macro"))
    assert s["precision_macro"] == pytest.approx(
        precision_score(y[:, kept], pred[:, kept], average="macro", zero_division=0)
    )
    assert s["recall_macro"] == pytest.approx(recall_score(y[:, kept], pred[:, kept], average="macro"))


def test_the_bundle_stores_thresholds_and_refuses_older_formats(tmp_path):
    model = MultiScaleCNN(n_tags=2, n_mels=16, n_frames=64, hidden=8)
    tagger = Tagger(model, np.zeros(16), np.ones(16))
    path = tmp_path / "model.pt"
    save_bundle(
        path, tagger, ["a", "b"], SpectrogramParams(n_mels=16), "fp32", {}, {}, "r", thresholds=[0.2, 0.7]
    )
    bundle = load_bundle(path)
    np.testing.assert_array_equal(bundle.thresholds, np.array([0.2, 0.7], np.float32))
    np.testing.assert_array_equal(
        bundle.decide(np.array([[0.2, 0.69], [0.1, 0.7]])), [[True, False], [False, True]]
    )
    with pytest.raises(ValueError, match="3 thresholds for 2 tags"):
        save_bundle(path, tagger, ["a", "b"], SpectrogramParams(n_mels=16), "fp32", {}, {}, "r", [0.1] * 3)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT == "mstagger-bundle/3"
    torch.save({**payload, "format": "mstagger-bundle/2"}, path)
    with pytest.raises(UserError, match=r"found 'mstagger-bundle/2'\); retrain it with `dvc repro train`"):
        load_bundle(path)


def test_training_chooses_thresholds_on_the_validation_split(tmp_path):
    data = tiny_train_data()
    params = make_params(epochs=2, batch_size=8, lr_milestones=[2], precision="fp32", device="cpu")
    train(data, params, tmp_path / "model.pt", tmp_path / "log", tmp_path / "checkpoint.pt", "rev")
    bundle = load_bundle(tmp_path / "model.pt")
    rows = data.rows("valid")
    expected, fallback = f1_thresholds(data.labels[rows], bundle.predict(data.mel[rows]))
    np.testing.assert_array_equal(bundle.thresholds, expected)  # the saved weights' validation probabilities
    assert bundle.training["thresholds_default"] == fallback.sum()
    fell_back = [tag for tag, f in zip(data.tags, fallback, strict=True) if f]
    assert bundle.training["thresholds_fallback"] == fell_back


def test_evaluate_scores_the_decisions(tmp_path):
    rng = np.random.default_rng(2)
    n, tags = 40, ["a", "b", "c"]
    labels = (rng.random((n, 3)) < 0.4).astype(np.uint8)
    mel = rng.normal(size=(n, 4, 6)).astype(np.float32)
    split = np.array(["train"] * 20 + ["test"] * 20)
    probs = np.clip(0.5 * labels + 0.5 * rng.random((n, 3)), 0, 1)
    lookup = {m.tobytes(): p for m, p in zip(mel, probs, strict=True)}

    def predict(mels):
        return np.stack([lookup[m.astype(np.float32).tobytes()] for m in mels])

    thresholds = np.array([0.3, 0.5, 0.7])
    result = evaluate(
        mel, labels, split, tags, predict, tmp_path / "m", tmp_path / "p", thresholds=thresholds
    )
    expected = scores_at_thresholds(labels[20:], probs[20:], thresholds)
    written = json.loads((tmp_path / "m" / "test.json").read_text())
    assert written == result and written["roc_auc"] is not None  # the existing keys stay
    assert set(written["at_thresholds"]) == set(expected)
    for key, value in expected.items():
        assert written["at_thresholds"][key] == pytest.approx(value, abs=1e-6)
    assert "at_thresholds" not in evaluate(
        mel, labels, split, tags, predict, tmp_path / "m2", tmp_path / "p2"
    )


def test_asserting_more_never_lowers_recall():
    rng = np.random.default_rng(3)
    y = (rng.random((50, 3)) < 0.5).astype(np.uint8)
    p = rng.random((50, 3))
    recalls = [scores_at_thresholds(y, p, np.full(3, t))["recall_micro"] for t in (0.9, 0.5, 0.1)]
    assert all(a <= b for a, b in pairwise(recalls))
