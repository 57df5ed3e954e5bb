"""``mstagger tags``: the prepare stage's tag merging, top-N selection, split and leakage on metadata alone.

No audio and no features are needed: every annotation row is used (nothing is dropped as skipped), so
the counts can differ slightly from the prepare stage's, which counts only the clips that extracted.
The synonym groups and defaults come from ``params.yaml`` in the current folder (``--params`` names
another); ``--split``, ``--top-n`` and ``--seed`` override them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from mstagger.commands.parser import Parser
from mstagger.core.errors import guarded
from mstagger.data.labels import leakage, split_sizes, tag_and_split
from mstagger.data.mtat import read_annotations, read_clip_info
from mstagger.params import PARAMS_FILE, SPLIT_METHODS, ParamsError, SplitParams, TagsParams, load_params


def _parser() -> Parser:
    p = Parser(
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
        default=PARAMS_FILE,
        metavar="FILE",
        help=f"parameters file: synonym groups and defaults (default: ./{PARAMS_FILE})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def tag_report(
    annotations_path: str | Path,
    clip_info_path: str | Path | None,
    tags: TagsParams,
    split: SplitParams,
    seed: int,
) -> dict[str, Any]:
    """Merge, rank, split and measure leakage on the metadata files.

    Args:
        annotations_path: MTAT ``annotations_final.csv``.
        clip_info_path: MTAT ``clip_info_final.csv``, or None to take artists and albums from file names.
        tags: the ``tags`` section (synonym groups, top_n).
        split: the ``split`` section.
        seed: the split seed.

    Returns:
        ``{"clips", "tags_read", "tags_after_merge", "split_method", "seed", "tags": [{"name", "count"}],
        "split_sizes": {"train", "valid", "test"}, "leakage": {...}}``.
    """
    annotations = read_annotations(annotations_path)
    clip_info = read_clip_info(clip_info_path) if clip_info_path is not None else None
    found = tag_and_split(annotations, clip_info, tags, split, seed)
    return {
        "clips": len(annotations),
        "tags_read": len(found.tags_read),
        "tags_after_merge": found.merged.shape[1],
        "split_method": split.method,
        "seed": seed,
        "tags": [{"name": name, "count": count} for name, count in found.top],
        "split_sizes": split_sizes(found.split),
        "leakage": leakage(found.meta, found.split),
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


@guarded
def main(argv: list[str] | None = None) -> int:
    """Run ``mstagger tags``.

    Args:
        argv: the arguments after ``tags`` (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 2 on a bad file, flag or parameter (one ``error: ...`` line on stderr).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.top_n is not None and args.top_n < 1:
        parser.error(f"--top-n must be at least 1, got {args.top_n}")
    if args.seed is not None and args.seed < 0:
        parser.error(f"--seed must be non-negative, got {args.seed}")
    try:
        params = load_params(args.params)
        tags = params.tags if args.top_n is None else replace(params.tags, top_n=args.top_n)
        split = params.split if args.split is None else replace(params.split, method=args.split)
        seed = params.seed if args.seed is None else args.seed
        report = tag_report(args.annotations, args.clip_info, tags, split, seed)
    except ParamsError as err:
        if args.top_n is not None:  # the value came from the flag, not from params.yaml
            raise ParamsError(str(err).replace("params: tags.top_n", "--top-n")) from None
        raise
    if args.json:
        print(json.dumps({k: report[k] for k in ("tags", "split_sizes", "leakage")}))
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
