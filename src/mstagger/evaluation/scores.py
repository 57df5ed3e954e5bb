"""Tagging scores: per-tag and macro ROC-AUC and PR-AUC (average precision); decision thresholds.

A tag whose ground truth has no positive or no negative example is undefined for both scores; it is
reported as NaN per tag and left out of the macro averages (and counted), never a crash.

Decisions: the model asserts a tag when its probability is at least the tag's threshold.
:func:`f1_thresholds` chooses each tag's threshold on the validation split (the one maximising the
tag's F1 among those that beat chance, with a fixed fallback for tags with too few validation
positives); :func:`scores_at_thresholds` scores the decisions on another split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve


def per_tag_scores(y_true: np.ndarray, y_score: np.ndarray, tags: list[str]) -> pd.DataFrame:
    """Score each tag column.

    Args:
        y_true: (clips, tags) 0/1 ground truth.
        y_score: (clips, tags) predicted scores (probabilities or logits).
        tags: the tag names, in column order.

    Returns:
        One row per tag: ``tag``, ``positives``, ``roc_auc``, ``pr_auc`` (NaN where undefined).
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.shape[1] != len(tags):
        raise ValueError(f"shapes differ: y_true {y_true.shape}, y_score {y_score.shape}, {len(tags)} tags")
    rows = []
    for j, tag in enumerate(tags):
        truth = y_true[:, j].astype(bool)
        positives = int(truth.sum())
        defined = 0 < positives < len(truth)
        rows.append(
            {
                "tag": tag,
                "positives": positives,
                "roc_auc": float(roc_auc_score(truth, y_score[:, j])) if defined else float("nan"),
                "pr_auc": float(average_precision_score(truth, y_score[:, j])) if defined else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=["tag", "positives", "roc_auc", "pr_auc"])


def macro_from_table(table: pd.DataFrame, roc_col: str = "roc_auc", pr_col: str = "pr_auc") -> dict:
    """Macro averages of a per-tag table (as :func:`per_tag_scores` returns), over the scorable tags.

    Returns:
        ``roc_auc``, ``pr_auc`` (NaN if no tag is scorable), ``n_tags_scored``, ``n_tags_excluded``.
    """
    scored = table.dropna(subset=[roc_col])
    return {
        "roc_auc": float(scored[roc_col].mean()) if len(scored) else float("nan"),
        "pr_auc": float(scored[pr_col].mean()) if len(scored) else float("nan"),
        "n_tags_scored": len(scored),
        "n_tags_excluded": len(table) - len(scored),
    }


def macro_scores(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float | int]:
    """Macro-average ROC-AUC and PR-AUC over the tags that have both classes.

    Args:
        y_true: (clips, tags) 0/1 ground truth.
        y_score: (clips, tags) predicted scores.

    Returns:
        ``roc_auc``, ``pr_auc`` (NaN if no tag is scorable), ``n_tags_scored``, ``n_tags_excluded``.
    """
    tags = [str(j) for j in range(np.asarray(y_true).shape[1])]
    return macro_from_table(per_tag_scores(y_true, y_score, tags))


DEFAULT_THRESHOLD = 0.5  # the fallback: for a tag whose validation clips cannot choose a threshold
MIN_POSITIVES = 5  # validation positives a tag needs before its threshold is chosen from them


def f1_thresholds(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    default: float = DEFAULT_THRESHOLD,
    min_positives: int = MIN_POSITIVES,
) -> tuple[np.ndarray, np.ndarray]:
    """Per tag, the threshold that maximises F1 when the tag is asserted at ``y_prob >= threshold``.

    The candidates are the tag's distinct probabilities (compared at float32, the network's precision)
    whose decisions beat chance: precision above the tag's share of positive clips. Asserting the tag on
    every clip has exactly that precision, so it is never chosen; on a small validation split it can be
    the F1 optimum (one positive scored last makes the threshold its probability, e.g. 1e-17, and the
    tag is then asserted on everything). F1 ties go to the lower threshold (the one that asserts more).

    A tag falls back to ``default`` when it has fewer than ``min_positives`` positives (a threshold
    chosen on one or two clips is noise) or when no candidate beats chance.

    Args:
        y_true: (clips, tags) 0/1 ground truth, e.g. of the validation split.
        y_prob: (clips, tags) predicted probabilities.
        default: the fallback threshold.
        min_positives: positives a tag needs before its threshold is chosen.

    Returns:
        (thresholds (tags,) float32 in column order, fallback (tags,) bool: True where ``default`` was
        used).
    """
    y_true = np.asarray(y_true).astype(bool)
    y_prob = np.asarray(y_prob, dtype=np.float32)
    if y_true.shape != y_prob.shape:
        raise ValueError(f"shapes differ: y_true {y_true.shape}, y_prob {y_prob.shape}")
    thresholds = np.full(y_true.shape[1], default, dtype=np.float32)
    fallback = np.ones(y_true.shape[1], dtype=bool)
    for j in range(y_true.shape[1]):
        positives = int(y_true[:, j].sum())
        if positives < max(min_positives, 1):
            continue
        order = np.argsort(-y_prob[:, j], kind="stable")
        score, truth = y_prob[order, j], y_true[order, j]  # by decreasing probability
        last = np.append(score[1:] != score[:-1], True)  # the last clip of each run of equal scores
        tp = np.cumsum(truth)[last]  # asserting every clip down to that score
        asserted = np.flatnonzero(last) + 1
        f1 = 2 * tp / (asserted + positives)
        # tp / asserted > positives / clips, in integers: no float ties at exactly the chance rate
        f1[tp * len(truth) <= positives * asserted] = -1.0
        if f1.max() <= 0:
            continue
        best = len(f1) - 1 - int(np.argmax(f1[::-1]))  # the lowest threshold among the ties
        thresholds[j] = score[last][best]
        fallback[j] = False
    return thresholds, fallback


def scores_at_thresholds(y_true: np.ndarray, y_prob: np.ndarray, thresholds: np.ndarray) -> dict:
    """Micro and macro F1, precision and recall of asserting each tag at ``y_prob >= threshold``.

    Micro pools every (clip, tag) decision. Macro averages over the tags with at least one positive
    (recall and F1 are undefined without one); a tag asserted nowhere has precision 0.

    Args:
        y_true: (clips, tags) 0/1 ground truth.
        y_prob: (clips, tags) predicted probabilities.
        thresholds: (tags,) decision thresholds.

    Returns:
        ``f1_micro``, ``precision_micro``, ``recall_micro``, ``f1_macro``, ``precision_macro``,
        ``recall_macro`` (NaN where undefined) and ``n_tags_scored`` (the tags in the macro averages).
    """
    y_true = np.asarray(y_true).astype(bool)
    asserted = np.asarray(y_prob, np.float32) >= np.asarray(thresholds, np.float32)[None, :]
    if y_true.shape != asserted.shape:
        raise ValueError(f"shapes differ: y_true {y_true.shape}, y_prob {asserted.shape}")
    tp = (y_true & asserted).sum(axis=0).astype(np.float64)  # (tags,)
    n_asserted, positives = asserted.sum(axis=0), y_true.sum(axis=0)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # a / b, 0 where b is 0
        return np.divide(a, b, out=np.zeros(a.shape), where=b > 0)

    nan = float("nan")
    scored = positives > 0
    n_scored = int(scored.sum())
    total_tp, total_asserted, total_pos = tp.sum(), int(n_asserted.sum()), int(positives.sum())
    return {
        "f1_micro": float(2 * total_tp / (total_asserted + total_pos)) if total_pos else nan,
        "precision_micro": float(total_tp / total_asserted) if total_asserted else nan,
        "recall_micro": float(total_tp / total_pos) if total_pos else nan,
        "f1_macro": float(ratio(2 * tp, n_asserted + positives)[scored].mean()) if n_scored else nan,
        "precision_macro": float(ratio(tp, n_asserted)[scored].mean()) if n_scored else nan,
        "recall_macro": float(ratio(tp, positives)[scored].mean()) if n_scored else nan,
        "n_tags_scored": n_scored,
    }


def roc_points(truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points of one tag's ROC curve.

    Args:
        truth: (clips,) 0/1 ground truth with both classes present.
        score: (clips,) predicted scores.

    Returns:
        ``(fpr, tpr)``, both non-decreasing, from (0, 0) to (1, 1); collinear points are dropped.
    """
    fpr, tpr, _ = roc_curve(np.asarray(truth).astype(bool), np.asarray(score, dtype=np.float64))
    return fpr, tpr


def pr_points(truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points of one tag's precision-recall curve, in increasing recall.

    Args:
        truth: (clips,) 0/1 ground truth with at least one positive.
        score: (clips,) predicted scores.

    Returns:
        ``(recall, precision)``, starting at recall 0 (precision 1) and ending at recall 1.
    """
    precision, recall, _ = precision_recall_curve(
        np.asarray(truth).astype(bool), np.asarray(score, dtype=np.float64)
    )
    return recall[::-1].copy(), precision[::-1].copy()
