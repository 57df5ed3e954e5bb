"""Tagging scores: per-tag and macro ROC-AUC and PR-AUC (average precision).

A tag whose ground truth has no positive or no negative example is undefined for both scores; it is
reported as NaN per tag and left out of the macro averages (and counted), never a crash.
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
