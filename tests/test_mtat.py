"""MTAT's on-disk format: the annotation and clip-info readers and the song key."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import SHARED_MTAT, write_annotations, write_mtat_table
from mstagger.core.errors import UserError
from mstagger.data.mtat import CLIP_INFO_COLUMNS, clip_path, read_annotations, slugify, song_key

# ------------------------------------------------------------------------------------ annotations


def test_read_annotations_parses_mtat_quoting(tmp_path):
    path = write_annotations(
        tmp_path / "a.csv",
        ["rock", "no voice"],
        [("2", "f/x-y-01-t-0-29.mp3", [1, 0]), ("6", "f/x-y-01-t-29-58.mp3", [0, 1])],
    )
    df = read_annotations(path)
    assert list(df.columns) == ["clip_id", "rock", "no voice", "mp3_path"]
    assert df["clip_id"].tolist() == ["2", "6"]
    assert df["mp3_path"].tolist() == ["f/x-y-01-t-0-29.mp3", "f/x-y-01-t-29-58.mp3"]
    assert df["rock"].dtype == np.uint8
    assert df[["rock", "no voice"]].to_numpy().tolist() == [[1, 0], [0, 1]]


def test_read_annotations_rejects_bad_value_and_names_it(tmp_path):
    path = write_mtat_table(tmp_path / "a.csv", ["clip_id", "rock", "mp3_path"], [["2", "yes", "f/a.mp3"]])
    with pytest.raises(UserError, match=r"a\.csv.*clip 2 tag 'rock' is 'yes'"):
        read_annotations(path)


def test_read_annotations_bad_header_and_missing_file(tmp_path):
    path = write_mtat_table(tmp_path / "a.csv", ["id", "rock", "path"], [["2", "1", "f/a.mp3"]])
    with pytest.raises(UserError, match="lacks column"):
        read_annotations(path)
    with pytest.raises(UserError, match="annotations not found"):
        read_annotations(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match="is empty"):
        read_annotations(tmp_path / "empty.csv")


def test_song_key_strips_folder_and_segment():
    assert (
        song_key("f/american_bach-solo-01-bwv54__i_aria-30-59.mp3") == "american_bach-solo-01-bwv54__i_aria"
    )
    assert song_key("odd.mp3") == "odd"


def test_slugify_follows_mtat_names() -> None:
    assert slugify("J.S. Bach Solo Cantatas") == "j_s__bach_solo_cantatas"
    assert slugify("BWV54 - I Aria") == "bwv54__i_aria"
    assert slugify("Lesson 1 in G Major_ Prelude (James Nares)") == "lesson_1_in_g_major_prelude_james_nares"


def test_clip_path_reproduces_real_mtat_paths() -> None:
    path = SHARED_MTAT / "clip_info_final.csv"
    if not path.is_file():
        pytest.skip(f"real MTAT metadata not found at {path}")
    info = pd.read_csv(path, sep="\t", dtype=str)
    assert tuple(info.columns) == CLIP_INFO_COLUMNS  # the columns the demo and tests/helpers.py write
    info = info.dropna(subset=["mp3_path"]).head(2000)
    for row in info.itertuples():
        folder = row.mp3_path.split("/", 1)[0]
        made = clip_path(
            folder, row.artist, row.album, int(row.track_number), row.title, row.segmentStart, row.segmentEnd
        )
        assert made == row.mp3_path
