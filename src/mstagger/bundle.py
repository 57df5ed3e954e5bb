"""The model bundle: one file holding everything needed to tag audio with a trained network.

A bundle stores the weights, the tag names in output order, the training-split normalisation
statistics, the spectrogram parameters, the model configuration, the params it was trained with and
the git revision. It is written atomically, and it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mstagger.model import MultiScaleCNN
from mstagger.params import SpectrogramParams
from mstagger.util import UserError, atomic_path

FORMAT = "mstagger-bundle/1"


def git_revision(cwd: str | Path = ".") -> str:
    """The current git commit (with ``-dirty`` when the work tree has changes), or ``unknown``."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}-dirty" if dirty else rev


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else as given (CUDA must exist)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"params: device: {name!r} asked for, but no CUDA device is available; use auto or cpu"
        )
    return torch.device(name)


@dataclass
class Bundle:
    """A trained tagger ready for inference (see :func:`load_bundle`)."""

    model: MultiScaleCNN
    tags: list[str]
    mean: np.ndarray  # (n_mels,) training-split mean per mel bin
    std: np.ndarray  # (n_mels,) training-split std per mel bin
    spectrogram: SpectrogramParams
    params: dict[str, Any] = field(default_factory=dict)
    git_rev: str = "unknown"
    training: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    def normalise(self, mels: torch.Tensor) -> torch.Tensor:
        """Standardise raw log-mel (B, M, T) per mel bin with the training statistics."""
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=mels.device)[None, :, None]
        std = torch.as_tensor(self.std, dtype=torch.float32, device=mels.device)[None, :, None]
        return (mels.float() - mean) / std

    @torch.no_grad()
    def predict(self, mels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Tag probabilities for raw log-mel spectrograms.

        Args:
            mels: (B, n_mels, n_frames) unnormalised log-mel, float16 or float32 (a memmap is fine).
            batch_size: clips per forward pass.

        Returns:
            (B, n_tags) float32 probabilities, columns in ``self.tags`` order.
        """
        cfg = self.model.config
        if mels.ndim != 3 or mels.shape[1:] != (cfg.n_mels, cfg.n_frames):
            raise ValueError(f"expected (B, {cfg.n_mels}, {cfg.n_frames}) log-mel, got {mels.shape}")
        self.model.eval()
        out = np.empty((len(mels), len(self.tags)), dtype=np.float32)
        for start in range(0, len(mels), batch_size):
            chunk = torch.from_numpy(np.asarray(mels[start : start + batch_size])).to(self.device)
            x = self.normalise(chunk).unsqueeze(1)  # (B, 1, M, T)
            out[start : start + len(chunk)] = torch.sigmoid(self.model(x)).float().cpu().numpy()
        return out


def save_bundle(
    path: str | Path,
    model: MultiScaleCNN,
    tags: list[str],
    mean: np.ndarray,
    std: np.ndarray,
    spectrogram: SpectrogramParams,
    params: dict[str, Any],
    training: dict[str, Any],
    git_rev: str,
) -> None:
    """Write a bundle atomically (temporary file beside ``path``, then rename).

    Args:
        path: destination, e.g. ``models/model.pt``.
        model: the trained network (its weights are copied to the CPU in float32).
        tags: tag names in output order.
        mean, std: per-mel-bin training statistics.
        spectrogram: the feature parameters the network was trained on.
        params: the full pipeline params (plain types).
        training: facts of the run, e.g. best epoch and validation scores.
        git_rev: the revision the model was trained at.
    """
    if len(tags) != model.config.n_tags:
        raise ValueError(f"{len(tags)} tag names for a network with {model.config.n_tags} outputs")
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()},
        "model_config": model.config_dict(),
        "tags": list(tags),
        "mean": torch.as_tensor(np.asarray(mean, dtype=np.float32)),
        "std": torch.as_tensor(np.asarray(std, dtype=np.float32)),
        "spectrogram": {
            "sample_rate": spectrogram.sample_rate,
            "n_fft": spectrogram.n_fft,
            "hop_length": spectrogram.hop_length,
            "n_mels": spectrogram.n_mels,
            "clip_seconds": spectrogram.clip_seconds,
            "log_floor": spectrogram.log_floor,
        },
        "params": params,
        "training": training,
        "git_rev": git_rev,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_bundle(path: str | Path, device: str = "cpu") -> Bundle:
    """Load a bundle written by :func:`save_bundle`, needing no other file of the pipeline.

    Args:
        path: the bundle file.
        device: where to put the network (``cpu``, ``cuda``, ``cuda:N``).

    Returns:
        The :class:`Bundle`, network in eval mode.

    Raises:
        UserError: the file is missing, unreadable or not a bundle.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model bundle {path} not found; train one with `dvc repro train` or pass --model")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: torch raises several types
        raise UserError(f"{path} is not a readable model bundle ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not an mstagger model bundle (expected format {FORMAT})")
    model = MultiScaleCNN(**payload["model_config"])
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return Bundle(
        model=model,
        tags=list(payload["tags"]),
        mean=payload["mean"].numpy(),
        std=payload["std"].numpy(),
        spectrogram=SpectrogramParams(**payload["spectrogram"]),
        params=payload["params"],
        git_rev=payload["git_rev"],
        training=payload["training"],
        device=device,
    )
