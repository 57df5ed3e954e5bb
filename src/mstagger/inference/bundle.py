"""The model bundle: a trained :class:`~mstagger.inference.tagger.Tagger` saved with what it needs.

A bundle file stores the weights, the tag names in output order, each tag's decision threshold, the
normalisation statistics, the spectrogram parameters, the model configuration, the precision, the
params it was trained with and the git revision. It is written atomically and loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mstagger.core.errors import UserError
from mstagger.core.outputs import atomic_path
from mstagger.inference.tagger import Tagger, predict_logits
from mstagger.model import MultiScaleCNN
from mstagger.params import SpectrogramParams

FORMAT = "mstagger-bundle/3"  # 3: decision thresholds per tag


@dataclass
class Bundle:
    """A trained tagger ready for inference (see :func:`load_bundle`)."""

    tagger: Tagger
    tags: list[str]
    spectrogram: SpectrogramParams
    precision: str
    params: dict[str, Any] = field(default_factory=dict)
    git_rev: str = "unknown"
    training: dict[str, Any] = field(default_factory=dict)
    thresholds: np.ndarray | None = None  # (n_tags,) in ``tags`` order; None when none were stored

    @property
    def model(self) -> MultiScaleCNN:
        """The network alone (its input is standardised log-mel)."""
        return self.tagger.network

    @property
    def device(self) -> torch.device:
        """Where the network runs."""
        return next(self.tagger.parameters()).device

    @property
    def mean(self) -> np.ndarray:
        """(n_mels,) training-split mean per mel bin."""
        return self.tagger.mean.flatten().cpu().numpy()

    @property
    def std(self) -> np.ndarray:
        """(n_mels,) training-split std per mel bin."""
        return self.tagger.std.flatten().cpu().numpy()

    def predict(self, mels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Tag probabilities (B, n_tags) in ``self.tags`` order for raw log-mel (B, n_mels, n_frames).

        Raises:
            ValueError: the spectrograms are not of the geometry the network was trained on.
        """
        cfg = self.model.config
        if mels.ndim != 3 or tuple(mels.shape[1:]) != (cfg.n_mels, cfg.n_frames):
            raise ValueError(f"expected (B, {cfg.n_mels}, {cfg.n_frames}) log-mel, got {tuple(mels.shape)}")
        logits = predict_logits(self.tagger, mels, precision=self.precision, batch_size=batch_size)
        return torch.sigmoid(logits).numpy()

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """The tags the model asserts: True where a probability is at least its tag's threshold.

        The rule the thresholds were chosen with (:func:`mstagger.evaluation.scores.f1_thresholds`), at
        float32, the precision of the network's probabilities and of the thresholds.

        Args:
            probs: (..., n_tags) probabilities in ``self.tags`` order.

        Raises:
            UserError: the bundle holds no thresholds.
        """
        if self.thresholds is None:
            raise UserError(
                "this model bundle holds no decision thresholds; retrain it with `dvc repro train`"
            )
        return np.asarray(probs, dtype=np.float32) >= self.thresholds

    def asserted(self, probs: np.ndarray) -> list[str]:
        """The names of the tags :meth:`decide` asserts for one item's (n_tags,) probabilities, most
        probable first. Tags are decided independently: contradictory ones can both be asserted."""
        order = np.argsort(-np.asarray(probs), kind="stable")
        decided = self.decide(probs)
        return [self.tags[j] for j in order if decided[j]]

    @property
    def is_demo(self) -> bool:
        """Trained on the synthetic demo dataset: its tags mean nothing on real music."""
        return self.params.get("dataset") == "demo"


def save_bundle(
    path: str | Path,
    tagger: Tagger,
    tags: list[str],
    spectrogram: SpectrogramParams,
    precision: str,
    params: dict[str, Any],
    training: dict[str, Any],
    git_rev: str,
    thresholds: Sequence[float] | None = None,
) -> None:
    """Write a bundle atomically (temporary file beside ``path``, then rename).

    Args:
        path: destination, e.g. ``paths.model``.
        tagger: the trained network and its normalisation (copied to the CPU in float32).
        tags: tag names in output order.
        spectrogram: the feature parameters the network was trained on.
        precision: the precision it was trained at, used again for inference.
        params: the full pipeline params (plain types).
        training: facts of the run, e.g. best epoch and validation scores.
        git_rev: the revision the model was trained at.
        thresholds: each tag's decision threshold, in ``tags`` order (None: the bundle holds none).
    """
    model = tagger.network
    if len(tags) != model.config.n_tags:
        raise ValueError(f"{len(tags)} tag names for a network with {model.config.n_tags} outputs")
    if thresholds is not None and len(thresholds) != len(tags):
        raise ValueError(f"{len(thresholds)} thresholds for {len(tags)} tags")
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()},
        "model_config": model.config_dict(),
        "tags": list(tags),
        "mean": tagger.mean.detach().flatten().cpu(),
        "std": tagger.std.detach().flatten().cpu(),
        "spectrogram": {
            "sample_rate": spectrogram.sample_rate,
            "n_fft": spectrogram.n_fft,
            "hop_length": spectrogram.hop_length,
            "n_mels": spectrogram.n_mels,
            "clip_seconds": spectrogram.clip_seconds,
            "log_floor": spectrogram.log_floor,
        },
        "precision": precision,
        "params": params,
        "training": training,
        "git_rev": git_rev,
        "thresholds": None if thresholds is None else [float(t) for t in thresholds],
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle written by :func:`save_bundle`, needing no other file of the pipeline.

    Args:
        path: the bundle file.
        device: where to put the network (``cpu``, ``cuda``, ``cuda:N``).

    Returns:
        The :class:`Bundle`, network in eval mode.

    Raises:
        UserError: the file is missing, unreadable or not a bundle of this version.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model bundle {path} not found; train one with `dvc repro train` or pass --model")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: torch raises several types
        raise UserError(f"{path} is not a readable model bundle ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise UserError(
            f"{path} is not an mstagger model bundle of format {FORMAT} (found {found!r}); "
            "retrain it with `dvc repro train`"
        )
    network = MultiScaleCNN(**payload["model_config"])
    network.load_state_dict(payload["state_dict"])
    tagger = Tagger(network, payload["mean"].numpy(), payload["std"].numpy())
    tagger.to(device, memory_format=torch.channels_last).eval()
    return Bundle(
        tagger=tagger,
        tags=list(payload["tags"]),
        spectrogram=SpectrogramParams(**payload["spectrogram"]),
        precision=payload["precision"],
        params=payload["params"],
        git_rev=payload["git_rev"],
        training=payload["training"],
        thresholds=None if payload["thresholds"] is None else np.asarray(payload["thresholds"], np.float32),
    )
