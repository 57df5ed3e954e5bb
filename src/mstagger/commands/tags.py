"""``mstagger tags``: the prepare stage's protocol (drops, tag list, split) and leakage on metadata alone.

No audio and no features are needed. MTAT's three known-empty clips, which extract always skips, are
left out here too, so the split sizes are the pipeline's. ``--protocol`` names the protocol (default:
``protocol`` of the parameters); the parameters come from ``params.yaml`` in the current folder, or
``--params FILE`` (a partial file: the keys it sets over the defaults), or the defaults where neither
exists. Under ``--protocol custom``, ``--split``, ``--top-n`` and ``--seed`` override ``tags.*`` /
``split.*`` / ``seed``. ``--split-csv FILE`` writes one ``clip_id,split`` row per kept clip.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from mstagger.commands.parser import Parser
from mstagger.core.errors import UserError, guarded
from mstagger.core.outputs import atomic_path
from mstagger.data.labels import Recipe, leakage, recipe, split_sizes, tag_and_split
from mstagger.data.mtat import DROPPED, read_annotations, read_clip_info
from mstagger.params import (
    PARAMS_FILE,
    SPLIT_METHODS,
    Params,
    default_params,
    load_params,
)
from mstagger.protocols import CUSTOM, protocol_names


def _parser() -> Parser:
    p = Parser(
        prog="mstagger tags",
        description=(
            "Apply a protocol (its drops, tag list and split) and measure leakage between the splits, "
            "from MTAT's metadata alone (annotations_final.csv, optionally clip_info_final.csv)."
        ),
    )
    p.add_argument(
        "--protocol",
        choices=protocol_names(),
        metavar="NAME",
        help=f"{', '.join(protocol_names())} (default: protocol of the parameters)",
    )
    p.add_argument("--annotations", required=True, type=Path, metavar="FILE", help="annotations_final.csv")
    p.add_argument(
        "--clip-info",
        type=Path,
        metavar="FILE",
        help="clip_info_final.csv, for artist and album names (default: from the file names)",
    )
    p.add_argument(
        "--split", choices=SPLIT_METHODS, metavar="METHOD", help="custom: folder, random, song or artist"
    )
    p.add_argument("--top-n", type=int, metavar="N", help="custom: tags to keep (default: tags.top_n)")
    p.add_argument("--seed", type=int, metavar="S", help="custom: split shuffle seed (default: seed)")
    p.add_argument(
        "--params",
        type=Path,
        metavar="FILE",
        help=(
            f"parameters: the keys it sets over the defaults (default: ./{PARAMS_FILE} if present, "
            "else the defaults)"
        ),
    )
    p.add_argument(
        "--split-csv", type=Path, metavar="FILE", help="write clip_id,split for every kept clip to FILE"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def tag_report(
    annotations_path: str | Path, clip_info_path: str | Path | None, rules: Recipe, seed: int
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Apply a protocol and measure leakage on the metadata files.

    Args:
        annotations_path: MTAT ``annotations_final.csv``.
        clip_info_path: MTAT ``clip_info_final.csv``, or None to take artists and albums from file names.
        rules: from :func:`mstagger.data.labels.recipe`.
        seed: the split seed.

    Returns:
        ``({"protocol", "clips", "dropped": {"known_empty", "listed", "untagged"}, "tags_read",
        "tags_after_merge", "split_method", "seed", "tags": [{"name", "count"}], "tags_left_out",
        "split_sizes": {"train", "valid", "test"}, "leakage": {...}}, the kept clips' clip_id and split)``.
    """
    annotations = read_annotations(annotations_path)
    clip_info = read_clip_info(clip_info_path) if clip_info_path is not None else None
    found = tag_and_split(annotations, clip_info, rules, seed)
    kept = found.split != DROPPED
    table = pd.DataFrame({"clip_id": annotations["clip_id"][kept], "split": found.split[kept]})
    report = {
        "protocol": rules.protocol,
        "clips": len(annotations),
        "dropped": found.dropped,
        "tags_read": len(found.tags_read),
        "tags_after_merge": found.merged.shape[1],
        "split_method": rules.split.method,
        "seed": seed if rules.split_seed is None else rules.split_seed,
        "tags": [{"name": name, "count": count} for name, count in found.top],
        "tags_left_out": found.left_out,
        "split_sizes": split_sizes(found.split),
        "leakage": leakage(found.meta[kept], found.split[kept]),
    }
    return report, table


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table of :func:`tag_report`'s result."""
    tags, dropped = report["tags"], report["dropped"]
    width = max(len("tag"), *(len(t["name"]) for t in tags))
    dropped_text = ", ".join(f"{n} {rule.replace('_', '-')}" for rule, n in dropped.items() if n) or "none"
    lines = [
        f"protocol {report['protocol']}: {report['clips']} clips, dropped {dropped_text}; "
        f"{report['tags_read']} tags read, {report['tags_after_merge']} after merging synonyms, "
        f"kept {len(tags)}:",
        f"{'rank':>4}  {'tag':<{width}}  {'count':>6}",
    ]
    lines += [f"{i:>4}  {t['name']:<{width}}  {t['count']:>6}" for i, t in enumerate(tags, 1)]
    if report["tags_left_out"]:
        lines.append(f"left out (no clip has them): {', '.join(report['tags_left_out'])}")
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


def _load(path: Path | None) -> Params:
    """The parameters: ``path`` (partial), else ./params.yaml if present, else the defaults."""
    if path is None:
        if not PARAMS_FILE.is_file():
            return default_params()
        path = PARAMS_FILE
    return load_params(path, partial=True)


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
    source = str(args.params or PARAMS_FILE)
    try:
        params = _load(args.params)
        protocol = args.protocol or params.protocol
        if protocol != CUSTOM:
            for flag, value in (("--split", args.split), ("--top-n", args.top_n), ("--seed", args.seed)):
                if value is not None:
                    parser.error(
                        f"{flag} conflicts with protocol {protocol}, which fixes the tags and the split; "
                        "add --protocol custom to choose them"
                    )
        tags = params.tags if args.top_n is None else replace(params.tags, top_n=args.top_n)
        split = params.split if args.split is None else replace(params.split, method=args.split)
        seed = params.seed if args.seed is None else args.seed
        report, table = tag_report(args.annotations, args.clip_info, recipe(protocol, tags, split), seed)
        if args.split_csv is not None:
            with atomic_path(args.split_csv) as tmp:
                table.to_csv(tmp, index=False, lineterminator="\n")
    except UserError as err:  # a ParamsError too
        message = str(err)
        if args.top_n is not None:  # the value came from the flag, not from the parameters
            message = message.replace("params: tags.top_n", "--top-n")
        # the parameters came from the file given (or ./params.yaml): name it
        message = message.replace("params: ", f"{source}: ", 1).replace("in params.yaml", f"in {source}")
        raise UserError(message) from None
    if args.json:
        keys = ("protocol", "dropped", "tags", "split_sizes", "leakage")
        print(json.dumps({k: report[k] for k in keys}))
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
