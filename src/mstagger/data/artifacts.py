"""The files ``extract`` and ``prepare`` write and the later stages read: their names and their readers.

``paths.features`` (extract): ``mel.npy`` (float16, clips x n_mels x n_frames, memory-mappable),
``index.csv`` (row, clip_id, mp3_path, seconds) and ``skipped.csv`` (clip_id, mp3_path, bytes, reason).
``paths.prepared`` (prepare): ``labels.npy`` (uint8, rows as ``index.csv``), ``tags.json``,
``split.csv`` (clip_id, split) and ``stats.json`` (training-split mean and std per mel bin).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mstagger.core.errors import UserError
from mstagger.data.mtat import DROPPED, SPLITS, read_table

MEL_FILE = "mel.npy"
INDEX_FILE = "index.csv"
SKIPPED_FILE = "skipped.csv"
LABELS_FILE = "labels.npy"
TAGS_FILE = "tags.json"
SPLIT_FILE = "split.csv"
STATS_FILE = "stats.json"
_RUN_EXTRACT = "; run the extract stage first (dvc repro extract)"


@dataclass(frozen=True)
class StageInputs:
    """The row-aligned arrays that train and evaluate read.

    Attributes:
        mel: (clips, n_mels, n_frames) raw log-mel, usually a read-only memmap.
        labels: (clips, tags) 0/1.
        split: (clips,) ``train``, ``valid``, ``test`` or ``dropped`` (a clip the protocol leaves out).
        tags: tag names in label column order.
        mp3_path: (clips,) each clip's MTAT path (it names the clip's song).
    """

    mel: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    tags: list[str]
    mp3_path: np.ndarray


def _need(path: Path, stage: str) -> Path:
    if not path.is_file():
        raise UserError(f"{path} not found; run `dvc repro {stage}` first")
    return path


def load_inputs(features_dir: str | Path, prepared_dir: str | Path) -> StageInputs:
    """Open the extract and prepare outputs and check that they line up.

    Args:
        features_dir: ``paths.features`` (``mel.npy``, ``index.csv``).
        prepared_dir: ``paths.prepared`` (``labels.npy``, ``tags.json``, ``split.csv``).

    Returns:
        The row-aligned inputs; ``mel`` is memory-mapped.

    Raises:
        UserError: a file is missing or unreadable, or the files disagree (stale outputs).
    """
    features_dir, prepared_dir = Path(features_dir), Path(prepared_dir)
    mel_path = _need(features_dir / MEL_FILE, "extract")
    index_path = _need(features_dir / INDEX_FILE, "extract")
    labels_path = _need(prepared_dir / LABELS_FILE, "prepare")
    tags_path = _need(prepared_dir / TAGS_FILE, "prepare")
    split_path = _need(prepared_dir / SPLIT_FILE, "prepare")
    try:
        mel = np.load(mel_path, mmap_mode="r")
        labels = np.load(labels_path)
        index = pd.read_csv(index_path, usecols=["clip_id", "mp3_path"], dtype={"mp3_path": str})
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
    unknown = sorted(set(split) - {*SPLITS, DROPPED})
    if unknown:
        raise UserError(f"{split_path} has unknown split names {unknown}; expected {(*SPLITS, DROPPED)}")
    mp3_path = index["mp3_path"].to_numpy(dtype=str)
    return StageInputs(mel=mel, labels=labels, split=split, tags=tags, mp3_path=mp3_path)


def load_stats(prepared_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The training-split per-mel-bin mean and std of ``stats.json`` (float32, std floored at 1e-6).

    A constant mel bin (std 0) would divide by zero; such a bin carries no information anyway.
    """
    path = _need(Path(prepared_dir) / STATS_FILE, "prepare")
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
        mean = np.asarray(stats["mean"], dtype=np.float32)
        std = np.asarray(stats["std"], dtype=np.float32)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read {path}: {err}; run `dvc repro prepare`") from None
    return mean, np.maximum(std, 1e-6)


def read_index(features_dir: str | Path) -> pd.DataFrame:
    """Read ``index.csv`` (row, clip_id, mp3_path, ...) and check ``row`` is 0..N-1 and ids are unique.

    Raises:
        UserError: the file is missing or malformed.
    """
    path = Path(features_dir) / INDEX_FILE
    df = read_table(path, "feature index", ["row", "clip_id", "mp3_path"], sep=",", hint=_RUN_EXTRACT)
    rows = pd.to_numeric(df["row"], errors="coerce")
    if not np.array_equal(rows.to_numpy(), np.arange(len(df))):
        raise UserError(
            f"feature index {path}: column 'row' must be 0..N-1 in order; re-run the extract stage"
        )
    dup = df["clip_id"][df["clip_id"].duplicated()]
    if len(dup):
        raise UserError(f"feature index {path}: clip_id {dup.iloc[0]} appears more than once")
    return df.assign(row=rows.astype(np.int64))


def read_skipped(features_dir: str | Path) -> pd.DataFrame:
    """Read ``skipped.csv`` (clip_id, mp3_path, bytes, reason): the clips extract left out.

    Raises:
        UserError: the file is missing or lacks the clip_id or reason column.
    """
    path = Path(features_dir) / SKIPPED_FILE
    return read_table(path, "skipped list", ["clip_id", "reason"], sep=",", hint=_RUN_EXTRACT)


def open_mel(features_dir: str | Path, n_clips: int) -> np.ndarray:
    """Memory-map ``mel.npy`` and check it holds ``n_clips`` spectrograms (the rows of ``index.csv``).

    Raises:
        UserError: the file is missing, unreadable or of another length.
    """
    path = _need(Path(features_dir) / MEL_FILE, "extract")
    try:
        mel = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}; re-run the extract stage") from None
    if mel.ndim != 3 or mel.shape[0] != n_clips:
        raise UserError(
            f"{path} has shape {mel.shape} but {Path(features_dir) / INDEX_FILE} lists {n_clips} clips; "
            "re-run the extract stage"
        )
    return mel
