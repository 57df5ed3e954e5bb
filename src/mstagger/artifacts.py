"""The extract and prepare outputs that train and evaluate read, opened and checked in one place."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mstagger.util import UserError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class StageInputs:
    """The row-aligned arrays that train and evaluate read.

    Attributes:
        mel: (clips, n_mels, n_frames) raw log-mel, usually a read-only memmap.
        labels: (clips, tags) 0/1.
        split: (clips,) ``train``, ``valid`` or ``test``.
        tags: tag names in label column order.
    """

    mel: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    tags: list[str]


def _need(path: Path, stage: str) -> Path:
    if not path.is_file():
        raise UserError(f"{path} not found; run `dvc repro {stage}` first")
    return path


def load_inputs(features_dir: str | Path, prepared_dir: str | Path) -> StageInputs:
    """Open the extract and prepare outputs and check that they line up.

    Args:
        features_dir: ``params.paths.features`` (``mel.npy``, ``index.csv``).
        prepared_dir: ``params.paths.prepared`` (``labels.npy``, ``tags.json``, ``split.csv``).

    Returns:
        The row-aligned inputs; ``mel`` is memory-mapped.

    Raises:
        UserError: a file is missing or unreadable, or the files disagree (stale outputs).
    """
    features_dir, prepared_dir = Path(features_dir), Path(prepared_dir)
    mel_path = _need(features_dir / "mel.npy", "extract")
    index_path = _need(features_dir / "index.csv", "extract")
    labels_path = _need(prepared_dir / "labels.npy", "prepare")
    tags_path = _need(prepared_dir / "tags.json", "prepare")
    split_path = _need(prepared_dir / "split.csv", "prepare")
    try:
        mel = np.load(mel_path, mmap_mode="r")
        labels = np.load(labels_path)
        index = pd.read_csv(index_path, usecols=["clip_id"])
        split_table = pd.read_csv(split_path, usecols=["clip_id", "split"], dtype={"split": str})
        tag_doc = json.loads(tags_path.read_text(encoding="utf-8"))
        tags = [str(t["name"]) for t in tag_doc["tags"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read the inputs in {features_dir} / {prepared_dir}: {err}") from None
    if mel.ndim != 3:
        raise UserError(f"{mel_path} must be (clips, n_mels, n_frames), got shape {mel.shape}")
    if labels.ndim != 2 or labels.shape[1] != len(tags):
        raise UserError(
            f"{labels_path} has shape {labels.shape} but {tags_path} names {len(tags)} tags; "
            "run `dvc repro prepare`"
        )
    rows = {str(mel_path): len(mel), str(index_path): len(index), str(labels_path): len(labels)}
    rows[str(split_path)] = len(split_table)
    if len(set(rows.values())) != 1:
        found = ", ".join(f"{p}: {n}" for p, n in rows.items())
        raise UserError(f"the inputs disagree on the number of clips ({found}); run `dvc repro`")
    if not np.array_equal(index["clip_id"].to_numpy(), split_table["clip_id"].to_numpy()):
        raise UserError(f"{split_path} is not aligned with {index_path}; run `dvc repro prepare`")
    split = split_table["split"].to_numpy(dtype=str)
    unknown = sorted(set(split) - set(SPLITS))
    if unknown:
        raise UserError(f"{split_path} has unknown split names {unknown}; expected {SPLITS}")
    return StageInputs(mel=mel, labels=labels, split=split, tags=tags)


def load_stats(prepared_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The training-split per-mel-bin mean and std of ``stats.json`` (float32, std floored at 1e-6).

    A constant mel bin (std 0) would divide by zero; such a bin carries no information anyway.
    """
    path = _need(Path(prepared_dir) / "stats.json", "prepare")
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
        mean = np.asarray(stats["mean"], dtype=np.float32)
        std = np.asarray(stats["std"], dtype=np.float32)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read {path}: {err}; run `dvc repro prepare`") from None
    return mean, np.maximum(std, 1e-6)
