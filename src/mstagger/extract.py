"""Stage ``extract``: every clip listed in ``annotations_final.csv`` to one memory-mapped log-mel array.

Outputs, in ``paths.features``:

- ``mel.npy``: float16, shape (clips, n_mels, n_frames), the clips that extracted fine, in annotation
  order; open it with ``np.load(path, mmap_mode="r")``.
- ``index.csv``: ``row, clip_id, mp3_path, seconds``; ``row`` is the row in ``mel.npy`` and ``seconds``
  the decoded duration.
- ``skipped.csv``: ``clip_id, mp3_path, bytes, reason`` for every clip that could not be used
  (missing, empty, undecodable, truncated, silent). A skipped clip is never zero-filled.
- ``summary.json``: counts, shape, dtype, seconds taken, throughput.

Workers decode clips in parallel and write each spectrogram straight into its row of a .npy file that
has one row per listed clip; the rows of skipped clips are then squeezed out in place. The whole array
is never held in memory (MTAT: 4.2 GB) and the disk holds one copy of it.
"""

from __future__ import annotations

import csv
import importlib
import io
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

from mstagger import rowfile
from mstagger.artifacts import INDEX_FILE, MEL_DTYPE, MEL_FILE, SKIPPED_FILE
from mstagger.audio import AudioError, load_clip, log_mel
from mstagger.dataset import ANNOTATIONS_FILE, RUN_DOWNLOAD, read_annotations
from mstagger.params import SpectrogramParams, load_params
from mstagger.rowfile import RowFile
from mstagger.util import (
    UserError,
    atomic_path,
    keep_freed_memory,
    log,
    stage_main,
    timed,
    write_json,
    write_text,
)

SUMMARY_FILE = "summary.json"


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
# Modules librosa loads lazily on the first clip; imported up front so the BLAS thread limit covers them.
_PRELOAD = ("mstagger.audio", "librosa.core.audio", "librosa.feature.spectral", "scipy.signal")


def _init_worker(target: RowFile, spec: SpectrogramParams, min_seconds: float) -> None:
    """Open the output file once per worker, limit BLAS to one thread and tune malloc.

    With two workers on two cores, OpenBLAS's own threads oversubscribe the CPU (a clip took ~2.5x
    longer than with one BLAS thread here); parallelism comes from the workers. One thread also makes
    the numbers independent of the worker count (bit-identical outputs).
    """
    for name in _PRELOAD:
        importlib.import_module(name)
    # Each clip allocates and frees ~10 MB of temporaries (decoded audio, STFT): keep them in the heap
    # (~2,400 page faults and +25% time per clip here otherwise).
    keep_freed_memory(mmap_threshold=32 * 2**20, trim_threshold=64 * 2**20)
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
    # forkserver: workers fork from a clean server process, safe whatever threads or libraries (torch)
    # the parent holds; the server imports the audio stack once, so workers start warm (a spawned
    # worker spends ~2 s importing librosa and scipy). ProcessPoolExecutor, unlike multiprocessing.Pool,
    # fails instead of hanging when a worker dies.
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(list(_PRELOAD))
    size = max(1, min(8, len(tasks) // (workers * 8)))
    batches = [tasks[i : i + size] for i in range(0, len(tasks), size)]
    try:
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(target, spec, min_seconds)
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


def _report(
    clips: list[Clip],
    results: list[ClipResult],
    raw_dir: Path,
    out_dir: Path,
    shape: tuple,
    seconds: float,
    workers: int,
) -> dict:
    """Write skipped.csv and summary.json, log what happened, and return the summary."""
    skipped = [r for r in results if r.reason is not None]
    skipped_rows = [
        [clips[r.row].clip_id, clips[r.row].mp3_path, _file_size(raw_dir / clips[r.row].mp3_path), r.reason]
        for r in skipped
    ]
    reasons = Counter(str(r.reason).split(":")[0] for r in skipped)
    summary = {
        "clips_read": len(clips),
        "extracted": shape[0],
        "skipped": len(skipped),
        "skipped_reasons": dict(sorted(reasons.items())),
        "shape": list(shape),
        "dtype": MEL_DTYPE.name,
        "seconds": seconds,
        "clips_per_second": round(len(clips) / seconds, 2) if seconds > 0 else None,
        "workers": workers,
    }
    write_text(out_dir / SKIPPED_FILE, _csv_text(["clip_id", "mp3_path", "bytes", "reason"], skipped_rows))
    write_json(out_dir / SUMMARY_FILE, summary)
    for clip_id, mp3_path, _, reason in skipped_rows:
        log.info("skipped clip %s (%s): %s", clip_id, mp3_path, reason)
    log.info(
        "%d of %d clips -> %s %s %s; skipped %d%s (list in %s); %.1f s, %.1f clips/s",
        shape[0],
        len(clips),
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

    Args:
        raw_dir: folder with ``annotations_final.csv`` and the audio at its ``mp3_path`` entries.
        out_dir: folder for mel.npy, index.csv, skipped.csv and summary.json (rewritten whole).
        spec: the spectrogram parameters.
        workers: decoding processes; 1 runs in this process.
        min_seconds: clips decoding to less audio are skipped as truncated.

    Returns:
        The summary written to summary.json.

    Raises:
        UserError: the clip list is missing, malformed or empty, or no clip at all could be extracted
            (skipped.csv and summary.json are still written, to say why).
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
    slots: list[ClipResult | None] = [None] * len(clips)
    with timed() as elapsed:
        with atomic_path(out_dir / MEL_FILE) as mel_tmp:
            # One row per listed clip, created sparse; workers fill the rows of the clips they extract.
            shape = (len(clips), spec.n_mels, spec.n_frames)
            target = rowfile.create(mel_tmp, len(clips), shape[1:], MEL_DTYPE)
            with tqdm(total=len(tasks), unit="clip", desc="extract", mininterval=1.0) as bar:
                for result in _run_tasks(tasks, target, spec, workers, min_seconds):
                    slots[result.row] = result
                    bar.update()
            results = [r for r in slots if r is not None]
            if len(results) != len(clips):
                raise RuntimeError(f"{len(clips) - len(results)} clip results went missing")
            good = [r.row for r in results if r.reason is None]
            if not good:
                for name in (MEL_FILE, INDEX_FILE):
                    (out_dir / name).unlink(missing_ok=True)
                _report(clips, results, raw_dir, out_dir, (0, *shape[1:]), elapsed(), workers)
                raise UserError(
                    f"no clip of {raw_dir} could be extracted; reasons in {out_dir / SKIPPED_FILE}"
                )
            rowfile.compact(target, good)
        index_rows = [
            [i, clips[row].clip_id, clips[row].mp3_path, results[row].seconds] for i, row in enumerate(good)
        ]
        write_text(out_dir / INDEX_FILE, _csv_text(["row", "clip_id", "mp3_path", "seconds"], index_rows))
        seconds = elapsed()
    return _report(clips, results, raw_dir, out_dir, (len(good), *shape[1:]), seconds, workers)


@stage_main
def main() -> None:
    """Run the stage on ``params.yaml``: ``paths.raw`` -> ``paths.features``."""
    params = load_params()
    extract(
        Path(params.paths.raw),
        Path(params.paths.features),
        params.spectrogram,
        params.extract.workers,
        params.extract.min_seconds,
    )


if __name__ == "__main__":
    main()
