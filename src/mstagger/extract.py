"""Stage ``extract``: every clip listed in ``annotations_final.csv`` to one memory-mapped log-mel array.

Outputs, in ``paths.features``:

- ``mel.npy``: float16, shape (clips, n_mels, n_frames), the clips that extracted fine, in annotation
  order; open it with ``np.load(path, mmap_mode="r")``.
- ``index.csv``: ``row, clip_id, mp3_path, seconds``; ``row`` is the row in ``mel.npy`` and ``seconds``
  the decoded duration.
- ``skipped.csv``: ``clip_id, mp3_path, bytes, reason`` for every clip that could not be used
  (missing, empty, undecodable, truncated, silent). A skipped clip is never zero-filled.
The folder is built in a temporary sibling and swapped in whole. Counts, shape, seconds taken and
throughput go to ``<paths.metrics>/extract.json``.

Workers decode clips in parallel and write each spectrogram straight into its row of a .npy file that
has one row per listed clip; the rows of skipped clips are then squeezed out in place. The whole array
is never held in memory (MTAT: 4.2 GB) and the disk holds one copy of it.
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits
from tqdm import tqdm

from mstagger.core.disk import check_free
from mstagger.core.errors import UserError
from mstagger.core.log import log, setup_logging, stage_main, timed
from mstagger.core.outputs import check_writable, stage_metrics, staged_dir, write_json, write_text
from mstagger.core.system import die_with_parent, keep_freed_memory
from mstagger.data import rowfile
from mstagger.data.artifacts import INDEX_FILE, MEL_FILE, SKIPPED_FILE
from mstagger.data.audio import DECODER_MALLOC, MEL_DTYPE, AudioError, load_clip, log_mel
from mstagger.data.mtat import ANNOTATIONS_FILE, RUN_DOWNLOAD, read_annotations
from mstagger.data.rowfile import RowFile
from mstagger.params import SpectrogramParams, load_params


@dataclass(frozen=True)
class Clip:
    """One clip listed in ``annotations_final.csv``."""

    clip_id: str
    mp3_path: str


@dataclass(frozen=True)
class ClipResult:
    """The outcome of one clip: ``reason`` is None when its spectrogram was written."""

    row: int
    seconds: float
    reason: str | None


def read_clips(raw_dir: Path) -> list[Clip]:
    """The clips (clip_id, mp3_path) of ``raw_dir``'s ``annotations_final.csv``, in file order."""
    table = read_annotations(raw_dir / ANNOTATIONS_FILE, hint=RUN_DOWNLOAD)
    return [Clip(c, p) for c, p in zip(table["clip_id"], table["mp3_path"], strict=True)]


# --- worker side ---------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _init_pool_worker(target: RowFile, spec: SpectrogramParams, min_seconds: float) -> None:
    """A worker process's start: end with its parent (a killed stage leaves no worker), then set up."""
    die_with_parent()
    setup_logging("extract")  # a spawned interpreter: decoder notes need the stage's log format
    _init_worker(target, spec, min_seconds)


def _init_worker(target: RowFile, spec: SpectrogramParams, min_seconds: float) -> None:
    """Open the output file once per worker, limit BLAS to one thread and tune malloc.

    With two workers on two cores, OpenBLAS's own threads oversubscribe the CPU (a clip took ~2.5x
    longer than with one BLAS thread here); parallelism comes from the workers. The numbers do not
    depend on it: the log-mel uses no BLAS and sums in a fixed order (tests/test_same_bits.py).
    """
    keep_freed_memory(**DECODER_MALLOC)
    _STATE["limits"] = threadpool_limits(limits=1)
    _STATE["fd"] = os.open(target.path, os.O_WRONLY)
    _STATE["target"] = target
    _STATE["spec"] = spec
    _STATE["min_seconds"] = min_seconds


def _process(task: tuple[int, str]) -> ClipResult:
    """Extract one clip into its row of the output file; an unusable clip reports its reason."""
    row, path = task
    spec: SpectrogramParams = _STATE["spec"]
    target: RowFile = _STATE["target"]
    try:
        y = load_clip(path, spec.sample_rate, _STATE["min_seconds"])
    except AudioError as err:
        return ClipResult(row, 0.0, err.reason)
    rowfile.write_row(_STATE["fd"], target, row, log_mel(y, spec))  # (n_mels, n_frames)
    return ClipResult(row, round(y.size / spec.sample_rate, 3), None)


def _run_tasks(
    tasks: list[tuple[int, str]], target: RowFile, spec: SpectrogramParams, workers: int, min_seconds: float
) -> Iterator[ClipResult]:
    """Yield one result per task, in completion order; workers=1 runs in this process."""
    if workers == 1:
        _init_worker(target, spec, min_seconds)
        try:
            yield from map(_process, tasks)
        finally:
            os.close(_STATE["fd"])
            _STATE["limits"].unregister()
            _STATE.clear()
        return
    # spawn: workers are fresh interpreters, safe whatever threads or libraries (torch) the parent
    # holds, and children of this process, so they die with it (die_with_parent); a forkserver's
    # workers outlived a killed stage, holding the half-written array open. Each spends ~2 s importing
    # the audio stack once. ProcessPoolExecutor, unlike multiprocessing.Pool, fails instead of hanging
    # when a worker dies.
    context = mp.get_context("spawn")
    size = max(1, min(8, len(tasks) // (workers * 8)))
    batches = [tasks[i : i + size] for i in range(0, len(tasks), size)]
    try:
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_pool_worker, initargs=(target, spec, min_seconds)
        ) as pool:
            futures = [pool.submit(_process_batch, batch) for batch in batches]
            try:
                for future in as_completed(futures):
                    yield from future.result()
            finally:
                for future in futures:
                    future.cancel()
    except BrokenProcessPool:
        raise UserError(
            "an extract worker process died (killed for lack of memory, or a crash in the audio decoder); "
            "run with extract.workers: 1 to see which clip"
        ) from None


def _process_batch(batch: list[tuple[int, str]]) -> list[ClipResult]:
    """Extract a few clips in one round trip to the worker."""
    return [_process(task) for task in batch]


# --- the stage -----------------------------------------------------------------------------------


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _file_size(path: Path) -> int | str:
    try:
        return path.stat().st_size
    except OSError:
        return ""


def _skipped_rows(clips: list[Clip], results: list[ClipResult], raw_dir: Path) -> list[list[Any]]:
    """Rows of skipped.csv: clip_id, mp3_path, bytes, reason."""
    return [
        [clips[r.row].clip_id, clips[r.row].mp3_path, _file_size(raw_dir / clips[r.row].mp3_path), r.reason]
        for r in results
        if r.reason is not None
    ]


def _report(
    n_clips: int, skipped: list[list[Any]], out_dir: Path, shape: tuple, seconds: float, workers: int
) -> dict:
    """Log what the stage did and return its summary (counts, shape, seconds)."""
    reasons = Counter(str(row[3]).split(":")[0] for row in skipped)
    summary = {
        "clips_read": n_clips,
        "extracted": shape[0],
        "skipped": len(skipped),
        "skipped_reasons": dict(sorted(reasons.items())),
        "shape": list(shape),
        "dtype": MEL_DTYPE.name,
        "seconds": seconds,
        "clips_per_second": round(n_clips / seconds, 2) if seconds > 0 else None,
        "workers": workers,
    }
    for clip_id, mp3_path, _, reason in skipped:
        log.info("skipped clip %s (%s): %s", clip_id, mp3_path, reason)
    log.info(
        "%d of %d clips -> %s %s %s; skipped %d%s (list in %s); %.1f s, %.1f clips/s",
        shape[0],
        n_clips,
        out_dir / MEL_FILE,
        tuple(shape),
        MEL_DTYPE.name,
        len(skipped),
        "".join(f", {n} {reason}" for reason, n in summary["skipped_reasons"].items()),
        out_dir / SKIPPED_FILE,
        seconds,
        summary["clips_per_second"] or 0.0,
    )
    return summary


def extract(raw_dir: Path, out_dir: Path, spec: SpectrogramParams, workers: int, min_seconds: float) -> dict:
    """Compute the log-mel spectrogram of every clip of ``raw_dir`` into ``out_dir``.

    ``out_dir`` is built in a temporary sibling folder and swapped in whole when complete, so a kill
    leaves the previous features or the new ones; the disk's room for the array is checked first.

    Args:
        raw_dir: folder with ``annotations_final.csv`` and the audio at its ``mp3_path`` entries.
        out_dir: folder for mel.npy, index.csv and skipped.csv (``paths.features``).
        spec: the spectrogram parameters.
        workers: decoding processes; 1 runs in this process.
        min_seconds: clips decoding to less audio are skipped as truncated.

    Returns:
        The summary: counts, reasons for skipping, shape, seconds.

    Raises:
        UserError: the clip list is missing, malformed or empty, the disk lacks room, or no clip at all
            could be extracted (``out_dir`` then holds skipped.csv alone, to say why).
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    clips = read_clips(raw_dir)
    if not clips:
        raise UserError(f"{raw_dir / ANNOTATIONS_FILE} lists no clips")
    workers = max(1, min(workers, len(clips)))
    tasks = [(row, str(raw_dir / clip.mp3_path)) for row, clip in enumerate(clips)]
    log.info(
        "%d clips from %s -> %s, %d worker(s), %d x %d log-mel per clip",
        len(clips),
        raw_dir,
        out_dir,
        workers,
        spec.n_mels,
        spec.n_frames,
    )
    shape = (len(clips), spec.n_mels, spec.n_frames)
    slots: list[ClipResult | None] = [None] * len(clips)
    with timed() as elapsed, staged_dir(out_dir, "extract", "paths.features") as staging:
        # One row per listed clip, created sparse; workers fill the rows of the clips they extract.
        check_free(staging, math.prod(shape) * MEL_DTYPE.itemsize)
        target = rowfile.create(staging / MEL_FILE, len(clips), shape[1:], MEL_DTYPE)
        with tqdm(total=len(tasks), unit="clip", desc="extract", mininterval=1.0) as bar:
            for result in _run_tasks(tasks, target, spec, workers, min_seconds):
                slots[result.row] = result
                bar.update()
        results = [r for r in slots if r is not None]
        if len(results) != len(clips):
            raise RuntimeError(f"{len(clips) - len(results)} clip results went missing")
        good = [r.row for r in results if r.reason is None]
        skipped = _skipped_rows(clips, results, raw_dir)
        write_text(staging / SKIPPED_FILE, _csv_text(["clip_id", "mp3_path", "bytes", "reason"], skipped))
        if good:
            rowfile.compact(target, good)
            index_rows = [
                [i, clips[r].clip_id, clips[r].mp3_path, results[r].seconds] for i, r in enumerate(good)
            ]
            write_text(staging / INDEX_FILE, _csv_text(["row", "clip_id", "mp3_path", "seconds"], index_rows))
        else:
            (staging / MEL_FILE).unlink()
    summary = _report(len(clips), skipped, out_dir, (len(good), *shape[1:]), elapsed(), workers)
    if not good:
        raise UserError(f"no clip of {raw_dir} could be extracted; reasons in {out_dir / SKIPPED_FILE}")
    return summary


@stage_main
def main() -> None:
    """Run the stage on ``params.yaml``: ``paths.raw`` -> ``paths.features``, summary to the metrics."""
    params = load_params()
    metrics = stage_metrics(params.paths.metrics, "extract")
    check_writable(metrics.parent)
    summary = extract(
        Path(params.paths.raw),
        Path(params.paths.features),
        params.spectrogram,
        params.extract.workers,
        params.extract.min_seconds,
    )
    write_json(metrics, summary)


if __name__ == "__main__":
    main()
