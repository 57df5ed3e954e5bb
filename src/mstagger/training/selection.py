"""Model selection: which epoch's weights the run keeps (the paper's rule, with a tolerance)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch


def selection_key(val: dict[str, float]) -> tuple[float, float]:
    """Best validation ROC-AUC first; validation loss breaks ties and stands in when AUC is undefined."""
    roc = val["roc_auc"]
    return (roc if math.isfinite(roc) else -math.inf, -val["loss"])


def selects(key: tuple[float, float], best_key: tuple[float, float], tolerance: float) -> bool:
    """Whether an epoch scoring ``key`` replaces the kept epoch, ``best_key`` being the best so far.

    A new best always does. With ``tolerance`` > 0, so does an epoch whose ROC-AUC is within
    ``tolerance`` below the best so far, so the kept epoch is the last one within ``tolerance`` of the
    best of the run. On the flat end of a validation curve the argmax is a coin toss that differences
    in the last bits (another CPU's bf16 kernels) turn; the last epoch within a tolerance moves only
    when a score crosses the best by more than the tolerance.
    """
    if key > best_key:
        return True
    return tolerance > 0 and math.isfinite(key[0]) and key[0] >= best_key[0] - tolerance


@dataclass
class Selection:
    """The kept epoch so far: its scores (``best``), selection key, weights and validation probabilities."""

    tolerance: float
    best: dict[str, float] = field(default_factory=dict)
    key: tuple[float, float] = (-math.inf, -math.inf)
    state: dict[str, torch.Tensor] | None = None
    probs: torch.Tensor | None = None  # a tensor: checkpoints load with torch.load(weights_only=True)

    def consider(
        self, epoch: int, val: dict[str, Any], state: dict[str, torch.Tensor], train_loss: float
    ) -> str:
        """Keep this epoch if :func:`selects` says so; returns the log's note (``*best``, ``*kept``, "")."""
        key = selection_key(val)
        if not selects(key, self.key, self.tolerance):
            return ""
        note = "  *best" if key > self.key else "  *kept (within selection_tolerance)"
        self.key, self.state, self.probs = max(key, self.key), state, torch.from_numpy(val["probs"])
        self.best = {
            "best_epoch": epoch,
            "val_roc_auc": val["roc_auc"],
            # the best validation ROC-AUC of the run so far (a new best is always kept)
            "val_roc_auc_max": self.key[0] if math.isfinite(self.key[0]) else val["roc_auc"],
            "val_pr_auc": val["pr_auc"],
            "val_loss": val["loss"],
            "train_loss": train_loss,
        }
        return note

    def saved(self) -> dict[str, Any]:
        """What a checkpoint keeps of it (read back by :meth:`restored`)."""
        return {
            "best": self.best,
            "best_key": list(self.key),
            "best_state": self.state,
            "best_probs": self.probs,
        }

    @classmethod
    def restored(cls, saved: dict[str, Any], tolerance: float) -> Selection:
        return cls(
            tolerance, saved["best"], tuple(saved["best_key"]), saved["best_state"], saved["best_probs"]
        )
