"""Tag your own audio with a trained bundle: ``mstagger predict PATH...`` (files and folders of files).

A file of any length is cut into consecutive windows of the clip length the network was trained on
(29.1 s for MTAT); each window is tagged and the probabilities are averaged over windows. A file
shorter than one window is zero-padded, as a short clip is in training.

For a library: folders are searched for audio files (:func:`mstagger.library.find_audio`), worker
processes decode the files and compute the windows' spectrograms as they stream
(:mod:`mstagger.windows`), the windows of several files go through the network together in batches
(:func:`tag_messages`, through :meth:`Bundle.predict`, the one inference path), and each file's result
is written as soon as its last window is through: printed, or appended to the ``--csv`` table
(:class:`mstagger.library.Ledger`), which a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mstagger.audio import AudioError
from mstagger.bundle import Bundle, load_bundle, resolve_device
from mstagger.cli import Parser
from mstagger.library import AudioFile, Ledger, find_audio, model_id
from mstagger.params import ParamsError, load_params
from mstagger.util import UserError, describe_os_error, keep_freed_memory
from mstagger.windows import Done, Failed, Message, Window, decode_here, decode_in_workers

MIN_SECONDS = 1.0  # shorter files are refused: mostly padding, the tags would mean little
DEMO_WARNING = (
    "warning: {model} was trained on the synthetic demo dataset: its tags are not meaningful on real "
    "music. Train on MagnaTagATune with `dvc exp run -S dataset=mtat` (README: The real MagnaTagATune run)"
)


@dataclass(frozen=True)
class Tagged:
    """The outcome for file ``index``: the mean probability over its windows, or why it failed."""

    index: int
    probs: np.ndarray | None  # (n_tags,) in the bundle's tag order; None when the file failed
    seconds: float = 0.0
    windows: int = 0
    error: str | None = None


def tag_messages(bundle: Bundle, messages: Iterator[Message | None], batch_size: int) -> Iterator[Tagged]:
    """Run the windows of a message stream through the network in batches; yield each file when complete.

    A batch takes windows from whichever files they come from; it runs when ``batch_size`` windows wait,
    or when the stream pauses (a ``None`` message) or ends. A file is yielded once its :class:`Done`
    has come and its last window is through: its probability is the mean over its windows.
    """
    waiting: list[Window] = []  # windows not yet through the network: at most batch_size
    sums: dict[int, np.ndarray] = {}  # file -> sum of its windows' probabilities so far
    left: Counter = Counter()  # file -> its windows still in ``waiting``
    complete: dict[int, Done] = {}  # files decoded whole whose windows are not all through yet

    def run_batch() -> Iterator[Tagged]:
        batch = waiting[:batch_size]
        del waiting[:batch_size]
        probs = bundle.predict(np.stack([w.mel for w in batch]), batch_size=batch_size)  # (B, n_tags)
        for window, p in zip(batch, probs, strict=True):
            sums[window.index] = sums.get(window.index, 0.0) + p.astype(np.float64)
            left[window.index] -= 1
        for index in [i for i in complete if left[i] == 0]:
            yield finish(complete.pop(index))

    def finish(done: Done) -> Tagged:
        del left[done.index]
        probs = sums.pop(done.index) / done.windows
        if not np.isfinite(probs).all():  # never a row or a JSON of NaN
            return Tagged(done.index, None, error="the network's output is not finite (NaN or infinity)")
        return Tagged(done.index, probs, done.seconds, done.windows)

    for message in messages:
        if isinstance(message, Window):
            waiting.append(message)
            left[message.index] += 1
        elif isinstance(message, Done):
            if left[message.index]:
                complete[message.index] = message
            else:
                yield finish(message)
        elif isinstance(message, Failed):
            waiting[:] = [w for w in waiting if w.index != message.index]
            left.pop(message.index, None)
            sums.pop(message.index, None)
            yield Tagged(message.index, None, error=message.reason)
        if len(waiting) >= batch_size or (message is None and waiting):
            yield from run_batch()
    while waiting:
        yield from run_batch()


def default_batch_size(device: torch.device) -> int:
    """Windows per forward pass: 64 on a GPU; 4 on the CPU, where with malloc keeping the heap (see
    :func:`main`) a window takes 9.2 ms at 4, 9.8 ms at 2 and 10.5 ms at 1 on one core of the 2-core
    benchmark machine (8.9 ms at 8), and bigger batches cost memory (+300 MB at 16)."""
    return 4 if device.type == "cpu" else 64


def default_workers(device: torch.device) -> int:
    """Decoding processes: every CPU when the network runs on a GPU; on the CPU two thirds of them (at
    least one), the rest left to torch: decoding a window costs about twice its forward pass there
    (16 to 25 ms against 9.2 ms on one core of the 2-core benchmark machine)."""
    cpus = available_cpus()
    return cpus if device.type != "cpu" else max(1, math.ceil(2 * cpus / 3))


@contextmanager
def _torch_threads(bundle: Bundle, workers: int) -> Iterator[None]:
    """On the CPU, leave the cores the decoding workers use to them: torch gets the rest, at least one.

    Two OpenMP threads sharing two cores with two workers spend their time waiting on each other.
    """
    before = torch.get_num_threads()
    if workers and bundle.device.type == "cpu":
        torch.set_num_threads(max(1, available_cpus() - workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tag_files(
    bundle: Bundle, paths: Sequence[str | Path], *, workers: int = 0, batch_size: int | None = None
) -> Iterator[Tagged]:
    """Tag files: a :class:`Tagged` per file (``index`` is its position in ``paths``), as files finish.

    Args:
        bundle: a loaded model bundle.
        paths: audio files (any format soundfile decodes: MP3, WAV, FLAC, OGG, ...).
        workers: decoding processes; 0 decodes in this process, one file after the other.
        batch_size: windows per forward pass, across files (default: :func:`default_batch_size`).
    """
    spec = bundle.spectrogram
    batch_size = batch_size or default_batch_size(bundle.device)
    if workers:  # a few batches' worth of windows may wait, and a couple per worker
        source = decode_in_workers(paths, spec, MIN_SECONDS, workers, queued=2 * (batch_size + workers))
    else:
        source = decode_here(paths, spec, MIN_SECONDS)
    with closing(source), _torch_threads(bundle, workers):
        yield from tag_messages(bundle, source, batch_size)


def predict_file(bundle: Bundle, path: str | Path, batch_size: int | None = None) -> tuple[np.ndarray, int]:
    """Tag probabilities of one audio file, averaged over its windows.

    Args:
        bundle: a loaded model bundle.
        path: any format soundfile decodes (MP3, WAV, FLAC, OGG, ...).
        batch_size: windows per forward pass (default: :func:`default_batch_size`).

    Returns:
        (probabilities (n_tags,) in ``bundle.tags`` order, number of windows).

    Raises:
        AudioError: the file is missing, cannot be decoded, is silent or shorter than a second.
    """
    result = next(tag_files(bundle, [path], batch_size=batch_size))
    if result.error is not None:
        raise AudioError(result.error)
    return result.probs, result.windows


# --- the command ---------------------------------------------------------------------------------


def available_cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _parser() -> Parser:
    p = Parser(prog="mstagger predict", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="audio files, and folders to search")
    p.add_argument(
        "--model", type=Path, help="model bundle (default: paths.model of ./params.yaml, the trained model)"
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
    if bundle.thresholds is None:
        return None
    order = np.argsort(-probs, kind="stable")
    decided = bundle.decide(probs)
    return [bundle.tags[j] for j in order if decided[j]]


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
        model = args.model if args.model is not None else Path(load_params().paths.model)
        bundle = load_bundle(model, device=resolve_device(args.device, source="--device"))
        if bundle.device.type == "cpu":
            # A forward pass allocates and frees activations of 8-32 MB a window; served from the heap
            # instead of fresh mmaps, the benchmark's library is tagged 4% faster (and a window took
            # 10.4 ms instead of 18.8 ms before the ReLUs moved after the max-pools).
            keep_freed_memory(mmap_threshold=128 * 2**20, trim_threshold=256 * 2**20)
        if args.decide and bundle.thresholds is None:
            raise UserError(
                f"{model} holds no decision thresholds; retrain it (`dvc repro train`) for --decide"
            )
        ledger = Ledger(args.csv, bundle.tags, model_id(model)) if args.csv else None
        with ledger or nullcontext():
            todo = ledger.resume(files, args.force) if ledger else files
            if bundle.params.get("dataset") == "demo":
                print(DEMO_WARNING.format(model=model), file=sys.stderr)
            for path, reason in unreadable:  # found, but not even to be opened
                print(f"error: {path}: cannot tag: {reason}", file=sys.stderr)
            tally = tag_library(bundle, todo, args, ledger, model, tally, unreadable)
            sys.stdout.flush()  # a full disk under a redirected stdout shows here, not after the exit
    except (UserError, ParamsError) as err:
        print(f"error: {err}{_kept(args, tally)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted{_kept(args, tally)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`mstagger predict DIR | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        print(f"error: the output was closed (broken pipe); stopped{_kept(args, tally)}", file=sys.stderr)
        return 2
    except OSError as err:  # stdout cannot be written (a full disk, /dev/full), or a file went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        reason = describe_os_error(err) if err.filename else f"cannot write the output: {err.strerror or err}"
        print(f"error: {reason}; stopped{_kept(args, tally)}", file=sys.stderr)
        return 2
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
