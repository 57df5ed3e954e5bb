"""Stage ``prepare``: labels, tag list, train/valid/test split and training-set normalisation.

Reads MTAT's two CSVs (``paths.raw``) and the extract stage's outputs (``paths.features``); keeps the
clips that extracted, merges synonyms, keeps the top-N tags, splits, measures leakage and computes the
normalisation statistics over the training split (:mod:`mstagger.data.labels` does each step). Writes to
``paths.prepared`` the files :mod:`mstagger.data.artifacts` names (``labels.npy``, ``tags.json``,
``split.csv``, ``stats.json``), built in a temporary sibling folder and swapped in whole, so a kill never
leaves a new split beside old statistics; ``<paths.metrics>/prepare.json`` holds the counts, split
sizes, leakage and seconds, so ``dvc metrics diff`` shows them.

Clips the extract stage skipped are dropped *before* tags are counted, so the top-N tags and their
counts describe exactly the clips that are trained and evaluated on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mstagger.core.errors import UserError
from mstagger.core.log import log, stage_main, timed
from mstagger.core.outputs import atomic_path, check_writable, stage_metrics, staged_dir, write_json
from mstagger.data import artifacts
from mstagger.data.labels import leakage, recipe, split_sizes, tag_and_split, train_stats
from mstagger.data.mtat import (
    ANNOTATIONS_FILE,
    CLIP_INFO_FILE,
    KNOWN_EMPTY_CLIPS,
    MTAT_CLIPS,
    RUN_DOWNLOAD,
    read_annotations,
    read_clip_info,
)
from mstagger.params import SplitParams, TagsParams, load_params


@dataclass
class Prepared:
    """What :func:`prepare` computed; :func:`write_outputs` writes it."""

    labels: np.ndarray  # (clips, tags) uint8, rows as index.csv
    tags: list[tuple[str, int]]  # (name, count) in column order
    split: pd.DataFrame  # clip_id, split; rows as index.csv
    mean: np.ndarray  # (n_mels,) float64, training clips only
    std: np.ndarray  # (n_mels,) float64
    summary: dict[str, Any] = field(default_factory=dict)


def extracted_annotations(
    annotations: pd.DataFrame, index: pd.DataFrame, skipped: pd.DataFrame, source: str
) -> pd.DataFrame:
    """The annotation rows of the extracted clips, in ``index.csv`` order, checked against the index.

    Args:
        annotations: from :func:`mstagger.data.mtat.read_annotations`.
        index: ``index.csv`` (:func:`mstagger.data.artifacts.read_index`).
        skipped: ``skipped.csv`` (:func:`mstagger.data.artifacts.read_skipped`).
        source: names the annotations file in errors.

    Raises:
        UserError: the index names a clip the annotations lack, at another path, or one also skipped.
    """
    ann = annotations.set_index("clip_id")
    unknown = index["clip_id"][~index["clip_id"].isin(ann.index)]
    if len(unknown):
        raise UserError(
            f"{artifacts.INDEX_FILE}: clip {unknown.iloc[0]} is not in {source} ({len(unknown)} such); "
            "re-run the extract stage"
        )
    kept = ann.loc[index["clip_id"].to_numpy()]
    moved = kept["mp3_path"].to_numpy() != index["mp3_path"].to_numpy()
    if moved.any():
        i = int(np.argmax(moved))
        raise UserError(
            f"{artifacts.INDEX_FILE}: clip {index['clip_id'].iloc[i]} has mp3_path "
            f"{index['mp3_path'].iloc[i]!r} but {source} says {kept['mp3_path'].iloc[i]!r}; "
            "re-run the extract stage"
        )
    both = index["clip_id"][index["clip_id"].isin(set(skipped["clip_id"]))]
    if len(both):
        raise UserError(
            f"clip {both.iloc[0]} is both in {artifacts.INDEX_FILE} and {artifacts.SKIPPED_FILE}; "
            "re-run the extract stage"
        )
    return kept.reset_index()  # clip_id back to a column, rows in index.csv order


def prepare(
    raw_dir: str | Path,
    features_dir: str | Path,
    tags: TagsParams,
    split: SplitParams,
    seed: int,
    *,
    protocol: str = "custom",
    chunk_clips: int = 64,
    progress: bool = True,
) -> Prepared:
    """Build labels, tag list, split and training-set statistics for the extracted clips.

    Args:
        raw_dir: ``paths.raw`` (MTAT's ``annotations_final.csv`` and ``clip_info_final.csv``).
        features_dir: ``paths.features`` (``index.csv``, ``skipped.csv``, ``mel.npy``).
        tags: the ``tags`` section (used under ``protocol: custom``).
        split: the ``split`` section (likewise).
        seed: the split's shuffle seed.
        protocol: ``params.yaml`` ``protocol``: a named protocol's tags, split and drops, or ``custom``.
        chunk_clips: clips per step of the statistics pass.
        progress: show a progress bar for the statistics pass.

    Returns:
        A :class:`Prepared` whose rows follow ``index.csv``.

    Raises:
        UserError: a missing or inconsistent input file.
        ParamsError: a bad synonym name, top_n or split size.
    """
    raw_dir = Path(raw_dir)
    with timed() as elapsed:
        annotations = read_annotations(raw_dir / ANNOTATIONS_FILE, hint=RUN_DOWNLOAD)
        clip_info = read_clip_info(raw_dir / CLIP_INFO_FILE, hint=RUN_DOWNLOAD)
        index = artifacts.read_index(features_dir)
        skipped = artifacts.read_skipped(features_dir)
        mel = artifacts.open_mel(features_dir, len(index))
        if len(index) == 0:
            raise UserError(f"{Path(features_dir) / artifacts.INDEX_FILE} lists no clip; nothing to prepare")
        kept = extracted_annotations(annotations, index, skipped, str(raw_dir / ANNOTATIONS_FILE))
        rules = recipe(protocol, tags, split)
        found = tag_and_split(kept, clip_info, rules, seed)
        train_rows = index["row"].to_numpy()[(found.split == "train").to_numpy()]
        mean, std = train_stats(mel, train_rows, chunk_clips=chunk_clips, progress=progress)
        flat = [int(b) for b in np.flatnonzero(std < 1e-6)]
        if flat:
            log.warning("mel bin(s) %s are constant over the training clips (std < 1e-6)", flat)
        n_skipped = int(annotations["clip_id"].isin(set(skipped["clip_id"])).sum())
        sizes = split_sizes(found.split)
        if found.left_out:
            log.warning(
                "protocol %s: %d of its tags never occur here and are left out: %s",
                protocol,
                len(found.left_out),
                ", ".join(found.left_out),
            )
        if rules.mtat_sizes and len(annotations) == MTAT_CLIPS and sizes != rules.mtat_sizes:
            log.warning(
                "protocol %s: split sizes %s differ from its published %s on MTAT: extract skipped %d "
                "clips (MTAT has %d known-empty ones; see %s)",
                protocol,
                sizes,
                rules.mtat_sizes,
                n_skipped,
                len(KNOWN_EMPTY_CLIPS),
                artifacts.SKIPPED_FILE,
            )
        summary = {
            "protocol": protocol,
            "clips_read": len(annotations),
            "skipped_dropped": n_skipped,
            "not_extracted_dropped": len(annotations) - len(index) - n_skipped,
            "protocol_dropped": found.dropped,
            "clips_kept": sum(sizes.values()),
            "tags_read": len(found.tags_read),
            "synonym_groups_merged": len(rules.synonyms),
            "tags_after_merge": found.merged.shape[1],
            "tags_kept": len(found.top),
            "tags_left_out": found.left_out,
            "split_method": rules.split.method,
            "seed": seed if rules.split_seed is None else rules.split_seed,  # the split's
            "split_sizes": sizes,
            "protocol_mtat_sizes": rules.mtat_sizes or None,
            "leakage": leakage(found.meta, found.split),
            "stats_over": {
                "clips": len(train_rows),
                "frames_per_clip": int(mel.shape[2]),
                "constant_bins": flat,
            },
            "seconds": elapsed(),
        }
    return Prepared(
        labels=found.labels(),
        tags=found.top,
        split=pd.DataFrame({"clip_id": index["clip_id"].to_numpy(), "split": found.split.to_numpy()}),
        mean=mean,
        std=std,
        summary=summary,
    )


def write_outputs(result: Prepared, folder: str | Path) -> None:
    """Write the prepared artifacts into ``folder`` (a staging folder, swapped in whole afterwards)."""
    folder = Path(folder)
    with atomic_path(folder / artifacts.LABELS_FILE) as tmp, open(tmp, "wb") as f:
        np.save(f, result.labels)
    tag_doc = {"tags": [{"name": n, "count": c} for n, c in result.tags]}
    write_json(folder / artifacts.TAGS_FILE, tag_doc)
    with atomic_path(folder / artifacts.SPLIT_FILE) as tmp:
        result.split.to_csv(tmp, index=False, lineterminator="\n")
    stats = {
        "mean": result.mean.tolist(),
        "std": result.std.tolist(),
        "n_clips": result.summary["split_sizes"]["train"],
    }
    write_json(folder / artifacts.STATS_FILE, stats)


def log_summary(summary: dict[str, Any], tags: Sequence[tuple[str, int]]) -> None:
    """Say on stderr what the stage did."""
    s, sizes, leaks = summary, summary["split_sizes"], summary["leakage"]
    by_rule = ", ".join(f"{n} {rule}" for rule, n in s["protocol_dropped"].items() if n) or "none"
    log.info(
        "protocol %s: %d clips read, %d skipped by extract dropped, %d not extracted dropped, "
        "dropped by the protocol: %s; %d kept",
        s["protocol"],
        s["clips_read"],
        s["skipped_dropped"],
        s["not_extracted_dropped"],
        by_rule,
        s["clips_kept"],
    )
    log.info(
        "%d tags read, %d synonym groups merged -> %d tags, kept the top %d (%s ...)",
        s["tags_read"],
        s["synonym_groups_merged"],
        s["tags_after_merge"],
        s["tags_kept"],
        ", ".join(f"{n} {c}" for n, c in tags[:5]),
    )
    log.info(
        "%s split (seed %d): train %d, valid %d, test %d",
        s["split_method"],
        s["seed"],
        sizes["train"],
        sizes["valid"],
        sizes["test"],
    )
    log.info(
        "leakage, share of test clips sharing with train: song %.1f%%, album %.1f%%, artist %.1f%%",
        100 * leaks["test_song_in_train"],
        100 * leaks["test_album_in_train"],
        100 * leaks["test_artist_in_train"],
    )
    log.info(
        "normalisation statistics over %d training clips; %.1f s", s["stats_over"]["clips"], s["seconds"]
    )


@stage_main
def main() -> None:
    """Run the prepare stage with ``params.yaml``; the summary goes to ``<paths.metrics>/prepare.json``."""
    params = load_params()
    paths = params.paths
    metrics = stage_metrics(paths.metrics, "prepare")
    check_writable(metrics.parent)
    with staged_dir(paths.prepared, "prepare", "paths.prepared") as staging:
        result = prepare(
            paths.raw, paths.features, params.tags, params.split, params.seed, protocol=params.protocol
        )
        write_outputs(result, staging)
    write_json(metrics, result.summary)
    log_summary(result.summary, result.tags)
    log.info("wrote %s and %s", paths.prepared, metrics)


if __name__ == "__main__":
    main()
