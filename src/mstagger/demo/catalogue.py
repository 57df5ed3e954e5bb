"""The catalogue: artists, albums, songs, clips and their crowd labels, planned without audio."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mstagger.data.mtat import AUDIO_FOLDERS, FOLDER_SPLIT, clip_path, slugify
from mstagger.demo.randomness import pick
from mstagger.demo.styles import STYLES, VARIANTS, Recipe, make_recipe
from mstagger.params import DemoParams

SEGMENT_SECONDS = 29  # MTAT's nominal segment length (segmentEnd - segmentStart)
CLIP_SECONDS = 29.3  # audio written per clip; decodes to >= 29.2 s, above the extractor's 29.1 s
UNTAGGED_FRACTION = 0.04  # clips whose annotators gave no tag at all (MTAT: 16%)
# The validation folder gets albums enough for this many clips: with one album in sixteen (8 clips by
# default) the validation score moves in steps so coarse that a rounding difference between two CPUs
# flips the epoch selected (best epoch 17 or 30). It takes them from training, never more than a quarter
# of all albums.
VALID_MIN_CLIPS = 24
VALID_MAX_SHARE = 0.25

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
            return f"{pick(rng, _LAST)} {pick(rng, _ENSEMBLE)}"
        return f"{pick(rng, _FIRST)} {pick(rng, _LAST)}"
    return f"The {pick(rng, _ADJ)} {pick(rng, _NOUN)}" if rng.random() < 0.5 else pick(rng, _NOUN)


def _album_name(rng: np.random.Generator, style: str, variant: str) -> str:
    if style == "classical":
        return f"{pick(rng, _COMPOSERS)}: {pick(rng, _FORMS)}"
    if style in ("opera", "choral"):
        return f"{pick(rng, _LATIN)} and other {pick(rng, ('Arias', 'Motets', 'Chants', 'Hymns'))}"
    if style == "indian":
        return f"Raga {pick(rng, _RAGAS)} ({variant.title()})"
    return f"{pick(rng, _ADJ)} {pick(rng, _NOUN)}"


def _title(rng: np.random.Generator, style: str) -> str:
    if style == "classical":
        return (
            f"{pick(rng, _FORMS)[:-1]} No. {int(rng.integers(1, 13))} - "
            f"{pick(rng, _NUMERALS)}. {pick(rng, _MOVEMENTS)}"
        )
    if style in ("opera", "choral"):
        return f"{pick(rng, _LATIN)} ({pick(rng, _LAST)})"
    if style == "indian":
        return f"Raga {pick(rng, _RAGAS)}: {pick(rng, ('Alap', 'Jor', 'Gat', 'Bandish'))}"
    if style == "techno":
        return f"{pick(rng, _NOUN)} {int(rng.integers(101, 999))}"
    return f"{pick(rng, _ADJ)} {pick(rng, _NOUN)}"


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


def _album_folders(
    n_artists: int, albums_per_artist: int, clips_per_album: int, rng: np.random.Generator
) -> list[str]:
    """Folder of each album, in (artist, album) order: all 16 folders used, each about equally.

    Folders are dealt by a seeded shuffle. The validation folder of the folder split then takes albums
    from the training folders, the last dealt first, until it holds :data:`VALID_MIN_CLIPS` clips (at
    most :data:`VALID_MAX_SHARE` of the albums). Last, the folders are repaired so that, where the
    numbers allow, every artist keeps an album in the training folders 0-b, and so does each of an
    artist's two variants (albums alternate between them) when it has at least two albums: a style or
    variant that appears only in valid or test could not be learnt from the demo's few songs.
    """
    n_albums = n_artists * albums_per_artist
    n_folders = len(AUDIO_FOLDERS)
    order = np.concatenate([rng.permutation(n_folders) for _ in range(-(-n_albums // n_folders))])[:n_albums]
    folders = [AUDIO_FOLDERS[int(i)] for i in order]
    held_out = {folder for folder, part in FOLDER_SPLIT.items() if part != "train"}
    valid = next(folder for folder, part in FOLDER_SPLIT.items() if part == "valid")
    n_valid = min(-(-VALID_MIN_CLIPS // clips_per_album), int(n_albums * VALID_MAX_SHARE))
    training = [i for i in reversed(range(n_albums)) if folders[i] not in held_out]
    for i in training[: max(0, n_valid - folders.count(valid))]:
        folders[i] = valid
    artist = [i // albums_per_artist for i in range(n_albums)]
    variant = [(i // albums_per_artist, i % albums_per_artist % 2) for i in range(n_albums)]

    def trained(group: list, key: object) -> int:
        return sum(folders[i] not in held_out for i in range(n_albums) if group[i] == key)

    for group in (artist, variant):
        for key in dict.fromkeys(group):
            mine = [i for i in range(n_albums) if group[i] == key]
            if trained(group, key) or (group is variant and len(mine) < 2):
                continue
            # Swap with a training album whose artist and variant both keep another training album;
            # a validation album first, so that the test folders keep the albums they were dealt.
            back = min(mine, key=lambda i: folders[i] != valid)
            for other in range(n_albums):
                if (
                    folders[other] not in held_out
                    and trained(artist, artist[other]) > 1
                    and (trained(variant, variant[other]) > 1 or group is artist)
                ):
                    folders[back], folders[other] = folders[other], folders[back]
                    break
    return folders


def plan_catalogue(params: DemoParams, seed: int) -> Catalogue:
    """Plan the whole demo dataset without synthesising audio: names, folders, recipes, labels.

    Artists get styles from a seeded shuffle of :data:`STYLES` (cycled when there are more artists
    than styles), their albums alternate between the style's two variants (the songs of one artist's
    variant share a line-up), albums are spread over the 16 folders, the validation folder holding
    enough for a stable choice of epoch (the defaults: 32 albums of 4 clips, six in the validation
    folder c, six in the test folders d-f, twenty in training), and every clip is labelled.

    Args:
        params: the ``demo`` section of params.yaml.
        seed: the random seed.

    Returns:
        The :class:`Catalogue`; the same arguments always give the same catalogue.
    """
    rng = np.random.default_rng([seed, 0])
    style_order = rng.permutation(len(STYLES))
    n_albums = params.n_artists * params.albums_per_artist
    clips_per_album = params.songs_per_album * params.clips_per_song
    folder_order = _album_folders(params.n_artists, params.albums_per_artist, clips_per_album, rng)
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
                        path = clip_path(folder, artist, album, int(track), title, start, end)
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
