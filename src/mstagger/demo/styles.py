"""Style recipes: what a song of a style's variant sounds like, and which tag concepts that makes true.

Each variant of a style has a small builder that draws the song's setting (tempo, loudness, room,
mode) and line-up into a draft; :func:`make_recipe` then adds the concepts that the line-up and the
setting make audible (instruments, voice, drums, tempo class, loudness, mood).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mstagger.demo.randomness import maybe, pick

# Tempo classes, heard (note lengths, chord changes) and tagged (fast, slow).
FAST_BPM = 135  # a song at or above this tempo is fast
SLOW_BPM = 85  # a song at or below this tempo is slow
# Tempo ranges a style draws from: (weight, lowest bpm, highest bpm).
_SLOW, _MID, _FAST = (1.0, 58, 80), (1.0, 92, 118), (1.0, 138, 165)
# MIDI octave of each solo voice's register.
_REGISTERS = {"female": 5, "male": 3, "soprano": 5, "tenor": 4}

# Instrument template -> concepts it makes true, with the chance an annotator names each.
INSTRUMENT_TAGS: dict[str, tuple[tuple[str, float], ...]] = {
    "harpsichord": (("harpsichord", 0.9),),
    "violin": (("violin", 0.9),),
    "cello": (("cello", 0.8), ("strings", 0.3)),
    "strings": (("strings", 0.85), ("violin", 0.35)),
    "flute": (("flute", 0.9),),
    "piano": (("piano", 0.9),),
    "nylon": (("guitar", 0.85), ("classical guitar", 0.5), ("acoustic", 0.3)),
    "guitar": (("guitar", 0.85), ("acoustic guitar", 0.5), ("acoustic", 0.4)),
    "power": (("guitar", 0.85), ("electric guitar", 0.45)),
    "bass": (("bass", 0.55),),
    "synth_bass": (("bass", 0.4), ("synth", 0.5)),
    "organ": (("organ", 0.85),),
    "horn": (("horn", 0.75),),
    "harp": (("harp", 0.85),),
    "sitar": (("sitar", 0.9),),
    "tanpura": (("drone", 0.35),),
    "pad": (("synth", 0.6),),
    "lead": (("synth", 0.7),),
    "synth_arp": (("synth", 0.7),),
    "drone": (("drone", 0.7),),
    "tabla": (("percussion", 0.7), ("drums", 0.35)),
}
KIT_TAGS = (("drums", 0.8), ("beat", 0.6))
VOICE_TAGS: dict[str, tuple[tuple[str, float], ...]] = {
    "female": (("female", 0.85), ("vocal", 0.55), ("singer", 0.5)),
    "male": (("male", 0.8), ("vocal", 0.55), ("singer", 0.45)),
    "soprano": (("female", 0.6), ("opera", 0.85), ("female opera", 0.45), ("soprano", 0.45), ("vocal", 0.4)),
    "tenor": (("male", 0.6), ("opera", 0.85), ("male opera", 0.45), ("vocal", 0.4), ("singer", 0.3)),
    "choir": (("choir", 0.85), ("vocal", 0.4), ("chorus", 0.2)),
    "monks": (("chant", 0.85), ("monks", 0.6), ("male", 0.55), ("choir", 0.45), ("vocal", 0.3)),
}


@dataclass(frozen=True)
class Part:
    """One instrument or voice of a song: how it plays (role), with which sound, how loud, how high."""

    role: str  # melody, voice, choir, chords, arp, strum, power, bass, drone, drums, tabla
    instr: str  # note template (violin, sitar, ...), drum kit (rock, techno, ...) or voice type
    gain: float  # RMS level relative to the song's other parts
    octave: int  # MIDI octave of the register (4: the octave of middle C)


@dataclass(frozen=True)
class Recipe:
    """What a song sounds like, and which tag concepts that makes true (with annotation chances)."""

    style: str
    variant: str
    parts: tuple[Part, ...]
    bpm: float
    tonic: int  # pitch class of the key, 0 = C
    mode: str  # a key of arrangement.SCALES
    level: str  # loud, normal or soft
    reverb: float  # wet gain of the room
    concepts: tuple[tuple[str, float], ...]  # (concept, chance an annotator names it on a clip)


@dataclass
class _Draft:
    """A recipe being drawn: a variant's builder sets its sound; :func:`make_recipe` adds the rest."""

    rng: np.random.Generator  # the song's draws: tempo, key, mode, loudness
    band: np.random.Generator  # the line-up's draws, shared by the songs of an artist's variant
    mode: str
    bpm: float = 0.0
    level: str = "normal"
    reverb: float = 0.0
    parts: list[Part] = field(default_factory=list)
    concepts: list[tuple[str, float]] = field(default_factory=list)

    def add(self, role: str, instr: str, gain: float, octave: int) -> None:
        """Add a part to the line-up."""
        self.parts.append(Part(role, instr, gain, octave))

    def maybe_add(self, p: float, role: str, instr: str, gain: float, octave: int) -> None:
        """Add a part to the line-up with chance ``p`` (a band draw)."""
        if maybe(self.band, p):
            self.add(role, instr, gain, octave)

    def either(self, first: str, p: float, second: str) -> str:
        """``first`` with chance ``p`` (a band draw), else ``second``."""
        return first if maybe(self.band, p) else second

    def sing(self, kind: str, gain: float = 1.3) -> None:
        """Add a solo voice (female, male, soprano or tenor) in its register."""
        self.add("voice", kind, gain, _REGISTERS[kind])

    def draw_tempo(self, *choices: tuple[float, float, float]) -> None:
        """Pick a tempo range by weight, then the bpm in it: ``choices`` are (weight, low, high)."""
        w = np.array([c[0] for c in choices])
        lo, hi = choices[int(self.rng.choice(len(choices), p=w / w.sum()))][1:]
        self.bpm = float(round(self.rng.uniform(lo, hi)))

    def maybe_level(self, level: str, p: float) -> None:
        """Make the song ``level`` (loud or soft) with chance ``p``, else normal."""
        self.level = level if maybe(self.rng, p) else "normal"


# --- the builders, one per variant; a style's shared steps are the helpers just above its variants ---
# Every draw stays in its place: the order of the draws is what makes a seed give the same dataset.


def _concert(d: _Draft) -> None:
    """Classical: a concert hall, often soft, at any tempo."""
    d.reverb = 0.25
    d.maybe_level("soft", 0.5)
    d.concepts += [("classical", 0.9)]
    d.draw_tempo(_SLOW, (0.6, 92, 118), (0.8, *_FAST[1:]))


def _chamber(d: _Draft, solo: str) -> None:
    """Classical: the soloist, or else each of a few instruments with its own chance."""
    extra = ("violin", "flute", "cello", "strings", "horn")
    chosen = [x for x in extra if maybe(d.band, 0.4)] if not solo else [solo]
    for instr in chosen:
        if instr in ("violin", "flute", "horn", "piano"):
            d.add("melody", instr, 1.1, 5)
        elif instr == "cello":
            d.add("bass", "cello", 0.9, 3)
        else:
            d.add("chords", "strings", 0.7, 4)


def _baroque(d: _Draft) -> None:
    _concert(d)
    d.concepts += [("baroque", 0.8)]
    d.add("arp", "harpsichord", 1.0, 4)
    _chamber(d, solo="")


def _romantic(d: _Draft) -> None:
    _concert(d)
    d.add("arp", pick(d.band, ("piano", "piano", "nylon")), 1.0, 3)
    _chamber(d, solo=str(d.band.choice(("violin", "flute", "cello", "piano", ""))))


def _opera(d: _Draft, singer: str) -> None:
    """Opera: a soprano or tenor over strings, with a keyboard or flute."""
    d.reverb = 0.3
    d.draw_tempo(_SLOW, _MID)
    d.maybe_level("loud", 0.35)
    d.concepts += [("classical", 0.7), ("orchestra", 0.6)]
    d.sing(singer, 1.5)
    d.add("chords", "strings", 0.8, 4)
    d.maybe_add(0.5, "bass", "cello", 0.6, 3)
    d.maybe_add(0.4, "chords", "horn", 0.5, 3)
    accompaniment = pick(d.band, ("piano", "harpsichord", "flute"))
    if accompaniment == "flute":
        d.add("melody", "flute", 0.5, 5)
    else:
        d.add("arp", accompaniment, 0.6, 4)


def _church(d: _Draft) -> None:
    """Choral: a reverberant church, slow and mostly soft."""
    d.reverb = 0.45
    d.draw_tempo((1.0, 54, 76))
    d.maybe_level("soft", 0.6)


def _choir(d: _Draft) -> None:
    _church(d)
    d.concepts += [("classical", 0.6)]
    d.add("choir", "choir", 1.3, 4)
    d.maybe_add(0.6, "chords", "organ", 0.6, 3)


def _monks(d: _Draft) -> None:
    _church(d)
    d.mode = "dorian"
    d.concepts += [("medieval", 0.6)]
    d.add("choir", "monks", 1.3, 3)
    d.maybe_add(0.4, "drone", "drone", 0.7, 2)


def _club(d: _Draft) -> None:
    """Techno: often loud, on a synth bass."""
    d.maybe_level("loud", 0.6)
    d.concepts += [("electronic", 0.9), ("dance", 0.6)]
    d.add("bass", "synth_bass", 0.9, 2)


def _club_extras(d: _Draft) -> None:
    """Techno: an arpeggiator, the house piano, a singer, each by chance."""
    d.maybe_add(0.6, "arp", "synth_arp", 0.7, 4)
    d.maybe_add(0.3, "strum", "piano", 0.6, 4)
    if maybe(d.band, 0.35):
        d.sing(d.either("female", 0.7, "male"), 1.1)


def _techno(d: _Draft) -> None:
    _club(d)
    d.draw_tempo((1.0, 124, 148))
    d.concepts += [("techno", 0.9)]
    d.add("drums", "techno", 1.2, 0)
    d.maybe_add(0.6, "melody", "lead", 0.7, 5)
    _club_extras(d)


def _trance(d: _Draft) -> None:
    _club(d)
    d.draw_tempo((1.0, 132, 145))
    d.reverb = 0.15
    d.concepts += [("trance", 0.85), ("techno", 0.4)]
    d.add("drums", "trance", 1.0, 0)
    d.add("chords", "pad", 0.8, 4)
    _club_extras(d)


def _guitar_band(d: _Draft) -> None:
    """Rock: power chords and a bass guitar."""
    d.concepts += [("rock", 0.9)]
    d.add("power", "power", 1.0, 2)
    d.add("bass", "bass", 0.7, 2)


def _metal(d: _Draft) -> None:
    _guitar_band(d)
    d.mode = pick(d.rng, ("minor", "phrygian"))
    d.draw_tempo((1.0, 150, 185))
    d.level = "loud"
    d.concepts += [("heavy", 0.85), ("hard", 0.6)]
    d.add("drums", "metal", 1.1, 0)
    if maybe(d.band, 0.75):
        d.sing(d.either("male", 0.65, "female"), 1.2)


def _rock(d: _Draft) -> None:
    _guitar_band(d)
    d.draw_tempo((1.0, 100, 145))
    d.maybe_level("loud", 0.6)
    d.concepts += [("hard", 0.3)]
    d.add("drums", "rock", 1.0, 0)
    if maybe(d.band, 0.3):
        d.add("chords", pick(d.band, ("organ", "pad")), 0.5, 4)
    elif maybe(d.band, 0.3):
        d.add("arp", "piano", 0.6, 4)
    if maybe(d.band, 0.75):
        d.sing(d.either("male", 0.65, "female"), 1.2)


def _ambience(d: _Draft) -> None:
    """Ambient: a long reverb, slow and mostly soft, on a synth pad."""
    d.reverb = 0.45
    d.draw_tempo((1.0, 56, 76))
    d.maybe_level("soft", 0.8)
    d.concepts += [("ambient", 0.85)]
    d.add("chords", "pad", 0.8, 4)


def _new_age(d: _Draft) -> None:
    _ambience(d)
    d.mode = pick(d.rng, ("major", "lydian"))
    d.concepts += [("new age", 0.8)]
    d.add("arp", pick(d.band, ("harp", "piano", "harp")), 0.8, 4)
    d.maybe_add(0.5, "melody", "flute", 0.8, 5)
    if maybe(d.band, 0.3):
        d.sing("female", 0.9)


def _space(d: _Draft) -> None:
    _ambience(d)
    d.mode = pick(d.rng, ("minor", "phrygian"))
    d.concepts += [("space", 0.75), ("electronic", 0.4), ("strange", 0.35)]
    d.add("drone", "drone", 1.0, 2)
    d.maybe_add(0.5, "melody", "lead", 0.5, 5)
    if maybe(d.band, 0.3):
        d.sing("female", 0.9)


def _raga_setting(d: _Draft) -> None:
    """Indian: a raga's mode over the tanpura's drone."""
    d.reverb = 0.15
    d.mode = pick(d.rng, ("bhairav", "yaman", "kafi"))
    d.concepts += [("india", 0.9), ("eastern", 0.5), ("world", 0.45)]
    d.add("drone", "tanpura", 0.6, 3)


def _tabla_and_level(d: _Draft) -> None:
    """Indian: mostly with tabla; sometimes soft."""
    d.maybe_add(0.75, "tabla", "tabla", 0.9, 5)
    d.maybe_level("soft", 0.3)


def _raga(d: _Draft) -> None:
    _raga_setting(d)
    d.draw_tempo((0.5, 60, 80), (0.5, 140, 168))
    d.add("melody", pick(d.band, ("sitar", "sitar", "flute", "violin")), 1.2, 4)
    _tabla_and_level(d)


def _indian_vocal(d: _Draft) -> None:
    _raga_setting(d)
    d.draw_tempo((0.5, 66, 84), (0.5, 92, 112))
    d.sing(d.either("female", 0.6, "male"), 1.4)
    d.maybe_add(0.6, "arp", "sitar", 0.6, 4)
    _tabla_and_level(d)


def _pop(d: _Draft) -> None:
    d.draw_tempo((1.0, 96, 128), (0.5, 136, 150))
    d.maybe_level("loud", 0.35)
    d.concepts += [("pop", 0.9), ("dance", 0.25)]
    d.add("drums", "pop", 1.0, 0)
    d.add("bass", "bass", 0.7, 2)
    d.add(d.either("strum", 0.5, "arp"), pick(d.band, ("piano", "guitar")), 0.7, 4)
    if maybe(d.band, 0.35):
        d.add("chords", pick(d.band, ("pad", "strings")), 0.5, 4)
    if maybe(d.band, 0.85):
        d.sing(d.either("female", 0.55, "male"))


def _folk(d: _Draft) -> None:
    d.draw_tempo((1.0, 76, 132))
    d.maybe_level("soft", 0.4)
    d.concepts += [("folk", 0.8), ("country", 0.6)]
    d.add("strum", "guitar", 1.0, 3)
    lead = pick(d.band, ("violin", "flute", "harp", ""))
    if lead:
        d.add("melody", lead, 0.8, 5)
    d.maybe_add(0.5, "bass", "bass", 0.6, 2)
    d.maybe_add(0.3, "drums", "pop", 0.6, 0)
    if maybe(d.band, 0.85):
        d.sing(d.either("female", 0.55, "male"))


# The builder of each (style, variant). The order is part of what a seed means: artists are dealt
# styles, and albums variants, by position here.
_BUILDERS: dict[tuple[str, str], Callable[[_Draft], None]] = {
    ("classical", "baroque"): _baroque,
    ("classical", "romantic"): _romantic,
    ("opera", "soprano"): functools.partial(_opera, singer="soprano"),
    ("opera", "tenor"): functools.partial(_opera, singer="tenor"),
    ("choral", "choir"): _choir,
    ("choral", "monks"): _monks,
    ("techno", "techno"): _techno,
    ("techno", "trance"): _trance,
    ("rock", "metal"): _metal,
    ("rock", "rock"): _rock,
    ("ambient", "new age"): _new_age,
    ("ambient", "space"): _space,
    ("indian", "raga"): _raga,
    ("indian", "vocal"): _indian_vocal,
    ("pop", "pop"): _pop,
    ("pop", "folk"): _folk,
}
STYLES = tuple(dict.fromkeys(style for style, _ in _BUILDERS))
VARIANTS = {style: tuple(v for s, v in _BUILDERS if s == style) for style in STYLES}


def _singer(parts: list[Part]) -> str:
    """The voice type of the song's singer or choir; ``""`` for an instrumental."""
    return next((p.instr for p in parts if p.role in ("voice", "choir")), "")


def _line_up_concepts(parts: list[Part], style: str) -> list[tuple[str, float]]:
    """What the line-up makes true: each instrument, voice and kit, and what is absent."""
    concepts: list[tuple[str, float]] = []
    for p in parts:
        if p.role == "drums":
            concepts += KIT_TAGS
        elif p.role in ("voice", "choir"):
            concepts += VOICE_TAGS[p.instr]
        else:
            concepts += INSTRUMENT_TAGS[p.instr]
    instruments = {p.instr for p in parts}
    has_drums = any(p.role in ("drums", "tabla") for p in parts)
    if not _singer(parts):
        concepts.append(("no vocals", 0.75))
    if not has_drums:
        concepts.append(("no beat", 0.75))
    # Negative instrument tags: rare, as in MTAT (annotators name what they hear, not what is absent).
    if "piano" not in instruments and style in ("classical", "pop"):
        concepts.append(("no piano", 0.1))
    if not instruments & {"guitar", "nylon", "power"} and style in ("pop", "rock"):
        concepts.append(("no guitar", 0.15))
    if not instruments & {"violin", "strings"} and style in ("classical", "opera"):
        concepts.append(("no violin", 0.1))
    if not has_drums and style in ("classical", "opera"):
        concepts.append(("not rock", 0.15))
    if has_drums and style in ("techno", "rock"):
        concepts.append(("not classical", 0.15))
    if style == "choral":
        concepts.append(("not opera", 0.1))
    return concepts


def _setting_concepts(d: _Draft) -> list[tuple[str, float]]:
    """What tempo, loudness, room and mode make true, and a lone singer's "solo"."""
    concepts: list[tuple[str, float]] = []
    has_drums = any(p.role in ("drums", "tabla") for p in d.parts)
    if d.bpm >= FAST_BPM:
        concepts.append(("fast", 0.75))
    elif d.bpm <= SLOW_BPM:
        concepts.append(("slow", 0.75))
    if d.level == "loud":
        concepts.append(("loud", 0.7))
    elif d.level == "soft":
        concepts += [("quiet", 0.65), ("soft", 0.5)]
    if d.reverb >= 0.4:
        concepts.append(("airy" if d.mode in ("major", "lydian") else "eerie", 0.3))
    if d.mode in ("minor", "phrygian", "dorian") and d.bpm <= SLOW_BPM:
        concepts += [("sad", 0.3), ("dark", 0.35)]
    elif d.mode in ("major", "lydian") and d.bpm <= SLOW_BPM and d.level == "soft":
        concepts += [("calm", 0.45), ("mellow", 0.3)]
    elif d.mode == "major" and d.bpm >= 110 and has_drums:
        concepts += [("upbeat", 0.3), ("happy", 0.25)]
    if _singer(d.parts) in ("female", "male") and len(d.parts) <= 3:
        concepts.append(("solo", 0.1))
    return concepts


def make_recipe(
    style: str, variant: str, rng: np.random.Generator, band: np.random.Generator | None = None
) -> Recipe:
    """Draw one song's recipe from a style's variant: instruments, tempo, key, loudness, voice.

    Instruments and voices come from one shared pool (a piano sounds the same in a pop song and a
    sonata; a female singer the same in folk, rock and trance), each style drawing them with its own
    chances, so that every instrument tag is heard in several styles and is learnt as a sound, not as
    an artist. Every concept is audible: instruments, voice type, drums, tempo (fast: >= 135 bpm,
    slow: <= 85 bpm), loudness, reverb, mode (sad and dark songs are minor and slow).

    Args:
        style: one of :data:`STYLES`.
        variant: one of ``VARIANTS[style]``.
        rng: the random source of the song: tempo, key, mode and loudness.
        band: the random source of the ensemble: which instruments and voice play (default: ``rng``).
            Songs of one artist's variant share it, as a band keeps its line-up.

    Returns:
        The :class:`Recipe`, with the tag concepts its sound makes true.

    Raises:
        ValueError: ``(style, variant)`` is not a known variant of a style.
    """
    build = _BUILDERS.get((style, variant))
    if build is None:
        raise ValueError(f"unknown demo style {style!r} with variant {variant!r}")
    draft = _Draft(rng, rng if band is None else band, mode=pick(rng, ("major", "minor")))
    build(draft)
    concepts = [*draft.concepts, *_line_up_concepts(draft.parts, style), *_setting_concepts(draft)]
    # A concept named twice keeps its strongest chance.
    best: dict[str, float] = {}
    for concept, p in concepts:
        best[concept] = max(best.get(concept, 0.0), p)
    return Recipe(
        style=style,
        variant=variant,
        parts=tuple(draft.parts),
        bpm=draft.bpm,
        tonic=int(rng.integers(12)),
        mode=draft.mode,
        level=draft.level,
        reverb=draft.reverb,
        concepts=tuple(best.items()),
    )
