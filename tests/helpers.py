"""Shared test helpers: the repository's params.yaml as the base of test parameters; MTAT-format writers.

The writers follow MTAT's published format on their own (not through ``mstagger.data.mtat``), so the
readers are tested against the format, not against themselves.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mstagger.data.mtat import CLIP_INFO_COLUMNS
from mstagger.params import Params, params_from_dict

REPO = Path(__file__).resolve().parents[1]
SHARED_MTAT = REPO.parent / "shared" / "mtat"


def repo_params_dict() -> dict[str, Any]:
    """The repository's params.yaml as a plain mapping (a fresh copy each call)."""
    return copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")))


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied; nested mappings merge key by key."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if dataclasses.is_dataclass(value):  # a section object, e.g. DownloadParams(...), replaces it whole
            value = {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
            out[key] = value
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def make_params(**overrides: Any) -> Params:
    """Validated params: the repository's params.yaml with ``overrides`` merged in."""
    return params_from_dict(merged(repo_params_dict(), overrides))


def write_mtat_table(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """Write a table as MTAT does: tab-separated, every field double-quoted, CRLF line ends."""
    lines = ["\t".join(f'"{v}"' for v in line) for line in [header, *rows]]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return path


def write_annotations(path: Path, tags: list[str], clips: list[tuple[str, str, list[int]]]) -> Path:
    """clips: (clip_id, mp3_path, 0/1 per tag)."""
    rows = [[cid, *values, mp3] for cid, mp3, values in clips]
    return write_mtat_table(path, ["clip_id", *tags, "mp3_path"], rows)


def write_clip_info(path: Path, clips: list[tuple[str, str, str, str]]) -> Path:
    """clips: (clip_id, artist, album, mp3_path)."""
    header = list(CLIP_INFO_COLUMNS)  # the real file's columns: tests/test_mtat.py reads ../shared/mtat
    rows = [[cid, "01", "t", artist, album, "u", "0", "29", "o", mp3] for cid, artist, album, mp3 in clips]
    return write_mtat_table(path, header, rows)


def toy_catalogue(n_artists: int = 6, albums: int = 2, songs: int = 3, clips: int = 4) -> pd.DataFrame:
    """Clips in MTAT's path layout; each album lives in one folder, folders cycle through 0..f."""
    rows = []
    cid = 0
    folders = "0123456789abcdef"
    for a in range(n_artists):
        for b in range(albums):
            folder = folders[(a * albums + b) % 16]
            for s in range(songs):
                for c in range(clips):
                    start = 29 * c
                    path = f"{folder}/artist_{a}-album_{b}-{s + 1:02d}-song_{s}-{start}-{start + 29}.mp3"
                    rows.append(
                        {
                            "clip_id": str(cid),
                            "mp3_path": path,
                            "artist_name": f"Artist {a}",
                            "album_name": f"Album {b}",
                        }
                    )
                    cid += 1
    return pd.DataFrame(rows)


def make_fake_project(
    tmp_path: Path, n_mels: int = 4, n_frames: int = 6, shuffle_index: bool = False
) -> dict:
    """A tiny raw folder and features folder: 20 annotated clips, one skipped, one never extracted.

    ``shuffle_index`` lists the extracted clips in another order than the annotations.
    """
    cat = toy_catalogue(n_artists=5, albums=1, songs=2, clips=2)  # 20 clips, folders 0..4
    cat["mp3_path"] = [p.replace(p[0], "0123456789abcdef"[i % 16], 1) for i, p in enumerate(cat["mp3_path"])]
    tags = ["rock", "guitar", "guitars", "slow", "quiet"]
    rng = np.random.default_rng(1)
    values = rng.integers(0, 2, size=(len(cat), len(tags)))
    raw, features = tmp_path / "data" / "raw", tmp_path / "data" / "features"
    raw.mkdir(parents=True)
    features.mkdir(parents=True)
    write_annotations(
        raw / "annotations_final.csv",
        tags,
        [(cid, mp3, list(v)) for cid, mp3, v in zip(cat["clip_id"], cat["mp3_path"], values, strict=True)],
    )
    write_clip_info(
        raw / "clip_info_final.csv",
        list(zip(cat["clip_id"], cat["artist_name"], cat["album_name"], cat["mp3_path"], strict=True)),
    )
    skipped_id, missing_id = "4", "11"
    kept = cat[~cat["clip_id"].isin([skipped_id, missing_id])].reset_index(drop=True)
    if shuffle_index:
        kept = kept.iloc[rng.permutation(len(kept))].reset_index(drop=True)
    index = pd.DataFrame({"row": range(len(kept)), "clip_id": kept["clip_id"], "mp3_path": kept["mp3_path"]})
    index["seconds"] = 29.1
    index.to_csv(features / "index.csv", index=False)
    skipped_path = cat.loc[cat["clip_id"] == skipped_id, "mp3_path"].item()
    pd.DataFrame([{"clip_id": skipped_id, "mp3_path": skipped_path, "bytes": 0, "reason": "empty"}]).to_csv(
        features / "skipped.csv", index=False
    )
    mel = rng.normal(size=(len(kept), n_mels, n_frames)).astype(np.float16)
    np.save(features / "mel.npy", mel)
    return {"raw": raw, "features": features, "tags": tags, "values": values, "cat": cat, "index": index}


def tiny_train_data(n: int = 48, seed: int = 0, n_mels: int = 16, n_frames: int = 64, n_tags: int = 4):
    """Tiny learnable training inputs: tag j raises the energy of mel bands 4j..4j+3.

    Returns:
        A :class:`mstagger.train.TrainData` with ``n - 16`` train, 8 valid and 8 test clips.
    """
    from mstagger.train import TrainData

    rng = np.random.default_rng(seed)
    labels = (rng.random((n, n_tags)) < 0.4).astype(np.uint8)
    mel = rng.normal(size=(n, n_mels, n_frames)).astype(np.float32)
    for j in range(n_tags):
        mel[labels[:, j] == 1, 4 * j : 4 * j + 4] += 2.0
    split = np.array(["train"] * (n - 16) + ["valid"] * 8 + ["test"] * 8)
    return TrainData(
        mel=mel.astype(np.float16),
        labels=labels,
        tags=[f"tag{j}" for j in range(n_tags)],
        split=split,
        mean=np.zeros(n_mels, np.float32),
        std=np.ones(n_mels, np.float32),
    )


def write_train_inputs(root: Path, data) -> None:
    """Write ``data`` as extract and prepare would, under ``root``'s data/features and data/prepared."""
    import json

    features, prepared = root / "data" / "features", root / "data" / "prepared"
    features.mkdir(parents=True, exist_ok=True)
    prepared.mkdir(parents=True, exist_ok=True)
    np.save(features / "mel.npy", data.mel)
    ids = [str(100 + i) for i in range(len(data.mel))]
    paths = [f"0/a-b-01-s-{i}-{i + 29}.mp3" for i in range(len(data.mel))]
    pd.DataFrame({"row": range(len(ids)), "clip_id": ids, "mp3_path": paths, "seconds": 29.1}).to_csv(
        features / "index.csv", index=False
    )
    np.save(prepared / "labels.npy", data.labels)
    counts = data.labels.sum(axis=0)
    tags = {"tags": [{"name": t, "count": int(c)} for t, c in zip(data.tags, counts, strict=True)]}
    (prepared / "tags.json").write_text(json.dumps(tags))
    pd.DataFrame({"clip_id": ids, "split": data.split}).to_csv(prepared / "split.csv", index=False)
    stats = {
        "mean": data.mean.tolist(),
        "std": data.std.tolist(),
        "n_clips": int((data.split == "train").sum()),
    }
    (prepared / "stats.json").write_text(json.dumps(stats))


def write_params(root: Path, **overrides: Any) -> dict[str, Any]:
    """Write the repository's params.yaml with ``overrides`` merged in to ``root``; return the mapping."""
    params = merged(repo_params_dict(), overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


# A tiny configuration of the whole pipeline: seconds per stage. Its own tag count and split
# (protocol custom): a protocol's 50 tags and folder split need more clips (tests/test_protocols.py).
TINY_PIPELINE = {
    "protocol": "custom",
    "epochs": 2,
    "batch_size": 4,
    "lr_milestones": [1],
    "demo": {"n_artists": 3, "albums_per_artist": 2, "songs_per_album": 1, "clips_per_song": 2},
    "spectrogram": {"n_mels": 32, "clip_seconds": 6.0},
    "extract": {"workers": 1},
    "tags": {"top_n": 5},
    "split": {"method": "random", "valid_size": 2, "test_size": 3},
    "evaluate": {"curve_tags": 3},
}


def sh(cmd: list[str], cwd: Path, check: bool = True, env_extra: dict | None = None, **kwargs: Any):
    """Run a command with this interpreter's folder first on PATH (dvc, python) and return the result."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["DVC_NO_ANALYTICS"] = "1"
    env.update(env_extra or {})
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def git_commit(repo: Path, message: str) -> None:
    sh(["git", "add", "-A"], repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


def make_pipeline_repo(repo: Path, **overrides: Any) -> Path:
    """A git + DVC repository with this checkout's code and dvc.yaml and the tiny params, run once."""
    import shutil

    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "dvc.yaml", repo)
    write_params(repo, **merged(TINY_PIPELINE, overrides))
    (repo / ".gitignore").write_text("__pycache__/\n/.cache/\n")
    sh(["git", "init", "-q", "-b", "main"], repo)
    sh(["dvc", "init", "-q"], repo)
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copy(REPO / ".dvcignore", repo)
    git_commit(repo, "tiny pipeline")
    result = sh(["dvc", "repro"], repo)
    repo.joinpath("repro.log").write_text(result.stdout + result.stderr)
    git_commit(repo, "tiny run")
    return repo


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str, read_only: bool = False):
    """A small (or read-only) file system at ``mountpoint``; the test is skipped where mounting is refused."""
    import subprocess

    import pytest

    mountpoint.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()})")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms; fail the test naming ``what`` after ``timeout`` seconds."""
    import time

    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
