"""The model bundle: a trained :class:`~mstagger.inference.tagger.Tagger` saved with what it needs.

A bundle file stores the weights, the tag names in output order, each tag's decision threshold, the
normalisation statistics, the spectrogram parameters, the model configuration, the precision, the
params it was trained with and the git revision. It is written atomically and loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mstagger.core.errors import UserError
from mstagger.core.outputs import atomic_path
from mstagger.inference.tagger import Tagger, predict_logits
from mstagger.model import ModelConfig, MultiScaleCNN
from mstagger.params import PRECISIONS, ParamsError, SpectrogramParams, section_from_dict

FORMAT = "mstagger-bundle/3"  # 3: decision thresholds per tag


class UnusableBundle(UserError, ValueError):
    """A bundle that loads but cannot tag audio: one ``error:`` line, status 2."""


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
    def weights_sha256(self) -> str:
        """:func:`weights_digest` of the tagger: equal for equal weights, whatever else the file records."""
        return weights_digest(self.tagger)

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
            UnusableBundle: the bundle's own spectrogram parameters give windows of another size than
                its network takes (its windows could never fit).
            ValueError: the spectrograms are not of the geometry the network was trained on.
        """
        cfg = self.model.config
        windows = (self.spectrogram.n_mels, self.spectrogram.n_frames)
        fits = mels.ndim == 3 and tuple(mels.shape[1:]) == (cfg.n_mels, cfg.n_frames)
        if not fits and windows != (cfg.n_mels, cfg.n_frames):
            raise UnusableBundle(
                f"the model bundle's spectrogram gives {windows[0]} x {windows[1]} windows, its network "
                f"takes {cfg.n_mels} x {cfg.n_frames}; retrain it with `dvc repro` (extract, then train)"
            )
        if not fits:
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


def stored_state(tagger: Tagger) -> dict[str, torch.Tensor]:
    """What a bundle stores of the network's state: every tensor on the CPU, as float32."""
    return {k: v.detach().to("cpu", torch.float32) for k, v in tagger.network.state_dict().items()}


def weights_digest(tagger: Tagger) -> str:
    """SHA-256 of the numbers a bundle stores of ``tagger``: the network's state and the normalisation.

    The bundle's file also records the git revision and the run's params, so its hash (dvc.lock's md5
    of ``paths.model``) changes with every commit; this one changes only when a number does. The train
    stage writes it to ``metrics/train.json`` (``weights_sha256``), ``info`` shows it, and CI compares it
    with the committed run's.
    """
    digest = hashlib.sha256()
    named = [*sorted(stored_state(tagger).items()), ("mean", tagger.mean), ("std", tagger.std)]
    for name, tensor in named:
        value = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(value.shape)};".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


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
        "state_dict": stored_state(tagger),
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
    try:
        return _bundle_from(payload, device)
    except _Unusable as err:
        raise UserError(
            f"{path} is not a usable model bundle: {err}; retrain it with `dvc repro train`"
        ) from None


class _Unusable(ValueError):
    """What makes a payload of the right format unusable (a hand-edited or damaged bundle)."""


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise _Unusable(what)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# The facts of the run that ``mstagger info`` reports, and the types they must have (None: absent).
_FACTS = {
    ("params", "dataset"): str,
    ("params", "seed"): int,
    ("training", "epochs"): int,
    ("training", "best_epoch"): int,
    ("training", "thresholds_default"): int,
    ("training", "val_roc_auc"): float,
    ("training", "val_pr_auc"): float,
    ("training", "val_loss"): float,
}
_KEYS = ("state_dict", "model_config", "tags", "mean", "std", "spectrogram", "precision", "params")
_KEYS += ("training", "git_rev", "thresholds")


def _bundle_from(payload: dict[str, Any], device: str | torch.device) -> Bundle:
    """Check every field of a payload against what inference needs, then build the :class:`Bundle`.

    Raises:
        _Unusable: the first field that is missing, of the wrong type or inconsistent with the others.
    """
    missing = [k for k in _KEYS if k not in payload]
    _need(not missing, f"it lacks {', '.join(missing)}")
    config = payload["model_config"]
    known = {f.name: f.type for f in fields(ModelConfig)}
    _need(
        isinstance(config, dict) and set(config) <= set(known),
        f"model_config is not a ModelConfig: {config!r}",
    )
    for key, value in config.items():
        kind = int if known[key] in (int, "int") else float
        _need(
            _is_number(value) and (kind is float or isinstance(value, int)),
            f"model_config.{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}",
        )
    try:
        network = MultiScaleCNN(**config)
    except (ValueError, TypeError, RuntimeError) as err:  # sizes < 1, dropout outside [0, 1]...
        raise _Unusable(f"model_config {config} builds no network ({err})") from None
    n_tags, n_mels = network.config.n_tags, network.config.n_mels
    _need(n_tags >= 1, "its network has no output")
    state = payload["state_dict"]
    _need(
        isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()),
        "state_dict is not a mapping of tensors",
    )
    try:
        network.load_state_dict(state)
    except RuntimeError as err:  # missing or unexpected weights, or other shapes
        raise _Unusable(f"its weights do not fit its model_config ({' '.join(str(err).split())})") from None
    _need(
        all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()),
        "its weights hold nan or inf",
    )
    tags = payload["tags"]
    _need(
        isinstance(tags, list) and all(isinstance(t, str) and t for t in tags), "tags is not a list of names"
    )
    _need(len(tags) == n_tags, f"{len(tags)} tag names for a network with {n_tags} outputs")
    _need(len(set(tags)) == len(tags), "a tag name appears twice")
    for key in ("mean", "std"):
        value = payload[key]
        _need(
            isinstance(value, torch.Tensor) and tuple(value.shape) == (n_mels,) and value.is_floating_point(),
            f"{key} must be a tensor of {n_mels} numbers (one per mel band)",
        )
        _need(bool(torch.isfinite(value).all()), f"{key} holds nan or inf")
    _need(bool((payload["std"] > 0).all()), "std holds a value <= 0")
    _need(isinstance(payload["spectrogram"], dict), "spectrogram is not a mapping")
    try:
        spectrogram = section_from_dict("spectrogram", payload["spectrogram"], SpectrogramParams)
    except ParamsError as err:
        raise _Unusable(str(err).removeprefix("params: ")) from None
    precision = payload["precision"]
    _need(precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    for key in ("params", "training"):
        _need(isinstance(payload[key], dict), f"{key} is not a mapping")
    _need(isinstance(payload["params"].get("split", {}), dict), "params.split is not a mapping")
    for (section, key), kind in _FACTS.items():
        value = payload[section].get(key)
        ok = value is None or (_is_number(value) if kind is float else isinstance(value, kind))
        _need(ok and not isinstance(value, bool), f"{section}.{key} must be {kind.__name__}, got {value!r}")
    _need(isinstance(payload["git_rev"], str), f"git_rev must be a string, got {payload['git_rev']!r}")
    thresholds = payload["thresholds"]
    if thresholds is not None:
        _need(
            isinstance(thresholds, list) and len(thresholds) == n_tags,
            f"thresholds must be a list of {n_tags} numbers, one per tag",
        )
        _need(
            all(_is_number(t) and 0 <= t <= 1 for t in thresholds),
            "thresholds must be probabilities in [0, 1]",
        )
    tagger = Tagger(network, payload["mean"].float().numpy(), payload["std"].float().numpy())
    tagger.to(device, memory_format=torch.channels_last).eval()
    return Bundle(
        tagger=tagger,
        tags=list(tags),
        spectrogram=spectrogram,
        precision=precision,
        params=payload["params"],
        git_rev=payload["git_rev"],
        training=payload["training"],
        thresholds=None if thresholds is None else np.asarray(thresholds, np.float32),
    )
