"""Labels and splits: synonym merge, top-N, the four split methods, leakage, training statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import SHARED_MTAT, repo_params_dict, toy_catalogue, write_annotations
from mstagger.core.errors import UserError
from mstagger.data.labels import (
    clip_meta,
    leakage,
    make_split,
    merge_synonyms,
    split_sizes,
    split_targets,
    top_n_tags,
    train_stats,
)
from mstagger.data.mtat import read_annotations, read_clip_info
from mstagger.params import ParamsError, SplitParams

EMPTY_CLIPS = ("35644", "55753", "57881")  # the three 0-byte MP3s of MTAT
PAPER_SYNONYMS = repo_params_dict()["tags"]["synonyms"]


@pytest.fixture
def toy_meta() -> pd.DataFrame:
    cat = toy_catalogue(n_artists=8)  # 16 albums: one per folder 0..f
    info = cat.rename(columns={"artist_name": "artist", "album_name": "album"})
    return clip_meta(cat[["clip_id", "mp3_path"]], info[["clip_id", "artist", "album", "mp3_path"]])


# ------------------------------------------------------------------------------------------- tags


def test_merge_synonyms_or_semantics_first_name_and_counts(tmp_path):
    tags = ["quick", "rock", "fast", "fast beat", "slow"]
    values = [
        [1, 0, 0, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 0, 1, 1],
        [0, 1, 0, 0, 1],
        [0, 0, 0, 0, 0],
    ]
    clips = [(str(i), f"0/a-b-01-s-{i}-{i + 1}.mp3", v) for i, v in enumerate(values)]
    df = read_annotations(write_annotations(tmp_path / "a.csv", tags, clips))
    merged = merge_synonyms(df[tags], [["fast", "fast beat", "quick"]])
    # the group takes its first name, at the place of its first member in file order
    assert list(merged.columns) == ["fast", "rock", "slow"]
    assert merged["fast"].tolist() == [1, 1, 1, 0, 0]  # OR of quick, fast, fast beat
    assert merged["rock"].tolist() == [0, 1, 0, 1, 0]
    assert merged.dtypes.eq(np.uint8).all()
    # fast 3; rock and slow tie at 2 -> by name
    assert top_n_tags(merged, 3) == [("fast", 3), ("rock", 2), ("slow", 2)]
    assert top_n_tags(merged, 2) == [("fast", 3), ("rock", 2)]


def test_top_n_ties_broken_by_name_not_column_order():
    merged = pd.DataFrame({"zeta": [1, 1, 0], "alpha": [1, 0, 1], "mid": [1, 1, 1], "beta": [0, 0, 1]})
    assert top_n_tags(merged, 4) == [("mid", 3), ("alpha", 2), ("zeta", 2), ("beta", 1)]


def test_top_n_larger_than_tags_is_a_params_error():
    merged = pd.DataFrame({"a": [1], "b": [0], "c": [1]})
    with pytest.raises(ParamsError, match=r"tags\.top_n.*\b5\b.*\b3\b"):
        top_n_tags(merged, 5)


def test_unknown_synonym_name_is_a_params_error():
    tags = pd.DataFrame({"rock": [1], "fast": [0], "slow": [1]})
    with pytest.raises(ParamsError, match=r"tags\.synonyms\[1\]: 'quick'"):
        merge_synonyms(tags, [["rock", "slow"], ["fast", "quick"]])


# ------------------------------------------------------------------------------------------ split


def test_split_targets_counts_fractions_and_errors():
    assert split_targets(100, 10, 20) == (70, 10, 20)
    assert split_targets(100, 0.1, 0.25) == (65, 10, 25)
    with pytest.raises(ParamsError, match=r"split\.valid_size"):
        split_targets(4, 0.1, 1)
    with pytest.raises(ParamsError, match=r"split\.valid_size/split\.test_size.*no training clip"):
        split_targets(30, 10, 20)


@pytest.mark.parametrize(("valid", "test", "expected"), [(14, 30, (148, 14, 30)), (0.1, 0.25, (125, 19, 48))])
def test_random_split_sizes_and_paper_order(toy_meta, valid, test, expected):
    split = make_split(toy_meta, SplitParams("random", valid, test), 1337)
    assert tuple(split_sizes(split).values()) == expected
    # the paper's order: shuffle, then train first, valid next, test last
    order = np.random.default_rng(1337).permutation(len(toy_meta))
    n_train, n_valid = expected[0], expected[1]
    assert (split.iloc[order[:n_train]] == "train").all()
    assert (split.iloc[order[n_train : n_train + n_valid]] == "valid").all()
    assert (split.iloc[order[n_train + n_valid :]] == "test").all()


@pytest.mark.parametrize("method", ["random", "song", "artist"])
def test_split_is_deterministic_per_seed(toy_meta, method):
    a = make_split(toy_meta, SplitParams(method, 0.15, 0.25), 7)
    b = make_split(toy_meta, SplitParams(method, 0.15, 0.25), 7)
    c = make_split(toy_meta, SplitParams(method, 0.15, 0.25), 8)
    assert a.equals(b)
    assert not a.equals(c)
    assert a.index.equals(toy_meta.index)


@pytest.mark.parametrize(("valid", "test"), [(20, 30), (0.1, 0.25)])
def test_song_split_whole_songs_near_sizes_no_song_leak(toy_meta, valid, test):
    split = make_split(toy_meta, SplitParams("song", valid, test), 3)
    _, n_valid, n_test = split_targets(len(toy_meta), valid, test)
    sizes = split_sizes(split)
    song_size = 4  # clips per song in the toy catalogue
    assert n_valid <= sizes["valid"] < n_valid + song_size
    assert n_test <= sizes["test"] < n_test + song_size
    assert sizes["train"] == len(toy_meta) - sizes["valid"] - sizes["test"]
    assert toy_meta.assign(split=split).groupby("song")["split"].nunique().max() == 1
    leaks = leakage(toy_meta, split)
    assert leaks["test_song_in_train"] == 0.0
    assert leaks["test_artist_in_train"] > 0  # songs of one artist are spread over the splits


def test_artist_split_keeps_artists_apart(toy_meta):
    split = make_split(toy_meta, SplitParams("artist", 1, 1), 5)
    assert toy_meta.assign(split=split).groupby("artist")["split"].nunique().max() == 1
    assert leakage(toy_meta, split) == {
        "test_song_in_train": 0.0,
        "test_album_in_train": 0.0,
        "test_artist_in_train": 0.0,
    }


def test_folder_split_by_first_path_character():
    paths = ["0/a.mp3", "9/b.mp3", "B/c.mp3", "c/d.mp3", "d/e.mp3", "F/f.mp3", "a/g.mp3"]
    meta = clip_meta(pd.DataFrame({"clip_id": [str(i) for i in range(7)], "mp3_path": paths}))
    split = make_split(meta, SplitParams("folder", 1000, 1000), 0)  # sizes are ignored
    assert split.tolist() == ["train", "train", "train", "valid", "test", "test", "train"]


def test_folder_split_errors(toy_meta):
    no_valid = toy_meta[~toy_meta["mp3_path"].str.startswith("c")]
    with pytest.raises(ParamsError, match=r"split\.valid_size.*valid split of \d+ clips is empty"):
        make_split(no_valid, SplitParams("folder", 0.1, 0.2), 0)
    odd = pd.DataFrame(
        {"clip_id": ["1"], "mp3_path": ["x/a.mp3"], "song": ["a"], "album": ["a"], "artist": ["a"]}
    )
    with pytest.raises(UserError, match=r"'x/a\.mp3' does not start with a folder 0-f"):
        make_split(odd, SplitParams("folder", 0.1, 0.2), 0)


def test_folder_split_on_toy_catalogue_has_no_song_or_album_leak(toy_meta):
    split = make_split(toy_meta, SplitParams("folder", 0.1, 0.2), 0)
    assert set(split) == {"train", "valid", "test"}
    leaks = leakage(toy_meta, split)
    assert leaks["test_song_in_train"] == 0.0
    assert leaks["test_album_in_train"] == 0.0


def test_leakage_counts_test_clips_sharing_with_train():
    meta = pd.DataFrame(
        {
            "song": ["s1", "s1", "s2", "s3", "s4", "s4"],
            "album": ["A", "A", "A", "B", "C", "C"],
            "artist": ["x", "x", "x", "y", "x", "x"],
        }
    )
    split = pd.Series(["train", "test", "test", "test", "valid", "test"])
    # test clips: s1 (song in train), s2 (album A in train), s3 (nothing), s4 (artist x only)
    assert leakage(meta, split) == {
        "test_song_in_train": 0.25,
        "test_album_in_train": 0.5,
        "test_artist_in_train": 0.75,
    }


def test_clip_meta_uses_clip_info_and_falls_back_to_the_path():
    clips = pd.DataFrame(
        {
            "clip_id": ["1", "2", "3"],
            "mp3_path": [
                "0/the_band-first_album-01-song-0-29.mp3",
                "0/the_band-first_album-02-other-29-58.mp3",
                "1/loner-lp-01-x-0-29.mp3",
            ],
        }
    )
    # clip 2 lacks clip_info: it takes the names of clip 1, which shares its file-name fields
    info = pd.DataFrame(
        {
            "clip_id": ["1"],
            "artist": ["The Band"],
            "album": ["First Album"],
            "mp3_path": [clips["mp3_path"][0]],
        }
    )
    meta = clip_meta(clips, info)
    assert meta["artist"].tolist() == ["The Band", "The Band", "loner"]
    assert meta["album"].tolist() == ["The Band / First Album", "The Band / First Album", "loner-lp"]
    assert meta["song"].tolist() == [
        "the_band-first_album-01-song",
        "the_band-first_album-02-other",
        "loner-lp-01-x",
    ]


# ------------------------------------------------------------------------------------------ stats


def test_train_stats_ignore_non_training_rows(tmp_path):
    rng = np.random.default_rng(0)
    n, n_mels, n_frames = 11, 5, 7
    data = rng.normal(size=(n, n_mels, n_frames)) * np.arange(1, n_mels + 1)[None, :, None] - 3
    train = np.array([0, 2, 3, 5, 6, 9, 10])
    held_out = np.setdiff1d(np.arange(n), train)
    data[held_out] = 30000.0  # huge test/valid values: any use of them would show
    np.save(tmp_path / "mel.npy", data.astype(np.float16))
    mel = np.load(tmp_path / "mel.npy", mmap_mode="r")
    mean, std = train_stats(mel, train[::-1], chunk_clips=3, progress=False)  # chunks combine
    ref = np.asarray(mel[train], dtype=np.float64)
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2)), rtol=1e-10)
    assert mean.dtype == np.float64
    assert np.all(np.abs(mean) < 100)
    with pytest.raises(UserError, match="at least one training clip"):
        train_stats(mel, [], progress=False)


def test_train_stats_are_the_same_bits_whatever_the_order_and_chunking(tmp_path):
    """The statistics are counted, not summed in a running order: any chunk size, row order or
    placement of the clips in the file gives the same float64 bits (a float64 running sum does not)."""
    rng = np.random.default_rng(5)
    data = (rng.normal(size=(40, 6, 50)) * 10.0 ** rng.uniform(-1, 1.5, size=(40, 6, 1)) - 20).astype(
        np.float16
    )
    train = np.arange(0, 40, 2)
    mean, std = train_stats(data, train, chunk_clips=64, progress=False)
    ref = data[train].astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2)), rtol=1e-13)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2)), rtol=1e-12)
    moved = np.random.default_rng(6).permutation(40)  # the same clips at other rows of the file
    placed = np.empty_like(data)
    placed[moved] = data
    for chunk in (1, 3, 7):
        for mel, rows in ((data, train[::-1]), (placed, moved[train])):
            other_mean, other_std = train_stats(mel, rows, chunk_clips=chunk, progress=False)
            assert other_mean.tobytes() == mean.tobytes() and other_std.tobytes() == std.tobytes()


def test_train_stats_name_what_to_do_with_a_bad_array():
    with pytest.raises(UserError, match=r"float32 values.*re-run the extract stage"):
        train_stats(np.zeros((2, 3, 4), np.float32), [0], progress=False)
    bad = np.zeros((2, 3, 4), np.float16)
    bad[1, 2, 3] = np.inf
    with pytest.raises(UserError, match="non-finite"):
        train_stats(bad, [1], progress=False)
    train_stats(bad, [0], progress=False)  # only the training rows count


# ------------------------------------------------------------------------------- real MTAT metadata


@pytest.fixture(scope="module")
def real():
    if not all((SHARED_MTAT / name).is_file() for name in ("annotations_final.csv", "clip_info_final.csv")):
        pytest.skip(f"real MTAT metadata not found in {SHARED_MTAT}")
    annotations = read_annotations(SHARED_MTAT / "annotations_final.csv")
    clip_info = read_clip_info(SHARED_MTAT / "clip_info_final.csv")
    kept = annotations[~annotations["clip_id"].isin(EMPTY_CLIPS)].reset_index(drop=True)
    return {"annotations": annotations, "kept": kept, "meta": clip_meta(kept, clip_info)}


def test_real_tags_merge_and_top50(real):
    annotations = real["annotations"]
    tags = [c for c in annotations.columns if c not in ("clip_id", "mp3_path")]
    assert len(annotations) == 25863 and len(tags) == 188
    assert {name for group in PAPER_SYNONYMS for name in group} <= set(tags)
    merged = merge_synonyms(real["kept"][tags], PAPER_SYNONYMS)
    n_names = sum(len(g) for g in PAPER_SYNONYMS)
    assert merged.shape == (25860, 188 - n_names + len(PAPER_SYNONYMS))
    top = top_n_tags(merged, 50)
    assert len(top) == 50
    assert top[0] == ("guitar", 4860)
    assert [n for n, _ in top[:3]] == ["guitar", "classical", "slow"]


def test_real_split_sizes_and_leakage(real):
    meta = real["meta"]
    assert len(meta) == 25860
    folder = make_split(meta, SplitParams("folder", 0.1, 0.2), 1337)
    assert split_sizes(folder) == {"train": 18706, "valid": 1825, "test": 5329}
    leaks = leakage(meta, folder)
    assert leaks["test_song_in_train"] == 0.0 and leaks["test_album_in_train"] == 0.0
    assert 0.55 < leaks["test_artist_in_train"] < 0.7

    random = make_split(meta, SplitParams("random", 2000, 5860), 1337)
    assert split_sizes(random) == {"train": 18000, "valid": 2000, "test": 5860}
    assert leakage(meta, random)["test_song_in_train"] > 0.9

    song = make_split(meta, SplitParams("song", 2000, 5860), 1337)
    assert leakage(meta, song)["test_song_in_train"] == 0.0
    artist = make_split(meta, SplitParams("artist", 2000, 5860), 1337)
    assert leakage(meta, artist)["test_artist_in_train"] == 0.0
