"""A synthetic demo dataset in MagnaTagATune's exact file formats.

The pipeline runs end to end offline on it: the same code reads the demo and the real MTAT. What is
copied from MTAT:

- ``annotations_final.csv`` and ``clip_info_final.csv``: tab-separated, every field double-quoted,
  CRLF line ends, the same columns; clip ids are increasing integers with gaps; ``clip_info`` also
  lists a few segments without audio (empty ``mp3_path``), as MTAT does for 5,519 of its rows.
- mono MP3s under folders ``0``..``f`` named ``<hex>/<artist>-<album>-<track>-<title>-<start>-<end>.mp3``
  with MTAT's name rule and segment grid (0-29, 30-59, 59-88, ...); all clips of an album share one
  folder, so a folder split never cuts a song or an album.
- crowd-style labels: real MTAT tag names, synonyms used inconsistently (each artist's annotators
  prefer one spelling), true tags randomly left out, a few clips without any tag, negative tags.
- broken files: one empty (0 bytes) and one truncated MP3, still listed in the annotations.

The audio really carries its tags, and every tag concept is audible. Each artist has a style
(classical, opera, choral, techno, rock, ambient, indian, pop), each album a variant of it (baroque or
romantic, choir or monks' chant, metal or rock, ...). Instruments and voices come from one shared pool
(piano, guitar, flute, violin, synthesisers, female and male singers ... each heard in several
styles); an artist keeps one line-up per variant, as a band does. Each song draws its tempo (fast and
slow songs also differ in note lengths), key, mode and loudness, and its own mastering (a random
spectral tilt, so that tags are not read off the average spectrum alone).

Instruments are synthesised from note templates: plucked strings (guitar, harpsichord, harp, sitar,
tanpura, bass) by Karplus-Strong, piano by inharmonic additive partials,
bowed strings, flute, organ and synthesisers by wavetables with vibrato, voices (male and female
ranges, solo, opera, choir, chant) by formant filtering of a glottal source, drums and tabla from
tuned noise and sweeps. A song is synthesised continuously and cut into consecutive clips.

Everything derives from the seed: the same seed and parameters give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import shutil
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import ndimage, signal
from tqdm import tqdm

from mstagger.dataset import (
    ANNOTATIONS_FILE,
    AUDIO_FOLDERS,
    CLIP_INFO_COLUMNS,
    CLIP_INFO_FILE,
    CSV_FILES,
    FOLDER_SPLIT,
    format_line,
)
from mstagger.params import DemoParams
from mstagger.util import atomic_path, write_text

SEGMENT_SECONDS = 29  # MTAT's nominal segment length (segmentEnd - segmentStart)
CLIP_SECONDS = 29.3  # audio written per clip; decodes to >= 29.2 s, above the extractor's 29.1 s
URL_HOST = "http://demo.mstagger.invalid"  # a reserved, never-resolving host: the demo links nowhere
UNTAGGED_FRACTION = 0.04  # clips whose annotators gave no tag at all (MTAT: 16%)
TRUNCATED_SECONDS = 1.5  # audio left in the truncated broken clip

# ---------------------------------------------------------------------------------------------------
# Tags: a concept (what is true of the audio) is annotated with one of its MTAT spellings.
# ---------------------------------------------------------------------------------------------------

# Concept -> (MTAT tag name, weight). Weights follow MTAT's relative frequencies; a concept not listed
# here is annotated with its own name. "female vocal" and "fiddle" are real MTAT tags outside the
# paper's synonym groups, kept because MTAT's annotators used them the same way.
SPELLINGS: dict[str, tuple[tuple[str, float], ...]] = {
    "beat": (("beat", 3.0), ("beats", 1.0)),
    "chant": (("chant", 1.0), ("chanting", 0.7)),
    "choir": (("choir", 3.0), ("choral", 2.0)),
    "classical": (("classical", 6.0), ("classic", 2.0), ("clasical", 0.3)),
    "drums": (("drums", 5.0), ("drum", 1.5)),
    "electronic": (("electronic", 5.0), ("electro", 1.5), ("electronica", 0.5)),
    "fast": (("fast", 8.0), ("quick", 0.4), ("fast beat", 0.4)),
    "female": (
        ("female", 5.0),
        ("woman", 3.0),
        ("female vocals", 1.2),
        ("female voice", 1.5),
        ("female singer", 0.5),
        ("female singing", 0.3),
        ("women", 0.3),
        ("female vocal", 1.2),
    ),
    "flute": (("flute", 5.0), ("flutes", 0.5)),
    "guitar": (("guitar", 8.0), ("guitars", 1.0)),
    "hard": (("hard rock", 2.0), ("hard", 1.0)),
    "harpsichord": (("harpsichord", 3.0), ("harpsicord", 1.0)),
    "horn": (("horn", 1.0), ("horns", 1.0)),
    "heavy": (("metal", 3.0), ("heavy metal", 1.0), ("heavy", 1.5)),
    "india": (("indian", 4.0), ("india", 1.0)),
    "male": (
        ("male", 4.0),
        ("male vocal", 3.0),
        ("man", 2.0),
        ("male voice", 2.0),
        ("male vocals", 1.5),
        ("male singer", 0.5),
        ("men", 0.3),
        ("man singing", 0.3),
    ),
    "no beat": (("no beat", 1.0), ("no drums", 1.0)),
    "no vocals": (
        ("no vocals", 3.0),
        ("no vocal", 3.0),
        ("instrumental", 1.2),
        ("no voice", 1.8),
        ("no singing", 0.5),
        ("no singer", 0.3),
        ("no voices", 0.4),
    ),
    "opera": (("opera", 5.0), ("operatic", 0.5)),
    "orchestra": (("orchestra", 1.5), ("orchestral", 0.8)),
    "quiet": (("quiet", 5.0), ("silence", 0.3)),
    "singer": (("singing", 3.0), ("singer", 1.0)),
    "space": (("space", 1.0), ("spacey", 1.0)),
    "strange": (("weird", 3.0), ("strange", 1.0)),
    "strings": (("strings", 4.0), ("string", 1.0)),
    "synth": (("synth", 4.0), ("synthesizer", 0.6)),
    "violin": (("violin", 4.0), ("violins", 1.0), ("fiddle", 0.15)),
    "vocal": (("vocal", 3.0), ("vocals", 2.0), ("voice", 1.5), ("voices", 0.5)),
}

# Annotation columns listed even when no clip uses them, as MTAT lists all its tags: every spelling above
# but the two rare ones outside the paper's synonym groups, and the members of those groups the demo never
# uses. Together they are every name of params.yaml's tags.synonyms, each of which prepare's synonym merge
# needs as a column (tests/test_demo.py checks this); a name added to a group must be added here too.
_RARE_SPELLINGS = frozenset({"female vocal", "fiddle"})
_NEVER_USED = frozenset({"electric", "jazz", "jazzy", "woman singing"})
LISTED_TAGS = (
    frozenset(name for options in SPELLINGS.values() for name, _ in options) - _RARE_SPELLINGS
) | _NEVER_USED

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

# ---------------------------------------------------------------------------------------------------
# The catalogue: artists, albums, songs, clips and their labels (pure, no audio).
# ---------------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Song:
    """A song: who made it, where it lies, its recipe and how many seconds are synthesised."""

    index: int
    artist: str
    album: str
    title: str
    track: int
    folder: str
    recipe: Recipe
    seconds: float


@dataclass(frozen=True)
class Clip:
    """One row of clip_info_final.csv; a clip with audio (``mp3_path`` set) is also annotated."""

    clip_id: int
    song: int  # index into Catalogue.songs
    start: int  # segmentStart, seconds into the song
    end: int  # segmentEnd
    mp3_path: str  # "" for a segment without audio
    tags: tuple[str, ...]  # annotated MTAT tag names
    broken: str  # "", "empty" or "truncated"


@dataclass(frozen=True)
class Catalogue:
    """The whole planned dataset: songs and clip rows in clip-id order, and the tag columns."""

    artists: tuple[str, ...]
    albums: tuple[str, ...]
    songs: tuple[Song, ...]
    rows: tuple[Clip, ...]  # every clip_info row, in clip-id order
    tag_names: tuple[str, ...]  # annotation columns (tags used, plus LISTED_TAGS), sorted

    @property
    def clips(self) -> tuple[Clip, ...]:
        """The rows that have audio (the rows of annotations_final.csv)."""
        return tuple(c for c in self.rows if c.mp3_path)


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
# Styles whose artists are a person or an ensemble rather than a band.
_SOLOIST_STYLES = {"classical", "opera", "choral", "indian"}

_FIRST = (
    "Anna", "Marco", "Lena", "Ravi", "Sofia", "Jonas", "Mira", "Tomas", "Elena", "Arjun", "Clara",
    "Felix", "Nadia", "Oskar", "Priya", "Hugo", "Ines", "Milan", "Yara", "Dev",
)  # fmt: skip
_LAST = (
    "Verhoeven", "Castellano", "Lindqvist", "Sharma", "Moreau", "Okafor", "Brandt", "Ivanova",
    "Delacroix", "Rao", "Hartmann", "Novak", "Albrecht", "Iyer", "Fontaine", "Kowalski",
)  # fmt: skip
_ENSEMBLE = ("Ensemble", "Consort", "Capella", "Quartet", "Singers", "Chamber Players")
_ADJ = (
    "Velvet", "Hollow", "Crimson", "Silent", "Neon", "Iron", "Golden", "Paper", "Glass", "Distant",
    "Static", "Northern", "Wild", "Pale", "Burning", "Quiet",
)  # fmt: skip
_NOUN = (
    "Orbit", "Lanterns", "Circuit", "Ravens", "Tide", "Engines", "Gardens", "Signal", "Harbour",
    "Wolves", "Machines", "Rivers", "Satellites", "Embers", "Mirrors", "Horizon",
)  # fmt: skip
_COMPOSERS = ("J.S. Bach", "Telemann", "Scarlatti", "Couperin", "Schubert", "Brahms", "Chopin", "Vivaldi")
_FORMS = ("Sonatas", "Suites", "Partitas", "Preludes", "Cantatas", "Nocturnes", "Fantasias", "Arias")
_MOVEMENTS = ("Adagio", "Allegro", "Andante", "Largo", "Presto", "Sarabande", "Gigue", "Menuet")
_NUMERALS = ("I", "II", "III", "IV", "V", "VI")
_RAGAS = ("Yaman", "Bhairav", "Kafi", "Desh", "Bageshri", "Malkauns")
_LATIN = ("Kyrie", "Gloria", "Sanctus", "Agnus Dei", "Ave Maria", "Salve Regina", "Magnificat", "Credo")


def _segment(k: int) -> tuple[int, int]:
    """MTAT's k-th segment of a song: 0-29, 30-59, 59-88, 88-117, ..."""
    start = 0 if k == 0 else SEGMENT_SECONDS * k + 1
    return start, start + SEGMENT_SECONDS


def slugify(text: str) -> str:
    """MTAT's file-name rule: lower case, space . : , ; / & become ``_``, other punctuation dropped."""
    out = []
    for ch in text.lower():
        if ch.isascii() and ch.isalnum():
            out.append(ch)
        elif ch in " .:,;/&":
            out.append("_")
    return "".join(out)


def _pick(rng: np.random.Generator, items: tuple[str, ...]) -> str:
    return items[int(rng.integers(len(items)))]


def _unique(rng: np.random.Generator, make: Callable[[], str], taken: set[str]) -> str:
    """Draw names until one is new (by slug); after 50 tries number it."""
    name = make()
    for _ in range(50):
        if slugify(name) not in taken:
            break
        name = make()
    else:
        base, i = name, 2
        while slugify(name) in taken:
            name, i = f"{base} {i}", i + 1
    taken.add(slugify(name))
    return name


def _artist_name(rng: np.random.Generator, style: str) -> str:
    if style in _SOLOIST_STYLES:
        if rng.random() < 0.4:
            return f"{_pick(rng, _LAST)} {_pick(rng, _ENSEMBLE)}"
        return f"{_pick(rng, _FIRST)} {_pick(rng, _LAST)}"
    return f"The {_pick(rng, _ADJ)} {_pick(rng, _NOUN)}" if rng.random() < 0.5 else _pick(rng, _NOUN)


def _album_name(rng: np.random.Generator, style: str, variant: str) -> str:
    if style == "classical":
        return f"{_pick(rng, _COMPOSERS)}: {_pick(rng, _FORMS)}"
    if style in ("opera", "choral"):
        return f"{_pick(rng, _LATIN)} and other {_pick(rng, ('Arias', 'Motets', 'Chants', 'Hymns'))}"
    if style == "indian":
        return f"Raga {_pick(rng, _RAGAS)} ({variant.title()})"
    return f"{_pick(rng, _ADJ)} {_pick(rng, _NOUN)}"


def _title(rng: np.random.Generator, style: str) -> str:
    if style == "classical":
        return (
            f"{_pick(rng, _FORMS)[:-1]} No. {int(rng.integers(1, 13))} - "
            f"{_pick(rng, _NUMERALS)}. {_pick(rng, _MOVEMENTS)}"
        )
    if style in ("opera", "choral"):
        return f"{_pick(rng, _LATIN)} ({_pick(rng, _LAST)})"
    if style == "indian":
        return f"Raga {_pick(rng, _RAGAS)}: {_pick(rng, ('Alap', 'Jor', 'Gat', 'Bandish'))}"
    if style == "techno":
        return f"{_pick(rng, _NOUN)} {int(rng.integers(101, 999))}"
    return f"{_pick(rng, _ADJ)} {_pick(rng, _NOUN)}"


def _tempo(rng: np.random.Generator, choices: tuple[tuple[float, float, float], ...]) -> float:
    """Pick a tempo range by weight, then a bpm in it: choices are (weight, low, high)."""
    w = np.array([c[0] for c in choices])
    lo, hi = choices[int(rng.choice(len(choices), p=w / w.sum()))][1:]
    return float(round(rng.uniform(lo, hi)))


def _maybe(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


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
    mode = _pick(rng, ("major", "minor"))
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
        level = "soft" if _maybe(rng, 0.5) else "normal"
        concepts += [("classical", 0.9)]
        bpm = _tempo(rng, (slow, (0.6, 92, 118), (0.8, *fast[1:])))
        if variant == "baroque":
            concepts += [("baroque", 0.8)]
            add("arp", "harpsichord", 1.0, 4)
        else:
            add("arp", _pick(band, ("piano", "piano", "nylon")), 1.0, 3)
        solo = band.choice(("violin", "flute", "cello", "piano", "")) if variant == "romantic" else ""
        extra = ("violin", "flute", "cello", "strings", "horn")
        chosen = [x for x in extra if _maybe(band, 0.4)] if not solo else [str(solo)]
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
        level = "loud" if _maybe(rng, 0.35) else "normal"
        concepts += [("classical", 0.7), ("orchestra", 0.6)]
        sing("soprano" if variant == "soprano" else "tenor", 1.5)
        add("chords", "strings", 0.8, 4)
        if _maybe(band, 0.5):
            add("bass", "cello", 0.6, 3)
        if _maybe(band, 0.4):
            add("chords", "horn", 0.5, 3)
        accompaniment = _pick(band, ("piano", "harpsichord", "flute"))
        if accompaniment == "flute":
            add("melody", "flute", 0.5, 5)
        else:
            add("arp", accompaniment, 0.6, 4)
    elif style == "choral":
        reverb = 0.45
        bpm = _tempo(rng, ((1.0, 54, 76),))
        level = "soft" if _maybe(rng, 0.6) else "normal"
        if variant == "choir":
            voice = "choir"
            concepts += [("classical", 0.6)]
            add("choir", "choir", 1.3, 4)
            if _maybe(band, 0.6):
                add("chords", "organ", 0.6, 3)
        else:
            voice = "monks"
            mode = "dorian"
            concepts += [("medieval", 0.6)]
            add("choir", "monks", 1.3, 3)
            if _maybe(band, 0.4):
                add("drone", "drone", 0.7, 2)
    elif style == "techno":
        level = "loud" if _maybe(rng, 0.6) else "normal"
        concepts += [("electronic", 0.9), ("dance", 0.6)]
        add("bass", "synth_bass", 0.9, 2)
        if variant == "techno":
            bpm = _tempo(rng, ((1.0, 124, 148),))
            concepts += [("techno", 0.9)]
            add("drums", "techno", 1.2, 0)
            if _maybe(band, 0.6):
                add("melody", "lead", 0.7, 5)
        else:
            bpm = _tempo(rng, ((1.0, 132, 145),))
            reverb = 0.15
            concepts += [("trance", 0.85), ("techno", 0.4)]
            add("drums", "trance", 1.0, 0)
            add("chords", "pad", 0.8, 4)
        if _maybe(band, 0.6):
            add("arp", "synth_arp", 0.7, 4)
        if _maybe(band, 0.3):
            add("strum", "piano", 0.6, 4)  # the house piano
        if _maybe(band, 0.35):
            sing("female" if _maybe(band, 0.7) else "male", 1.1)
    elif style == "rock":
        concepts += [("rock", 0.9)]
        add("power", "power", 1.0, 2)
        add("bass", "bass", 0.7, 2)
        if variant == "metal":
            mode = _pick(rng, ("minor", "phrygian"))
            bpm = _tempo(rng, ((1.0, 150, 185),))
            level = "loud"
            concepts += [("heavy", 0.85), ("hard", 0.6)]
            add("drums", "metal", 1.1, 0)
        else:
            bpm = _tempo(rng, ((1.0, 100, 145),))
            level = "loud" if _maybe(rng, 0.6) else "normal"
            concepts += [("hard", 0.3)]
            add("drums", "rock", 1.0, 0)
            if _maybe(band, 0.3):
                add("chords", _pick(band, ("organ", "pad")), 0.5, 4)
            elif _maybe(band, 0.3):
                add("arp", "piano", 0.6, 4)
        if _maybe(band, 0.75):
            sing("male" if _maybe(band, 0.65) else "female", 1.2)
    elif style == "ambient":
        reverb = 0.45
        bpm = _tempo(rng, ((1.0, 56, 76),))
        level = "soft" if _maybe(rng, 0.8) else "normal"
        concepts += [("ambient", 0.85)]
        add("chords", "pad", 0.8, 4)
        if variant == "new age":
            mode = _pick(rng, ("major", "lydian"))
            concepts += [("new age", 0.8)]
            add("arp", _pick(band, ("harp", "piano", "harp")), 0.8, 4)
            if _maybe(band, 0.5):
                add("melody", "flute", 0.8, 5)
        else:
            mode = _pick(rng, ("minor", "phrygian"))
            concepts += [("space", 0.75), ("electronic", 0.4), ("strange", 0.35)]
            add("drone", "drone", 1.0, 2)
            if _maybe(band, 0.5):
                add("melody", "lead", 0.5, 5)
        if _maybe(band, 0.3):
            sing("female", 0.9)
    elif style == "indian":
        reverb = 0.15
        mode = _pick(rng, ("bhairav", "yaman", "kafi"))
        concepts += [("india", 0.9), ("eastern", 0.5), ("world", 0.45)]
        add("drone", "tanpura", 0.6, 3)
        if variant == "raga":
            bpm = _tempo(rng, ((0.5, 60, 80), (0.5, 140, 168)))
            add("melody", _pick(band, ("sitar", "sitar", "flute", "violin")), 1.2, 4)
        else:
            bpm = _tempo(rng, ((0.5, 66, 84), (0.5, 92, 112)))
            sing("female" if _maybe(band, 0.6) else "male", 1.4)
            if _maybe(band, 0.6):
                add("arp", "sitar", 0.6, 4)
        if _maybe(band, 0.75):
            add("tabla", "tabla", 0.9, 5)
        level = "soft" if _maybe(rng, 0.3) else "normal"
    elif style == "pop":
        if variant == "pop":
            bpm = _tempo(rng, ((1.0, 96, 128), (0.5, 136, 150)))
            level = "loud" if _maybe(rng, 0.35) else "normal"
            concepts += [("pop", 0.9), ("dance", 0.25)]
            add("drums", "pop", 1.0, 0)
            add("bass", "bass", 0.7, 2)
            add("strum" if _maybe(band, 0.5) else "arp", _pick(band, ("piano", "guitar")), 0.7, 4)
            if _maybe(band, 0.35):
                add("chords", _pick(band, ("pad", "strings")), 0.5, 4)
        else:
            bpm = _tempo(rng, ((1.0, 76, 132),))
            level = "soft" if _maybe(rng, 0.4) else "normal"
            concepts += [("folk", 0.8), ("country", 0.6)]
            add("strum", "guitar", 1.0, 3)
            lead = _pick(band, ("violin", "flute", "harp", ""))
            if lead:
                add("melody", lead, 0.8, 5)
            if _maybe(band, 0.5):
                add("bass", "bass", 0.6, 2)
            if _maybe(band, 0.3):
                add("drums", "pop", 0.6, 0)
        if _maybe(band, 0.85):
            sing("female" if _maybe(band, 0.55) else "male")
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


def _spelling_prefs(rng: np.random.Generator) -> dict[str, str]:
    """An artist's annotators' favourite spelling of each concept."""
    prefs = {}
    for concept, options in SPELLINGS.items():
        w = np.array([o[1] for o in options])
        prefs[concept] = options[int(rng.choice(len(options), p=w / w.sum()))][0]
    return prefs


def _annotate(recipe: Recipe, prefs: dict[str, str], rng: np.random.Generator) -> tuple[str, ...]:
    """Crowd labels of one clip: each true concept named with its chance, in a varying spelling."""
    diligence = rng.uniform(0.9, 1.1)
    tags: set[str] = set()
    for concept, p in recipe.concepts:
        # Recall of a true concept: sqrt(p), above p (crowd tags miss some, but the demo must stay
        # learnable: a true tag left out of a test clip counts as a wrong answer of the network).
        if rng.random() >= np.sqrt(p) * diligence:
            continue
        options = SPELLINGS.get(concept)
        if options is None:
            tags.add(concept)
            continue
        w = np.array([o[1] for o in options])
        if rng.random() < 0.7:
            tags.add(prefs[concept])
        else:
            tags.add(options[int(rng.choice(len(options), p=w / w.sum()))][0])
        if rng.random() < 0.08:  # some annotators give two spellings
            tags.add(options[int(rng.choice(len(options), p=w / w.sum()))][0])
    return tuple(sorted(tags))


def _album_folders(n_artists: int, albums_per_artist: int, rng: np.random.Generator) -> list[str]:
    """Folder of each album, in (artist, album) order: all 16 folders used, each about equally.

    Folders are dealt by a seeded shuffle, then repaired so that, where the numbers allow, every artist
    keeps an album in the training folders 0-b of the folder split, and so does each of an artist's
    two variants (albums alternate between them) when it has at least two albums: a style or variant
    that appears only in valid or test could not be learnt from the demo's few songs.
    """
    n_albums = n_artists * albums_per_artist
    n_folders = len(AUDIO_FOLDERS)
    order = np.concatenate([rng.permutation(n_folders) for _ in range(-(-n_albums // n_folders))])[:n_albums]
    folders = [AUDIO_FOLDERS[int(i)] for i in order]
    held_out = {folder for folder, part in FOLDER_SPLIT.items() if part != "train"}
    artist = [i // albums_per_artist for i in range(n_albums)]
    variant = [(i // albums_per_artist, i % albums_per_artist % 2) for i in range(n_albums)]

    def trained(group: list, key: object) -> int:
        return sum(folders[i] not in held_out for i in range(n_albums) if group[i] == key)

    for group in (artist, variant):
        for key in dict.fromkeys(group):
            mine = [i for i in range(n_albums) if group[i] == key]
            if trained(group, key) or (group is variant and len(mine) < 2):
                continue
            # Swap with a training album whose artist and variant both keep another training album.
            for other in range(n_albums):
                if (
                    folders[other] not in held_out
                    and trained(artist, artist[other]) > 1
                    and (trained(variant, variant[other]) > 1 or group is artist)
                ):
                    folders[mine[0]], folders[other] = folders[other], folders[mine[0]]
                    break
    return folders


def plan_catalogue(params: DemoParams, seed: int) -> Catalogue:
    """Plan the whole demo dataset without synthesising audio: names, folders, recipes, labels.

    Artists get styles from a seeded shuffle of :data:`STYLES` (cycled when there are more artists
    than styles), their albums alternate between the style's two variants (the songs of one artist's
    variant share a line-up), albums are spread evenly over the 16 folders (the defaults: 32 albums,
    two per folder, so valid holds two albums and test six), and every clip is labelled.

    Args:
        params: the ``demo`` section of params.yaml.
        seed: the random seed.

    Returns:
        The :class:`Catalogue`; the same arguments always give the same catalogue.
    """
    rng = np.random.default_rng([seed, 0])
    style_order = rng.permutation(len(STYLES))
    n_albums = params.n_artists * params.albums_per_artist
    folder_order = _album_folders(params.n_artists, params.albums_per_artist, rng)
    clip_id = int(rng.integers(2, 10))
    n_songs = n_albums * params.songs_per_album
    # Songs with one listed segment that has no audio, as in MTAT (a couple per 32 songs).
    silent_songs = set(rng.choice(n_songs, max(1, round(n_songs / 16)), replace=False).tolist())
    taken_artists: set[str] = set()
    artists, albums, songs = [], [], []
    rows: list[Clip] = []
    for a in range(params.n_artists):
        style = STYLES[style_order[a % len(STYLES)]]
        arng = np.random.default_rng([seed, 1, a])
        artist = _unique(arng, lambda s=style, r=arng: _artist_name(r, s), taken_artists)
        artists.append(artist)
        prefs = _spelling_prefs(arng)
        variant_shift = int(arng.integers(2))
        taken_albums: set[str] = set()
        for b in range(params.albums_per_artist):
            variant = VARIANTS[style][(b + variant_shift) % 2]
            album = _unique(arng, lambda s=style, v=variant, r=arng: _album_name(r, s, v), taken_albums)
            folder = folder_order[len(albums)]
            albums.append(album)
            tracks = np.sort(arng.choice(max(12, params.songs_per_album), params.songs_per_album, False)) + 1
            taken_titles: set[str] = set()
            for track in tracks:
                srng = np.random.default_rng([seed, 2, len(songs)])
                title = _unique(srng, lambda s=style, r=srng: _title(r, s), taken_titles)
                band = np.random.default_rng([seed, 4, a, b % 2])
                recipe = make_recipe(style, variant, srng, band)
                # Segments of the song; a few songs have one listed segment without audio, as in MTAT.
                n_segments = params.clips_per_song + int(len(songs) in silent_songs)
                silent = int(srng.integers(n_segments)) if n_segments > params.clips_per_song else -1
                last_audio = max(k for k in range(n_segments) if k != silent)
                song = Song(
                    index=len(songs),
                    artist=artist,
                    album=album,
                    title=title,
                    track=int(track),
                    folder=folder,
                    recipe=recipe,
                    seconds=_segment(last_audio)[0] + CLIP_SECONDS,
                )
                songs.append(song)
                for k in range(n_segments):
                    start, end = _segment(k)
                    clip_id += int(srng.integers(1, 4))
                    path = ""
                    tags: tuple[str, ...] = ()
                    if k != silent:
                        path = (
                            f"{folder}/{slugify(artist)}-{slugify(album)}-{int(track):02d}-"
                            f"{slugify(title)}-{start}-{end}.mp3"
                        )
                        tags = _annotate(recipe, prefs, srng)
                    rows.append(Clip(clip_id, song.index, start, end, path, tags, ""))
    # Clips without any tag, and the broken files, drawn among the clips with audio.
    audio = [i for i, r in enumerate(rows) if r.mp3_path]
    n_untagged = round(UNTAGGED_FRACTION * len(audio))
    picks = rng.permutation(len(audio))
    for i in picks[:n_untagged]:
        rows[audio[i]] = dataclasses.replace(rows[audio[i]], tags=())
    for kind, i in zip(
        ("empty", "truncated"), picks[n_untagged : n_untagged + params.broken_clips], strict=False
    ):
        rows[audio[i]] = dataclasses.replace(rows[audio[i]], broken=kind)
    tag_names = tuple(sorted({t for r in rows for t in r.tags} | LISTED_TAGS))
    return Catalogue(tuple(artists), tuple(albums), tuple(songs), tuple(rows), tag_names)


# ---------------------------------------------------------------------------------------------------
# Synthesis: note templates (cached), parts of a song, the mix.
# ---------------------------------------------------------------------------------------------------

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
_TABLE = 4096  # wavetable length


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _rng_for(*key: object) -> np.random.Generator:
    """A random source that depends only on ``key`` (stable across runs and processes)."""
    return np.random.default_rng([zlib.crc32(repr(key).encode())])


def _wavetable(amps: np.ndarray) -> np.ndarray:
    """One cycle of sum_k amps[k-1] * sin(2 pi k x), via an inverse FFT."""
    spec = np.zeros(_TABLE // 2 + 1, complex)
    spec[1 : len(amps) + 1] = -1j * amps * (_TABLE / 2)
    table = np.fft.irfft(spec, _TABLE)
    return (table / (np.abs(table).max() + 1e-9)).astype(np.float32)


def _oscillate(table: np.ndarray, f: np.ndarray | float, n: int, sr: int, phase0: float) -> np.ndarray:
    """Read ``table`` at frequency ``f`` (Hz, constant or per sample) for ``n`` samples."""
    step = np.broadcast_to(np.asarray(f, dtype=np.float64) / sr, (n,))
    phase = np.cumsum(step) + phase0
    return table[(phase * _TABLE).astype(np.int64) & (_TABLE - 1)]


def _envelope(n: int, sr: int, attack: float, release: float) -> np.ndarray:
    """Linear attack, flat sustain, linear release, over ``n`` samples."""
    a = max(1, min(int(attack * sr), n // 2))
    r = max(1, min(int(release * sr), n // 2))
    env = np.ones(n, np.float32)
    env[:a] = np.linspace(0.0, 1.0, a, dtype=np.float32)
    env[n - r :] = np.linspace(1.0, 0.0, r, dtype=np.float32)
    return env


def _vibrato(
    n: int, sr: int, depth: float, rate: float, delay: float, rng: np.random.Generator
) -> np.ndarray:
    """Relative pitch deviation: a sine LFO that fades in after ``delay`` seconds, plus slow drift."""
    t = np.arange(n, dtype=np.float32) / np.float32(sr)
    knots = np.arange(int(n / sr / 0.1) + 3, dtype=np.float32) * np.float32(0.1)
    drift = np.interp(t, knots, rng.normal(0, depth * 0.3, len(knots)).astype(np.float32))
    lfo = np.sin(np.float32(2 * np.pi * rate) * t + np.float32(rng.uniform(0, 2 * np.pi)))
    lfo *= np.clip((t - np.float32(delay)) * np.float32(1 / 0.3), 0.0, 1.0)
    return np.float32(depth) * lfo + drift


def _karplus(
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


def _limit(y: np.ndarray, ceiling: float, sr: int) -> np.ndarray:
    """Look-ahead peak limiter: a gain that dips smoothly (over ~2 ms) wherever |y| exceeds ``ceiling``."""
    gain = np.minimum(1.0, ceiling / (np.abs(y) + 1e-12))
    width = max(1, int(0.002 * sr))
    gain = ndimage.minimum_filter1d(gain, 2 * width + 1)
    gain = ndimage.uniform_filter1d(gain, width)
    return y * gain.astype(y.dtype)


def _buzz(y: np.ndarray, amount: float) -> np.ndarray:
    """Sitar/tanpura bridge (jawari): an asymmetric soft clip that adds a bright, buzzing spectrum."""
    peak = np.abs(y).max() + 1e-9
    y = y / peak
    y = y + amount * (np.abs(y) - np.tanh(3 * y) * 0.3)
    return signal.lfilter([1.0, -1.0], [1.0, -0.995], y)  # remove the offset the rectifier adds


def _piano(f0: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
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


def _voice(kind: str, f0: float, n: int, sr: int, vowel: int, rng: np.random.Generator) -> np.ndarray:
    """A sung syllable by formant synthesis: a glottal source with vibrato through vowel resonances."""
    female = kind in ("female", "soprano")
    depth, rate = {
        "female": (0.008, 5.5),
        "male": (0.007, 5.2),
        "soprano": (0.025, 5.8),
        "tenor": (0.022, 5.6),
        "monks": (0.002, 4.5),
    }[kind]
    formants = list((_FORMANTS_FEMALE if female else _FORMANTS_MALE)[vowel])
    if kind in ("soprano", "tenor"):  # the singer's formant that lets an opera voice carry
        formants.append((3200 if female else 2900, 300))
    k = np.arange(1, max(2, int(0.45 * sr / f0)) + 1)
    source = _wavetable(k**-1.0)
    vib = _vibrato(n, sr, depth, rate, 0.12, rng)
    x = _oscillate(source, f0 * (1 + vib), n, sr, rng.random()).astype(np.float64)
    x += 0.03 * rng.standard_normal(n)  # breath
    # Cascade formant filter (as in Klatt's synthesiser): resonators with unit gain at 0 Hz.
    sos = []
    for freq, bw in formants:
        r = np.exp(-np.pi * bw / sr)
        c = 2 * r * np.cos(2 * np.pi * min(freq, 0.45 * sr) / sr)
        sos.append((1 - c + r * r, 0.0, 0.0, 1.0, -c, r * r))
    y = signal.sosfilt(np.array(sos), x)
    y = signal.lfilter([1.0, -0.9], [1.0], y)  # lip radiation: +6 dB per octave
    return y * _envelope(n, sr, 0.06, 0.12)


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


def _sustained(kind: str, f0: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    spec = _SUSTAINED[kind]
    k = np.arange(1, max(2, int(0.45 * sr / f0)) + 1)
    if spec.partials:
        amps = np.zeros(len(k))
        m = min(len(k), len(spec.partials))
        amps[:m] = spec.partials[:m]
    else:
        amps = k**-spec.slope * np.exp(-k / spec.rolloff) * np.where(k % 2 == 0, spec.even, 1.0)
    for centre, width, gain in spec.body:  # resonances of the instrument body
        amps = amps * (1 + gain * np.exp(-(((k * f0 - centre) / width) ** 2)))
    table = _wavetable(amps)
    depth, rate, delay = spec.vibrato
    y = np.zeros(n, np.float32)
    for cents, g in spec.voices:
        vib = _vibrato(n, sr, depth, rate * rng.uniform(0.9, 1.1), delay, rng)
        y += g * _oscillate(table, f0 * 2 ** (cents / 1200) * (1 + vib), n, sr, rng.random())
    if spec.noise:
        y += spec.noise * signal.lfilter([0.2], [1, -0.8], rng.normal(0, 1, n)).astype(np.float32)
    return y * _envelope(n, sr, spec.attack, spec.release)


def _synth_pluck(f0: float, n: int, sr: int, rng: np.random.Generator, bass: bool) -> np.ndarray:
    """Subtractive-synth pluck: a saw whose upper harmonics die away first (a closing filter)."""
    k = np.arange(1, max(2, int(0.45 * sr / f0)) + 1)
    bright = _wavetable(k**-1.0)
    dark = _wavetable(k**-1.0 * np.exp(-k / 2.0))
    t = np.arange(n) / sr
    sweep = np.exp(-t / (0.06 if bass else 0.1))
    ph = rng.random()
    y = sweep * _oscillate(bright, f0, n, sr, ph) + (1 - sweep) * _oscillate(dark, f0, n, sr, ph)
    return y * np.exp(-t / (0.25 if bass else 0.3))


def _drum(kind: str, n: int, sr: int, f0: float, rng: np.random.Generator) -> np.ndarray:
    """Drum and tabla sounds: pitch-swept sines, filtered noise bursts and tuned membrane modes."""
    t = np.arange(n) / sr
    noise = rng.normal(0, 1, n)
    nyq = sr / 2
    if kind in ("kick", "kick_techno"):
        sweep, decay = (110, 0.22) if kind == "kick" else (140, 0.3)
        f = 45 + sweep * np.exp(-t / 0.03)
        y = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / decay) + 0.3 * noise * np.exp(-t / 0.004)
        return np.tanh(1.8 * y) if kind == "kick_techno" else y
    if kind == "snare":
        band = signal.lfilter(*signal.butter(2, [900 / nyq, min(5500, 0.9 * nyq) / nyq], "band"), noise)
        return band * np.exp(-t / 0.11) + 0.6 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.06)
    if kind == "clap":
        band = signal.lfilter(*signal.butter(2, [800 / nyq, 3000 / nyq], "band"), noise)
        env = sum(np.exp(-np.clip(t - d, 0, None) / 0.006) * (t >= d) for d in (0.0, 0.011, 0.022))
        return band * (env + 0.5 * np.exp(-t / 0.08))
    if kind in ("hat", "open_hat", "crash"):
        cut = {"hat": 6000, "open_hat": 6000, "crash": 3000}[kind]
        decay = {"hat": 0.025, "open_hat": 0.18, "crash": 0.7}[kind]
        high = signal.lfilter(*signal.butter(4, min(cut, 0.8 * nyq) / nyq, "high"), noise)
        return high * np.exp(-t / decay)
    if kind in ("tabla_na", "tabla_tin"):
        ratios, amps, decays = (
            ((1, 2, 3, 4), (1.0, 0.5, 0.3, 0.15), (0.35, 0.25, 0.15, 0.1))
            if kind == "tabla_na"
            else ((1, 2, 3, 4), (1.0, 0.2, 0.4, 0.1), (0.2, 0.15, 0.1, 0.08))
        )
        y = sum(
            a * np.sin(2 * np.pi * r * f0 * t) * np.exp(-t / d)
            for r, a, d in zip(ratios, amps, decays, strict=True)
        )
        return y + 0.4 * signal.lfilter([0.5], [1, -0.5], noise) * np.exp(-t / 0.003)
    if kind == "tabla_ge":
        f = 80 + 45 * (1 - np.exp(-t / 0.12))  # the palm slides: pitch rises
        return np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.45)
    if kind == "tabla_ka":
        return signal.lfilter([0.4], [1, -0.6], noise) * np.exp(-t / 0.01)
    raise ValueError(f"unknown drum {kind!r}")


# Plucked and struck sounds ring for a fixed time (a shorter note is faded out when placed).
_RING = {
    "guitar": 2.0, "nylon": 1.8, "harpsichord": 2.0, "harp": 2.5, "sitar": 2.0, "tanpura": 3.0,
    "bass": 1.5, "piano": 2.5, "power": 1.2, "power_mute": 0.3, "synth_arp": 0.7, "synth_bass": 0.35,
    "kick": 0.45, "kick_techno": 0.5, "snare": 0.3, "clap": 0.25, "hat": 0.1, "open_hat": 0.4,
    "crash": 1.6, "tabla_na": 0.5, "tabla_tin": 0.35, "tabla_ge": 0.7, "tabla_ka": 0.06,
}  # fmt: skip


_STRINGS = frozenset({"guitar", "nylon", "harpsichord", "harp", "sitar", "tanpura", "bass"})


@functools.lru_cache(maxsize=1024)
def _template(kind: str, midi: int, n: int, sr: int, var: int = 0) -> np.ndarray:
    """One note of an instrument, peak-normalised, read-only; cached (a pure function of its key).

    ``n`` is the length in samples for sustained sounds (ignored for ringing ones); ``var`` selects
    a variant: the vowel of a sung note, the detune in cents of an ensemble voice, a drum variant.
    """
    rng = _rng_for(kind, midi, n, sr, var)
    f0 = _hz(midi)
    if kind in _RING:
        n = int(_RING[kind] * sr)
    if kind == "guitar":
        y = _karplus(f0, n, sr, rng, t60=2.5, harmonics=8, pos=0.18, damp=0.4)
    elif kind == "nylon":
        y = _karplus(f0, n, sr, rng, t60=2.0, harmonics=4, pos=0.2, damp=0.5)
    elif kind == "harpsichord":
        y = _karplus(f0, n, sr, rng, t60=2.5, harmonics=10, pos=0.1, damp=0.3)
        y = y + 0.4 * _karplus(2 * f0, n, sr, rng, t60=2.0, harmonics=10, pos=0.1, damp=0.3)  # 4' register
        y = signal.lfilter([1, -0.3], [1], y)  # thin: little body below the string's pitch
    elif kind == "harp":
        y = _karplus(f0, n, sr, rng, t60=3.0, harmonics=3, pos=0.5, damp=0.45)
    elif kind in ("sitar", "tanpura"):
        t60 = 3.0 if kind == "sitar" else 4.0
        y = _buzz(_karplus(f0, n, sr, rng, t60=t60, harmonics=8, pos=0.08, damp=0.15), 0.8)
        y = y + 0.15 * _karplus(2 * f0, n, sr, rng, t60=4.0, harmonics=8, pos=0.1, damp=0.15)  # sympathetic
        if kind == "sitar" and var == 1:  # meend: the note bends up a semitone
            t = np.arange(n, dtype=np.float64)
            warp = np.cumsum(1 + (2 ** (1 / 12) - 1) * np.clip((t / sr - 0.15) / 0.25, 0, 1))
            y = np.interp(warp, t, y, right=0.0)
    elif kind == "bass":
        t = np.arange(n) / sr
        y = _karplus(f0, n, sr, rng, t60=1.5, harmonics=2, pos=0.3, damp=0.5)
        y = y / (np.abs(y).max() + 1e-9) + 0.6 * np.sin(2 * np.pi * f0 * t) * np.exp(-t / 0.6)
    elif kind == "piano":
        y = _piano(f0, n, sr, rng)
    elif kind in ("power", "power_mute"):
        t60 = 2.0 if kind == "power" else 0.2
        y = sum(
            _karplus(f0 * r, n, sr, rng, t60=t60, harmonics=10, pos=0.15, damp=0.3)
            for r in (1.0, 1.4983, 2.0)
        )
        y = np.tanh(8 * y / (np.abs(y).max() + 1e-9))
        y = signal.lfilter(*signal.butter(2, min(3500, 0.4 * sr) / (sr / 2)), y)  # cabinet
    elif kind in ("synth_arp", "synth_bass"):
        y = _synth_pluck(f0, n, sr, rng, kind == "synth_bass")
    elif kind.startswith(("kick", "snare", "clap", "hat", "open_hat", "crash", "tabla")):
        y = _drum(kind, n, sr, f0, rng)
    elif kind in _SUSTAINED:
        y = _sustained(kind, f0 * 2 ** (var / 1200), n, sr, rng)
    elif kind.startswith("voice_"):
        y = _voice(kind[6:], f0, n, sr, var, rng)
    else:
        raise ValueError(f"unknown instrument {kind!r}")
    y = np.asarray(y, dtype=np.float32)
    if kind in _STRINGS:  # tame the noisy first milliseconds of a pluck
        y = _limit(y, 3.0 * float(np.sqrt(np.mean(y[: int(0.25 * sr)] ** 2))), sr)
    y /= np.abs(y).max() + 1e-9
    fade = min(len(y), int(0.01 * sr))
    y[len(y) - fade :] *= np.linspace(1, 0, fade, dtype=np.float32)
    y.setflags(write=False)
    return y


SHORT_NOTE = 3.0  # seconds: sustained notes up to this long are cut from one template per pitch


@functools.lru_cache(maxsize=64)
def _ramp(n: int) -> np.ndarray:
    return np.linspace(1.0, 0.0, n, dtype=np.float32)


def _place(
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
            seg = _template(kind, int(midi[i]), 0 if ringing else short, sr, v)
            if length < len(seg):  # the note is let go: damp it
                r = min(int(release * sr), length)
                seg = seg[:length].copy()
                seg[length - r :] *= _ramp(r)
        else:
            seg = _template(kind, int(midi[i]), -(-length // quantum) * quantum, sr, v)
        b = min(len(buf), a + len(seg))
        buf[a:b] += vel[i] * seg[: b - a]


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


def _render_part(buf: np.ndarray, score: _Score, part: Part, rng: np.random.Generator, sr: int) -> None:
    """Write one part of the song into ``buf``."""
    fast = score.bpm >= 135
    slow = score.bpm <= 85
    if part.role in ("melody", "voice"):
        # Note lengths follow the tempo class, so that slow and fast are heard, not just counted.
        palette = (0.5, 1, 1, 2) if not fast else (0.25, 0.5, 0.5, 1)
        if slow:
            palette = (2, 2, 3, 4) if part.role == "voice" else (1, 1, 2, 3)
        elif part.instr == "sitar" and not fast:
            palette = (0.5, 0.5, 1, 1, 2)
        on, dur, deg, vel = _melody(score, rng, palette, 0.08, part.role == "voice")
        midi = score.midi(deg, part.octave)
        if part.role == "voice":
            _place(buf, sr, f"voice_{part.instr}", on, dur, midi, vel, rng.integers(0, 5, len(on)))
        else:
            var = (rng.random(len(on)) < 0.3).astype(int) if part.instr == "sitar" else None
            _place(buf, sr, part.instr, on, dur, midi, vel, var)
    elif part.role == "choir":
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
            _place(buf, sr, f"voice_{kind}", on + 0.015 * j, dur, midi, vel, vowel)
    elif part.role == "chords":
        per = score.bar * (2 if slow else 1)
        on = np.arange(0, score.seconds, per)
        chord = score.chord(on)
        for offset in (0, 2, 4):
            midi = score.midi(chord + offset, part.octave)
            _place(
                buf, sr, part.instr, on, np.full(len(on), per * 0.98), midi, np.full(len(on), 0.8), None, 0.3
            )
    elif part.role == "arp":
        step = 0.25 if fast or part.instr == "synth_arp" else 0.5
        if slow:
            step = 1.0
        on = _grid(score, step)
        pattern = np.array((0, 2, 4, 7, 4, 2) if rng.random() < 0.5 else (0, 4, 2, 4, 7, 4, 2, 4))
        degree = score.chord(on) + pattern[np.arange(len(on)) % len(pattern)]
        vel = rng.uniform(0.65, 0.9, len(on)) * np.where(np.arange(len(on)) % 4 == 0, 1.0, 0.8)
        _place(
            buf,
            sr,
            part.instr,
            on,
            np.full(len(on), 2 * step * score.beat),
            score.midi(degree, part.octave),
            vel,
        )
    elif part.role == "strum":
        pattern = np.array((0, 1, 1.5, 2.5, 3) if rng.random() < 0.5 else (0, 1, 2, 2.5, 3, 3.5))
        bars = np.arange(score.n_bars)
        starts = (bars[:, None] * 4 + pattern[None, :]).ravel() * score.beat
        starts = starts[starts < score.seconds]
        up = np.isclose(starts / score.beat % 1, 0.5)
        chord = score.chord(starts)
        for string, offset in enumerate((0, 4, 7, 9, 11)):
            delay = np.where(up, 4 - string, string) * 0.012
            vel = rng.uniform(0.6, 0.85, len(starts)) * np.where(up, 0.7, 1.0)
            _place(
                buf,
                sr,
                part.instr,
                starts + delay,
                np.full(len(starts), 0.9 * score.beat),
                score.midi(chord + offset, part.octave),
                vel,
            )
    elif part.role == "power":
        step = 0.25 if fast else 0.5
        on = _grid(score, step)
        opened = np.isclose(on / score.beat % 2, 0) & (rng.random(len(on)) < 0.7)
        midi = score.midi(score.chord(on), part.octave)
        vel = rng.uniform(0.8, 1.0, len(on))
        dur = np.full(len(on), step * score.beat)
        _place(buf, sr, "power", on[opened], dur[opened] * 2, midi[opened], vel[opened])
        _place(buf, sr, "power_mute", on[~opened], dur[~opened], midi[~opened], vel[~opened])
    elif part.role == "bass":
        if part.instr == "cello":
            on = _grid(score, 1.0 if not fast else 0.5)
            walk = np.array((0, 4, 2, 4))[np.arange(len(on)) % 4]
            _place(
                buf,
                sr,
                "cello",
                on,
                np.full(len(on), score.beat * 0.9),
                score.midi(score.chord(on) + walk, 3),
                rng.uniform(0.7, 0.9, len(on)),
            )
        elif part.instr == "synth_bass":
            on = _grid(score, 0.25)
            keep = (rng.random(len(on)) < 0.7) | np.isclose(on / score.beat % 1, 0.5)
            on = on[keep]
            jump = rng.choice([0, 0, 0, 7, 2], len(on))
            _place(
                buf,
                sr,
                "synth_bass",
                on,
                np.full(len(on), 0.2 * score.beat),
                score.midi(score.chord(on) + jump, part.octave),
                rng.uniform(0.7, 1.0, len(on)),
            )
        else:
            on = _grid(score, 1.0 if slow else 0.5)
            jump = np.where(rng.random(len(on)) < 0.2, 4, 0) + np.where(rng.random(len(on)) < 0.1, 7, 0)
            _place(
                buf,
                sr,
                "bass",
                on,
                np.full(len(on), 0.45 * score.beat),
                score.midi(score.chord(on) + jump, part.octave),
                rng.uniform(0.75, 1.0, len(on)),
            )
    elif part.role == "drone":
        if part.instr == "tanpura":  # Pa, Sa', Sa', Sa: the tanpura's endless cycle
            period = rng.uniform(0.55, 0.7)
            on = np.arange(0, score.seconds, period)
            cycle = np.array((-5, 12, 12, 0))[np.arange(len(on)) % 4]
            midi = 12 * (part.octave + 1) + score.tonic + cycle
            _place(buf, sr, "tanpura", on, np.full(len(on), 3.0), midi, rng.uniform(0.7, 0.9, len(on)))
        else:
            per = 4 * score.bar
            on = np.arange(-0.5 * per, score.seconds, per / 2)
            on = np.clip(on, 0, None)
            midi = 12 * (part.octave + 1) + score.tonic + np.array((0, 7))[np.arange(len(on)) % 2]
            _place(buf, sr, "drone", on, np.full(len(on), per), midi, np.full(len(on), 0.9), None, 1.5)
    elif part.role == "drums":
        _drums(buf, score, part.instr, rng, sr)
    elif part.role == "tabla":
        _tabla(buf, score, rng, sr, 12 * (part.octave + 1) + score.tonic)
    else:
        raise ValueError(f"unknown part role {part.role!r}")


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


def _drums(buf: np.ndarray, score: _Score, kit: str, rng: np.random.Generator, sr: int) -> None:
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
        _place(
            buf,
            sr,
            sound,
            np.clip(on, 0, None),
            np.full(len(on), 1.0),
            np.zeros(len(on)),
            vel,
            rng.integers(0, 3, len(on)),
        )
    every = 16 if kit in ("techno", "trance") else 8
    crash = np.arange(0, score.n_bars, every) * score.bar
    _place(buf, sr, "crash", crash, np.full(len(crash), 2.0), np.zeros(len(crash)), np.full(len(crash), 0.7))


# Teental, 16 beats: a bol per beat; dha = na + ge, dhin = tin + ge, ta = na.
_TEENTAL = (
    "dha", "dhin", "dhin", "dha", "dha", "dhin", "dhin", "dha",
    "dha", "tin", "tin", "ta", "ta", "dhin", "dhin", "dha",
)  # fmt: skip


def _tabla(buf: np.ndarray, score: _Score, rng: np.random.Generator, sr: int, midi: int) -> None:
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
        _place(buf, sr, sound, beats[hit], np.full(n, 1.0), np.full(n, midi), vel[hit], rng.integers(0, 3, n))
    ka = beats + score.beat / 2
    ka = ka[rng.random(len(ka)) < 0.35]
    _place(
        buf,
        sr,
        "tabla_ka",
        ka,
        np.full(len(ka), 0.1),
        np.zeros(len(ka)),
        np.full(len(ka), 0.5),
        rng.integers(0, 3, len(ka)),
    )


@functools.lru_cache(maxsize=8)
def _room(sr: int, t60: float) -> np.ndarray:
    """Impulse response of a room: exponentially decaying noise with a few early reflections."""
    rng = _rng_for("room", sr, t60)
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
        bars_per_chord=2 if r.bpm <= 85 or r.style == "ambient" else 1,
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


# ---------------------------------------------------------------------------------------------------
# Writing the dataset.
# ---------------------------------------------------------------------------------------------------


def annotations_text(catalogue: Catalogue) -> str:
    """``annotations_final.csv``: clip_id, one 0/1 column per tag, mp3_path; clips with audio only."""
    lines = [format_line(("clip_id", *catalogue.tag_names, "mp3_path"))]
    for clip in catalogue.clips:
        on = set(clip.tags)
        flags = ["1" if t in on else "0" for t in catalogue.tag_names]
        lines.append(format_line((str(clip.clip_id), *flags, clip.mp3_path)))
    return "".join(lines)


def clip_info_text(catalogue: Catalogue) -> str:
    """``clip_info_final.csv``: one row per segment, with empty URL and path where there is no audio."""
    lines = [format_line(CLIP_INFO_COLUMNS)]
    for clip in catalogue.rows:
        song = catalogue.songs[clip.song]
        album_url = f"{URL_HOST}/artists/albums/{slugify(song.artist)}-{slugify(song.album)}/"
        audio_url = f"{URL_HOST}/all/{song.track:02d}--{song.title.replace(' ', '%20')}.mp3"
        lines.append(
            format_line(
                (
                    str(clip.clip_id),
                    f"{song.track:02d}",
                    song.title,
                    song.artist,
                    song.album,
                    album_url,
                    str(clip.start),
                    str(clip.end),
                    audio_url if clip.mp3_path else "",
                    clip.mp3_path,
                )
            )
        )
    return "".join(lines)


def _encode_mp3(x: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="MP3", subtype="MPEG_LAYER_III")
    return buf.getvalue()


def _write_song(out_dir: Path, catalogue: Catalogue, song: Song, sr: int, seed: int) -> float:
    """Synthesise one song, cut it into its clips and write their MP3s; returns seconds written."""
    audio = synthesise_song(song, sr, seed)
    clip_len = round(CLIP_SECONDS * sr)
    written = 0.0
    for clip in catalogue.rows:
        if clip.song != song.index or not clip.mp3_path:
            continue
        a = int(clip.start * sr)
        data = b"" if clip.broken == "empty" else _encode_mp3(audio[a : a + clip_len], sr)
        if clip.broken == "truncated":
            data = data[: max(1024, int(len(data) * TRUNCATED_SECONDS / CLIP_SECONDS))]
        with atomic_path(out_dir / clip.mp3_path) as tmp:
            tmp.write_bytes(data)
        written += CLIP_SECONDS if not clip.broken else 0.0
    return written


def generate_demo(out_dir: Path, params: DemoParams, seed: int, workers: int | None = None) -> dict:
    """Write the synthetic demo dataset into ``out_dir`` in MTAT's formats.

    Writes ``0``..``f``/``*.mp3`` (the folders the albums fall in), ``annotations_final.csv`` and
    ``clip_info_final.csv``; earlier copies of these are removed first. The CSVs are written last,
    atomically, so they exist only beside complete audio.

    Args:
        out_dir: the dataset folder (created if missing).
        params: the ``demo`` section of params.yaml.
        seed: the random seed; the same seed and params give byte-identical files.
        workers: songs synthesised at once (threads; default: up to 4, one per CPU core).

    Returns:
        A summary: counts of ``clips`` (with audio), ``songs``, ``albums``, ``artists``,
        ``raw_tags`` (annotation columns), ``broken_files``, ``untagged_clips``, ``clip_info_rows``,
        ``folders``, ``audio_seconds`` and ``seconds`` (time taken).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in AUDIO_FOLDERS:
        if (out_dir / name).is_dir():
            shutil.rmtree(out_dir / name)
    for name in CSV_FILES:
        (out_dir / name).unlink(missing_ok=True)
    catalogue = plan_catalogue(params, seed)
    for folder in sorted({s.folder for s in catalogue.songs}):
        (out_dir / folder).mkdir()
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    audio_seconds = 0.0
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(catalogue.songs), desc="demo songs", unit="song", disable=None) as bar,
    ):
        jobs = [
            pool.submit(_write_song, out_dir, catalogue, song, params.sample_rate, seed)
            for song in catalogue.songs
        ]
        for job in as_completed(jobs):
            audio_seconds += job.result()
            bar.update()
    _template.cache_clear()  # the note templates are only worth keeping within one run
    write_text(out_dir / CLIP_INFO_FILE, clip_info_text(catalogue))
    write_text(out_dir / ANNOTATIONS_FILE, annotations_text(catalogue))
    clips = catalogue.clips
    return {
        "clips": len(clips),
        "songs": len(catalogue.songs),
        "albums": len(catalogue.albums),
        "artists": len(catalogue.artists),
        "raw_tags": len(catalogue.tag_names),
        "broken_files": sum(1 for c in clips if c.broken),
        "untagged_clips": sum(1 for c in clips if not c.tags),
        "clip_info_rows": len(catalogue.rows),
        "folders": len({s.folder for s in catalogue.songs}),
        "audio_seconds": round(audio_seconds, 1),
        "seconds": round(time.perf_counter() - start, 2),
    }
