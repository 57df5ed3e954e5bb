"""Signal primitives of the demo's instruments: wavetable oscillators, envelopes, vibrato, Karplus-Strong."""

from __future__ import annotations

import numpy as np
from scipy import ndimage, signal

_TABLE = 4096  # wavetable length


def hz(midi: float) -> float:
    """Frequency of a MIDI pitch, Hz (69: the A above middle C, 440 Hz)."""
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def wavetable(amps: np.ndarray) -> np.ndarray:
    """One cycle of sum_k amps[k-1] * sin(2 pi k x), via an inverse FFT."""
    spec = np.zeros(_TABLE // 2 + 1, complex)
    spec[1 : len(amps) + 1] = -1j * amps * (_TABLE / 2)
    table = np.fft.irfft(spec, _TABLE)
    return (table / (np.abs(table).max() + 1e-9)).astype(np.float32)


def oscillate(table: np.ndarray, f: np.ndarray | float, n: int, sr: int, phase0: float) -> np.ndarray:
    """Read ``table`` at frequency ``f`` (Hz, constant or per sample) for ``n`` samples."""
    step = np.broadcast_to(np.asarray(f, dtype=np.float64) / sr, (n,))
    phase = np.cumsum(step) + phase0
    return table[(phase * _TABLE).astype(np.int64) & (_TABLE - 1)]


def envelope(n: int, sr: int, attack: float, release: float) -> np.ndarray:
    """Linear attack, flat sustain, linear release, over ``n`` samples."""
    a = max(1, min(int(attack * sr), n // 2))
    r = max(1, min(int(release * sr), n // 2))
    env = np.ones(n, np.float32)
    env[:a] = np.linspace(0.0, 1.0, a, dtype=np.float32)
    env[n - r :] = np.linspace(1.0, 0.0, r, dtype=np.float32)
    return env


def vibrato(n: int, sr: int, depth: float, rate: float, delay: float, rng: np.random.Generator) -> np.ndarray:
    """Relative pitch deviation: a sine LFO that fades in after ``delay`` seconds, plus slow drift."""
    t = np.arange(n, dtype=np.float32) / np.float32(sr)
    knots = np.arange(int(n / sr / 0.1) + 3, dtype=np.float32) * np.float32(0.1)
    drift = np.interp(t, knots, rng.normal(0, depth * 0.3, len(knots)).astype(np.float32))
    lfo = np.sin(np.float32(2 * np.pi * rate) * t + np.float32(rng.uniform(0, 2 * np.pi)))
    lfo *= np.clip((t - np.float32(delay)) * np.float32(1 / 0.3), 0.0, 1.0)
    return np.float32(depth) * lfo + drift


def karplus(
    f0: float,
    n: int,
    sr: int,
    rng: np.random.Generator,
    t60: float,
    harmonics: float,
    pos: float,
    damp: float = 0.5,
) -> np.ndarray:
    """Plucked string by Karplus-Strong: a noise burst circulating in a tuned, damped delay loop.

    The loop filter ``(1 - damp) + damp z^-1`` loses highs each round trip (0.5: the classic average,
    a dull string; smaller: a bright, long-singing one); a first-order all-pass supplies the
    fractional part of the period without damping, so the loop delay is exactly ``sr / f0``.
    ``t60`` sets the decay of the fundamental, ``harmonics`` the plectrum (the burst is low-passed
    above that many harmonics: a soft finger has few, a quill many), ``pos`` the
    plucking point (fraction of the string).
    """
    period = sr / f0
    # The filter's loss per second at the fundamental grows like damp * f0^3: scale damp down for
    # high notes so that they ring for a while too (real strings: higher notes still decay faster).
    damp = damp * min(1.0, max(0.25, (196.0 / f0) ** 2))
    delay = max(2, int(period - damp - 0.1))
    frac = period - damp - delay  # in [0.1, 1.1): where the all-pass is well behaved
    c = (1 - frac) / (1 + frac)
    g = 10.0 ** (-3.0 * period / (sr * t60))
    # y = x + g * lowpass(allpass(y delayed by `delay`)), as one rational filter:
    # Y/X = (1 + c z^-1) / ((1 + c z^-1) - g z^-delay (1 - damp + damp z^-1)(c + z^-1))
    a = np.zeros(delay + 3)
    a[:2] = (1.0, c)
    a[delay : delay + 3] -= g * np.convolve([1 - damp, damp], [c, 1.0])
    burst = rng.uniform(-1, 1, delay)
    cutoff = min(harmonics * f0, 4000.0, 0.4 * sr)
    b = 1.0 - np.exp(-2 * np.pi * cutoff / sr)  # one-pole low-pass of the burst
    burst = signal.lfilter([b], [1.0, b - 1.0], burst)
    if pos > 0:  # plucking point: a comb on the burst
        burst = burst - 0.7 * np.roll(burst, max(1, int(delay * pos)))
    x = np.zeros(n)
    x[:delay] = burst
    return signal.lfilter([1.0, c], a, x)


def limit(y: np.ndarray, ceiling: float, sr: int) -> np.ndarray:
    """Look-ahead peak limiter: a gain that dips smoothly (over ~2 ms) wherever |y| exceeds ``ceiling``."""
    gain = np.minimum(1.0, ceiling / (np.abs(y) + 1e-12))
    width = max(1, int(0.002 * sr))
    gain = ndimage.minimum_filter1d(gain, 2 * width + 1)
    gain = ndimage.uniform_filter1d(gain, width)
    return y * gain.astype(y.dtype)


def buzz(y: np.ndarray, amount: float) -> np.ndarray:
    """Sitar/tanpura bridge (jawari): an asymmetric soft clip that adds a bright, buzzing spectrum."""
    peak = np.abs(y).max() + 1e-9
    y = y / peak
    y = y + amount * (np.abs(y) - np.tanh(3 * y) * 0.3)
    return signal.lfilter([1.0, -1.0], [1.0, -0.995], y)  # remove the offset the rectifier adds
