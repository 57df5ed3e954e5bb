"""Audio decoding and the paper's log-mel spectrogram, shared by ``extract`` and ``predict``.

The features are those of the paper's original code (Dabral et al. 2018): audio decoded to mono, resampled
to 11025 Hz exactly as ``librosa.load`` does (soundfile, then soxr "HQ"), a librosa mel spectrogram with
its defaults (n_fft 2048, hop 512, 128 mels, power 2) and the natural log of ``max(mel, 1e-20)``.
One difference on purpose: the frame count is fixed in the audio domain, so every clip gives exactly
``spec.n_frames`` frames (628) whatever its decoded length.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import soxr

from mstagger.params import SpectrogramParams
from mstagger.util import log

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
    rate = handle.samplerate
    resampler = None
    if rate != sample_rate:
        resampler = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="HQ")
    frames_in = samples_out = 0
    while True:
        try:
            with notes.capture():
                data = handle.read(block_frames, dtype="float32", always_2d=True)  # (n, channels)
        except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as err:
            raise AudioError(f"decode failed: {_one_line(err)}") from None
        last = len(data) == 0
        y = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # (n,)
        frames_in += len(y)
        if resampler is not None and frames_in:
            y = resampler.resample_chunk(y, last=last)  # the last call flushes the filter
            if last:  # librosa.resample's length: ceil(frames * ratio), zero-padded
                wanted = math.ceil(frames_in * (float(sample_rate) / rate)) - samples_out
                y = np.pad(y, (0, max(wanted - len(y), 0)))[:wanted]
        samples_out += len(y)
        if len(y):
            yield np.ascontiguousarray(y, dtype=np.float32)
        if last:
            return


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


def log_mel(y: np.ndarray, spec: SpectrogramParams) -> np.ndarray:
    """Log-mel spectrogram of a mono signal, with exactly ``spec.n_frames`` frames.

    ``y`` is first zero-padded or cropped to ``(spec.n_frames - 1) * spec.hop_length`` samples, so
    the centred STFT yields exactly ``spec.n_frames`` frames (628 for 29.1 s at 11025 Hz, hop 512).

    Args:
        y: mono samples at ``spec.sample_rate``, shape (n,).
        spec: the spectrogram parameters.

    Returns:
        ``log(max(mel_power, spec.log_floor))``, float32, shape (spec.n_mels, spec.n_frames).
    """
    n_samples = (spec.n_frames - 1) * spec.hop_length
    y = librosa.util.fix_length(np.asarray(y, dtype=np.float32), size=n_samples)
    mel = librosa.feature.melspectrogram(
        y=y,
        sr=spec.sample_rate,
        n_fft=spec.n_fft,
        hop_length=spec.hop_length,
        n_mels=spec.n_mels,
        power=2.0,
    )  # (n_mels, n_frames)
    return np.log(np.maximum(mel, spec.log_floor)).astype(np.float32, copy=False)


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
