"""Tag audio files with a trained bundle: windows decoded (in worker processes for a library), run
through the network in batches across files, averaged per file.

A file of any length is cut into consecutive windows of the clip length the network was trained on
(29.1 s for MTAT); each window is tagged and the probabilities are averaged over windows. A file
shorter than one window is zero-padded, as a short clip is in training. Worker processes decode the
files and compute the windows' spectrograms as they stream (:mod:`mstagger.inference.windows`); the
windows of several files go through the network together (:func:`tag_messages`, through
:meth:`Bundle.predict`, the one inference path), and each file is yielded when its last window is through.
"""

from __future__ import annotations

import math
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mstagger.core.system import keep_freed_memory
from mstagger.data.audio import AudioError
from mstagger.inference.bundle import Bundle
from mstagger.inference.windows import Done, Failed, Message, Window, decode_here, decode_in_workers

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
    :func:`keep_heap_for_cpu`) larger batches gained little per window and cost memory
    (bench/bench_predict.py, docs/benchmarks.md)."""
    return 4 if device.type == "cpu" else 64


def default_workers(device: torch.device) -> int:
    """Decoding processes: every CPU when the network runs on a GPU; on the CPU two thirds of them (at
    least one), the rest left to torch: decoding a window costs about twice its forward pass there
    (docs/benchmarks.md)."""
    cpus = available_cpus()
    return cpus if device.type != "cpu" else max(1, math.ceil(2 * cpus / 3))


def keep_heap_for_cpu(bundle: Bundle) -> None:
    """On the CPU, have malloc keep the forward pass's activations (8-32 MB a window) in the heap
    instead of fresh mmaps that are page-faulted in again for every batch (faster tagging, measured in
    docs/benchmarks.md); elsewhere nothing."""
    if bundle.device.type == "cpu":
        keep_freed_memory(mmap_threshold=128 * 2**20, trim_threshold=256 * 2**20)


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


def available_cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def main_script_hidden() -> Iterator[None]:
    """Start worker processes without re-running the caller's script in them.

    A new multiprocessing worker (spawn or forkserver) imports the parent's ``__main__`` file first, so
    a script without an ``if __name__ == "__main__":`` guard would start tagging again inside every
    worker, and the workers die. The workers need nothing from that script (their code lives in
    :mod:`mstagger.inference.windows`), so while they start, ``__main__`` names no file. Notebooks and
    ``python -m`` runs have no file to hide and are unchanged.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path
