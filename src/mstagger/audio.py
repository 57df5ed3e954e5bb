"""Audio decoding and the paper's log-mel spectrogram, shared by ``extract`` and ``predict``.

The features are those of the paper's original code (Dabral et al. 2018): audio decoded to mono, resampled
to 11025 Hz exactly as ``librosa.load`` does (soundfile, then soxr "HQ"), a librosa mel spectrogram with
its defaults (n_fft 2048, hop 512, 128 mels, power 2) and the natural log of ``max(mel, 1e-20)``.
One difference on purpose: the frame count is fixed in the audio domain, so every clip gives exactly
``spec.n_frames`` frames (628) whatever its decoded length.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from mstagger.params import SpectrogramParams
from mstagger.util import log

# A decoded clip whose absolute peak stays below this is treated as silence (an MP3 of digital
# silence decodes to exact zeros; encoder dither stays far below 1e-4).
SILENCE_PEAK = 1.0e-4


class AudioError(Exception):
    """A clip that cannot be used: ``reason`` is a short phrase such as ``"empty file"`` or ``"silent"``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@contextmanager
def decoder_notes(path: str | Path) -> Iterator[None]:
    """Catch what the C decoders print on stderr while ``path`` decodes and log it with the file's name.

    libsndfile's MP3 decoder writes notes such as "Illegal Audio-MPEG-Header ... Trying to resync"
    straight to file descriptor 2, without saying which file; a damaged clip among 25,000 could not
    be found from them. Nothing is lost: every note is logged, prefixed by the path.
    """
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
            text = " ".join(notes.read().decode("utf-8", errors="replace").split())
            if text:
                log.warning("decoder notes for %s: %s", path, text)


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode an audio file to mono float32 at ``sample_rate``, as ``librosa.load(path, sr=...)`` does.

    Decoding uses soundfile (libsndfile 1.2 reads MP3); there is no audioread fallback, so every
    failure surfaces here as one exception type.

    Args:
        path: the audio file (MP3, WAV, FLAC, OGG, ...).
        sample_rate: the rate to resample to, in Hz.

    Returns:
        The samples, shape (n,), float32; multichannel audio is averaged to mono.

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
    try:
        with decoder_notes(path):
            data, file_rate = sf.read(path, dtype="float32", always_2d=True)  # (n, channels)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as err:
        message = " ".join(str(err).split())
        if "not a regular file" in message or "Format not recognised" in message:
            # libsndfile says "File does not exist or is not a regular file" for bytes it cannot parse
            raise AudioError("not an audio file that can be decoded") from None
        raise AudioError(f"decode failed: {message}") from None
    y = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # (n,)
    if file_rate != sample_rate and y.size:
        y = librosa.resample(y, orig_sr=file_rate, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(y, dtype=np.float32)


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
    """Decode a clip and check it is usable: finite, at least ``min_seconds`` long, not silent.

    A truncated or corrupt MP3 decodes without an error to shorter audio, which is why the decoded
    length is checked.

    Args:
        path: the audio file.
        sample_rate: the rate to resample to, in Hz.
        min_seconds: the shortest acceptable decoded duration.

    Returns:
        The samples, float32, shape (n,).

    Raises:
        AudioError: as :func:`load_audio`, or "non-finite samples", "too short: 1.3 s < 20.0 s", "silent".
    """
    y = load_audio(path, sample_rate)
    if not np.isfinite(y).all():
        raise AudioError("non-finite samples")
    seconds = y.size / sample_rate
    if seconds < min_seconds:
        raise AudioError(f"too short: {seconds:.1f} s < {min_seconds:.1f} s")
    if float(np.max(np.abs(y))) < SILENCE_PEAK:
        raise AudioError("silent")
    return y


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
