"""Audio files as streams of window spectrograms, decoded block by block in worker processes.

``predict`` tags a file by cutting it into consecutive windows of the clip length the network was
trained on and averaging the windows' probabilities. This module turns files into those windows'
log-mel spectrograms with bounded memory: a file is decoded a block at a time
(:func:`mstagger.data.audio.decode_blocks`, the decoder ``extract`` uses too) and each window's spectrogram
is computed as soon as the window is complete. A 60-minute file is never in memory whole.

Worker processes (:func:`decode_in_workers`) put each window on one bounded queue, so however long
the files and however slow the network, at most a few batches of windows wait in memory. The module
imports neither torch nor librosa, so workers stay small (37 MB: NumPy, soundfile, soxr); they die with
the process that started them, even a killed one.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from mstagger.core.system import keep_freed_memory
from mstagger.data.audio import (
    DECODER_MALLOC,
    MEL_DTYPE,
    AudioError,
    StreamStats,
    checked,
    decode_blocks,
    log_mel,
)
from mstagger.params import SpectrogramParams

_PRELOAD = ("mstagger.inference.windows",)  # NumPy, soundfile and soxr: what a worker needs
_WAIT = 0.2  # seconds between checks while a queue is full or empty


# --- one file ------------------------------------------------------------------------------------


def windows(blocks: Iterable[np.ndarray], window: int) -> Iterator[np.ndarray]:
    """Consecutive windows of ``window`` samples from a stream of sample blocks.

    A remainder shorter than half a window is dropped when at least one full window exists (it would be
    mostly padding); a signal shorter than one window gives one (short) window. Where the blocks begin
    and end does not change the windows.
    """
    rest = np.zeros(0, np.float32)
    full = 0
    for block in blocks:
        rest = np.concatenate([rest, block])
        while len(rest) >= window:
            yield rest[:window]
            rest = rest[window:]
            full += 1
    if full == 0 or len(rest) >= window // 2:
        yield rest


def block_windows(
    blocks: Iterable[np.ndarray], spec: SpectrogramParams, min_seconds: float, stats: StreamStats
) -> Iterator[np.ndarray]:
    """Log-mel (n_mels, n_frames) of each window of a signal given as blocks at ``spec.sample_rate``.

    The windows are ``(spec.n_frames - 1) * spec.hop_length`` samples long (one training clip), their
    spectrograms rounded to :data:`mstagger.data.audio.MEL_DTYPE` as ``extract`` stores a clip's: a clip is
    the same input to the network here as in evaluation (and half the bytes between processes).
    ``stats`` holds the signal's length once the iteration ends.

    Raises:
        AudioError: the signal cannot be used (see :func:`mstagger.data.audio.checked`; for a file, also
            :func:`mstagger.data.audio.decode_blocks`), or its spectrogram overflows. The checks that
            need the whole signal come after the full windows, which the caller then discards.
    """
    window = (spec.n_frames - 1) * spec.hop_length
    for samples in windows(checked(blocks, spec.sample_rate, min_seconds, stats), window):
        with np.errstate(over="ignore", invalid="ignore"):  # checked below, named in one line
            mel = log_mel(samples, spec).astype(MEL_DTYPE)
        if not np.isfinite(mel).all():  # infinite or NaN samples, before checked() names them at the end
            raise AudioError("samples out of range: the spectrogram is not finite")
        yield mel


def file_windows(
    path: str | Path, spec: SpectrogramParams, min_seconds: float, stats: StreamStats
) -> Iterator[np.ndarray]:
    """:func:`block_windows` of ``path``, computed as the file is decoded."""
    return block_windows(decode_blocks(path, spec.sample_rate), spec, min_seconds, stats)


@dataclass(frozen=True)
class Window:
    """The log-mel spectrogram (n_mels, n_frames) of one window of file ``index``."""

    index: int
    mel: np.ndarray


@dataclass(frozen=True)
class Done:
    """File ``index`` decoded whole: ``seconds`` of audio in ``windows`` windows (all sent before)."""

    index: int
    seconds: float
    windows: int


@dataclass(frozen=True)
class Failed:
    """File ``index`` cannot be tagged; ``reason`` says why. Windows sent before it are void."""

    index: int
    reason: str


Message = Window | Done | Failed


def file_messages(
    index: int, path: str | Path, spec: SpectrogramParams, min_seconds: float
) -> Iterator[Message]:
    """Each window of a file as a :class:`Window`, then :class:`Done`; or :class:`Failed` with the reason."""
    return block_messages(index, decode_blocks(path, spec.sample_rate), spec, min_seconds)


def block_messages(
    index: int, blocks: Iterable[np.ndarray], spec: SpectrogramParams, min_seconds: float
) -> Iterator[Message]:
    """:func:`file_messages` of a signal given as blocks at ``spec.sample_rate`` (a file's, or an array's)."""
    stats = StreamStats()
    count = 0
    try:
        for mel in block_windows(blocks, spec, min_seconds, stats):
            count += 1
            yield Window(index, mel)
    except AudioError as err:
        yield Failed(index, err.reason)
        return
    yield Done(index, round(stats.samples / spec.sample_rate, 3), count)


def decode_here(
    paths: Sequence[str | Path], spec: SpectrogramParams, min_seconds: float
) -> Iterator[Message]:
    """The messages of every file, decoded one after the other in this process."""
    for index, path in enumerate(paths):
        yield from file_messages(index, path, spec, min_seconds)


# --- worker processes ----------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


class _Stopped(Exception):
    """The parent asked the workers to stop (it was interrupted or is done with them)."""


def _exit_when_closed(lifeline: Any) -> None:
    """Wait on the lifeline; when its only writer, the parent, is gone, end this process at once."""
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv_bytes()
    os._exit(1)


def _init_worker(lifeline: Any, results: Any, stop: Any, spec: SpectrogramParams, min_seconds: float) -> None:
    """Set a worker up: die with the parent, leave Ctrl-C to the parent, one BLAS thread and malloc
    as extract's workers (:data:`mstagger.data.audio.DECODER_MALLOC`).

    A worker's parent process is the forkserver, which lives on while any worker holds its "alive" pipe,
    so neither dies when a killed ``predict`` leaves them: a thread waits on the read end of a pipe
    whose only write end ``predict`` holds, and ends the worker when the kernel closes it.
    """
    threading.Thread(target=_exit_when_closed, args=(lifeline,), daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker's exit must not wait for the parent to read what it queued: a parent that stopped
    # reading (its output failed) would otherwise wait for the worker forever, and the worker for it.
    results.cancel_join_thread()
    keep_freed_memory(**DECODER_MALLOC)
    _STATE.update(
        results=results, stop=stop, spec=spec, min_seconds=min_seconds, limits=threadpool_limits(limits=1)
    )


def _put(message: Message) -> None:
    """Put a message on the bounded queue, waiting while it is full, unless the parent said stop."""
    while True:
        if _STATE["stop"].is_set():
            raise _Stopped
        try:
            _STATE["results"].put(message, timeout=_WAIT)
            return
        except queue.Full:
            continue


def _decode_task(index: int, path: str) -> None:
    """Decode one file in a worker, sending its messages to the parent as they come."""
    try:
        for message in file_messages(index, path, _STATE["spec"], _STATE["min_seconds"]):
            _put(message)
    except _Stopped:
        return
    except Exception as err:  # a bug or a decoder surprise on one file must not end a library's run
        _put(Failed(index, f"unexpected error: {type(err).__name__}: {err}"))


def _forkserver() -> Any:
    """The multiprocessing context whose workers fork from a server that preloaded the audio stack."""
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(list(_PRELOAD))
    return context


def start_forkserver() -> None:
    """Start the server decoding workers fork from now, so that its imports (0.3 s) overlap the
    caller's own (torch: 2 s) instead of following them."""
    _forkserver()
    forkserver.ensure_running()


def decode_in_workers(
    paths: Sequence[str | Path], spec: SpectrogramParams, min_seconds: float, workers: int, queued: int
) -> Iterator[Message | None]:
    """The messages of every file, decoded by ``workers`` processes, in the order they arrive.

    Messages of one file come in order (its windows, then Done or Failed); files interleave. ``None`` is
    yielded whenever no message is waiting, so the caller can use the pause (run a partial batch).

    Args:
        paths: the files, identified in the messages by their position.
        spec: the spectrogram parameters.
        min_seconds: shorter files fail as too short.
        workers: decoding processes.
        queued: at most this many windows wait in the queue; workers pause while it is full.
    """
    # forkserver: safe beside torch's threads, and each new pool's workers start warm (the audio stack
    # preloaded once); they are the forkserver's children, not ours, hence the lifeline in _init_worker
    # (extract's spawn workers use die_with_parent instead: one pool per run, the import paid once).
    context = _forkserver()
    todo = deque(enumerate(str(p) for p in paths))
    while todo:  # one pool; a fresh one if a worker died
        yield from _pool_messages(context, todo, spec, min_seconds, workers, queued)


def _pool_messages(
    context: Any, todo: deque, spec: SpectrogramParams, min_seconds: float, workers: int, queued: int
) -> Iterator[Message | None]:
    """Run ``todo`` through one pool until it is empty, or until a worker dies (its files then fail)."""
    results, stop = context.Queue(queued), context.Event()
    lifeline, lifeline_end = context.Pipe(duplex=False)  # this process holds the only write end
    in_flight: dict[int, Future] = {}
    pool = ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(lifeline, results, stop, spec, min_seconds),
    )
    try:
        while todo or in_flight:
            while todo and len(in_flight) < 2 * workers:  # enough to keep every worker busy
                index, path = todo.popleft()
                in_flight[index] = pool.submit(_decode_task, index, path)
            try:
                message = results.get_nowait()
            except queue.Empty:
                yield None
                try:
                    message = results.get(timeout=_WAIT)
                except queue.Empty:
                    if any(f.done() and f.exception() is not None for f in in_flight.values()):
                        # A worker died (a crash in the decoder, or killed for memory): the pool is broken.
                        for index in in_flight:
                            yield Failed(
                                index, "the decoding process died (a crash in the decoder or out of memory)"
                            )
                        return
                    continue
            if isinstance(message, Done | Failed):
                in_flight.pop(message.index, None)
            yield message
    except BaseException:
        # Stopped early (Ctrl-C, the output failed, the caller closed the stream): end the workers at
        # once by closing their lifeline, instead of waiting for them to finish their files.
        lifeline_end.close()
        raise
    finally:
        stop.set()  # workers waiting on a full queue give up; queued files are cancelled
        pool.shutdown(wait=True, cancel_futures=True)
        lifeline_end.close()
        lifeline.close()
