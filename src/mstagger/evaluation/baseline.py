"""The baseline beside the network: a logistic regression per tag on each mel band's mean and std.

``2 * n_mels`` features per clip (each band's mean and standard deviation over time), standardised with
the training split's statistics, one one-vs-rest logistic regression per tag fitted on the training
split. It tells how much the network adds over the clip's average spectrum.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm

from mstagger.core.errors import UserError
from mstagger.core.log import log

# Clips read from the memory-mapped spectrograms at a time (128 x 628 float32: ~0.3 MB a clip).
CHUNK_CLIPS = 256
# Enough L-BFGS iterations for standardised features; a tag that still stops early is logged.
BASELINE_MAX_ITER = 1000


def band_features(mel: np.ndarray, rows: np.ndarray, chunk: int = CHUNK_CLIPS) -> np.ndarray:
    """Per-band mean and standard deviation over time of each clip's log-mel.

    Args:
        mel: (clips, n_mels, n_frames), e.g. a memmap; read ``chunk`` clips at a time.
        rows: the row indices, in output order.
        chunk: clips read at once.

    Returns:
        (len(rows), 2 * n_mels) float64: the n_mels band means, then the n_mels band standard deviations.
    """
    n_mels = mel.shape[1]
    out = np.empty((len(rows), 2 * n_mels), dtype=np.float64)
    with tqdm(total=len(rows), desc="baseline features", unit="clip", leave=False) as bar:
        for start in range(0, len(rows), chunk):
            idx = rows[start : start + chunk]
            x = np.asarray(mel[idx], dtype=np.float32)  # (B, n_mels, n_frames)
            out[start : start + len(idx), :n_mels] = x.mean(axis=2, dtype=np.float64)
            out[start : start + len(idx), n_mels:] = x.std(axis=2, dtype=np.float64)
            bar.update(len(idx))
    return out


def baseline_scores(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, c: float
) -> tuple[np.ndarray, list[int], list[int]]:
    """Fit one logistic regression per tag on the training clips and score the test clips.

    Features are standardised with the training clips' mean and standard deviation (a constant feature
    is left centred, not scaled). A tag with a single class among the training clips cannot be fitted:
    it scores every test clip with its training prevalence (0 or 1).

    Args:
        x_train: (train clips, features).
        y_train: (train clips, tags) 0/1.
        x_test: (test clips, features).
        c: inverse L2 regularisation strength (``params.evaluate.baseline_c``).

    Returns:
        ``(scores, constant, not_converged)``: (test clips, tags) float32 probabilities, the columns
        given a constant score, and the columns whose fit hit the iteration limit.
    """
    if len(x_train) == 0:
        raise UserError("the training split is empty; the baseline cannot be fitted")
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std < 1e-8] = 1.0
    xs_train, xs_test = (x_train - mean) / std, (x_test - mean) / std
    y_train = np.asarray(y_train).astype(np.int64)
    scores = np.empty((len(x_test), y_train.shape[1]), dtype=np.float32)
    constant, not_converged = [], []
    for j in tqdm(range(y_train.shape[1]), desc="baseline", unit="tag", leave=False):
        y = y_train[:, j]
        if y.min() == y.max():
            scores[:, j] = float(y.mean())
            constant.append(j)
            continue
        model = LogisticRegression(C=c, solver="lbfgs", max_iter=BASELINE_MAX_ITER)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(xs_train, y)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            not_converged.append(j)
        scores[:, j] = model.predict_proba(xs_test)[:, 1]
    return scores, constant, not_converged


def fit_baseline(
    mel: np.ndarray,
    labels: np.ndarray,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    c: float,
    tags: Sequence[str],
    chunk: int = CHUNK_CLIPS,
) -> np.ndarray:
    """Fit the baseline on the training rows and score the test rows.

    Args:
        mel: (clips, n_mels, n_frames) raw log-mel (a memmap is read in chunks, in file order).
        labels: (clips, tags) 0/1.
        train_rows, test_rows: row indices of the two splits.
        c: inverse L2 strength (``evaluate.baseline_c``).
        tags: tag names, for the warnings.
        chunk: clips read at a time.

    Returns:
        (len(test_rows), tags) float32 probabilities.
    """
    rows = np.concatenate([train_rows, test_rows])
    order = np.argsort(rows, kind="stable")  # one pass over the file, in order
    feats = np.empty((len(rows), 2 * mel.shape[1]), dtype=np.float64)
    feats[order] = band_features(mel, rows[order], chunk)
    x_train, x_test = feats[: len(train_rows)], feats[len(train_rows) :]
    scores, constant, not_converged = baseline_scores(x_train, labels[train_rows], x_test, c)
    if constant:
        log.warning(
            "baseline: %d tags have a single class in the training split and score their prevalence: %s",
            len(constant),
            ", ".join(tags[j] for j in constant),
        )
    if not_converged:
        log.warning(
            "baseline: %d tags stopped at %d iterations before converging: %s",
            len(not_converged),
            BASELINE_MAX_ITER,
            ", ".join(tags[j] for j in not_converged),
        )
    return scores
