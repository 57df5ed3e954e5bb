"""MagnaTagATune's on-disk format, stated once: file names, folders, the folder split, the two CSVs.

MTAT ships ``annotations_final.csv`` (``clip_id``, one 0/1 column per tag, ``mp3_path``) and
``clip_info_final.csv`` (``clip_id``, track, title, artist, album, ..., ``mp3_path``): tab-separated,
every field double-quoted, CRLF line ends. The audio lies in 16 folders ``0``..``f`` as
``<folder>/<artist>-<album>-<track>-<title>-<start>-<end>.mp3``; the three parts ``mp3.zip.001..003``
concatenated form one zip of those folders. ``download``, ``extract``, ``prepare``, the demo and
``mstagger tags`` all read and write the format through this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mstagger.core.errors import UserError

ANNOTATIONS_FILE = "annotations_final.csv"
CLIP_INFO_FILE = "clip_info_final.csv"
CSV_FILES = (ANNOTATIONS_FILE, CLIP_INFO_FILE)
ARCHIVE_PARTS = ("mp3.zip.001", "mp3.zip.002", "mp3.zip.003")
AUDIO_FOLDERS = tuple("0123456789abcdef")
CLIP_INFO_COLUMNS = (
    "clip_id",
    "track_number",
    "title",
    "artist",
    "album",
    "url",
    "segmentStart",
    "segmentEnd",
    "original_url",
    "mp3_path",
)
SPLITS = ("train", "valid", "test")
DROPPED = "dropped"  # split.csv's mark for a clip the protocol drops (e.g. won's untagged clips)
# The literature's split by audio folder (Dieleman and Schrauwen 2014): 0-b train, c valid, d-f test.
# MTAT keeps every clip of an album in one folder, so no song or album crosses it.
FOLDER_SPLIT = {**{f: "train" for f in "0123456789ab"}, "c": "valid", **{f: "test" for f in "def"}}

MTAT_CLIPS = 25863  # rows of MTAT's annotations_final.csv (clips with audio)
# MTAT's three 0-byte MP3s (rows 16250, 24867 and 25546 of annotations_final.csv): no decoder reads them,
# so extract always skips them and every protocol's sizes are counted without them. Matched by clip id and
# path together, so that no other dataset's clips are touched.
KNOWN_EMPTY_CLIPS = {
    "35644": "6/norine_braun-now_and_zen-08-gently-117-146.mp3",
    "55753": "8/jacob_heringman-josquin_des_prez_lute_settings-19-gintzler__pater_noster-204-233.mp3",
    "57881": (
        "9/american_baroque-dances_and_suites_of_rameau_and_couperin-25-"
        "le_petit_rien_xiveme_ordre_couperin-88-117.mp3"
    ),
}

# The trailing "-<start>-<end>.mp3" of a clip's file name; what precedes it names the song.
_SEGMENT_SUFFIX = re.compile(r"-\d+-\d+\.mp3$", re.IGNORECASE)
RUN_DOWNLOAD = "; run the download stage first (dvc repro download)"  # a hint for the stages' errors


def format_line(values: Iterable[str]) -> str:
    """One CSV line as MTAT writes it: every field double-quoted, tab-separated, CRLF."""
    return "\t".join(f'"{v}"' for v in values) + "\r\n"


def slugify(text: str) -> str:
    """MTAT's file-name rule: lower case, space . : , ; / & become ``_``, other punctuation dropped."""
    out = []
    for ch in text.lower():
        if ch.isascii() and ch.isalnum():
            out.append(ch)
        elif ch in " .:,;/&":
            out.append("_")
    return "".join(out)


def clip_path(
    folder: str, artist: str, album: str, track: int, title: str, start: int | str, end: int | str
) -> str:
    """A clip's ``mp3_path``: ``<folder>/<artist>-<album>-<track>-<title>-<start>-<end>.mp3``, slugified."""
    return f"{folder}/{slugify(artist)}-{slugify(album)}-{track:02d}-{slugify(title)}-{start}-{end}.mp3"


def folder_of(mp3_path: str) -> str:
    """The audio folder (``0``..``f``) of a clip path, lower-cased; ``""`` for an empty path."""
    return mp3_path.replace("\\", "/").split("/", 1)[0][:1].lower() if mp3_path else ""


def song_key(mp3_path: str) -> str:
    """The song of a clip: its file name without folder and without the trailing ``-<start>-<end>.mp3``."""
    name = mp3_path.replace("\\", "/").rsplit("/", 1)[-1]
    stripped = _SEGMENT_SUFFIX.sub("", name)
    return stripped if stripped != name else re.sub(r"\.mp3$", "", name, flags=re.IGNORECASE)


def name_fields(paths: pd.Series, k: int) -> pd.Series:
    """The first ``k`` ``-``-separated fields of each file name (``k=1``: artist, ``k=2``: album)."""
    names = paths.str.replace("\\", "/", regex=False).str.rsplit("/", n=1).str[-1]
    return names.str.split("-").str[:k].str.join("-")


def listed_clips(clips: pd.DataFrame, listed: dict[str, str]) -> pd.Series:
    """Which rows of ``clips`` (``clip_id``, ``mp3_path``) are in ``listed`` (clip id -> path), both matching.

    Returns:
        A bool Series with ``clips``' index.
    """
    return clips["clip_id"].map(listed).eq(clips["mp3_path"]).fillna(False).astype(bool)


def read_table(
    path: str | Path, what: str, required: Sequence[str], sep: str = "\t", hint: str = ""
) -> pd.DataFrame:
    """Read a quoted table as strings and check it has the ``required`` columns.

    Args:
        path: the file.
        what: names the file in errors (``annotations``, ``feature index``, ...).
        required: columns that must be present.
        sep: the field separator (MTAT: tab).
        hint: appended to the "not found" error, e.g. which stage writes the file.

    Raises:
        UserError: the file is missing, empty, unparsable or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}{hint}")
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise UserError(f"{what} {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path} cannot be parsed: {str(err).strip()}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        shown = ", ".join(map(str, df.columns[:5])) + (", ..." if len(df.columns) > 5 else "")
        raise UserError(f"{what} {path} lacks column(s) {', '.join(missing)} (it has: {shown})")
    return df


def read_annotations(path: str | Path, hint: str = "") -> pd.DataFrame:
    """Read MTAT's ``annotations_final.csv`` (header ``clip_id``, tag names..., ``mp3_path``).

    Args:
        path: the annotations file.
        hint: appended to the "not found" error (e.g. :data:`RUN_DOWNLOAD`).

    Returns:
        A frame with ``clip_id`` (str), one uint8 0/1 column per tag in file order, and ``mp3_path``
        (str), rows in file order.

    Raises:
        UserError: the file is missing or malformed (wrong header, a repeated tag or clip id, a value
            not 0/1).
    """
    df = read_table(path, "annotations", ["clip_id", "mp3_path"], hint=hint)
    cols = list(df.columns)
    if cols[0] != "clip_id" or cols[-1] != "mp3_path" or len(cols) < 3:
        raise UserError(
            f"annotations {path}: expected the header clip_id, <tag names>, mp3_path; got {cols[:3]}..."
        )
    tags = cols[1:-1]
    mangled = [t for t in tags if re.search(r"\.\d+$", t) and t.rsplit(".", 1)[0] in tags]
    if mangled:
        raise UserError(f"annotations {path}: duplicate tag column(s) {', '.join(mangled)}")
    dup = df["clip_id"][df["clip_id"].duplicated()]
    if len(dup):
        raise UserError(f"annotations {path}: clip_id {dup.iloc[0]} appears more than once")
    values = df[tags].to_numpy()
    ones = values == "1"
    bad = ~(ones | (values == "0"))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise UserError(
            f"annotations {path}: clip {df['clip_id'].iloc[r]} tag {tags[c]!r} is {values[r, c]!r}, "
            "expected 0 or 1; is this MTAT's annotations_final.csv?"
        )
    out = pd.DataFrame(ones.astype(np.uint8), columns=tags, index=df.index)
    out.insert(0, "clip_id", df["clip_id"])
    out["mp3_path"] = df["mp3_path"]
    return out


def read_clip_info(path: str | Path, hint: str = "") -> pd.DataFrame:
    """Read MTAT's ``clip_info_final.csv``.

    Args:
        path: the clip info file.
        hint: appended to the "not found" error.

    Returns:
        A frame with the string columns ``clip_id``, ``artist``, ``album``, ``mp3_path``; a clip id
        listed twice keeps its first row.

    Raises:
        UserError: the file is missing or lacks one of those columns.
    """
    df = read_table(path, "clip info", ["clip_id", "artist", "album", "mp3_path"], hint=hint)
    return df[["clip_id", "artist", "album", "mp3_path"]].drop_duplicates("clip_id").reset_index(drop=True)
