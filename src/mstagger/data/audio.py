"""Audio decoding and the paper's log-mel spectrogram, shared by ``extract`` and ``predict``.

The features are those of the paper's original code (Dabral et al. 2018): audio decoded to mono, resampled
to 11025 Hz exactly as ``librosa.load`` does (soundfile, then soxr "HQ"), a librosa mel spectrogram with
its defaults (n_fft 2048, hop 512, 128 mels, power 2) and the natural log of ``max(mel, 1e-20)``.
One difference on purpose: the frame count is fixed in the audio domain, so every clip gives exactly
``spec.n_frames`` frames (628) whatever its decoded length.

The spectrogram is computed here with NumPy alone, with the operations librosa 0.11 performs (periodic
Hann window, centred zero-padded frames, a float64 FFT rounded to complex64, Slaney mel filters in
float32), but with every reduction in a fixed order, so that ``extract`` writes the same bits on any
x86-64 machine whatever BLAS kernel, thread count or SIMD level NumPy picks (:func:`log_mel`,
docs/reproducibility.md). It stays within ``LIBROSA_BOUND`` of librosa's float32 numbers (tested):
decoding processes then load NumPy, soundfile and soxr only (37 MB and 0.3 s with this package), not
librosa's stack (numba, scipy: over 200 MB and 2 s each).
"""

from __future__ import annotations

import decimal
import functools
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from mstagger.core.log import log
from mstagger.params import SpectrogramParams

# A decoded clip whose absolute peak stays below this is treated as silence (an MP3 of digital
# silence decodes to exact zeros; encoder dither stays far below 1e-4).
SILENCE_PEAK = 1.0e-4
# Frames read at a time at the file's rate: 65 s at 16 kHz, 24 s at 44.1 kHz (8 MB of float32 stereo),
# so a 29 s MTAT clip is read in one call, as librosa.load reads it. libsndfile's MP3 reader (1.2)
# returns other samples after a read that ends inside the file (off by up to 0.2) on MP3s whose bit
# reservoir mpg123 finds damaged ("part2_3_length too large"), as libsndfile's own encoder writes
# them; so a clip read in blocks would not give the original code's features. A longer file may
# differ from a whole read at these cuts.
BLOCK_FRAMES = 1 << 20
# The precision spectrograms are kept at (extract's mel.npy) and given to the network in (predict's
# windows): a clip is the same input in training, evaluation and predict. float16 keeps log-mel values
# (about -46 to 10) to 3 significant digits, far finer than the network can tell apart.
MEL_DTYPE = np.dtype(np.float16)
# How far :func:`log_mel` may be from librosa's float32 log-mel (absolute, in log units; values lie
# between log(log_floor) = -46.1 and about 10): librosa rounds the power to float32 and sums the mel
# bands in the BLAS kernel's order, which moves its float32 result by up to 1 ulp (3.8e-6 at |x| >= 32,
# the largest difference measured); so after rounding to MEL_DTYPE a value equals librosa's or lies one
# float16 step from it (where librosa's is within LIBROSA_BOUND of a rounding boundary; near 0, where
# float16 steps are finer than LIBROSA_BOUND, up to LIBROSA_BOUND from it).
LIBROSA_BOUND = 1.0e-5
# malloc settings (mstagger.core.system.keep_freed_memory) for a process that decodes clip after clip, as
# extract's and predict's workers do: a clip's 10-20 MB of temporaries (decoded audio, FFT blocks) are
# reused from the heap instead of page-faulted in again each time (~2,400 faults, +25% time a clip).
DECODER_MALLOC = {"mmap_threshold": 32 * 2**20, "trim_threshold": 64 * 2**20}


class AudioError(Exception):
    """A clip that cannot be used: ``reason`` is a short phrase such as ``"empty file"`` or ``"silent"``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DecoderNotes:
    """What the C decoders print on stderr while a file decodes, logged once with the file's name.

    libsndfile's MP3 decoder writes notes such as "Illegal Audio-MPEG-Header ... Trying to resync"
    straight to file descriptor 2, without saying which file; a damaged clip among 25,000 could not
    be found from them. Each decoder call runs inside :meth:`capture`; :meth:`log` then logs all of a
    file's notes in one line, prefixed by its path. Nothing is lost.
    """

    def __init__(self, path: str | Path) -> None:
        self.path, self.parts = path, []

    @contextmanager
    def capture(self) -> Iterator[None]:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as notes:
            os.dup2(notes.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                notes.seek(0)
                self.parts.append(notes.read().decode("utf-8", errors="replace"))

    def log(self) -> None:
        text = " ".join(" ".join(self.parts).split())
        if text:
            log.warning("decoder notes for %s: %s", self.path, text)
        self.parts = []


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _open_error(err: Exception) -> AudioError:
    message = _one_line(err)
    if "not a regular file" in message or "Format not recognised" in message:
        # libsndfile says "File does not exist or is not a regular file" for bytes it cannot parse
        return AudioError("not an audio file that can be decoded")
    return AudioError(f"decode failed: {message}")


def decode_blocks(
    path: str | Path, sample_rate: int, block_frames: int = BLOCK_FRAMES
) -> Iterator[np.ndarray]:
    """The one decoder: mono float32 blocks of ``path`` at ``sample_rate``, read a block at a time.

    Channels are averaged, and the blocks resampled with soxr "HQ" as they are read (soxr's streaming
    resampler gives the samples of ``librosa.resample(..., res_type="soxr_hq")`` on the whole signal,
    whatever the block size); the total length is ``ceil(frames * ratio)``, as librosa makes it. So
    the concatenated blocks are what ``librosa.load(path, sr=sample_rate)`` returns (bit for bit for
    WAV and FLAC, and for an MP3 of at most ``block_frames``: see ``BLOCK_FRAMES``), and a file of any
    length is never in memory whole. Decoding uses soundfile (libsndfile reads MP3); there is no
    audioread fallback, so every failure surfaces as one exception type.

    Args:
        path: the audio file (MP3, WAV, FLAC, OGG, ...).
        sample_rate: the rate to resample to, in Hz.
        block_frames: frames read at a time at the file's rate.

    Raises:
        AudioError: "missing file", "empty file" (0 bytes), "not an audio file that can be decoded" or
            "decode failed: <libsndfile message>".
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AudioError("missing file") from None
    if size == 0:
        raise AudioError("empty file")
    notes = DecoderNotes(path)
    try:
        with notes.capture():
            handle = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as err:
        notes.log()
        raise _open_error(err) from None
    with handle:
        try:
            yield from _resampled_blocks(handle, notes, sample_rate, block_frames)
        finally:  # also when the reader stops early or a block fails: the notes so far
            notes.log()


def _resampled_blocks(
    handle: sf.SoundFile, notes: DecoderNotes, sample_rate: int, block_frames: int
) -> Iterator[np.ndarray]:
    return resampled(_read_blocks(handle, notes, block_frames), handle.samplerate, sample_rate)


def _read_blocks(handle: sf.SoundFile, notes: DecoderNotes, block_frames: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks of ``block_frames`` frames (the last one shorter) at the file's own rate."""
    while True:
        try:
            with notes.capture():
                data = handle.read(block_frames, dtype="float32", always_2d=True)  # (n, channels)
        except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as err:
            raise AudioError(f"decode failed: {_one_line(err)}") from None
        if len(data) == 0:
            return
        yield mono(data)


def resampled(blocks: Iterable[np.ndarray], rate: int, sample_rate: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks at ``rate`` Hz as blocks at ``sample_rate`` Hz, with soxr "HQ" streaming.

    The blocks joined are ``librosa.resample(y, orig_sr=rate, target_sr=sample_rate,
    res_type="soxr_hq")`` of the blocks joined, whatever the block sizes: ``ceil(n * ratio)`` samples,
    the end zero-padded as librosa pads it.
    """
    if rate == sample_rate:
        yield from (np.ascontiguousarray(y, dtype=np.float32) for y in blocks if len(y))
        return
    resampler = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="HQ")
    frames_in = samples_out = 0
    for y in blocks:
        frames_in += len(y)
        out = resampler.resample_chunk(np.asarray(y, dtype=np.float32), last=False)
        samples_out += len(out)
        if len(out):
            yield np.ascontiguousarray(out, dtype=np.float32)
    if frames_in:
        out = resampler.resample_chunk(np.zeros(0, np.float32), last=True)  # flushes the filter
        wanted = math.ceil(frames_in * (float(sample_rate) / rate)) - samples_out
        out = np.pad(out, (0, max(wanted - len(out), 0)))[:wanted]
        if len(out):
            yield np.ascontiguousarray(out, dtype=np.float32)


def mono(data: np.ndarray) -> np.ndarray:
    """(n, channels) -> (n,): the channels' mean, as ``data.mean(axis=1)`` computes it (summed in
    order, then divided) without its slow pass over rows of two values."""
    if data.shape[1] == 1:
        return data[:, 0]
    y = data[:, 0].copy()
    for channel in range(1, data.shape[1]):
        y += data[:, channel]
    y /= data.shape[1]
    return y


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """A whole file as mono float32 at ``sample_rate`` (:func:`decode_blocks` joined), shape (n,).

    Raises:
        AudioError: as :func:`decode_blocks`.
    """
    blocks = list(decode_blocks(path, sample_rate))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


@dataclass
class StreamStats:
    """What :func:`checked` saw of a stream: samples, absolute peak, whether all were finite."""

    samples: int = 0
    peak: float = 0.0
    finite: bool = True


def checked(
    blocks: Iterable[np.ndarray], sample_rate: int, min_seconds: float, stats: StreamStats | None = None
) -> Iterator[np.ndarray]:
    """Pass ``blocks`` through; at their end check the whole is usable: finite, long enough, not silent.

    A truncated or corrupt MP3 decodes without an error to shorter audio, which is why the decoded
    length is checked.

    Raises:
        AudioError: "non-finite samples", "too short: 1.3 s < 20.0 s" or "silent", after the last block.
    """
    stats = stats if stats is not None else StreamStats()
    for y in blocks:
        stats.samples += y.size
        stats.finite = stats.finite and bool(np.isfinite(y).all())
        if y.size and stats.finite:
            stats.peak = max(stats.peak, float(np.max(np.abs(y))))
        yield y
    seconds = stats.samples / sample_rate
    if not stats.finite:
        raise AudioError("non-finite samples")
    if seconds < min_seconds:
        raise AudioError(f"too short: {seconds:.1f} s < {min_seconds:.1f} s")
    if stats.peak < SILENCE_PEAK:
        raise AudioError("silent")


def hann_window(n: int) -> np.ndarray:
    """The periodic Hann window of ``n`` samples (float64), as ``scipy.signal.get_window("hann", n)``."""
    return 0.5 + 0.5 * np.cos(np.linspace(-np.pi, np.pi, n + 1)[:-1])


# Slaney's mel scale (the Auditory Toolbox; librosa's default): linear below 1 kHz, logarithmic above.
_HZ_PER_MEL = 200.0 / 3.0
_LOG_HZ = 1000.0  # where the logarithmic part begins
_LOG_MEL = _LOG_HZ / _HZ_PER_MEL
_LOG_STEP = math.log(6.4) / 27.0  # mels per log-Hz above 1 kHz


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney mels of frequencies in Hz."""
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _LOG_MEL + np.log(np.maximum(hz, _LOG_HZ) / _LOG_HZ) / _LOG_STEP
    return np.where(hz >= _LOG_HZ, log_part, hz / _HZ_PER_MEL)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Frequencies in Hz of Slaney mels (the inverse of :func:`hz_to_mel`)."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= _LOG_MEL, _LOG_HZ * np.exp(_LOG_STEP * (mel - _LOG_MEL)), _HZ_PER_MEL * mel)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular mel filters over the FFT bins, each of unit area (Slaney), float32 (n_mels, 1 + n_fft // 2).

    As ``librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)``: ``n_mels`` filters spread
    evenly in mels from 0 Hz to the Nyquist frequency, each rising from the previous centre and falling
    to the next, then scaled by 2 / (its width in Hz).
    """
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2.0), n_mels + 2))  # Hz
    widths = np.diff(edges)  # (n_mels + 1,)
    to_bin = edges[:, None] - np.fft.rfftfreq(n_fft, 1.0 / sample_rate)[None, :]  # (n_mels + 2, bins)
    rising = -to_bin[:-2] / widths[:-1, None]
    falling = to_bin[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    filters *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return filters


# Frames transformed at a time: their float64 temporaries (0.5 MB) stay in the CPU's cache, which
# halves the time of a 628-frame window (9 ms -> 4.7 ms) against transforming all frames at once.
_FRAMES_AT_ONCE = 32


@dataclass(frozen=True)
class MelTaps:
    """The window and the mel filters' nonzero taps, laid out for a sum in one fixed order.

    Filter ``order[i]`` weighs FFT bins ``first[i], first[i] + 1, ...`` by ``weights[i, 0], weights[i, 1],
    ...`` (its float32 values from :func:`mel_filterbank`, held in float64); the filters are sorted by
    their tap count, longest first, so tap ``j`` exists for the first ``active[j]`` of them.
    """

    window: np.ndarray  # (n_fft,) float64
    order: np.ndarray  # (n_mels,) int64, filter numbers, the filter with most taps first
    first: np.ndarray  # (n_mels,) int64, the first nonzero FFT bin of each filter (in ``order``)
    weights: np.ndarray  # (n_mels, most_taps) float64, zero past a filter's last tap
    active: tuple[int, ...]  # (most_taps,): how many filters have a tap j


@functools.lru_cache(maxsize=4)
def _transform(spec: SpectrogramParams) -> MelTaps:
    """The window and the mel filters' taps of ``spec``, computed once per process."""
    filters = mel_filterbank(spec.sample_rate, spec.n_fft, spec.n_mels)  # (n_mels, bins) float32
    nonzero = filters != 0
    counts = nonzero.sum(axis=1)
    first = nonzero.argmax(axis=1)
    for m in range(spec.n_mels):  # triangles: the taps are consecutive bins
        if not nonzero[m, first[m] : first[m] + counts[m]].all():
            raise ValueError(f"mel filter {m} has a zero inside its band")  # pragma: no cover
    order = np.argsort(-counts, kind="stable")
    most = max(int(counts.max()), 1)
    weights = np.zeros((spec.n_mels, most), np.float64)
    for i, m in enumerate(order):
        weights[i, : counts[m]] = filters[m, first[m] : first[m] + counts[m]]
    active = tuple(int((counts > j).sum()) for j in range(most))
    return MelTaps(hann_window(spec.n_fft), order, first[order], weights, active)


def _mel_power(power: np.ndarray, taps: MelTaps) -> np.ndarray:
    """Each filter's weighted sum of ``power`` (bins, T) over its taps, added tap after tap: (n_mels, T).

    Every step multiplies or adds whole rows elementwise (NumPy's ufuncs round each element once, with
    no fused multiply-add), so each band's sum runs in ascending bin order, whatever the machine.
    """
    acc = np.take(power, taps.first, axis=0) * taps.weights[:, :1]  # (n_mels, T), filters in ``order``
    term = np.empty_like(acc)
    for j, k in enumerate(taps.active[1:], start=1):
        np.take(power, taps.first[:k] + j, axis=0, out=term[:k])
        term[:k] *= taps.weights[:k, j : j + 1]
        acc[:k] += term[:k]
    mel = np.empty_like(acc)
    mel[taps.order] = acc
    return mel


def log_mel(y: np.ndarray, spec: SpectrogramParams) -> np.ndarray:
    """Log-mel spectrogram of a mono signal, with exactly ``spec.n_frames`` frames: the same bits anywhere.

    ``y`` is first zero-padded or cropped to ``(spec.n_frames - 1) * spec.hop_length`` samples, so
    the centred STFT yields exactly ``spec.n_frames`` frames (628 for 29.1 s at 11025 Hz, hop 512).
    The steps are librosa's (``librosa.feature.melspectrogram(y=y, sr=..., n_fft=..., hop_length=...,
    n_mels=...)``, power 2, then ``log(max(., spec.log_floor))``), with every reduction in one fixed
    order, so no result depends on the BLAS kernel, the thread count or the SIMD level NumPy picks
    (docs/reproducibility.md):

    - the float64 FFT of each windowed frame, rounded to complex64 as librosa keeps it (pocketfft:
      the same code on every x86-64 machine, no threads);
    - the power ``re**2 + im**2`` in float64 (librosa: ``abs()`` in float32, squared in float32);
    - each mel band as the sum of its filter's nonzero taps, weight times power in float64, added in
      ascending bin order (librosa: a float32 matrix product, whose order is the BLAS kernel's);
    - the natural log, correctly rounded to float32 (:func:`log_float32`).

    Every step is an elementwise IEEE operation or a sum in a fixed order, each correctly rounded, so
    the bits are fixed by the input. Against librosa's float32 numbers the result differs by at most
    ``LIBROSA_BOUND`` (tested): float32 rounding of the power and the BLAS sum, which this avoids.

    Args:
        y: mono samples at ``spec.sample_rate``, shape (n,).
        spec: the spectrogram parameters.

    Returns:
        ``log(max(mel_power, spec.log_floor))``, float32, shape (spec.n_mels, spec.n_frames).
    """
    taps = _transform(spec)
    n_samples = (spec.n_frames - 1) * spec.hop_length
    y = np.asarray(y, dtype=np.float32)[:n_samples]
    half = spec.n_fft // 2  # centred frames: zeros before the first and after the last sample
    padded = np.pad(y, (half, half + n_samples - len(y)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, spec.n_fft)[:: spec.hop_length]  # (T, n_fft)
    power = np.empty((spec.n_fft // 2 + 1, len(frames)), np.float64)  # (bins, T)
    for start in range(0, len(frames), _FRAMES_AT_ONCE):
        block = slice(start, start + _FRAMES_AT_ONCE)
        spectrum = np.fft.rfft(frames[block] * taps.window, axis=-1).astype(np.complex64)  # as librosa's
        re, im = spectrum.real.T.astype(np.float64), spectrum.imag.T.astype(np.float64)  # (bins, t)
        power[:, block] = re * re + im * im  # exact squares, one rounding in the sum
    mel = _mel_power(power, taps)  # (n_mels, T)
    return log_float32(np.maximum(mel, spec.log_floor))


# A float64 log from NumPy is within a few units in the last place (ulp) of the true value, and which
# few depends on the SIMD code NumPy dispatches to (SVML with AVX512, else the C library). A result
# this close (relative) to a float32 rounding boundary is recomputed exactly.
_LOG_SLACK = 2.0**-44


def log_float32(x: np.ndarray) -> np.ndarray:
    """The natural log of positive float64 values, correctly rounded to float32: the same bits everywhere.

    ``np.log`` in float64, rounded to float32, is the correctly rounded result unless the float64 log
    lies within ``_LOG_SLACK`` (relative) of a float32 rounding boundary, where the libm's last bits
    could decide; those few values (about one in 2**19) are computed with :mod:`decimal` to 40 digits.

    Args:
        x: positive float64 values, any shape.

    Returns:
        float32 values of the same shape.
    """
    x = np.asarray(x, dtype=np.float64)
    v = np.log(x)
    out = v.astype(np.float32)
    slack = np.abs(v) * _LOG_SLACK
    unsure = (v - slack).astype(np.float32) != (v + slack).astype(np.float32)
    for i in np.flatnonzero(unsure):
        out.flat[i] = _exact_log_float32(float(x.flat[i]))
    return out


def _exact_log_float32(x: float) -> np.float32:
    """ln(x) correctly rounded to float32 (ties to even), from a 40-digit decimal logarithm."""
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        exact = decimal.Decimal(x).ln()
        guess = np.float32(float(exact))
        below = guess if decimal.Decimal(float(guess)) <= exact else np.nextafter(guess, np.float32(-np.inf))
        above = np.nextafter(below, np.float32(np.inf))
        middle = (decimal.Decimal(float(below)) + decimal.Decimal(float(above))) / 2
        if exact != middle:
            return below if exact < middle else above
        return below if int(below.view(np.uint32)) % 2 == 0 else above


def load_clip(path: str | Path, sample_rate: int, min_seconds: float) -> np.ndarray:
    """Decode a clip and check it is usable (:func:`checked`).

    Args:
        path: the audio file.
        sample_rate: the rate to resample to, in Hz.
        min_seconds: the shortest acceptable decoded duration.

    Returns:
        The samples, float32, shape (n,).

    Raises:
        AudioError: as :func:`decode_blocks`, or "non-finite samples", "too short: 1.3 s < 20.0 s",
            "silent".
    """
    # checked() raises on an empty stream ("too short"), so there is at least one block
    return np.concatenate(list(checked(decode_blocks(path, sample_rate), sample_rate, min_seconds)))


def clip_log_mel(path: str | Path, spec: SpectrogramParams, min_seconds: float) -> np.ndarray:
    """Decode, check and transform one clip: :func:`load_clip` then :func:`log_mel`.

    Args:
        path: the audio file.
        spec: the spectrogram parameters (``spec.sample_rate`` is the decoding rate).
        min_seconds: the shortest acceptable decoded duration.

    Returns:
        float32 array of shape (spec.n_mels, spec.n_frames).

    Raises:
        AudioError: the clip is missing, empty, undecodable, too short, silent or not finite.
    """
    return log_mel(load_clip(path, spec.sample_rate, min_seconds), spec)
