"""Stage ``prepare``: labels, tag list, train/valid/test split and training-set normalisation.

Reads MTAT's ``annotations_final.csv`` and ``clip_info_final.csv`` (``paths.raw``) and the extract
stage's ``index.csv``, ``skipped.csv`` and ``mel.npy`` (``paths.features``), and writes to
``paths.prepared``:

- ``labels.npy``: uint8 (clips, tags); row i is the clip of ``index.csv`` row i (= ``mel.npy`` row i).
- ``tags.json``: ``{"tags": [{"name", "count"}, ...]}`` in column order of ``labels.npy``.
- ``split.csv``: ``clip_id, split`` (train / valid / test), one row per ``index.csv`` row, same order.
- ``stats.json``: per-mel-bin ``mean`` and ``std`` over the TRAINING clips only (clips and time),
  and ``n_clips``. The original code computed them on all clips, test included: a leak.
- ``summary.json``: counts, split sizes, leakage and seconds; ``paths.metrics``/``prepare.json`` holds
  the split sizes and leakage alone, so ``dvc metrics diff`` shows them.

Choices made here:

- Synonym groups (``tags.synonyms``) are merged by logical OR under the group's first name.
- Clips the extract stage skipped (empty or truncated audio) are dropped *before* tags are counted, so
  the top-N tags and the counts in ``tags.json`` describe exactly the clips that are trained and
  evaluated on. Ties in count are broken by tag name, so the order is deterministic.
- Leakage is reported for the split made: the share of test clips whose song, album or artist also has
  a clip in train. The song key is the file name without its folder and without the trailing
  ``-<start>-<end>.mp3`` (every clip of a song shares it); artist and album come from ``clip_info``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from mstagger.artifacts import SPLITS
from mstagger.params import SPLIT_METHODS, ParamsError, load_params
from mstagger.util import UserError, atomic_path, log, stage_main, timed, write_json

ANNOTATIONS_FILE = "annotations_final.csv"
CLIP_INFO_FILE = "clip_info_final.csv"
# The trailing "-<start>-<end>.mp3" of an MTAT clip file name; what precedes it names the song.
_SEGMENT_SUFFIX = re.compile(r"-\d+-\d+\.mp3$", re.IGNORECASE)
_RUN_EXTRACT = "; run the extract stage first (dvc repro extract)"
_FOLDER_SPLIT = {**{c: "train" for c in "0123456789ab"}, "c": "valid", **{c: "test" for c in "def"}}


# ----------------------------------------------------------------------------------------- reading


def _read_table(
    path: str | Path, what: str, required: Sequence[str], sep: str = "\t", hint: str = ""
) -> pd.DataFrame:
    """Read a quoted table (MTAT: tab-separated) as strings; check it has the ``required`` columns."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}{hint}")
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise UserError(f"{what} {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path} cannot be parsed: {str(err).strip()}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        shown = ", ".join(map(str, df.columns[:5])) + (", ..." if len(df.columns) > 5 else "")
        raise UserError(f"{what} {path} lacks column(s) {', '.join(missing)} (it has: {shown})")
    return df


def read_annotations(path: str | Path) -> pd.DataFrame:
    """Read MTAT's ``annotations_final.csv`` (tab-separated, quoted, header clip_id, tags..., mp3_path).

    Args:
        path: the annotations file.

    Returns:
        A frame with ``clip_id`` (str), one uint8 0/1 column per tag in file order, and ``mp3_path`` (str).

    Raises:
        UserError: the file is missing or malformed (wrong header, duplicate ids, a value not 0/1).
    """
    df = _read_table(path, "annotations", ["clip_id", "mp3_path"])
    cols = list(df.columns)
    if cols[0] != "clip_id" or cols[-1] != "mp3_path" or len(cols) < 3:
        raise UserError(
            f"annotations {path}: expected the header clip_id, <tag names>, mp3_path; got {cols[:3]}..."
        )
    tags = cols[1:-1]
    mangled = [t for t in tags if re.search(r"\.\d+$", t) and t.rsplit(".", 1)[0] in tags]
    if mangled:
        raise UserError(f"annotations {path}: duplicate tag column(s) {', '.join(mangled)}")
    dup = df["clip_id"][df["clip_id"].duplicated()]
    if len(dup):
        raise UserError(f"annotations {path}: clip_id {dup.iloc[0]} appears more than once")
    values = df[tags].to_numpy()
    ones = values == "1"
    bad = ~(ones | (values == "0"))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise UserError(
            f"annotations {path}: clip {df['clip_id'].iloc[r]} tag {tags[c]!r} is {values[r, c]!r}, "
            "expected 0 or 1; is this MTAT's annotations_final.csv?"
        )
    out = pd.DataFrame(ones.astype(np.uint8), columns=tags, index=df.index)
    out.insert(0, "clip_id", df["clip_id"])
    out["mp3_path"] = df["mp3_path"]
    return out


def read_clip_info(path: str | Path) -> pd.DataFrame:
    """Read MTAT's ``clip_info_final.csv``.

    Args:
        path: the clip info file (tab-separated, quoted).

    Returns:
        A frame with the string columns ``clip_id``, ``artist``, ``album``, ``mp3_path``; a clip id
        listed twice keeps its first row.

    Raises:
        UserError: the file is missing or lacks one of those columns.
    """
    df = _read_table(path, "clip info", ["clip_id", "artist", "album", "mp3_path"])
    return df[["clip_id", "artist", "album", "mp3_path"]].drop_duplicates("clip_id").reset_index(drop=True)


def read_index(path: str | Path) -> pd.DataFrame:
    """Read the extract stage's ``index.csv`` (row, clip_id, mp3_path) and check ``row`` is 0..N-1.

    Raises:
        UserError: the file is missing or malformed, or its rows are not numbered 0..N-1 in order.
    """
    df = _read_table(path, "feature index", ["row", "clip_id", "mp3_path"], sep=",", hint=_RUN_EXTRACT)
    rows = pd.to_numeric(df["row"], errors="coerce")
    if not np.array_equal(rows.to_numpy(), np.arange(len(df))):
        raise UserError(
            f"feature index {path}: column 'row' must be 0..N-1 in order; re-run the extract stage"
        )
    dup = df["clip_id"][df["clip_id"].duplicated()]
    if len(dup):
        raise UserError(f"feature index {path}: clip_id {dup.iloc[0]} appears more than once")
    return df.assign(row=rows.astype(np.int64))


def read_skipped(path: str | Path) -> pd.DataFrame:
    """Read the extract stage's ``skipped.csv`` (clip_id, mp3_path, bytes, reason): clips left out.

    Raises:
        UserError: the file is missing or lacks the clip_id or reason column.
    """
    return _read_table(path, "skipped list", ["clip_id", "reason"], sep=",", hint=_RUN_EXTRACT)


# -------------------------------------------------------------------------------------------- tags


def merge_synonyms(tags_df: pd.DataFrame, groups: Sequence[Sequence[str]]) -> pd.DataFrame:
    """Merge synonym tag columns by logical OR.

    Args:
        tags_df: 0/1 tag columns only (one row per clip).
        groups: synonym groups; each becomes one column named by the group's first name.

    Returns:
        A uint8 frame with the same index: ungrouped tags unchanged, each group merged into one column
        placed where its first member (in ``tags_df`` column order) was.

    Raises:
        ParamsError: a name of ``tags.synonyms`` is not a column of ``tags_df``, or is in two groups.
    """
    columns = set(tags_df.columns)
    group_of: dict[str, int] = {}
    for i, group in enumerate(groups):
        for name in group:
            if name not in columns:
                raise ParamsError(
                    f"params: tags.synonyms[{i}]: {name!r} (group {list(group)}) is not one of the "
                    f"{len(columns)} tags of the annotations; fix or remove it in params.yaml"
                )
            if name in group_of:
                raise ParamsError(
                    f"params: tags.synonyms[{i}]: {name!r} is already in group {group_of[name]}"
                )
            group_of[name] = i
    merged: dict[str, np.ndarray] = {}
    for name in tags_df.columns:
        if name not in group_of:
            merged[name] = tags_df[name].to_numpy(dtype=np.uint8)
            continue
        group = groups[group_of[name]]
        if group[0] in merged:
            continue
        merged[group[0]] = tags_df[list(group)].to_numpy().max(axis=1).astype(np.uint8)
    return pd.DataFrame(merged, index=tags_df.index)


def top_n_tags(merged: pd.DataFrame, n: int) -> list[tuple[str, int]]:
    """The ``n`` most frequent tags.

    Args:
        merged: 0/1 tag columns (one row per clip), e.g. from :func:`merge_synonyms`.
        n: how many to keep (``tags.top_n``).

    Returns:
        ``(name, count)`` pairs, count descending, ties broken by name.

    Raises:
        ParamsError: ``n`` exceeds the number of tags.
    """
    if n > merged.shape[1]:
        raise ParamsError(
            f"params: tags.top_n: {n} tags requested but only {merged.shape[1]} remain after merging "
            "synonyms; lower tags.top_n"
        )
    counts = merged.sum(axis=0).astype(np.int64)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [(str(name), int(count)) for name, count in ranked[:n]]


# ------------------------------------------------------------------------------------------- split


def song_key(mp3_path: str) -> str:
    """The song of a clip: its file name without folder and without the trailing ``-<start>-<end>.mp3``."""
    name = mp3_path.replace("\\", "/").rsplit("/", 1)[-1]
    stripped = _SEGMENT_SUFFIX.sub("", name)
    return stripped if stripped != name else re.sub(r"\.mp3$", "", name, flags=re.IGNORECASE)


def _path_fields(paths: pd.Series, k: int) -> pd.Series:
    """The first ``k`` ``-``-separated fields of each file name (artist, then album, in MTAT paths)."""
    names = paths.str.replace("\\", "/", regex=False).str.rsplit("/", n=1).str[-1]
    return names.str.split("-").str[:k].str.join("-")


def clip_meta(clips: pd.DataFrame, clip_info: pd.DataFrame | None = None) -> pd.DataFrame:
    """Song, album and artist keys of each clip, for grouped splits and leakage.

    Artist and album come from ``clip_info`` (album keyed by artist and album, as album names repeat
    across artists). A clip that ``clip_info`` lacks falls back to its file name's first ``-`` field
    (artist) and first two (album), translated to ``clip_info``'s names where another clip of
    ``clip_info`` has the same file-name fields, so both sources give one key per artist.

    Args:
        clips: ``clip_id`` and ``mp3_path`` columns.
        clip_info: from :func:`read_clip_info`, or None to use the file names alone.

    Returns:
        A frame with the index of ``clips`` and columns ``clip_id``, ``mp3_path``, ``song``, ``album``,
        ``artist``.
    """
    meta = clips[["clip_id", "mp3_path"]].copy()
    meta["song"] = [song_key(p) for p in meta["mp3_path"]]
    path_artist = _path_fields(meta["mp3_path"], 1)
    path_album = _path_fields(meta["mp3_path"], 2)
    if clip_info is None or clip_info.empty:
        meta["artist"], meta["album"] = path_artist, path_album
        return meta
    info = clip_info.drop_duplicates("clip_id").set_index("clip_id")
    info_album = info["artist"] + " / " + info["album"]
    # file-name fields -> clip_info names, learnt from clip_info's own rows
    artist_by_path = pd.Series(info["artist"].to_numpy(), index=_path_fields(info["mp3_path"], 1).to_numpy())
    album_by_path = pd.Series(info_album.to_numpy(), index=_path_fields(info["mp3_path"], 2).to_numpy())
    artist_by_path = artist_by_path[~artist_by_path.index.duplicated()]
    album_by_path = album_by_path[~album_by_path.index.duplicated()]
    artist = meta["clip_id"].map(info["artist"])
    album = meta["clip_id"].map(info_album)
    artist = artist.fillna(path_artist.map(artist_by_path)).fillna(path_artist)
    album = album.fillna(path_album.map(album_by_path)).fillna(path_album)
    meta["artist"], meta["album"] = artist, album
    return meta


def split_targets(n: int, valid_size: float, test_size: float) -> tuple[int, int, int]:
    """Target (train, valid, test) clip counts for ``n`` clips.

    Args:
        n: clips to split.
        valid_size: a count (>= 1) or a fraction (< 1) of ``n`` (``split.valid_size``).
        test_size: likewise (``split.test_size``); train gets the rest.

    Raises:
        ParamsError: a size rounds to zero, or valid and test leave no clip for training.
    """
    sizes = {}
    for key, size in (("valid_size", valid_size), ("test_size", test_size)):
        count = round(size * n) if size < 1 else int(size)
        if count < 1:
            raise ParamsError(f"params: split.{key}: {size} of {n} clips is 0 clips; make it larger")
        sizes[key] = count
    n_valid, n_test = sizes["valid_size"], sizes["test_size"]
    if n_valid + n_test >= n:
        raise ParamsError(
            f"params: split.valid_size/split.test_size: {n_valid} valid + {n_test} test clips leave no "
            f"training clip out of {n}; make them smaller"
        )
    return n - n_valid - n_test, n_valid, n_test


def _grouped_split(keys: pd.Series, n_valid: int, n_test: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffle the groups, fill valid then test up to their targets with whole groups; train gets the rest."""
    codes, uniques = pd.factorize(keys, sort=True)  # sorted: the result depends on the seed alone
    sizes = np.bincount(codes, minlength=len(uniques))
    assign = np.empty(len(uniques), dtype=object)
    filled = {"valid": 0, "test": 0}
    targets = {"valid": n_valid, "test": n_test}
    for g in rng.permutation(len(uniques)):
        part = next((s for s in ("valid", "test") if filled[s] < targets[s]), "train")
        assign[g] = part
        if part != "train":
            filled[part] += int(sizes[g])
    return assign[codes]


def make_split(meta: pd.DataFrame, method: str, valid_size: float, test_size: float, seed: int) -> pd.Series:
    """Assign each clip to train, valid or test.

    Methods:
        ``random``: the paper's. Shuffle the clips with ``numpy.random.default_rng(seed)``; the first
        clips go to train, the next to valid, the rest to test.
        ``folder``: the literature's. By the first character of ``mp3_path``: 0-b train, c valid,
        d-f test; the sizes are ignored.
        ``song`` / ``artist``: whole songs (or artists) shuffled with the seed; valid, then test, take
        groups until they reach their sizes (overshooting by less than one group); train gets the
        rest. No song (artist) has clips in two splits.

    Args:
        meta: from :func:`clip_meta` (``mp3_path``, ``song``, ``artist``).
        method: one of ``random``, ``folder``, ``song``, ``artist`` (``split.method``).
        valid_size: valid clips, a count (>= 1) or a fraction (< 1) of the clips (``split.valid_size``).
        test_size: test clips, likewise (``split.test_size``).
        seed: the shuffle seed.

    Returns:
        A string Series named ``split`` with ``meta``'s index; the same arguments give the same split.

    Raises:
        ParamsError: unknown method, sizes that leave a split empty, or a split that comes out empty.
        UserError: a folder split meets a path whose first character is not a folder 0-f.
    """
    n = len(meta)
    if method == "folder":
        first = meta["mp3_path"].str[:1].str.lower()
        split = first.map(_FOLDER_SPLIT)
        if split.isna().any():
            bad = meta["mp3_path"][split.isna()].iloc[0]
            raise UserError(
                f"split.method folder: {bad!r} does not start with a folder 0-f; use another split.method"
            )
        values = split.to_numpy(dtype=object)
    elif method in ("random", "song", "artist"):
        n_train, n_valid, n_test = split_targets(n, valid_size, test_size)
        rng = np.random.default_rng(seed)
        if method == "random":
            values = np.empty(n, dtype=object)
            order = rng.permutation(n)
            values[order[:n_train]] = "train"
            values[order[n_train : n_train + n_valid]] = "valid"
            values[order[n_train + n_valid :]] = "test"
        else:
            values = _grouped_split(meta[method], n_valid, n_test, rng)
    else:
        raise ParamsError(f"params: split.method: must be one of {', '.join(SPLIT_METHODS)}, got {method!r}")
    split = pd.Series(values, index=meta.index, name="split", dtype=object)
    sizes = split.value_counts()
    for part, key in (
        ("train", "split.valid_size/split.test_size"),
        ("valid", "split.valid_size"),
        ("test", "split.test_size"),
    ):
        _require_nonempty(sizes, part, key, method, n)
    return split


def _require_nonempty(sizes: pd.Series, part: str, key: str, method: str, n: int) -> None:
    if int(sizes.get(part, 0)) > 0:
        return
    hint = (
        "folder splits use the folders 0-b / c / d-f; choose another split.method"
        if method == "folder"
        else f"adjust {key}"
    )
    raise ParamsError(
        f"params: {key}: the {part} split of {n} clips is empty (split.method {method}); {hint}"
    )


def split_sizes(split: pd.Series) -> dict[str, int]:
    """Clips per split: ``{"train": ..., "valid": ..., "test": ...}``."""
    counts = split.value_counts()
    return {part: int(counts.get(part, 0)) for part in SPLITS}


def leakage(meta: pd.DataFrame, split: pd.Series) -> dict[str, float]:
    """Share of test clips whose song, album or artist also has a clip in train.

    Args:
        meta: from :func:`clip_meta`.
        split: from :func:`make_split`, same index.

    Returns:
        ``{"test_song_in_train", "test_album_in_train", "test_artist_in_train"}``, each in [0, 1]
        (0.0 where there is no test clip).
    """
    train, test = meta[split == "train"], meta[split == "test"]
    out = {}
    for key in ("song", "album", "artist"):
        shared = test[key].isin(set(train[key])) if len(test) else pd.Series([], dtype=bool)
        out[f"test_{key}_in_train"] = round(float(shared.mean()), 6) if len(test) else 0.0
    return out


# ------------------------------------------------------------------------------------------- stats


def train_stats(
    mel: np.ndarray, rows: Sequence[int] | np.ndarray, chunk_clips: int = 64, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Per-mel-bin mean and standard deviation over the given clips and all their frames.

    Streams over ``mel`` (a memory map is fine) ``chunk_clips`` clips at a time, combining chunk means
    and squared deviations in float64 (Chan et al.'s parallel update), so memory stays small and the
    result matches a one-shot float64 computation.

    Args:
        mel: (clips, n_mels, n_frames) log-mel array.
        rows: the clips to use (the training split); order does not matter.
        chunk_clips: clips read per step.
        progress: show a tqdm bar.

    Returns:
        ``(mean, std)``, float64 arrays of shape (n_mels,); std is the population std (ddof 0).

    Raises:
        UserError: ``rows`` is empty, or the spectrograms hold non-finite values.
    """
    rows = np.sort(np.asarray(rows, dtype=np.int64))  # sorted: sequential reads of the memory map
    if len(rows) == 0:
        raise UserError("normalisation statistics need at least one training clip")
    n_mels = mel.shape[1]
    count = 0
    mean = np.zeros(n_mels, dtype=np.float64)
    m2 = np.zeros(n_mels, dtype=np.float64)
    with tqdm(total=len(rows), desc="prepare: train stats", unit="clip", disable=not progress) as bar:
        for start in range(0, len(rows), chunk_clips):
            chunk = np.asarray(mel[rows[start : start + chunk_clips]], dtype=np.float64)  # (c, n_mels, T)
            c = chunk.shape[0] * chunk.shape[2]
            c_mean = chunk.mean(axis=(0, 2))
            c_m2 = ((chunk - c_mean[None, :, None]) ** 2).sum(axis=(0, 2))
            delta = c_mean - mean
            total = count + c
            mean += delta * (c / total)
            m2 += c_m2 + delta**2 * (count * c / total)
            count = total
            bar.update(len(chunk))
    std = np.sqrt(m2 / count)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise UserError("mel.npy holds non-finite values in training clips; re-run the extract stage")
    return mean, std


# -------------------------------------------------------------------------------------------- core


@dataclass
class Prepared:
    """What :func:`prepare` computed; :func:`write_outputs` writes it."""

    labels: np.ndarray  # (clips, tags) uint8, rows as index.csv
    tags: list[tuple[str, int]]  # (name, count) in column order
    split: pd.DataFrame  # clip_id, split; rows as index.csv
    mean: np.ndarray  # (n_mels,) float64, training clips only
    std: np.ndarray  # (n_mels,) float64
    summary: dict[str, Any] = field(default_factory=dict)


def tag_and_split(
    clips: pd.DataFrame,
    clip_info: pd.DataFrame | None,
    *,
    synonyms: Sequence[Sequence[str]],
    top_n: int,
    method: str,
    valid_size: float,
    test_size: float,
    seed: int,
) -> tuple[list[str], pd.DataFrame, list[tuple[str, int]], pd.DataFrame, pd.Series]:
    """Merge synonyms, rank the tags and split the clips: the steps ``prepare`` and ``mstagger tags`` share.

    Args:
        clips: annotation rows (``clip_id``, the tag columns, ``mp3_path``), in output order.
        clip_info: from :func:`read_clip_info`, or None to take artists and albums from file names.
        synonyms, top_n: as ``tags.synonyms`` and ``tags.top_n``.
        method, valid_size, test_size, seed: as ``split.*`` and ``seed``.

    Returns:
        (tag names read, merged tag table, top-N (name, count), clip meta, split per clip).
    """
    tag_names = [c for c in clips.columns if c not in ("clip_id", "mp3_path")]
    merged = merge_synonyms(clips[tag_names], synonyms)
    top = top_n_tags(merged, top_n)
    meta = clip_meta(clips[["clip_id", "mp3_path"]], clip_info)
    split = make_split(meta, method, valid_size, test_size, seed)
    return tag_names, merged, top, meta, split


def prepare(
    annotations_path: str | Path,
    clip_info_path: str | Path,
    features_dir: str | Path,
    *,
    synonyms: Sequence[Sequence[str]],
    top_n: int,
    method: str,
    valid_size: float,
    test_size: float,
    seed: int,
    chunk_clips: int = 64,
    progress: bool = True,
) -> Prepared:
    """Build labels, tag list, split and training-set statistics for the extracted clips.

    Args:
        annotations_path: MTAT ``annotations_final.csv``.
        clip_info_path: MTAT ``clip_info_final.csv`` (artist and album of each clip).
        features_dir: the extract stage's folder (``index.csv``, ``skipped.csv``, ``mel.npy``).
        synonyms: ``tags.synonyms`` groups.
        top_n: ``tags.top_n``.
        method, valid_size, test_size: ``split.*``.
        seed: the split's shuffle seed.
        chunk_clips: clips per step of the statistics pass.
        progress: show a progress bar for the statistics pass.

    Returns:
        A :class:`Prepared` whose rows follow ``index.csv``.

    Raises:
        UserError: a missing or inconsistent input file.
        ParamsError: a bad synonym name, top_n or split size.
    """
    features_dir = Path(features_dir)
    with timed() as elapsed:
        annotations = read_annotations(annotations_path)
        clip_info = read_clip_info(clip_info_path)
        index = read_index(features_dir / "index.csv")
        skipped = read_skipped(features_dir / "skipped.csv")
        mel_path = features_dir / "mel.npy"
        if not mel_path.is_file():
            raise UserError(f"features not found: {mel_path}; run the extract stage first")
        mel = np.load(mel_path, mmap_mode="r")
        if mel.ndim != 3 or mel.shape[0] != len(index):
            raise UserError(
                f"{mel_path} has shape {mel.shape} but {features_dir / 'index.csv'} lists {len(index)} "
                "clips; re-run the extract stage"
            )
        if len(index) == 0:
            raise UserError(f"{features_dir / 'index.csv'} lists no clip; nothing to prepare")

        # keep exactly the extracted clips, in index.csv order
        ann = annotations.set_index("clip_id")
        unknown = index["clip_id"][~index["clip_id"].isin(ann.index)]
        if len(unknown):
            raise UserError(
                f"{features_dir / 'index.csv'}: clip {unknown.iloc[0]} is not in {annotations_path} "
                f"({len(unknown)} such); re-run the extract stage"
            )
        kept = ann.loc[index["clip_id"].to_numpy()]
        moved = kept["mp3_path"].to_numpy() != index["mp3_path"].to_numpy()
        if moved.any():
            i = int(np.argmax(moved))
            raise UserError(
                f"{features_dir / 'index.csv'}: clip {index['clip_id'].iloc[i]} has mp3_path "
                f"{index['mp3_path'].iloc[i]!r} but the annotations say {kept['mp3_path'].iloc[i]!r}; "
                "re-run the extract stage"
            )
        skipped_ids = set(skipped["clip_id"])
        both = index["clip_id"][index["clip_id"].isin(skipped_ids)]
        if len(both):
            raise UserError(
                f"clip {both.iloc[0]} is both in index.csv and skipped.csv of {features_dir}; "
                "re-run the extract stage"
            )
        n_skipped = int(annotations["clip_id"].isin(skipped_ids).sum())
        n_not_extracted = len(annotations) - len(index) - n_skipped

        tag_names, merged, top, meta, split = tag_and_split(
            kept.reset_index(),  # clip_id back to a column, rows in index.csv order
            clip_info,
            synonyms=synonyms,
            top_n=top_n,
            method=method,
            valid_size=valid_size,
            test_size=test_size,
            seed=seed,
        )
        labels = np.ascontiguousarray(merged[[name for name, _ in top]].to_numpy(dtype=np.uint8))
        sizes = split_sizes(split)
        leaks = leakage(meta, split)
        train_rows = index["row"].to_numpy()[(split == "train").to_numpy()]
        mean, std = train_stats(mel, train_rows, chunk_clips=chunk_clips, progress=progress)
        flat = [int(b) for b in np.flatnonzero(std < 1e-6)]
        if flat:
            log.warning("prepare: mel bin(s) %s are constant over the training clips (std < 1e-6)", flat)

        summary = {
            "clips_read": len(annotations),
            "skipped_dropped": n_skipped,
            "not_extracted_dropped": n_not_extracted,
            "clips_kept": len(index),
            "tags_read": len(tag_names),
            "synonym_groups_merged": len(synonyms),
            "tags_after_merge": merged.shape[1],
            "tags_kept": len(top),
            "split_method": method,
            "seed": seed,
            "split_sizes": sizes,
            "leakage": leaks,
            "stats_over": {
                "clips": len(train_rows),
                "frames_per_clip": int(mel.shape[2]),
                "constant_bins": flat,
            },
            "seconds": elapsed(),
        }
    return Prepared(
        labels=labels,
        tags=top,
        split=pd.DataFrame({"clip_id": index["clip_id"].to_numpy(), "split": split.to_numpy()}),
        mean=mean,
        std=std,
        summary=summary,
    )


def write_outputs(result: Prepared, prepared_dir: str | Path, metrics_dir: str | Path) -> None:
    """Write labels.npy, tags.json, split.csv, stats.json, summary.json and the metrics' prepare.json.

    Every file is replaced whole and atomically.
    """
    prepared_dir, metrics_dir = Path(prepared_dir), Path(metrics_dir)
    with atomic_path(prepared_dir / "labels.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, result.labels)
    write_json(prepared_dir / "tags.json", {"tags": [{"name": n, "count": c} for n, c in result.tags]})
    with atomic_path(prepared_dir / "split.csv") as tmp:
        result.split.to_csv(tmp, index=False, lineterminator="\n")
    write_json(
        prepared_dir / "stats.json",
        {
            "mean": result.mean.tolist(),
            "std": result.std.tolist(),
            "n_clips": result.summary["split_sizes"]["train"],
        },
    )
    write_json(prepared_dir / "summary.json", result.summary)
    write_json(
        metrics_dir / "prepare.json",
        {"split_sizes": result.summary["split_sizes"], "leakage": result.summary["leakage"]},
    )


def log_summary(summary: dict[str, Any], tags: Sequence[tuple[str, int]]) -> None:
    """Say on stderr what the stage did."""
    s = summary
    log.info(
        "prepare: %d clips read, %d skipped by extract dropped, %d not extracted dropped, %d kept",
        s["clips_read"],
        s["skipped_dropped"],
        s["not_extracted_dropped"],
        s["clips_kept"],
    )
    log.info(
        "prepare: %d tags read, %d synonym groups merged -> %d tags, kept the top %d (%s ...)",
        s["tags_read"],
        s["synonym_groups_merged"],
        s["tags_after_merge"],
        s["tags_kept"],
        ", ".join(f"{n} {c}" for n, c in tags[:5]),
    )
    sizes, leaks = s["split_sizes"], s["leakage"]
    log.info(
        "prepare: %s split (seed %d): train %d, valid %d, test %d",
        s["split_method"],
        s["seed"],
        sizes["train"],
        sizes["valid"],
        sizes["test"],
    )
    log.info(
        "prepare: leakage, share of test clips sharing with train: song %.1f%%, album %.1f%%, artist %.1f%%",
        100 * leaks["test_song_in_train"],
        100 * leaks["test_album_in_train"],
        100 * leaks["test_artist_in_train"],
    )
    log.info(
        "prepare: normalisation statistics over %d training clips; %.1f s",
        s["stats_over"]["clips"],
        s["seconds"],
    )


@stage_main
def main() -> None:
    """Run the prepare stage with ``params.yaml``."""
    params = load_params()
    raw = Path(params.paths.raw)
    result = prepare(
        raw / ANNOTATIONS_FILE,
        raw / CLIP_INFO_FILE,
        params.paths.features,
        synonyms=params.tags.synonyms,
        top_n=params.tags.top_n,
        method=params.split.method,
        valid_size=params.split.valid_size,
        test_size=params.split.test_size,
        seed=params.seed,
    )
    write_outputs(result, params.paths.prepared, params.paths.metrics)
    log_summary(result.summary, result.tags)
    log.info("prepare: wrote %s and %s", params.paths.prepared, Path(params.paths.metrics) / "prepare.json")


__all__ = [
    "Prepared",
    "clip_meta",
    "leakage",
    "main",
    "make_split",
    "merge_synonyms",
    "prepare",
    "read_annotations",
    "read_clip_info",
    "read_index",
    "read_skipped",
    "song_key",
    "split_sizes",
    "split_targets",
    "top_n_tags",
    "train_stats",
    "write_outputs",
]

if __name__ == "__main__":
    main()
