"""``mstagger tags``: the prepare stage's tag merging, top-N selection, split and leakage on metadata alone.

No audio and no features are needed: every annotation row is used (nothing is dropped as skipped), so
the counts can differ slightly from the prepare stage's, which counts only the clips that extracted.
Defaults come from ``params.yaml`` in the current folder when there is one (``--params`` names another),
else from the built-in defaults; ``--split``, ``--top-n`` and ``--seed`` override them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mstagger.params import PARAMS_FILE, SPLIT_METHODS, Params, ParamsError, load_params
from mstagger.prepare import leakage, read_annotations, read_clip_info, split_sizes, tag_and_split
from mstagger.util import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mstagger tags",
        description=(
            "Merge synonym tags, rank them, split the clips and measure leakage between the splits, "
            "from MTAT's metadata alone (annotations_final.csv, optionally clip_info_final.csv)."
        ),
    )
    p.add_argument("--annotations", required=True, type=Path, metavar="FILE", help="annotations_final.csv")
    p.add_argument(
        "--clip-info",
        type=Path,
        metavar="FILE",
        help="clip_info_final.csv, for artist and album names (default: from the file names)",
    )
    p.add_argument("--split", choices=SPLIT_METHODS, metavar="METHOD", help="folder, random, song or artist")
    p.add_argument("--top-n", type=int, metavar="N", help="tags to keep (default: tags.top_n)")
    p.add_argument("--seed", type=int, metavar="S", help="split shuffle seed (default: seed)")
    p.add_argument(
        "--params",
        type=Path,
        metavar="FILE",
        help=f"parameters file for the defaults (default: {PARAMS_FILE} if present)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _load_defaults(path: Path | None) -> Params:
    if path is not None:
        return load_params(path)
    if PARAMS_FILE.is_file():
        return load_params(PARAMS_FILE)
    return Params()


def tag_report(
    annotations_path: str | Path,
    clip_info_path: str | Path | None,
    *,
    synonyms: list[list[str]],
    top_n: int,
    method: str,
    valid_size: float,
    test_size: float,
    seed: int,
) -> dict[str, Any]:
    """Merge, rank, split and measure leakage on the metadata files.

    Args:
        annotations_path: MTAT ``annotations_final.csv``.
        clip_info_path: MTAT ``clip_info_final.csv``, or None to take artists and albums from file names.
        synonyms, top_n: as ``tags.synonyms`` and ``tags.top_n``.
        method, valid_size, test_size: as ``split.*``.
        seed: the split seed.

    Returns:
        ``{"clips", "tags_read", "tags_after_merge", "split_method", "seed", "tags": [{"name", "count"}],
        "split_sizes": {"train", "valid", "test"}, "leakage": {...}}``.
    """
    annotations = read_annotations(annotations_path)
    clip_info = read_clip_info(clip_info_path) if clip_info_path is not None else None
    tag_names, merged, top, meta, split = tag_and_split(
        annotations,
        clip_info,
        synonyms=synonyms,
        top_n=top_n,
        method=method,
        valid_size=valid_size,
        test_size=test_size,
        seed=seed,
    )
    return {
        "clips": len(annotations),
        "tags_read": len(tag_names),
        "tags_after_merge": merged.shape[1],
        "split_method": method,
        "seed": seed,
        "tags": [{"name": name, "count": count} for name, count in top],
        "split_sizes": split_sizes(split),
        "leakage": leakage(meta, split),
    }


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table of :func:`tag_report`'s result."""
    tags = report["tags"]
    width = max(len("tag"), *(len(t["name"]) for t in tags))
    lines = [
        f"{report['clips']} clips, {report['tags_read']} tags read, "
        f"{report['tags_after_merge']} after merging synonyms, top {len(tags)}:",
        f"{'rank':>4}  {'tag':<{width}}  {'count':>6}",
    ]
    lines += [f"{i:>4}  {t['name']:<{width}}  {t['count']:>6}" for i, t in enumerate(tags, 1)]
    sizes, leaks = report["split_sizes"], report["leakage"]
    lines.append(
        f"split {report['split_method']} (seed {report['seed']}): "
        f"train {sizes['train']}, valid {sizes['valid']}, test {sizes['test']}"
    )
    lines.append(
        "leakage (share of test clips with the same song / album / artist in train): "
        f"song {100 * leaks['test_song_in_train']:.1f}%, album {100 * leaks['test_album_in_train']:.1f}%, "
        f"artist {100 * leaks['test_artist_in_train']:.1f}%"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``mstagger tags``.

    Args:
        argv: the arguments after ``tags`` (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 2 on a bad file or parameter (one ``error: ...`` line on stderr).
    """
    args = _parser().parse_args(argv)
    try:
        params = _load_defaults(args.params)
        top_n = params.tags.top_n if args.top_n is None else args.top_n
        seed = params.seed if args.seed is None else args.seed
        if top_n < 1:
            raise ParamsError(f"--top-n must be at least 1, got {top_n}")
        if seed < 0:
            raise ParamsError(f"--seed must be non-negative, got {seed}")
        report = tag_report(
            args.annotations,
            args.clip_info,
            synonyms=params.tags.synonyms,
            top_n=top_n,
            method=args.split or params.split.method,
            valid_size=params.split.valid_size,
            test_size=params.split.test_size,
            seed=seed,
        )
    except (UserError, ParamsError) as err:
        message = str(err)
        if args.top_n is not None:  # the value came from the flag, not from params.yaml
            message = message.replace("tags.top_n", "--top-n")
        print(f"error: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: report[k] for k in ("tags", "split_sizes", "leakage")}))
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
