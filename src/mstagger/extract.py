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
import ctypes
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

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from mstagger.audio import AudioError, load_clip, log_mel
from mstagger.params import SpectrogramParams, load_params
from mstagger.util import UserError, atomic_path, log, stage_main, timed, write_json, write_text

ANNOTATIONS = "annotations_final.csv"
MEL_FILE = "mel.npy"
INDEX_FILE = "index.csv"
SKIPPED_FILE = "skipped.csv"
SUMMARY_FILE = "summary.json"
DTYPE = np.dtype(np.float16)
COPY_CHUNK_ROWS = 256  # rows moved at a time when squeezing out skipped clips (~40 MB for 128 x 628)


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


def read_clips(annotations: Path) -> list[Clip]:
    """Read the clip list (clip_id, mp3_path) of an MTAT ``annotations_final.csv``, in file order.

    Args:
        annotations: the tab-separated, quoted CSV with columns clip_id, <tags...>, mp3_path.

    Returns:
        The clips in file order.

    Raises:
        UserError: the file is missing, lacks the clip_id or mp3_path column, or repeats a clip_id.
    """
    try:
        handle = annotations.open(encoding="utf-8", newline="")
    except FileNotFoundError:
        raise UserError(f"{annotations} not found; run the download stage first") from None
    with handle:
        reader = csv.reader(handle, delimiter="\t", quotechar='"')
        header = next(reader, None) or []
        missing = [c for c in ("clip_id", "mp3_path") if c not in header]
        if missing:
            raise UserError(
                f"{annotations}: no {' or '.join(missing)} column in its header; "
                "expected MagnaTagATune's annotations_final.csv (tab-separated, quoted)"
            )
        id_col, path_col = header.index("clip_id"), header.index("mp3_path")
        clips: list[Clip] = []
        seen: dict[str, int] = {}
        for line, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) != len(header):
                raise UserError(f"{annotations}:{line}: {len(fields)} fields, the header has {len(header)}")
            clip = Clip(fields[id_col], fields[path_col])
            if clip.clip_id in seen:
                raise UserError(
                    f"{annotations}:{line}: clip_id {clip.clip_id} repeats line {seen[clip.clip_id]}"
                )
            seen[clip.clip_id] = line
            clips.append(clip)
    return clips


# --- worker side ---------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
# Modules librosa loads lazily on the first clip; imported up front so the BLAS thread limit covers them.
_PRELOAD = ("mstagger.audio", "librosa.core.audio", "librosa.feature.spectral", "scipy.signal")


@dataclass(frozen=True)
class _Target:
    """Where spectrogram rows go: the .npy file, its header size and the bytes of one row."""

    path: str
    offset: int
    row_bytes: int


def _pwrite_all(fd: int, data: bytes | memoryview, position: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written


def _keep_freed_memory() -> None:
    """Stop glibc from handing freed memory back to the OS after every clip.

    Each clip allocates and frees ~10 MB of temporaries (decoded audio, STFT). With glibc's default,
    adaptive thresholds that memory went back to the OS and was page-faulted in again for the next
    clip: ~2,400 page faults and +25% time per clip here. Fixed thresholds keep it in the heap.
    Elsewhere than glibc (macOS, musl) nothing is changed.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)  # blocks up to 32 MB come from the heap
        libc.mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)  # keep up to 64 MB free at the heap's top
    except (OSError, AttributeError):
        pass


def _init_worker(target: _Target, spec: SpectrogramParams, min_seconds: float) -> None:
    """Open the output file once per worker, limit BLAS to one thread and tune malloc.

    With two workers on two cores, OpenBLAS's own threads oversubscribe the CPU (a clip took ~2.5x
    longer than with one BLAS thread here); parallelism comes from the workers. One thread also makes
    the numbers independent of the worker count (bit-identical outputs).
    """
    for name in _PRELOAD:
        importlib.import_module(name)
    _keep_freed_memory()
    _STATE["limits"] = threadpool_limits(limits=1)
    _STATE["fd"] = os.open(target.path, os.O_WRONLY)
    _STATE["target"] = target
    _STATE["spec"] = spec
    _STATE["min_seconds"] = min_seconds


def _process(task: tuple[int, str]) -> ClipResult:
    """Extract one clip into its row of the output file; an unusable clip reports its reason."""
    row, path = task
    spec: SpectrogramParams = _STATE["spec"]
    target: _Target = _STATE["target"]
    try:
        y = load_clip(path, spec.sample_rate, _STATE["min_seconds"])
    except AudioError as err:
        return ClipResult(row, 0.0, err.reason)
    mel = np.ascontiguousarray(log_mel(y, spec), dtype=DTYPE)  # (n_mels, n_frames)
    # A plain positioned write: no worker maps the (multi-GB) file, so none holds its pages.
    _pwrite_all(_STATE["fd"], mel.data.cast("B"), target.offset + row * target.row_bytes)
    return ClipResult(row, round(y.size / spec.sample_rate, 3), None)


def _run_tasks(
    tasks: list[tuple[int, str]], target: _Target, spec: SpectrogramParams, workers: int, min_seconds: float
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


# --- squeezing out skipped rows ------------------------------------------------------------------


def _runs(rows: list[int]) -> Iterator[tuple[int, int]]:
    """Split sorted row numbers into half-open runs of consecutive rows."""
    start = prev = None
    for row in rows:
        if start is None:
            start = prev = row
        elif row == prev + 1:
            prev = row
        else:
            yield start, prev + 1
            start = prev = row
    if start is not None:
        yield start, prev + 1


def _compact(target: _Target, keep: list[int], row_shape: tuple[int, ...]) -> None:
    """Keep rows ``keep`` (sorted) of the .npy file in place: move rows up, fix the header, truncate.

    Rows only ever move towards the start of the file, and each chunk is read whole before it is
    written, so a chunk never overwrites rows still to be read.
    """
    chunk_bytes = COPY_CHUNK_ROWS * target.row_bytes
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header,
        {
            "descr": np.lib.format.dtype_to_descr(DTYPE),
            "fortran_order": False,
            "shape": (len(keep), *row_shape),
        },
    )
    # numpy pads .npy headers so the row count can change without changing the header size.
    if len(header.getvalue()) != target.offset:
        raise RuntimeError(
            f"{target.path}: .npy header size changed ({target.offset} -> {len(header.getvalue())})"
        )
    fd = os.open(target.path, os.O_RDWR)
    try:
        dst = target.offset
        for start, stop in _runs(keep):
            src, end = target.offset + start * target.row_bytes, target.offset + stop * target.row_bytes
            if src == dst:
                dst = end
                continue
            while src < end:
                data = os.pread(fd, min(chunk_bytes, end - src), src)
                _pwrite_all(fd, data, dst)
                src, dst = src + len(data), dst + len(data)
        _pwrite_all(fd, header.getvalue(), 0)
        os.ftruncate(fd, dst)
    finally:
        os.close(fd)


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
        "dtype": DTYPE.name,
        "seconds": seconds,
        "clips_per_second": round(len(clips) / seconds, 2) if seconds > 0 else None,
        "workers": workers,
    }
    write_text(out_dir / SKIPPED_FILE, _csv_text(["clip_id", "mp3_path", "bytes", "reason"], skipped_rows))
    write_json(out_dir / SUMMARY_FILE, summary)
    for clip_id, mp3_path, _, reason in skipped_rows:
        log.info("extract: skipped clip %s (%s): %s", clip_id, mp3_path, reason)
    log.info(
        "extract: %d of %d clips -> %s %s %s; skipped %d%s (list in %s); %.1f s, %.1f clips/s",
        shape[0],
        len(clips),
        out_dir / MEL_FILE,
        tuple(shape),
        DTYPE.name,
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
    clips = read_clips(raw_dir / ANNOTATIONS)
    if not clips:
        raise UserError(f"{raw_dir / ANNOTATIONS} lists no clips")
    workers = max(1, min(workers, len(clips)))
    tasks = [(row, str(raw_dir / clip.mp3_path)) for row, clip in enumerate(clips)]
    log.info(
        "extract: %d clips from %s -> %s, %d worker(s), %d x %d log-mel per clip",
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
            mel = np.lib.format.open_memmap(mel_tmp, mode="w+", dtype=DTYPE, shape=shape, version=(1, 0))
            target = _Target(str(mel_tmp), mel.offset, spec.n_mels * spec.n_frames * DTYPE.itemsize)
            del mel
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
            _compact(target, good, shape[1:])
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
