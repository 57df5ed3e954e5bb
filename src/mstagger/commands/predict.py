"""``mstagger predict PATH...``: tag your own audio, files and folders of files, with a trained bundle.

The work is :mod:`mstagger.inference.tagging`'s; this command finds the files, prints each file's top
tags (or asserted tags, or JSON) as it finishes, or appends it to the ``--csv`` table
(:class:`mstagger.inference.library.Ledger`), which a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import closing, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mstagger.commands.parser import Parser
from mstagger.core.errors import Interrupted, UserError, describe_os_error, guarded, output_error
from mstagger.core.runtime import resolve_device
from mstagger.inference.bundle import Bundle, load_bundle
from mstagger.inference.library import AudioFile, Ledger, find_audio, model_id
from mstagger.inference.tagging import (
    DEMO_WARNING,
    Tagged,
    available_cpus,
    default_workers,
    keep_heap_for_cpu,
    tag_files,
)
from mstagger.params import project_model


def _parser() -> Parser:
    p = Parser(prog="mstagger predict", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="audio files, and folders to search")
    p.add_argument(
        "--model",
        type=Path,
        help="model bundle (default: paths.model of the params.yaml here or in a parent folder)",
    )
    p.add_argument(
        "--glob",
        metavar="PATTERN",
        help="in folders, only the files whose path below the folder matches (e.g. '*.flac', 'jazz/*')",
    )
    p.add_argument(
        "--csv",
        type=Path,
        metavar="FILE",
        help="append one row per file to FILE as files finish; a rerun with the same FILE skips the "
        "files already in it (same size and modification time); one run writes a FILE at a time, and a "
        "FILE that is a symlink is written through",
    )
    p.add_argument("--force", action="store_true", help="with --csv: tag again the files already in FILE")
    p.add_argument("--json", action="store_true", help="print one JSON object: every tag's probability")
    p.add_argument(
        "--decide",
        action="store_true",
        help="print the tags the model asserts (probability at least the tag's threshold, chosen on "
        "the validation split) instead of the top tags",
    )
    p.add_argument("--top", type=int, default=10, help="tags to print per file (default 10)")
    p.add_argument(
        "--workers",
        type=int,
        help=f"decoding processes (default: one per CPU with a GPU; two thirds of the CPUs on the CPU, "
        f"the rest running the network; {available_cpus()} CPUs here); 0: in this process",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="windows per forward pass, across files (default: 64 on a GPU, 4 on the CPU)",
    )
    p.add_argument("--device", default="auto", help="auto (default: CUDA when present), cpu, cuda or cuda:N")
    return p


def _check(parser: Parser, args: argparse.Namespace) -> None:
    """Flags out of range are one ``error: ...`` line and exit status 2."""
    for flag, value, least in (
        ("--top", args.top, 1),
        ("--workers", args.workers, 0),
        ("--batch-size", args.batch_size, 1),
    ):
        if value is not None and value < least:
            parser.error(f"{flag} must be at least {least}, got {value}")
    if args.force and args.csv is None:
        parser.error("--force needs --csv (it says which table's rows to redo)")


def _asserted(bundle: Bundle, probs: np.ndarray) -> list[str] | None:
    """The tags the model asserts for one file, most probable first (None: the bundle has no thresholds)."""
    return None if bundle.thresholds is None else bundle.asserted(probs)


def _text(
    bundle: Bundle, file: AudioFile, result: Tagged, asserted: list[str] | None, decide: bool, top: int
) -> str:
    """What ``predict`` prints for one file: its top tags, or with --decide the tags it asserts."""
    if decide:
        return f"{file.path}: {', '.join(asserted or []) or '(no tag asserted)'}"
    order = np.argsort(-result.probs, kind="stable")[:top]
    head = f"{file.path}  ({result.windows} window{'s' if result.windows > 1 else ''})"
    return "\n".join([head, *(f"  {result.probs[j]:.3f}  {bundle.tags[j]}" for j in order)])


def _files(n: int) -> str:
    return f"{n} file{'' if n == 1 else 's'}"


def _summary(tally: Counter, skipped: int, ignored: Counter, csv: Path | None) -> str:
    """The closing line: files tagged, failed, skipped and ignored; hours of audio; throughput."""
    hours, seconds = tally["audio_seconds"] / 3600, tally["seconds"]
    parts = [f"tagged {_files(tally['tagged'])}"]
    if tally["tagged"]:
        speed = (
            f"{tally['tagged'] / seconds:.1f} files/s, {hours * 3600 / seconds:.0f} hours of audio per hour"
        )
        parts[0] += f" ({hours:.2f} hours of audio) in {seconds:.1f} s ({speed})"
    if tally["failed"]:
        parts.append(f"{tally['failed']} failed")
    if skipped:
        parts.append(f"{_files(skipped)} skipped, already in {csv} (--force redoes them)")
    if ignored:
        kinds = ", ".join(f"{ext} {count}" for ext, count in ignored.most_common())
        parts.append(f"{_files(sum(ignored.values()))} ignored, not audio ({kinds})")
    return "; ".join(parts)


@guarded
def main(argv: list[str] | None = None) -> int:
    """``mstagger predict``: tag files and folders; print top tags, asserted tags, JSON, or write a CSV.

    Returns:
        0 when every file was tagged, 1 when some failed (each reported), 2 on a bad flag, path or model.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    tally: Counter = Counter()
    try:
        files, ignored, unreadable = find_audio(args.paths, args.glob)
        if not files and not unreadable:
            where = ", ".join(map(str, args.paths)) + (f" matching --glob {args.glob!r}" if args.glob else "")
            raise UserError(f"no audio files in {where}")
        model = args.model if args.model is not None else project_model("--model PATH")
        bundle = load_bundle(model, device=resolve_device(args.device, source="--device"))
        keep_heap_for_cpu(bundle)
        if args.decide and bundle.thresholds is None:
            raise UserError(
                f"{model} holds no decision thresholds; retrain it (`dvc repro train`) for --decide"
            )
        ledger = Ledger(args.csv, bundle.tags, model_id(model)) if args.csv else None
        with ledger or nullcontext():
            todo = ledger.resume(files, args.force) if ledger else files
            if bundle.is_demo:
                print(DEMO_WARNING.format(model=model), file=sys.stderr)
            for path, reason in unreadable:  # found, but not even to be opened
                print(f"error: {path}: cannot tag: {reason}", file=sys.stderr)
            tally = tag_library(bundle, todo, args, ledger, model, tally, unreadable)
            sys.stdout.flush()  # a full disk under a redirected stdout shows here, not after the exit
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted{_kept(args, tally)}") from None
    except UserError as err:
        raise UserError(f"{err}{_kept(args, tally)}") from None
    except OSError as err:  # stdout cannot be written (a reader gone, a full disk), or a file went away
        reason = output_error(err) or describe_os_error(err)
        raise UserError(f"{reason}; stopped{_kept(args, tally)}") from None
    tally["failed"] += len(unreadable)
    print(_summary(tally, len(files) - len(todo), ignored, args.csv), file=sys.stderr)
    return 1 if tally["failed"] else 0


def _kept(args: argparse.Namespace, tally: Counter) -> str:
    """After a stop: what the --csv table keeps."""
    if not args.csv or not tally["tagged"]:
        return ""
    return f"; {args.csv} keeps the {_files(tally['tagged'])} tagged so far: run again to continue"


def tag_library(
    bundle: Bundle,
    todo: list[AudioFile],
    args: argparse.Namespace,
    ledger: Ledger | None,
    model: Path,
    tally: Counter | None = None,
    unreadable: Sequence[tuple[Path, str]] = (),
) -> Counter:
    """Tag ``todo`` and write each result as it comes: a CSV row, or printed text; JSON at the end.

    Args:
        tally: counts to update as files finish (the caller's, so a stop can say what was kept).
        unreadable: entries found that cannot be opened, with the reason: listed as failed in the JSON.

    Returns:
        Counts: ``tagged``, ``failed``, ``audio_seconds`` and ``seconds`` (wall clock).
    """
    tally = Counter() if tally is None else tally
    as_json: dict[int, dict[str, Any]] = {}
    failures: dict[int, str] = {}
    start = time.perf_counter()
    workers = args.workers if args.workers is not None else default_workers(bundle.device)
    results = tag_files(bundle, [f.path for f in todo], workers=workers, batch_size=args.batch_size)
    # closing: a stop (Ctrl-C, an output that fails) ends the workers now, not when the generator is
    # collected, where an exception is only "ignored" with its traceback
    with tqdm(total=len(todo), unit="file", desc="predict", file=sys.stderr) as bar, closing(results):
        for result in results:
            file = todo[result.index]
            bar.update(1)
            if result.error is not None:
                tally["failed"] += 1
                failures[result.index] = result.error
                bar.write(f"error: {file.path}: cannot tag: {result.error}", file=sys.stderr)
                continue
            tally["tagged"] += 1
            tally["audio_seconds"] += result.seconds
            asserted = _asserted(bundle, result.probs)
            if ledger is not None:
                ledger.add(file, result.seconds, result.windows, result.probs, asserted or [])
            if args.json:
                as_json[result.index] = {
                    "seconds": result.seconds,
                    "windows": result.windows,
                    "tags": dict(zip(bundle.tags, map(float, result.probs), strict=True)),
                    **({"asserted": asserted} if asserted is not None else {}),
                }
            elif ledger is None:
                bar.write(_text(bundle, file, result, asserted, args.decide, args.top), file=sys.stdout)
    tally["seconds"] = time.perf_counter() - start
    if args.json:
        report = {
            "model": str(model),
            "git_rev": bundle.git_rev,
            "files": {str(todo[i].path): as_json[i] for i in sorted(as_json)},
            "failed": {
                **{str(path): reason for path, reason in unreadable},
                **{str(todo[i].path): failures[i] for i in sorted(failures)},
            },
        }
        print(json.dumps(report, indent=2, allow_nan=False))
    return tally
