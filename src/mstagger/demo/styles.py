"""Style recipes: what a song of a style's variant sounds like, and which tag concepts that makes true."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mstagger.demo.randomness import maybe, pick

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
    mode: str  # a key of SCALES
    level: str  # loud, normal or soft
    reverb: float  # wet gain of the room
    concepts: tuple[tuple[str, float], ...]  # (concept, chance an annotator names it on a clip)


STYLES = ("classical", "opera", "choral", "techno", "rock", "ambient", "indian", "pop")
VARIANTS = {
    "classical": ("baroque", "romantic"),
    "opera": ("soprano", "tenor"),
    "choral": ("choir", "monks"),
    "techno": ("techno", "trance"),
    "rock": ("metal", "rock"),
    "ambient": ("new age", "space"),
    "indian": ("raga", "vocal"),
    "pop": ("pop", "folk"),
}


def _tempo(rng: np.random.Generator, choices: tuple[tuple[float, float, float], ...]) -> float:
    """Pick a tempo range by weight, then a bpm in it: choices are (weight, low, high)."""
    w = np.array([c[0] for c in choices])
    lo, hi = choices[int(rng.choice(len(choices), p=w / w.sum()))][1:]
    return float(round(rng.uniform(lo, hi)))


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
    """
    band = rng if band is None else band
    parts: list[Part] = []
    concepts: list[tuple[str, float]] = []
    mode = pick(rng, ("major", "minor"))
    level = "normal"
    reverb = 0.0
    voice = ""
    slow, mid, fast = (1.0, 58, 80), (1.0, 92, 118), (1.0, 138, 165)

    def add(role: str, instr: str, gain: float, octave: int) -> None:
        parts.append(Part(role, instr, gain, octave))

    def sing(kind: str, gain: float = 1.3) -> None:
        nonlocal voice
        voice = kind
        add("voice", kind, gain, {"female": 5, "male": 3, "soprano": 5, "tenor": 4}[kind])

    if style == "classical":
        reverb = 0.25
        level = "soft" if maybe(rng, 0.5) else "normal"
        concepts += [("classical", 0.9)]
        bpm = _tempo(rng, (slow, (0.6, 92, 118), (0.8, *fast[1:])))
        if variant == "baroque":
            concepts += [("baroque", 0.8)]
            add("arp", "harpsichord", 1.0, 4)
        else:
            add("arp", pick(band, ("piano", "piano", "nylon")), 1.0, 3)
        solo = band.choice(("violin", "flute", "cello", "piano", "")) if variant == "romantic" else ""
        extra = ("violin", "flute", "cello", "strings", "horn")
        chosen = [x for x in extra if maybe(band, 0.4)] if not solo else [str(solo)]
        for instr in chosen:
            if instr in ("violin", "flute", "horn", "piano"):
                add("melody", instr, 1.1, 5)
            elif instr == "cello":
                add("bass", "cello", 0.9, 3)
            else:
                add("chords", "strings", 0.7, 4)
    elif style == "opera":
        reverb = 0.3
        bpm = _tempo(rng, (slow, mid))
        level = "loud" if maybe(rng, 0.35) else "normal"
        concepts += [("classical", 0.7), ("orchestra", 0.6)]
        sing("soprano" if variant == "soprano" else "tenor", 1.5)
        add("chords", "strings", 0.8, 4)
        if maybe(band, 0.5):
            add("bass", "cello", 0.6, 3)
        if maybe(band, 0.4):
            add("chords", "horn", 0.5, 3)
        accompaniment = pick(band, ("piano", "harpsichord", "flute"))
        if accompaniment == "flute":
            add("melody", "flute", 0.5, 5)
        else:
            add("arp", accompaniment, 0.6, 4)
    elif style == "choral":
        reverb = 0.45
        bpm = _tempo(rng, ((1.0, 54, 76),))
        level = "soft" if maybe(rng, 0.6) else "normal"
        if variant == "choir":
            voice = "choir"
            concepts += [("classical", 0.6)]
            add("choir", "choir", 1.3, 4)
            if maybe(band, 0.6):
                add("chords", "organ", 0.6, 3)
        else:
            voice = "monks"
            mode = "dorian"
            concepts += [("medieval", 0.6)]
            add("choir", "monks", 1.3, 3)
            if maybe(band, 0.4):
                add("drone", "drone", 0.7, 2)
    elif style == "techno":
        level = "loud" if maybe(rng, 0.6) else "normal"
        concepts += [("electronic", 0.9), ("dance", 0.6)]
        add("bass", "synth_bass", 0.9, 2)
        if variant == "techno":
            bpm = _tempo(rng, ((1.0, 124, 148),))
            concepts += [("techno", 0.9)]
            add("drums", "techno", 1.2, 0)
            if maybe(band, 0.6):
                add("melody", "lead", 0.7, 5)
        else:
            bpm = _tempo(rng, ((1.0, 132, 145),))
            reverb = 0.15
            concepts += [("trance", 0.85), ("techno", 0.4)]
            add("drums", "trance", 1.0, 0)
            add("chords", "pad", 0.8, 4)
        if maybe(band, 0.6):
            add("arp", "synth_arp", 0.7, 4)
        if maybe(band, 0.3):
            add("strum", "piano", 0.6, 4)  # the house piano
        if maybe(band, 0.35):
            sing("female" if maybe(band, 0.7) else "male", 1.1)
    elif style == "rock":
        concepts += [("rock", 0.9)]
        add("power", "power", 1.0, 2)
        add("bass", "bass", 0.7, 2)
        if variant == "metal":
            mode = pick(rng, ("minor", "phrygian"))
            bpm = _tempo(rng, ((1.0, 150, 185),))
            level = "loud"
            concepts += [("heavy", 0.85), ("hard", 0.6)]
            add("drums", "metal", 1.1, 0)
        else:
            bpm = _tempo(rng, ((1.0, 100, 145),))
            level = "loud" if maybe(rng, 0.6) else "normal"
            concepts += [("hard", 0.3)]
            add("drums", "rock", 1.0, 0)
            if maybe(band, 0.3):
                add("chords", pick(band, ("organ", "pad")), 0.5, 4)
            elif maybe(band, 0.3):
                add("arp", "piano", 0.6, 4)
        if maybe(band, 0.75):
            sing("male" if maybe(band, 0.65) else "female", 1.2)
    elif style == "ambient":
        reverb = 0.45
        bpm = _tempo(rng, ((1.0, 56, 76),))
        level = "soft" if maybe(rng, 0.8) else "normal"
        concepts += [("ambient", 0.85)]
        add("chords", "pad", 0.8, 4)
        if variant == "new age":
            mode = pick(rng, ("major", "lydian"))
            concepts += [("new age", 0.8)]
            add("arp", pick(band, ("harp", "piano", "harp")), 0.8, 4)
            if maybe(band, 0.5):
                add("melody", "flute", 0.8, 5)
        else:
            mode = pick(rng, ("minor", "phrygian"))
            concepts += [("space", 0.75), ("electronic", 0.4), ("strange", 0.35)]
            add("drone", "drone", 1.0, 2)
            if maybe(band, 0.5):
                add("melody", "lead", 0.5, 5)
        if maybe(band, 0.3):
            sing("female", 0.9)
    elif style == "indian":
        reverb = 0.15
        mode = pick(rng, ("bhairav", "yaman", "kafi"))
        concepts += [("india", 0.9), ("eastern", 0.5), ("world", 0.45)]
        add("drone", "tanpura", 0.6, 3)
        if variant == "raga":
            bpm = _tempo(rng, ((0.5, 60, 80), (0.5, 140, 168)))
            add("melody", pick(band, ("sitar", "sitar", "flute", "violin")), 1.2, 4)
        else:
            bpm = _tempo(rng, ((0.5, 66, 84), (0.5, 92, 112)))
            sing("female" if maybe(band, 0.6) else "male", 1.4)
            if maybe(band, 0.6):
                add("arp", "sitar", 0.6, 4)
        if maybe(band, 0.75):
            add("tabla", "tabla", 0.9, 5)
        level = "soft" if maybe(rng, 0.3) else "normal"
    elif style == "pop":
        if variant == "pop":
            bpm = _tempo(rng, ((1.0, 96, 128), (0.5, 136, 150)))
            level = "loud" if maybe(rng, 0.35) else "normal"
            concepts += [("pop", 0.9), ("dance", 0.25)]
            add("drums", "pop", 1.0, 0)
            add("bass", "bass", 0.7, 2)
            add("strum" if maybe(band, 0.5) else "arp", pick(band, ("piano", "guitar")), 0.7, 4)
            if maybe(band, 0.35):
                add("chords", pick(band, ("pad", "strings")), 0.5, 4)
        else:
            bpm = _tempo(rng, ((1.0, 76, 132),))
            level = "soft" if maybe(rng, 0.4) else "normal"
            concepts += [("folk", 0.8), ("country", 0.6)]
            add("strum", "guitar", 1.0, 3)
            lead = pick(band, ("violin", "flute", "harp", ""))
            if lead:
                add("melody", lead, 0.8, 5)
            if maybe(band, 0.5):
                add("bass", "bass", 0.6, 2)
            if maybe(band, 0.3):
                add("drums", "pop", 0.6, 0)
        if maybe(band, 0.85):
            sing("female" if maybe(band, 0.55) else "male")
    else:
        raise ValueError(f"unknown demo style {style!r}")

    instruments = {p.instr for p in parts}
    for p in parts:
        if p.role == "drums":
            concepts += KIT_TAGS
        elif p.role in ("voice", "choir"):
            concepts += VOICE_TAGS[p.instr]
        else:
            concepts += INSTRUMENT_TAGS[p.instr]
    has_drums = any(p.role in ("drums", "tabla") for p in parts)
    if not voice:
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
    if bpm >= 135:
        concepts.append(("fast", 0.75))
    elif bpm <= 85:
        concepts.append(("slow", 0.75))
    if level == "loud":
        concepts.append(("loud", 0.7))
    elif level == "soft":
        concepts += [("quiet", 0.65), ("soft", 0.5)]
    if reverb >= 0.4:
        concepts.append(("airy" if mode in ("major", "lydian") else "eerie", 0.3))
    slow_minor = mode in ("minor", "phrygian", "dorian") and bpm <= 85
    if slow_minor:
        concepts += [("sad", 0.3), ("dark", 0.35)]
    elif mode in ("major", "lydian") and bpm <= 85 and level == "soft":
        concepts += [("calm", 0.45), ("mellow", 0.3)]
    elif mode == "major" and bpm >= 110 and has_drums:
        concepts += [("upbeat", 0.3), ("happy", 0.25)]
    if voice in ("female", "male") and len(parts) <= 3:
        concepts.append(("solo", 0.1))
    # A concept named twice keeps its strongest chance.
    best: dict[str, float] = {}
    for concept, p in concepts:
        best[concept] = max(best.get(concept, 0.0), p)
    return Recipe(
        style=style,
        variant=variant,
        parts=tuple(parts),
        bpm=bpm,
        tonic=int(rng.integers(12)),
        mode=mode,
        level=level,
        reverb=reverb,
        concepts=tuple(best.items()),
    )
