"""The logistic-regression baseline: per-band features and per-tag fits."""

from __future__ import annotations

import numpy as np
import pytest

from mstagger.core.errors import UserError
from mstagger.evaluation.baseline import band_features, baseline_scores


def test_baseline_single_class_in_train_gets_prevalence():
    rng = np.random.default_rng(3)
    x_train = rng.normal(size=(40, 4))
    x_test = rng.normal(size=(10, 4))
    y_train = np.zeros((40, 3), dtype=np.uint8)
    y_train[:, 0] = x_train[:, 0] > 0  # learnable
    y_train[:, 2] = 1  # all positive
    scores, constant, _ = baseline_scores(x_train, y_train, x_test, c=1.0)
    assert scores.shape == (10, 3) and scores.dtype == np.float32
    assert constant == [1, 2]
    assert np.all(scores[:, 1] == 0.0) and np.all(scores[:, 2] == 1.0)
    # The fitted tag follows its feature, and refitting is deterministic.
    assert np.corrcoef(scores[:, 0], x_test[:, 0])[0, 1] > 0.9
    again, _, _ = baseline_scores(x_train, y_train, x_test, c=1.0)
    np.testing.assert_array_equal(scores, again)
    with pytest.raises(UserError, match="training split is empty"):
        baseline_scores(x_train[:0], y_train[:0], x_test, c=1.0)


def test_band_features_chunking_and_row_order():
    mel = np.random.default_rng(0).normal(size=(40, 6, 12)).astype(np.float16)
    rows = np.array([7, 2, 30, 11, 0])
    feats = band_features(mel, rows, chunk=2)
    x = mel[rows].astype(np.float32)
    np.testing.assert_allclose(feats[:, :6], x.mean(axis=2), rtol=1e-6)
    np.testing.assert_allclose(feats[:, 6:], x.std(axis=2), rtol=1e-5)
    np.testing.assert_array_equal(feats, band_features(mel, rows, chunk=100))
