"""Instruments and voices as note templates: one cached note per pitch, placed into a part's buffer.

Each instrument is a small function that makes one note, ``(f0, n, sr, rng, var) -> samples``:
plucked strings by Karplus-Strong, piano by inharmonic partials, bowed, blown and synthesised
sounds by wavetables, voices by formant filtering, drums and tabla from tuned noise and sweeps.
:data:`_NOTES` names the function of every instrument; :func:`note_template` caches its notes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import signal

from mstagger.demo.randomness import rng_for
from mstagger.demo.synthesis import buzz, envelope, hz, karplus, limit, oscillate, vibrato, wavetable

# (f0 Hz, samples, sample rate, random source, variant) -> one note. The variant is the vowel of a
# sung note, the detune in cents of an ensemble voice, or a sitar's bend; other instruments ignore it.
_NoteMaker = Callable[[float, int, int, np.random.Generator, int], np.ndarray]


# --- plucked and struck strings ---------------------------------------------------------------------


def _string(
    f0: float,
    n: int,
    sr: int,
    rng: np.random.Generator,
    var: int,
    *,
    t60: float,
    harmonics: float,
    pos: float,
    damp: float,
) -> np.ndarray:
    """A plucked string: Karplus-Strong, decaying in ``t60`` s, plucked at ``pos`` with ``harmonics``."""
    return karplus(f0, n, sr, rng, t60=t60, harmonics=harmonics, pos=pos, damp=damp)


def _harpsichord(f0: float, n: int, sr: int, rng: np.random.Generator, var: int) -> np.ndarray:
    """A quill-plucked string with its octave (the 4' register), thin in the bass."""
    y = karplus(f0, n, sr, rng, t60=2.5, harmonics=10, pos=0.1, damp=0.3)
    y = y + 0.4 * karplus(2 * f0, n, sr, rng, t60=2.0, harmonics=10, pos=0.1, damp=0.3)  # 4' register
    return signal.lfilter([1, -0.3], [1], y)  # thin: little body below the string's pitch


def _jawari(
    f0: float, n: int, sr: int, rng: np.random.Generator, var: int, *, t60: float, meend: bool
) -> np.ndarray:
    """Sitar or tanpura: a buzzing bridge (jawari) and sympathetic strings; ``meend``: variant 1 bends."""
    y = buzz(karplus(f0, n, sr, rng, t60=t60, harmonics=8, pos=0.08, damp=0.15), 0.8)
    y = y + 0.15 * karplus(2 * f0, n, sr, rng, t60=4.0, harmonics=8, pos=0.1, damp=0.15)  # sympathetic
    if meend and var == 1:  # meend: the note bends up a semitone
        t = np.arange(n, dtype=np.float64)
        warp = np.cumsum(1 + (2 ** (1 / 12) - 1) * np.clip((t / sr - 0.15) / 0.25, 0, 1))
        y = np.interp(warp, t, y, right=0.0)
    return y


def _bass(f0: float, n: int, sr: int, rng: np.random.Generator, var: int) -> np.ndarray:
    """A bass guitar: a dull plucked string over a decaying sine at its fundamental."""
    t = np.arange(n) / sr
    y = karplus(f0, n, sr, rng, t60=1.5, harmonics=2, pos=0.3, damp=0.5)
    return y / (np.abs(y).max() + 1e-9) + 0.6 * np.sin(2 * np.pi * f0 * t) * np.exp(-t / 0.6)


def _power_chord(f0: float, n: int, sr: int, rng: np.random.Generator, var: int, *, t60: float) -> np.ndarray:
    """An overdriven power chord (root, fifth, octave) through a cabinet; short ``t60``: palm-muted."""
    y = sum(
        karplus(f0 * r, n, sr, rng, t60=t60, harmonics=10, pos=0.15, damp=0.3) for r in (1.0, 1.4983, 2.0)
    )
    y = np.tanh(8 * y / (np.abs(y).max() + 1e-9))
    return signal.lfilter(*signal.butter(2, min(3500, 0.4 * sr) / (sr / 2)), y)  # cabinet


def _piano(f0: float, n: int, sr: int, rng: np.random.Generator, var: int) -> np.ndarray:
    """Piano note: inharmonic partials with pitch-dependent, faster-for-higher-partials decays."""
    k = np.arange(1, 19)
    fk = k * f0 * np.sqrt(1 + 3e-4 * k**2)
    keep = fk < 0.45 * sr
    k, fk = k[keep], fk[keep]
    amps = k**-1.1 * np.exp(-k * f0 / 3500)
    tau1 = np.clip(2.5 * (261.6 / f0) ** 0.6, 0.4, 6.0)
    tau = tau1 / (1 + 0.3 * (k - 1))
    t = np.arange(n) / sr
    partials = np.sin(2 * np.pi * fk[:, None] * t + rng.uniform(0, 2 * np.pi, len(k))[:, None])
    y = (amps[:, None] * np.exp(-t / tau[:, None]) * partials).sum(0)
    m = max(1, int(0.004 * sr))
    y[:m] *= np.linspace(0, 1, m)
    m = min(n, int(0.01 * sr))
    hammer = rng.normal(0, 1, m) * np.exp(-np.arange(m) / (0.002 * sr))
    y[: len(hammer)] += 0.05 * signal.lfilter([0.3], [1, -0.7], hammer)
    return y


# --- voices -----------------------------------------------------------------------------------------

# Vibrato of each voice type: (depth, relative; rate, Hz).
_VOICE_VIBRATO = {
    "female": (0.008, 5.5),
    "male": (0.007, 5.2),
    "soprano": (0.025, 5.8),
    "tenor": (0.022, 5.6),
    "monks": (0.002, 4.5),
}
# (centre Hz, bandwidth Hz) of four formants for the vowels a, e, i, o, u.
_FORMANTS_MALE = (
    ((730, 90), (1090, 110), (2440, 160), (3400, 200)),
    ((530, 80), (1840, 120), (2480, 160), (3400, 200)),
    ((270, 60), (2290, 120), (3010, 160), (3500, 200)),
    ((570, 80), (840, 100), (2410, 160), (3300, 200)),
    ((300, 60), (870, 100), (2240, 160), (3300, 200)),
)
_FORMANTS_FEMALE = (
    ((850, 100), (1220, 120), (2810, 170), (3800, 220)),
    ((610, 90), (2330, 130), (2990, 170), (4000, 220)),
    ((310, 70), (2790, 130), (3310, 170), (4200, 220)),
    ((590, 90), (920, 110), (2710, 170), (3800, 220)),
    ((370, 70), (950, 110), (2670, 170), (3800, 220)),
)


def _voice(f0: float, n: int, sr: int, rng: np.random.Generator, vowel: int, *, kind: str) -> np.ndarray:
    """A sung syllable by formant synthesis: a glottal source with vibrato through vowel resonances."""
    female = kind in ("female", "soprano")
    depth, rate = _VOICE_VIBRATO[kind]
    formants = list((_FORMANTS_FEMALE if female else _FORMANTS_MALE)[vowel])
    if kind in ("soprano", "tenor"):  # the singer's formant that lets an opera voice carry
        formants.append((3200 if female else 2900, 300))
    k = np.arange(1, max(2, int(0.45 * sr / f0)) + 1)
    source = wavetable(k**-1.0)
    vib = vibrato(n, sr, depth, rate, 0.12, rng)
    x = oscillate(source, f0 * (1 + vib), n, sr, rng.random()).astype(np.float64)
    x += 0.03 * rng.standard_normal(n)  # breath
    # Cascade formant filter (as in Klatt's synthesiser): resonators with unit gain at 0 Hz.
    sos = []
    for freq, bw in formants:
        r = np.exp(-np.pi * bw / sr)
        c = 2 * r * np.cos(2 * np.pi * min(freq, 0.45 * sr) / sr)
        sos.append((1 - c + r * r, 0.0, 0.0, 1.0, -c, r * r))
    y = signal.sosfilt(np.array(sos), x)
    y = signal.lfilter([1.0, -0.9], [1.0], y)  # lip radiation: +6 dB per octave
    return y * envelope(n, sr, 0.06, 0.12)


# --- sustained sounds: bowed, blown, organ and synthesisers -----------------------------------------


@dataclass(frozen=True)
class _Timbre:
    """A sustained (wavetable) instrument: its spectrum, envelope, vibrato and ensemble."""

    slope: float = 1.0  # harmonic k has amplitude k^-slope ...
    rolloff: float = 1e9  # ... times exp(-k / rolloff)
    even: float = 1.0  # extra factor on even harmonics (a square-ish wave below 1)
    partials: tuple[float, ...] = ()  # explicit amplitudes of harmonics 1, 2, ... instead
    body: tuple[tuple[float, float, float], ...] = ()  # resonances: (centre Hz, width Hz, gain)
    attack: float = 0.05  # seconds
    release: float = 0.1  # seconds
    vibrato: tuple[float, float, float] = (0.0, 5.0, 0.0)  # depth (relative), rate (Hz), delay (s)
    voices: tuple[tuple[float, float], ...] = ((0.0, 1.0),)  # ensemble: (detune cents, gain)
    noise: float = 0.0  # bow or breath noise


_SUSTAINED = {
    "violin": _Timbre(
        body=((450, 180, 1.5), (2800, 800, 1.2)),
        attack=0.08,
        release=0.12,
        vibrato=(0.006, 5.8, 0.15),
        noise=0.02,
    ),
    "cello": _Timbre(
        body=((250, 100, 1.5), (1200, 400, 0.8)),
        attack=0.1,
        release=0.15,
        vibrato=(0.005, 5.2, 0.2),
        noise=0.02,
    ),
    "strings": _Timbre(
        slope=1.3,
        body=((450, 200, 1.0), (2500, 900, 0.6)),
        attack=0.3,
        release=0.35,
        vibrato=(0.004, 5.6, 0.1),
        voices=((-8, 0.7), (0, 1.0), (7, 0.7)),
        noise=0.01,
    ),
    "flute": _Timbre(
        partials=(1.0, 0.3, 0.12, 0.05, 0.02),
        attack=0.06,
        release=0.08,
        vibrato=(0.004, 5.0, 0.15),
        noise=0.06,
    ),
    "organ": _Timbre(
        partials=(1.0, 0.7, 0.45, 0.4, 0.0, 0.25, 0.0, 0.2),
        attack=0.01,
        release=0.06,
        voices=((0, 1.0), (2, 0.3)),
    ),
    "horn": _Timbre(
        slope=0.7,
        rolloff=6.0,
        body=((500, 300, 1.0),),
        attack=0.07,
        release=0.12,
        vibrato=(0.002, 5.0, 0.3),
        noise=0.01,
    ),
    "pad": _Timbre(
        rolloff=5.0,
        attack=0.4,
        release=0.6,
        vibrato=(0.002, 0.8, 0.0),
        voices=((-12, 0.8), (0, 1.0), (11, 0.8)),
    ),
    "lead": _Timbre(
        even=0.4, attack=0.01, release=0.05, vibrato=(0.003, 5.5, 0.2), voices=((0, 1.0), (6, 0.5))
    ),
    "drone": _Timbre(
        slope=1.5,
        rolloff=3.0,
        attack=1.0,
        release=1.5,
        vibrato=(0.001, 0.2, 0.0),
        voices=((-5, 1.0), (4, 1.0)),
    ),
}


def _sustained(
    f0: float, n: int, sr: int, rng: np.random.Generator, cents: int, *, spec: _Timbre
) -> np.ndarray:
    """A sustained note of timbre ``spec``, detuned by ``cents``."""
    f0 = f0 * 2 ** (cents / 1200)
    k = np.arange(1, max(2, int(0.45 * sr / f0)) + 1)
    if spec.partials:
        amps = np.zeros(len(k))
        m = min(len(k), len(spec.partials))
        amps[:m] = spec.partials[:m]
    else:
        amps = k**-spec.slope * np.exp(-k / spec.rolloff) * np.where(k % 2 == 0, spec.even, 1.0)
    for centre, width, gain in spec.body:  # resonances of the instrument body
        amps = amps * (1 + gain * np.exp(-(((k * f0 - centre) / width) ** 2)))
    table = wavetable(amps)
    depth, rate, delay = spec.vibrato
    y = np.zeros(n, np.float32)
    for cents, g in spec.voices:
        vib = vibrato(n, sr, depth, rate * rng.uniform(0.9, 1.1), delay, rng)
        y += g * oscillate(table, f0 * 2 ** (cents / 1200) * (1 + vib), n, sr, rng.random())
    if spec.noise:
        y += spec.noise * signal.lfilter([0.2], [1, -0.8], rng.normal(0, 1, n)).astype(np.float32)
    return y * envelope(n, sr, spec.attack, spec.release)


def _synth_pluck(f0: float, n: int, sr: int, rng: np.random.Generator, var: int, *, bass: bool) -> np.ndarray:
    """Subtractive-synth pluck: a saw whose upper harmonics die away first (a closing filter)."""
    k = np.arange(1, max(2, int(0.45 * sr / f0)) + 1)
    bright = wavetable(k**-1.0)
    dark = wavetable(k**-1.0 * np.exp(-k / 2.0))
    t = np.arange(n) / sr
    sweep = np.exp(-t / (0.06 if bass else 0.1))
    ph = rng.random()
    y = sweep * oscillate(bright, f0, n, sr, ph) + (1 - sweep) * oscillate(dark, f0, n, sr, ph)
    return y * np.exp(-t / (0.25 if bass else 0.3))


# --- drums and tabla --------------------------------------------------------------------------------


def _strike(n: int, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Time (s) and a white-noise burst for a drum stroke of ``n`` samples."""
    return np.arange(n) / sr, rng.normal(0, 1, n)


def _kick(
    f0: float, n: int, sr: int, rng: np.random.Generator, var: int, *, sweep: float, decay: float, drive: bool
) -> np.ndarray:
    """A kick drum: a sine swept down from 45 + ``sweep`` Hz, a click; ``drive``: saturated (techno)."""
    t, noise = _strike(n, sr, rng)
    f = 45 + sweep * np.exp(-t / 0.03)
    y = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / decay) + 0.3 * noise * np.exp(-t / 0.004)
    return np.tanh(1.8 * y) if drive else y


def _snare(f0: float, n: int, sr: int, rng: np.random.Generator, var: int) -> np.ndarray:
    """A snare: band-passed noise (the wires) over the drum's 190 Hz body."""
    t, noise = _strike(n, sr, rng)
    nyq = sr / 2
    band = signal.lfilter(*signal.butter(2, [900 / nyq, min(5500, 0.9 * nyq) / nyq], "band"), noise)
    return band * np.exp(-t / 0.11) + 0.6 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.06)


def _clap(f0: float, n: int, sr: int, rng: np.random.Generator, var: int) -> np.ndarray:
    """A hand clap: three quick bursts of band-passed noise and their room."""
    t, noise = _strike(n, sr, rng)
    nyq = sr / 2
    band = signal.lfilter(*signal.butter(2, [800 / nyq, 3000 / nyq], "band"), noise)
    env = sum(np.exp(-np.clip(t - d, 0, None) / 0.006) * (t >= d) for d in (0.0, 0.011, 0.022))
    return band * (env + 0.5 * np.exp(-t / 0.08))


def _cymbal(
    f0: float, n: int, sr: int, rng: np.random.Generator, var: int, *, cut: float, decay: float
) -> np.ndarray:
    """A hi-hat or crash: noise above ``cut`` Hz, decaying in ``decay`` s."""
    t, noise = _strike(n, sr, rng)
    nyq = sr / 2
    high = signal.lfilter(*signal.butter(4, min(cut, 0.8 * nyq) / nyq, "high"), noise)
    return high * np.exp(-t / decay)


def _tabla_stroke(
    f0: float,
    n: int,
    sr: int,
    rng: np.random.Generator,
    var: int,
    *,
    amps: tuple[float, ...],
    decays: tuple[float, ...],
) -> np.ndarray:
    """Na or tin on the tabla: four harmonic membrane modes at ``f0`` and a finger's click."""
    t, noise = _strike(n, sr, rng)
    y = sum(
        a * np.sin(2 * np.pi * r * f0 * t) * np.exp(-t / d)
        for r, a, d in zip((1, 2, 3, 4), amps, decays, strict=True)
    )
    return y + 0.4 * signal.lfilter([0.5], [1, -0.5], noise) * np.exp(-t / 0.003)


def _tabla_ge(f0: float, n: int, sr: int, rng: np.random.Generator, var: int) -> np.ndarray:
    """Ge on the bass drum (bayan): the palm slides, so the pitch rises."""
    t, _ = _strike(n, sr, rng)
    f = 80 + 45 * (1 - np.exp(-t / 0.12))
    return np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.45)


def _tabla_ka(f0: float, n: int, sr: int, rng: np.random.Generator, var: int) -> np.ndarray:
    """Ka: a flat-hand slap, a click of low-passed noise."""
    t, noise = _strike(n, sr, rng)
    return signal.lfilter([0.4], [1, -0.6], noise) * np.exp(-t / 0.01)


# --- the instruments --------------------------------------------------------------------------------

# How each instrument (a part's ``instr``, a drum sound or ``voice_<type>``) makes one note.
_NOTES: dict[str, _NoteMaker] = {
    "guitar": functools.partial(_string, t60=2.5, harmonics=8, pos=0.18, damp=0.4),
    "nylon": functools.partial(_string, t60=2.0, harmonics=4, pos=0.2, damp=0.5),
    "harpsichord": _harpsichord,
    "harp": functools.partial(_string, t60=3.0, harmonics=3, pos=0.5, damp=0.45),
    "sitar": functools.partial(_jawari, t60=3.0, meend=True),
    "tanpura": functools.partial(_jawari, t60=4.0, meend=False),
    "bass": _bass,
    "piano": _piano,
    "power": functools.partial(_power_chord, t60=2.0),
    "power_mute": functools.partial(_power_chord, t60=0.2),
    "synth_arp": functools.partial(_synth_pluck, bass=False),
    "synth_bass": functools.partial(_synth_pluck, bass=True),
    "kick": functools.partial(_kick, sweep=110, decay=0.22, drive=False),
    "kick_techno": functools.partial(_kick, sweep=140, decay=0.3, drive=True),
    "snare": _snare,
    "clap": _clap,
    "hat": functools.partial(_cymbal, cut=6000, decay=0.025),
    "open_hat": functools.partial(_cymbal, cut=6000, decay=0.18),
    "crash": functools.partial(_cymbal, cut=3000, decay=0.7),
    "tabla_na": functools.partial(_tabla_stroke, amps=(1.0, 0.5, 0.3, 0.15), decays=(0.35, 0.25, 0.15, 0.1)),
    "tabla_tin": functools.partial(_tabla_stroke, amps=(1.0, 0.2, 0.4, 0.1), decays=(0.2, 0.15, 0.1, 0.08)),
    "tabla_ge": _tabla_ge,
    "tabla_ka": _tabla_ka,
    **{kind: functools.partial(_sustained, spec=spec) for kind, spec in _SUSTAINED.items()},
    **{f"voice_{kind}": functools.partial(_voice, kind=kind) for kind in _VOICE_VIBRATO},
}
# Plucked and struck sounds ring for a fixed time (a shorter note is faded out when placed).
_RING = {
    "guitar": 2.0, "nylon": 1.8, "harpsichord": 2.0, "harp": 2.5, "sitar": 2.0, "tanpura": 3.0,
    "bass": 1.5, "piano": 2.5, "power": 1.2, "power_mute": 0.3, "synth_arp": 0.7, "synth_bass": 0.35,
    "kick": 0.45, "kick_techno": 0.5, "snare": 0.3, "clap": 0.25, "hat": 0.1, "open_hat": 0.4,
    "crash": 1.6, "tabla_na": 0.5, "tabla_tin": 0.35, "tabla_ge": 0.7, "tabla_ka": 0.06,
}  # fmt: skip


_STRINGS = frozenset({"guitar", "nylon", "harpsichord", "harp", "sitar", "tanpura", "bass"})


@functools.lru_cache(maxsize=1024)
def note_template(kind: str, midi: int, n: int, sr: int, var: int = 0) -> np.ndarray:
    """One note of an instrument, peak-normalised, read-only; cached (a pure function of its key).

    Args:
        kind: the instrument, a key of :data:`_NOTES` (``voice_<type>`` for a voice).
        midi: the MIDI pitch (ignored by unpitched drums).
        n: the length in samples of a sustained sound (ignored for ringing ones, see :data:`_RING`).
        sr: the sample rate, Hz.
        var: the variant: the vowel of a sung note, the detune in cents of an ensemble voice, a
            sitar's bend, a drum stroke's variant (a different noise burst).

    Returns:
        The note as a read-only float32 array with peak 1, faded out over its last 10 ms.

    Raises:
        ValueError: ``kind`` is not an instrument.
    """
    make = _NOTES.get(kind)
    if make is None:
        raise ValueError(f"unknown instrument {kind!r}")
    rng = rng_for(kind, midi, n, sr, var)
    if kind in _RING:
        n = int(_RING[kind] * sr)
    y = make(hz(midi), n, sr, rng, var)
    y = np.asarray(y, dtype=np.float32)
    if kind in _STRINGS:  # tame the noisy first milliseconds of a pluck
        y = limit(y, 3.0 * float(np.sqrt(np.mean(y[: int(0.25 * sr)] ** 2))), sr)
    y /= np.abs(y).max() + 1e-9
    fade = min(len(y), int(0.01 * sr))
    y[len(y) - fade :] *= np.linspace(1, 0, fade, dtype=np.float32)
    y.setflags(write=False)
    return y


SHORT_NOTE = 3.0  # seconds: sustained notes up to this long are cut from one template per pitch


@functools.lru_cache(maxsize=64)
def _ramp(n: int) -> np.ndarray:
    return np.linspace(1.0, 0.0, n, dtype=np.float32)


def place_notes(
    buf: np.ndarray,
    sr: int,
    kind: str,
    on: np.ndarray,
    dur: np.ndarray,
    midi: np.ndarray,
    vel: np.ndarray,
    var: np.ndarray | None = None,
    release: float = 0.1,
) -> None:
    """Add one template note per event into ``buf`` (a loop over notes, never over samples).

    Ringing sounds and notes shorter than :data:`SHORT_NOTE` seconds are cut from one cached
    template per pitch (faded out over ``release``); longer sustained notes get a template of their
    own length, rounded to 50 ms so that it is reused.

    Args:
        buf: the part's audio, added to in place.
        sr: its sample rate, Hz.
        kind: the instrument (see :func:`note_template`).
        on: onset of each note, seconds; notes outside ``buf`` are skipped.
        dur: how long each note is held, seconds.
        midi: MIDI pitch of each note.
        vel: gain of each note.
        var: the variant of each note (default: 0 for all).
        release: seconds over which a note that is let go fades out.
    """
    ringing = kind in _RING
    short = int(SHORT_NOTE * sr)
    quantum = max(1, sr // 20)
    for i in range(len(on)):
        a = int(on[i] * sr)
        if a >= len(buf) or a < 0:
            continue
        length = int((dur[i] + release) * sr)
        v = 0 if var is None else int(var[i])
        if ringing or length <= short:
            seg = note_template(kind, int(midi[i]), 0 if ringing else short, sr, v)
            if length < len(seg):  # the note is let go: damp it
                r = min(int(release * sr), length)
                seg = seg[:length].copy()
                seg[length - r :] *= _ramp(r)
        else:
            seg = note_template(kind, int(midi[i]), -(-length // quantum) * quantum, sr, v)
        b = min(len(buf), a + len(seg))
        buf[a:b] += vel[i] * seg[: b - a]
