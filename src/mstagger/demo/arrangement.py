"""Arrangement: a song's score, the parts its recipe names played into it, the room and the master."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import signal

from mstagger.demo.catalogue import Song
from mstagger.demo.instruments import place_notes
from mstagger.demo.randomness import rng_for
from mstagger.demo.styles import FAST_BPM, SLOW_BPM, Part

SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
    "bhairav": (0, 1, 4, 5, 7, 8, 11),
    "yaman": (0, 2, 4, 6, 7, 9, 11),
    "kafi": (0, 2, 3, 5, 7, 9, 10),
}
PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 4), (0, 3, 6, 4)),
    "modal": ((0, 0, 6, 0), (0, 6, 5, 6), (0, 0, 0, 0)),
}
LEVELS_DB = {"loud": -11.0, "normal": -17.0, "soft": -27.0}  # RMS of the finished song, dBFS


@dataclass(frozen=True)
class _Score:
    """The musical grid of a song: tempo, key, scale and chord progression."""

    seconds: float
    bpm: float
    tonic: int
    scale: tuple[int, ...]
    progression: tuple[int, ...]
    bars_per_chord: int

    @property
    def beat(self) -> float:
        return 60.0 / self.bpm

    @property
    def bar(self) -> float:
        return 4 * self.beat

    @property
    def n_bars(self) -> int:
        return int(np.ceil(self.seconds / self.bar)) + 1

    @property
    def fast(self) -> bool:
        return self.bpm >= FAST_BPM

    @property
    def slow(self) -> bool:
        return self.bpm <= SLOW_BPM

    def chord(self, t: np.ndarray) -> np.ndarray:
        """Scale degree of the chord root sounding at times ``t`` (seconds)."""
        slot = (np.asarray(t) / self.bar).astype(int) // self.bars_per_chord
        return np.asarray(self.progression)[slot % len(self.progression)]

    def midi(self, degree: np.ndarray, octave: int) -> np.ndarray:
        """MIDI pitch of scale degrees counted from the tonic of ``octave``."""
        degree = np.asarray(degree)
        m = len(self.scale)
        return 12 * (octave + 1) + self.tonic + 12 * (degree // m) + np.asarray(self.scale)[degree % m]


def _fold(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Reflect a random walk into [lo, hi] (a triangle fold, so it stays a walk)."""
    w = hi - lo
    m = np.mod(x - lo, 2 * w)
    return lo + np.where(m <= w, m, 2 * w - m)


def _melody(score: _Score, rng: np.random.Generator, palette: tuple[float, ...], rest: float, phrases: bool):
    """A random-walk melody on the scale, landing on chord tones on the beat. Returns events."""
    beats = np.asarray(palette) * score.beat
    count = int(score.seconds / beats.mean() * 1.3) + 8
    dur = rng.choice(beats, count)
    on = np.concatenate([[0.0], np.cumsum(dur)[:-1]])
    degree = _fold(np.cumsum(rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3], count)) + 4, 0, 10)
    on_beat = np.isclose(on / score.beat, np.round(on / score.beat), atol=1e-6)
    chord = score.chord(on)
    snap = np.array([0, -1, 0, -1, 0, -1, 1, 0])[np.mod(degree - chord, len(score.scale))]
    degree = np.where(on_beat, degree + snap, degree)
    keep = (on < score.seconds) & (rng.random(count) >= rest)
    if phrases:  # singers breathe: the second half of every fourth bar is silent
        pos = on / score.bar
        keep &= ~((pos.astype(int) % 4 == 3) & (pos % 1 >= 0.5))
    vel = rng.uniform(0.7, 1.0, count) * np.where(on_beat, 1.0, 0.85)
    return on[keep], dur[keep] * 0.95, degree[keep], vel[keep]


def _grid(score: _Score, step_beats: float) -> np.ndarray:
    return np.arange(0, score.seconds, step_beats * score.beat)


def _note_lengths(score: _Score, part: Part) -> tuple[float, ...]:
    """Beats a melody note may last. They follow the tempo class, so that slow and fast are heard."""
    palette = (0.5, 1, 1, 2) if not score.fast else (0.25, 0.5, 0.5, 1)
    if score.slow:
        palette = (2, 2, 3, 4) if part.role == "voice" else (1, 1, 2, 3)
    elif part.instr == "sitar" and not score.fast:
        palette = (0.5, 0.5, 1, 1, 2)
    return palette


def _played_line(buf: np.ndarray, score: _Score, part: Part, rng: np.random.Generator, sr: int) -> None:
    """A solo instrument's melody; a sitar bends some of its notes (meend)."""
    on, dur, deg, vel = _melody(score, rng, _note_lengths(score, part), 0.08, phrases=False)
    midi = score.midi(deg, part.octave)
    bends = (rng.random(len(on)) < 0.3).astype(int) if part.instr == "sitar" else None
    place_notes(buf, sr, part.instr, on, dur, midi, vel, bends)


def _sung_line(buf: np.ndarray, score: _Score, part: Part, rng: np.random.Generator, sr: int) -> None:
    """A singer's melody in breathed phrases, each note on one of five vowels."""
    on, dur, deg, vel = _melody(score, rng, _note_lengths(score, part), 0.08, phrases=True)
    midi = score.midi(deg, part.octave)
    place_notes(buf, sr, f"voice_{part.instr}", on, dur, midi, vel, rng.integers(0, 5, len(on)))


def _choir(buf: np.ndarray, score: _Score, part: Part, rng: np.random.Generator, sr: int) -> None:
    """A choir in four voices on the chords, or monks chanting in unison around the tonic."""
    beats = np.asarray((2, 2, 4) if part.instr == "choir" else (1, 2, 2, 3)) * score.beat
    dur = rng.choice(beats, int(score.seconds / beats.min()) + 4)
    on = np.concatenate([[0.0], np.cumsum(dur)[:-1]])
    keep = on < score.seconds
    on, dur = on[keep], dur[keep]
    vowel = rng.integers(0, 5, len(on))
    chord = score.chord(on)
    if part.instr == "choir":  # soprano, alto, tenor, bass on the chord tones
        voices = (("female", 2, 5), ("female", 0, 5), ("male", 4, 3), ("male", 0, 3))
    else:  # monks: a chant in unison and at the octave, wandering around the tonic
        walk = _fold(np.cumsum(rng.choice([-1, 0, 1], len(on))) + 2, 0, 5)
        chord = walk
        voices = (("monks", 0, 3), ("monks", 0, 3), ("monks", 0, 2))
    for j, (kind, offset, octave) in enumerate(voices):
        midi = score.midi(chord + offset, octave)
        vel = rng.uniform(0.8, 1.0, len(on))
        place_notes(buf, sr, f"voice_{kind}", on + 0.015 * j, dur, midi, vel, vowel)


def _chords(buf: np.ndarray, score: _Score, part: Part, rng: np.random.Generator, sr: int) -> None:
    """Sustained triads, a chord a bar (two in slow songs); no random draws."""
    per = score.bar * (2 if score.slow else 1)
    on = np.arange(0, score.seconds, per)
    chord = score.chord(on)
    dur, vel = np.full(len(on), per * 0.98), np.full(len(on), 0.8)
    for offset in (0, 2, 4):
        place_notes(buf, sr, part.instr, on, dur, score.midi(chord + offset, part.octave), vel, None, 0.3)


def _arpeggio(buf: np.ndarray, score: _Score, part: Part, rng: np.random.Generator, sr: int) -> None:
    """The chord's tones one after another in a repeating pattern, accented on the beat."""
    step = 0.25 if score.fast or part.instr == "synth_arp" else 0.5
    if score.slow:
        step = 1.0
    on = _grid(score, step)
    pattern = np.array((0, 2, 4, 7, 4, 2) if rng.random() < 0.5 else (0, 4, 2, 4, 7, 4, 2, 4))
    degree = score.chord(on) + pattern[np.arange(len(on)) % len(pattern)]
    vel = rng.uniform(0.65, 0.9, len(on)) * np.where(np.arange(len(on)) % 4 == 0, 1.0, 0.8)
    dur = np.full(len(on), 2 * step * score.beat)
    place_notes(buf, sr, part.instr, on, dur, score.midi(degree, part.octave), vel)


def _strum(buf: np.ndarray, score: _Score, part: Part, rng: np.random.Generator, sr: int) -> None:
    """Strummed chords in a rhythm pattern: down strokes low string first, up strokes high first."""
    pattern = np.array((0, 1, 1.5, 2.5, 3) if rng.random() < 0.5 else (0, 1, 2, 2.5, 3, 3.5))
    bars = np.arange(score.n_bars)
    starts = (bars[:, None] * 4 + pattern[None, :]).ravel() * score.beat
    starts = starts[starts < score.seconds]
    up = np.isclose(starts / score.beat % 1, 0.5)
    chord = score.chord(starts)
    dur = np.full(len(starts), 0.9 * score.beat)
    for string, offset in enumerate((0, 4, 7, 9, 11)):
        delay = np.where(up, 4 - string, string) * 0.012
        vel = rng.uniform(0.6, 0.85, len(starts)) * np.where(up, 0.7, 1.0)
        place_notes(buf, sr, part.instr, starts + delay, dur, score.midi(chord + offset, part.octave), vel)


def _power_chords(buf: np.ndarray, score: _Score, part: Part, rng: np.random.Generator, sr: int) -> None:
    """Eighths (sixteenths when fast) of power chords, mostly let ring on the beat, else palm-muted."""
    step = 0.25 if score.fast else 0.5
    on = _grid(score, step)
    opened = np.isclose(on / score.beat % 2, 0) & (rng.random(len(on)) < 0.7)
    midi = score.midi(score.chord(on), part.octave)
    vel = rng.uniform(0.8, 1.0, len(on))
    dur = np.full(len(on), step * score.beat)
    place_notes(buf, sr, "power", on[opened], dur[opened] * 2, midi[opened], vel[opened])
    place_notes(buf, sr, "power_mute", on[~opened], dur[~opened], midi[~opened], vel[~opened])


def _walking_cello(buf: np.ndarray, score: _Score, part: Part, rng: np.random.Generator, sr: int) -> None:
    """A cello walking root, third, fifth, third on the beat (on eighths when fast)."""
    on = _grid(score, 1.0 if not score.fast else 0.5)
    walk = np.array((0, 4, 2, 4))[np.arange(len(on)) % 4]
    midi = score.midi(score.chord(on) + walk, 3)
    vel = rng.uniform(0.7, 0.9, len(on))
    place_notes(buf, sr, "cello", on, np.full(len(on), score.beat * 0.9), midi, vel)


def _synth_bass(buf: np.ndarray, score: _Score, part: Part, rng: np.random.Generator, sr: int) -> None:
    """A sequenced synth bass on sixteenths, always on the off-beat, jumping to the fifth or second."""
    on = _grid(score, 0.25)
    keep = (rng.random(len(on)) < 0.7) | np.isclose(on / score.beat % 1, 0.5)
    on = on[keep]
    jump = rng.choice([0, 0, 0, 7, 2], len(on))
    midi = score.midi(score.chord(on) + jump, part.octave)
    vel = rng.uniform(0.7, 1.0, len(on))
    place_notes(buf, sr, "synth_bass", on, np.full(len(on), 0.2 * score.beat), midi, vel)


def _bass_guitar(buf: np.ndarray, score: _Score, part: Part, rng: np.random.Generator, sr: int) -> None:
    """A bass guitar on the chord root in eighths (quarters when slow), now and then the fifth or octave."""
    on = _grid(score, 1.0 if score.slow else 0.5)
    jump = np.where(rng.random(len(on)) < 0.2, 4, 0) + np.where(rng.random(len(on)) < 0.1, 7, 0)
    midi = score.midi(score.chord(on) + jump, part.octave)
    vel = rng.uniform(0.75, 1.0, len(on))
    place_notes(buf, sr, "bass", on, np.full(len(on), 0.45 * score.beat), midi, vel)


def _tanpura(buf: np.ndarray, score: _Score, part: Part, rng: np.random.Generator, sr: int) -> None:
    """Pa, Sa', Sa', Sa: the tanpura's endless cycle, at its own pace."""
    period = rng.uniform(0.55, 0.7)
    on = np.arange(0, score.seconds, period)
    cycle = np.array((-5, 12, 12, 0))[np.arange(len(on)) % 4]
    midi = 12 * (part.octave + 1) + score.tonic + cycle
    vel = rng.uniform(0.7, 0.9, len(on))
    place_notes(buf, sr, "tanpura", on, np.full(len(on), 3.0), midi, vel)


def _drone(buf: np.ndarray, score: _Score, part: Part, rng: np.random.Generator, sr: int) -> None:
    """Overlapping long tonic and fifth, two per four bars; no random draws."""
    per = 4 * score.bar
    on = np.arange(-0.5 * per, score.seconds, per / 2)
    on = np.clip(on, 0, None)
    midi = 12 * (part.octave + 1) + score.tonic + np.array((0, 7))[np.arange(len(on)) % 2]
    place_notes(buf, sr, "drone", on, np.full(len(on), per), midi, np.full(len(on), 0.9), None, 1.5)


# 16 steps per bar; "x" hits, "o" a softer hit.
_KITS = {
    "rock": {"kick": "x.....x.x.......", "snare": "....x.......x...", "hat": "x.o.x.o.x.o.x.o."},
    "metal": {"kick": "xxxxxxxxxxxxxxxx", "snare": "....x.......x...", "hat": "x.o.x.o.x.o.x.o."},
    "pop": {"kick": "x.....x...x.....", "snare": "....x.......x...", "hat": "x.oox.o.x.oox.o."},
    "techno": {
        "kick_techno": "x...x...x...x...",
        "clap": "....x.......x...",
        "hat": "oooooooooooooooo",
        "open_hat": "..x...x...x...x.",
    },
    "trance": {"kick_techno": "x...x...x...x...", "clap": "....x.......x...", "open_hat": "..x...x...x...x."},
}


def _drum_kit(buf: np.ndarray, score: _Score, part: Part, rng: np.random.Generator, sr: int) -> None:
    """A drum kit (``part.instr``) playing its pattern, with fills every fourth bar and crashes."""
    kit = part.instr
    sixteenth = score.beat / 4
    steps = np.arange(score.n_bars * 16)
    bar = steps // 16
    fill = (bar % 4 == 3) & (steps % 16 >= 12) & (kit in ("rock", "metal", "pop"))
    jitter = 0.0 if kit in ("techno", "trance") else 0.004
    for sound, pattern in _KITS[kit].items():
        code = np.array(list(pattern))[steps % 16]
        hit = code != "."
        if sound == "snare":
            hit |= fill & (rng.random(len(steps)) < 0.8)
        elif sound != "kick":
            hit &= ~fill
        on = steps[hit] * sixteenth + rng.normal(0, jitter, hit.sum()) if jitter else steps[hit] * sixteenth
        vel = np.where(code[hit] == "o", 0.55, 1.0) * rng.uniform(0.85, 1.0, hit.sum())
        one, unpitched = np.full(len(on), 1.0), np.zeros(len(on))
        place_notes(buf, sr, sound, np.clip(on, 0, None), one, unpitched, vel, rng.integers(0, 3, len(on)))
    every = 16 if kit in ("techno", "trance") else 8
    crash = np.arange(0, score.n_bars, every) * score.bar
    n = len(crash)
    place_notes(buf, sr, "crash", crash, np.full(n, 2.0), np.zeros(n), np.full(n, 0.7))


# Teental, 16 beats: a bol per beat; dha = na + ge, dhin = tin + ge, ta = na.
_TEENTAL = (
    "dha", "dhin", "dhin", "dha", "dha", "dhin", "dhin", "dha",
    "dha", "tin", "tin", "ta", "ta", "dhin", "dhin", "dha",
)  # fmt: skip


def _tabla(buf: np.ndarray, score: _Score, part: Part, rng: np.random.Generator, sr: int) -> None:
    """Teental on the tabla, tuned to the tonic, with soft off-beat ka strokes."""
    midi = 12 * (part.octave + 1) + score.tonic
    beats = np.arange(0, score.seconds, score.beat)
    bols = np.array(_TEENTAL)[np.arange(len(beats)) % 16]
    vel = rng.uniform(0.75, 1.0, len(beats)) * np.where(np.arange(len(beats)) % 16 == 0, 1.0, 0.85)
    strokes = {
        "tabla_na": np.isin(bols, ("dha", "ta")),
        "tabla_tin": np.isin(bols, ("dhin", "tin")),
        "tabla_ge": np.isin(bols, ("dha", "dhin")),
    }
    for sound, hit in strokes.items():
        n = int(hit.sum())
        place_notes(
            buf, sr, sound, beats[hit], np.full(n, 1.0), np.full(n, midi), vel[hit], rng.integers(0, 3, n)
        )
    ka = beats + score.beat / 2
    ka = ka[rng.random(len(ka)) < 0.35]
    n = len(ka)
    place_notes(buf, sr, "tabla_ka", ka, np.full(n, 0.1), np.zeros(n), np.full(n, 0.5), rng.integers(0, 3, n))


_Renderer = Callable[[np.ndarray, _Score, Part, np.random.Generator, int], None]
# Who plays a part: looked up by (role, instrument) where an instrument plays its role its own way,
# else by role.
_RENDERERS: dict[str | tuple[str, str], _Renderer] = {
    "melody": _played_line,
    "voice": _sung_line,
    "choir": _choir,
    "chords": _chords,
    "arp": _arpeggio,
    "strum": _strum,
    "power": _power_chords,
    ("bass", "cello"): _walking_cello,
    ("bass", "synth_bass"): _synth_bass,
    "bass": _bass_guitar,
    ("drone", "tanpura"): _tanpura,
    "drone": _drone,
    "drums": _drum_kit,
    "tabla": _tabla,
}


def _render_part(buf: np.ndarray, score: _Score, part: Part, rng: np.random.Generator, sr: int) -> None:
    """Write one part of the song into ``buf``."""
    render = _RENDERERS.get((part.role, part.instr)) or _RENDERERS.get(part.role)
    if render is None:
        raise ValueError(f"unknown part role {part.role!r}")
    render(buf, score, part, rng, sr)


@functools.lru_cache(maxsize=8)
def _room(sr: int, t60: float) -> np.ndarray:
    """Impulse response of a room: exponentially decaying noise with a few early reflections."""
    rng = rng_for("room", sr, t60)
    n = int(t60 * sr)
    t = np.arange(n) / sr
    ir = rng.normal(0, 1, n) * np.exp(-6.9 * t / t60)
    ir = signal.lfilter([0.4], [1, -0.6], ir)  # air absorbs the highs
    ir[: int(0.01 * sr)] = 0.0
    ir /= np.sqrt((ir**2).sum())
    return ir.astype(np.float32)


def _song_score(song: Song, rng: np.random.Generator) -> _Score:
    r = song.recipe
    scale = SCALES[r.mode]
    if r.style in ("indian", "choral") or r.mode in ("phrygian", "dorian"):
        progressions = PROGRESSIONS["modal"]
    else:
        progressions = PROGRESSIONS["minor" if scale[2] == 3 else "major"]
    return _Score(
        seconds=song.seconds,
        bpm=r.bpm,
        tonic=r.tonic,
        scale=scale,
        progression=progressions[int(rng.integers(len(progressions)))],
        bars_per_chord=2 if r.bpm <= SLOW_BPM or r.style == "ambient" else 1,
    )


def synthesise_song(song: Song, sample_rate: int, seed: int) -> np.ndarray:
    """Synthesise a whole song continuously from its recipe.

    Args:
        song: the song, from :func:`plan_catalogue`.
        sample_rate: Hz of the result.
        seed: the dataset seed (with the song's index it fixes every random choice of the song).

    Returns:
        Mono float32 audio of ``song.seconds`` seconds, RMS set by the recipe's loudness, |x| < 1.
    """
    rng = np.random.default_rng([seed, 3, song.index])
    sr = sample_rate
    n = round(song.seconds * sr)
    score = _song_score(song, rng)
    mix = np.zeros(n, np.float32)
    buf = np.empty(n, np.float32)
    for part in song.recipe.parts:
        buf[:] = 0.0
        _render_part(buf, score, part, rng, sr)
        rms = float(np.sqrt(np.mean(buf**2)))
        if rms > 0:
            mix += (part.gain / rms) * buf
    if song.recipe.reverb > 0:
        t60 = 2.0 if song.recipe.reverb >= 0.4 else 1.2
        mix += song.recipe.reverb * 3 * signal.oaconvolve(mix, _room(sr, t60))[:n]
    # Mastering differs from song to song: a random tilt of the spectrum (low and high shelves of
    # +-6 dB), so that tags cannot simply be read off a song's average spectrum.
    for cutoff, kind in ((250.0, "low"), (2000.0, "high")):
        shelf = signal.lfilter(*signal.butter(1, cutoff, kind, fs=sr), mix)
        mix += (10 ** (rng.uniform(-6.0, 6.0) / 20) - 1) * shelf.astype(np.float32)
    level_db = LEVELS_DB[song.recipe.level] + rng.uniform(-2.0, 2.0)
    mix *= 10 ** (level_db / 20) / (float(np.sqrt(np.mean(mix**2))) + 1e-12)
    if song.recipe.level == "loud":  # loud music is compressed: a soft clip, then the level again
        mix = np.tanh(1.5 * mix) / 1.5
        mix *= 10 ** (level_db / 20) / (float(np.sqrt(np.mean(mix**2))) + 1e-12)
    # A soft-knee limiter on the rare transient peaks above 0.5, so the level stays as set.
    over = np.abs(mix) > 0.5
    mix[over] = np.sign(mix[over]) * (0.5 + 0.49 * np.tanh((np.abs(mix[over]) - 0.5) / 0.49))
    return mix.astype(np.float32)
