"""Labels and splits: pure functions over tables, orchestrated by ``prepare`` and used by ``mstagger tags``.

- :func:`merge_synonyms` merges synonym tag columns by logical OR under the group's first name (the
  paper's 29 groups are ``tags.synonyms`` in ``params.yaml``);
- :func:`top_n_tags` ranks the merged tags (count descending, ties by name);
- :func:`clip_meta` gives each clip its song, album and artist; :func:`make_split` assigns train / valid
  / test by one of ``split.method``; :func:`leakage` measures how much test shares with train;
- :func:`train_stats` computes the per-mel-bin normalisation statistics over the training clips.

:func:`recipe` turns ``protocol`` (a named protocol of :mod:`mstagger.protocols`, or ``custom``'s
``tags.*`` and ``split.*``) into the rules :func:`tag_and_split` applies: the drops, the merge, the tag
list and the split, the sequence ``prepare`` and ``mstagger tags`` share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from tqdm import tqdm

from mstagger.core.errors import UserError
from mstagger.data.mtat import (
    DROPPED,
    FOLDER_SPLIT,
    KNOWN_EMPTY_CLIPS,
    SPLITS,
    folder_of,
    listed_clips,
    name_fields,
    song_key,
)
from mstagger.params import SPLIT_METHODS, ParamsError, SplitParams, TagsParams
from mstagger.protocols import CUSTOM, protocol_names, protocols

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
    path_artist = name_fields(meta["mp3_path"], 1)
    path_album = name_fields(meta["mp3_path"], 2)
    if clip_info is None or clip_info.empty:
        meta["artist"], meta["album"] = path_artist, path_album
        return meta
    info = clip_info.drop_duplicates("clip_id").set_index("clip_id")
    info_album = info["artist"] + " / " + info["album"]
    # file-name fields -> clip_info names, learnt from clip_info's own rows
    artist_by_path = pd.Series(info["artist"].to_numpy(), index=name_fields(info["mp3_path"], 1).to_numpy())
    album_by_path = pd.Series(info_album.to_numpy(), index=name_fields(info["mp3_path"], 2).to_numpy())
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


def make_split(meta: pd.DataFrame, params: SplitParams, seed: int) -> pd.Series:
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
        params: the ``split`` section: ``method``, and for random/song/artist ``valid_size`` and
            ``test_size`` (each a count >= 1 or a fraction < 1 of the clips).
        seed: the shuffle seed.

    Returns:
        A string Series named ``split`` with ``meta``'s index; the same arguments give the same split.

    Raises:
        ParamsError: unknown method, sizes that leave a split empty, or a split that comes out empty.
        UserError: a folder split meets a path whose first character is not a folder 0-f.
    """
    n, method = len(meta), params.method
    if method == "folder":
        split = meta["mp3_path"].map(folder_of).map(FOLDER_SPLIT)
        if split.isna().any():
            bad = meta["mp3_path"][split.isna()].iloc[0]
            raise UserError(
                f"split.method folder: {bad!r} does not start with a folder 0-f; use another split.method"
            )
        values = split.to_numpy(dtype=object)
    elif method in ("random", "song", "artist"):
        n_train, n_valid, n_test = split_targets(n, params.valid_size, params.test_size)
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
    """Per-mel-bin mean and standard deviation over the given clips and all their frames, the same bits
    whatever the order of the rows, the chunking or the machine.

    A float16 spectrogram takes one of 65,536 bit patterns, so the pass over ``mel`` (a memory map is
    fine; ``chunk_clips`` clips at a time) only counts, per mel bin, how often each pattern occurs:
    integer counts, exact in any order. The statistics then come from the counts with every sum
    correctly rounded (:func:`math.fsum`; a count times a float16 value is exact in float64): the
    mean is the exact sum rounded once and divided by the count; the variance sums each value's
    squared deviation from that mean (``(v - mean) ** 2`` times its count, each rounded once).

    Args:
        mel: (clips, n_mels, n_frames) float16 log-mel array (extract's ``mel.npy``).
        rows: the clips to use (the training split); order does not matter.
        chunk_clips: clips read per step.
        progress: show a tqdm bar.

    Returns:
        ``(mean, std)``, float64 arrays of shape (n_mels,); std is the population std (ddof 0).

    Raises:
        UserError: ``rows`` is empty, the array is not float16, or the training clips hold
            non-finite values.
    """
    rows = np.sort(np.asarray(rows, dtype=np.int64))  # sorted: sequential reads of the memory map
    if len(rows) == 0:
        raise UserError("normalisation statistics need at least one training clip")
    if mel.dtype != np.float16:
        raise UserError(f"mel.npy holds {mel.dtype} values, extract writes float16; re-run the extract stage")
    n_mels = mel.shape[1]
    patterns = 1 << 16
    offsets = (np.arange(n_mels, dtype=np.int64) * patterns)[None, :, None]  # (1, n_mels, 1)
    counts = np.zeros(n_mels * patterns, np.int64)
    with tqdm(total=len(rows), desc="prepare: train stats", unit="clip", disable=not progress) as bar:
        for start in range(0, len(rows), chunk_clips):
            chunk = np.asarray(mel[rows[start : start + chunk_clips]]).view(np.uint16)  # (c, n_mels, T)
            counts += np.bincount((chunk + offsets).ravel(), minlength=n_mels * patterns)
            bar.update(len(chunk))
    counts = counts.reshape(n_mels, patterns)
    values = np.arange(patterns, dtype=np.uint16).view(np.float16).astype(np.float64)  # each pattern's value
    if counts[:, ~np.isfinite(values)].any():
        raise UserError("mel.npy holds non-finite values in training clips; re-run the extract stage")
    total = int(counts[0].sum())
    mean, std = np.zeros(n_mels), np.zeros(n_mels)
    for b in range(n_mels):
        seen = np.flatnonzero(counts[b])
        weight, value = counts[b, seen].astype(np.float64), values[seen]
        mean[b] = math.fsum(weight * value) / total
        std[b] = math.sqrt(math.fsum(weight * (value - mean[b]) ** 2) / total)
    return mean, std


@dataclass(frozen=True)
class Recipe:
    """What :func:`tag_and_split` applies: a named protocol's rules, or ``custom``'s tags.* and split.*."""

    protocol: str  # a name of protocols.json, or "custom"
    synonyms: list[list[str]]
    top_n: int
    tag_list: tuple[str, ...] | None  # the fixed list in published order, or None: top_n by count
    split: SplitParams  # for a random protocol split, the MTAT counts (see split_for)
    train: int | None  # a random protocol split: train clips on MTAT (test gets the rest)
    split_seed: int | None  # a protocol's fixed shuffle seed (None: params.yaml seed)
    drop_untagged: bool
    drop_clips: dict[str, str]  # clip id -> mp3_path
    mtat_sizes: dict[str, int]  # the protocol's train / valid / test on MTAT ({} for custom)

    def split_for(self, n: int) -> SplitParams:
        """The split parameters for ``n`` clips.

        A random protocol split (``paper``) fixes MTAT's counts (18,000 / 2,000 / the rest); a dataset too
        small for them (the demo) gets the same shares of its clips.
        """
        if self.train is None or self.split.method != "random":
            return self.split
        valid = self.split.valid_size
        if n > self.train + valid:
            return replace(self.split, test_size=float(n - self.train - valid))
        total = sum(self.mtat_sizes.values())
        return replace(self.split, valid_size=valid / total, test_size=1 - (self.train + valid) / total)


def recipe(protocol: str, tags: TagsParams, split: SplitParams) -> Recipe:
    """The rules of ``protocol`` (``params.yaml`` ``protocol``); ``custom`` takes ``tags`` and ``split``.

    Raises:
        ParamsError: an unknown protocol name.
    """
    if protocol == CUSTOM:
        return Recipe(CUSTOM, tags.synonyms, tags.top_n, None, split, None, None, False, {}, {})
    if protocol not in protocols():
        raise ParamsError(f"params: protocol: must be one of {', '.join(protocol_names())}, got {protocol!r}")
    p = protocols()[protocol]
    valid = float(p.valid) if p.valid is not None else SplitParams().valid_size
    test = float(p.mtat_sizes["test"]) if p.method == "random" else SplitParams().test_size
    return Recipe(
        protocol=p.name,
        synonyms=[list(g) for g in p.synonyms],
        top_n=p.top_n,
        tag_list=p.tags,
        split=SplitParams(p.method, valid, test),
        train=p.train,
        split_seed=p.seed,
        drop_untagged=p.drop_untagged,
        drop_clips=p.drop_clips,
        mtat_sizes=p.mtat_sizes,
    )


def fixed_list_tags(merged: pd.DataFrame, tag_list: Sequence[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """A protocol's fixed tag list over ``merged``: ``(kept, left_out)``.

    Args:
        merged: 0/1 tag columns of the clips the protocol keeps.
        tag_list: the list in its published order.

    Returns:
        ``(name, count)`` of the listed tags that are columns with at least one positive clip, in the
        list's order (on MTAT: all of them), and the names left out (on the demo, the tags it never uses).
    """
    counts = merged.sum(axis=0).astype(np.int64)
    kept = [(name, int(counts[name])) for name in tag_list if name in counts.index and counts[name] > 0]
    left_out = [name for name in tag_list if name not in dict(kept)]
    return kept, left_out


@dataclass(frozen=True)
class TaggedSplit:
    """What :func:`tag_and_split` found, rows in the order of the clips it was given."""

    tags_read: list[str]  # tag columns of the annotations, in file order
    merged: pd.DataFrame  # 0/1 columns after merging synonyms
    top: list[tuple[str, int]]  # the kept tags: (name, count over the kept clips), in label column order
    meta: pd.DataFrame  # clip_id, mp3_path, song, album, artist
    split: pd.Series  # "train" / "valid" / "test", or "dropped" for a clip the protocol drops
    dropped: dict[str, int]  # clips dropped, by rule: known_empty, listed, untagged
    left_out: list[str]  # tags of a fixed list the clips never use (the demo), else []

    def labels(self) -> np.ndarray:
        """(clips, kept tags) uint8 0/1, columns in ``top`` order."""
        return np.ascontiguousarray(self.merged[[name for name, _ in self.top]].to_numpy(dtype=np.uint8))


def tag_and_split(
    clips: pd.DataFrame, clip_info: pd.DataFrame | None, rules: Recipe, seed: int
) -> TaggedSplit:
    """Drop, merge, choose the tags and split the clips: the steps ``prepare`` and ``mstagger tags`` share.

    In order: MTAT's known-empty clips and the protocol's listed clips are dropped; synonyms are merged;
    the tags are the protocol's fixed list (the listed tags the clips use, in the published order) or the
    ``top_n`` most frequent; clips without any kept tag are dropped where the protocol says so; the rest
    is split.

    Args:
        clips: annotation rows (``clip_id``, the tag columns, ``mp3_path``), in output order.
        clip_info: from :func:`mstagger.data.mtat.read_clip_info`, or None to take artists and albums
            from the file names.
        rules: from :func:`recipe`.
        seed: the split's shuffle seed, unless the protocol fixes one.

    Returns:
        A :class:`TaggedSplit`, rows in ``clips`` order (dropped clips marked ``dropped``).
    """
    tag_names = [c for c in clips.columns if c not in ("clip_id", "mp3_path")]
    empty = listed_clips(clips, KNOWN_EMPTY_CLIPS).to_numpy()
    listed = listed_clips(clips, rules.drop_clips).to_numpy() & ~empty
    merged = merge_synonyms(clips[tag_names], rules.synonyms)
    keep = ~(empty | listed)
    if rules.tag_list is None:
        top = top_n_tags(merged[keep], rules.top_n)
        left_out: list[str] = []
    else:
        top, left_out = fixed_list_tags(merged[keep], rules.tag_list)
        if not top:
            raise UserError(
                f"protocol {rules.protocol}: none of its {len(rules.tag_list)} tags occurs in the "
                "annotations; use protocol: custom for this dataset"
            )
    untagged = np.zeros(len(clips), dtype=bool)
    if rules.drop_untagged:
        untagged = keep & (merged[[name for name, _ in top]].to_numpy().max(axis=1) == 0)
        keep &= ~untagged
    meta = clip_meta(clips[["clip_id", "mp3_path"]], clip_info)
    if not keep.any():
        raise UserError(f"protocol {rules.protocol} drops every clip; nothing is left to split")
    assignment = pd.Series(DROPPED, index=meta.index, name="split", dtype=object)
    split_seed = seed if rules.split_seed is None else rules.split_seed
    assignment[keep] = make_split(meta[keep], rules.split_for(int(keep.sum())), split_seed)
    dropped = {"known_empty": int(empty.sum()), "listed": int(listed.sum()), "untagged": int(untagged.sum())}
    return TaggedSplit(tag_names, merged, top, meta, assignment, dropped, left_out)
