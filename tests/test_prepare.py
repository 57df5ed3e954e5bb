"""Tests of the prepare stage (tags, split, leakage, training statistics) and of `mstagger tags`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mstagger import prepare as prep
from mstagger import tags_cli
from mstagger.params import PAPER_SYNONYMS, ParamsError
from mstagger.util import UserError

MTAT = Path(__file__).resolve().parents[2] / "shared" / "mtat"
EMPTY_CLIPS = ("35644", "55753", "57881")  # the three 0-byte MP3s of MTAT


# ---------------------------------------------------------------------------------------- fixtures


def write_mtat_table(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """Write a table as MTAT does: tab-separated, every field double-quoted, CRLF line ends."""
    lines = ["\t".join(f'"{v}"' for v in line) for line in [header, *rows]]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return path


def write_annotations(path: Path, tags: list[str], clips: list[tuple[str, str, list[int]]]) -> Path:
    """clips: (clip_id, mp3_path, 0/1 per tag)."""
    rows = [[cid, *values, mp3] for cid, mp3, values in clips]
    return write_mtat_table(path, ["clip_id", *tags, "mp3_path"], rows)


def write_clip_info(path: Path, clips: list[tuple[str, str, str, str]]) -> Path:
    """clips: (clip_id, artist, album, mp3_path)."""
    header = [
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
    ]
    rows = [[cid, "01", "t", artist, album, "u", "0", "29", "o", mp3] for cid, artist, album, mp3 in clips]
    return write_mtat_table(path, header, rows)


def toy_catalogue(n_artists: int = 6, albums: int = 2, songs: int = 3, clips: int = 4) -> pd.DataFrame:
    """Clips in MTAT's path layout; each album lives in one folder, folders cycle through 0..f."""
    rows = []
    cid = 0
    folders = "0123456789abcdef"
    for a in range(n_artists):
        for b in range(albums):
            folder = folders[(a * albums + b) % 16]
            for s in range(songs):
                for c in range(clips):
                    start = 29 * c
                    path = f"{folder}/artist_{a}-album_{b}-{s + 1:02d}-song_{s}-{start}-{start + 29}.mp3"
                    rows.append(
                        {
                            "clip_id": str(cid),
                            "mp3_path": path,
                            "artist_name": f"Artist {a}",
                            "album_name": f"Album {b}",
                        }
                    )
                    cid += 1
    return pd.DataFrame(rows)


@pytest.fixture
def toy_meta() -> pd.DataFrame:
    cat = toy_catalogue(n_artists=8)  # 16 albums: one per folder 0..f
    info = cat.rename(columns={"artist_name": "artist", "album_name": "album"})
    return prep.clip_meta(cat[["clip_id", "mp3_path"]], info[["clip_id", "artist", "album", "mp3_path"]])


# ------------------------------------------------------------------------------------ annotations


def test_read_annotations_parses_mtat_quoting(tmp_path):
    path = write_annotations(
        tmp_path / "a.csv",
        ["rock", "no voice"],
        [("2", "f/x-y-01-t-0-29.mp3", [1, 0]), ("6", "f/x-y-01-t-29-58.mp3", [0, 1])],
    )
    df = prep.read_annotations(path)
    assert list(df.columns) == ["clip_id", "rock", "no voice", "mp3_path"]
    assert df["clip_id"].tolist() == ["2", "6"]
    assert df["mp3_path"].tolist() == ["f/x-y-01-t-0-29.mp3", "f/x-y-01-t-29-58.mp3"]
    assert df["rock"].dtype == np.uint8
    assert df[["rock", "no voice"]].to_numpy().tolist() == [[1, 0], [0, 1]]


def test_read_annotations_rejects_bad_value_and_names_it(tmp_path):
    path = write_mtat_table(tmp_path / "a.csv", ["clip_id", "rock", "mp3_path"], [["2", "yes", "f/a.mp3"]])
    with pytest.raises(UserError, match=r"a\.csv.*clip 2 tag 'rock' is 'yes'"):
        prep.read_annotations(path)


def test_read_annotations_bad_header_and_missing_file(tmp_path):
    path = write_mtat_table(tmp_path / "a.csv", ["id", "rock", "path"], [["2", "1", "f/a.mp3"]])
    with pytest.raises(UserError, match="lacks column"):
        prep.read_annotations(path)
    with pytest.raises(UserError, match="annotations not found"):
        prep.read_annotations(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match="is empty"):
        prep.read_annotations(tmp_path / "empty.csv")


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
    df = prep.read_annotations(write_annotations(tmp_path / "a.csv", tags, clips))
    merged = prep.merge_synonyms(df[tags], [["fast", "fast beat", "quick"]])
    # the group takes its first name, at the place of its first member in file order
    assert list(merged.columns) == ["fast", "rock", "slow"]
    assert merged["fast"].tolist() == [1, 1, 1, 0, 0]  # OR of quick, fast, fast beat
    assert merged["rock"].tolist() == [0, 1, 0, 1, 0]
    assert merged.dtypes.eq(np.uint8).all()
    # fast 3; rock and slow tie at 2 -> by name
    assert prep.top_n_tags(merged, 3) == [("fast", 3), ("rock", 2), ("slow", 2)]
    assert prep.top_n_tags(merged, 2) == [("fast", 3), ("rock", 2)]


def test_top_n_ties_broken_by_name_not_column_order():
    merged = pd.DataFrame({"zeta": [1, 1, 0], "alpha": [1, 0, 1], "mid": [1, 1, 1], "beta": [0, 0, 1]})
    assert prep.top_n_tags(merged, 4) == [("mid", 3), ("alpha", 2), ("zeta", 2), ("beta", 1)]


def test_top_n_larger_than_tags_is_a_params_error():
    merged = pd.DataFrame({"a": [1], "b": [0], "c": [1]})
    with pytest.raises(ParamsError, match=r"tags\.top_n.*\b5\b.*\b3\b"):
        prep.top_n_tags(merged, 5)


def test_unknown_synonym_name_is_a_params_error():
    tags = pd.DataFrame({"rock": [1], "fast": [0], "slow": [1]})
    with pytest.raises(ParamsError, match=r"tags\.synonyms\[1\]: 'quick'"):
        prep.merge_synonyms(tags, [["rock", "slow"], ["fast", "quick"]])


# ------------------------------------------------------------------------------------------ split


def test_song_key_strips_folder_and_segment():
    assert (
        prep.song_key("f/american_bach-solo-01-bwv54__i_aria-30-59.mp3")
        == "american_bach-solo-01-bwv54__i_aria"
    )
    assert prep.song_key("odd.mp3") == "odd"


def test_split_targets_counts_fractions_and_errors():
    assert prep.split_targets(100, 10, 20) == (70, 10, 20)
    assert prep.split_targets(100, 0.1, 0.25) == (65, 10, 25)
    with pytest.raises(ParamsError, match=r"split\.valid_size"):
        prep.split_targets(4, 0.1, 1)
    with pytest.raises(ParamsError, match=r"split\.valid_size/split\.test_size.*no training clip"):
        prep.split_targets(30, 10, 20)


@pytest.mark.parametrize(("valid", "test", "expected"), [(14, 30, (148, 14, 30)), (0.1, 0.25, (125, 19, 48))])
def test_random_split_sizes_and_paper_order(toy_meta, valid, test, expected):
    split = prep.make_split(toy_meta, "random", valid, test, seed=1337)
    assert tuple(prep.split_sizes(split).values()) == expected
    # the paper's order: shuffle, then train first, valid next, test last
    order = np.random.default_rng(1337).permutation(len(toy_meta))
    n_train, n_valid = expected[0], expected[1]
    assert (split.iloc[order[:n_train]] == "train").all()
    assert (split.iloc[order[n_train : n_train + n_valid]] == "valid").all()
    assert (split.iloc[order[n_train + n_valid :]] == "test").all()


@pytest.mark.parametrize("method", ["random", "song", "artist"])
def test_split_is_deterministic_per_seed(toy_meta, method):
    a = prep.make_split(toy_meta, method, 0.15, 0.25, seed=7)
    b = prep.make_split(toy_meta, method, 0.15, 0.25, seed=7)
    c = prep.make_split(toy_meta, method, 0.15, 0.25, seed=8)
    assert a.equals(b)
    assert not a.equals(c)
    assert a.index.equals(toy_meta.index)


@pytest.mark.parametrize(("valid", "test"), [(20, 30), (0.1, 0.25)])
def test_song_split_whole_songs_near_sizes_no_song_leak(toy_meta, valid, test):
    split = prep.make_split(toy_meta, "song", valid, test, seed=3)
    _, n_valid, n_test = prep.split_targets(len(toy_meta), valid, test)
    sizes = prep.split_sizes(split)
    song_size = 4  # clips per song in the toy catalogue
    assert n_valid <= sizes["valid"] < n_valid + song_size
    assert n_test <= sizes["test"] < n_test + song_size
    assert sizes["train"] == len(toy_meta) - sizes["valid"] - sizes["test"]
    assert toy_meta.assign(split=split).groupby("song")["split"].nunique().max() == 1
    leaks = prep.leakage(toy_meta, split)
    assert leaks["test_song_in_train"] == 0.0
    assert leaks["test_artist_in_train"] > 0  # songs of one artist are spread over the splits


def test_artist_split_keeps_artists_apart(toy_meta):
    split = prep.make_split(toy_meta, "artist", 1, 1, seed=5)
    assert toy_meta.assign(split=split).groupby("artist")["split"].nunique().max() == 1
    assert prep.leakage(toy_meta, split) == {
        "test_song_in_train": 0.0,
        "test_album_in_train": 0.0,
        "test_artist_in_train": 0.0,
    }


def test_folder_split_by_first_path_character():
    paths = ["0/a.mp3", "9/b.mp3", "B/c.mp3", "c/d.mp3", "d/e.mp3", "F/f.mp3", "a/g.mp3"]
    meta = prep.clip_meta(pd.DataFrame({"clip_id": [str(i) for i in range(7)], "mp3_path": paths}))
    split = prep.make_split(meta, "folder", 1000, 1000, seed=0)  # sizes are ignored
    assert split.tolist() == ["train", "train", "train", "valid", "test", "test", "train"]


def test_folder_split_errors(toy_meta):
    no_valid = toy_meta[~toy_meta["mp3_path"].str.startswith("c")]
    with pytest.raises(ParamsError, match=r"split\.valid_size.*valid split of \d+ clips is empty"):
        prep.make_split(no_valid, "folder", 0.1, 0.2, seed=0)
    odd = pd.DataFrame(
        {"clip_id": ["1"], "mp3_path": ["x/a.mp3"], "song": ["a"], "album": ["a"], "artist": ["a"]}
    )
    with pytest.raises(UserError, match=r"'x/a\.mp3' does not start with a folder 0-f"):
        prep.make_split(odd, "folder", 0.1, 0.2, seed=0)


def test_folder_split_on_toy_catalogue_has_no_song_or_album_leak(toy_meta):
    split = prep.make_split(toy_meta, "folder", 0.1, 0.2, seed=0)
    assert set(split) == {"train", "valid", "test"}
    leaks = prep.leakage(toy_meta, split)
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
    assert prep.leakage(meta, split) == {
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
    meta = prep.clip_meta(clips, info)
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
    mean, std = prep.train_stats(mel, train[::-1], chunk_clips=3, progress=False)  # chunks combine
    ref = np.asarray(mel[train], dtype=np.float64)
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2)), rtol=1e-10)
    assert mean.dtype == np.float64
    assert np.all(np.abs(mean) < 100)
    with pytest.raises(UserError, match="at least one training clip"):
        prep.train_stats(mel, [], progress=False)


# ------------------------------------------------------------------------------------ end to end


def make_fake_project(
    tmp_path: Path, n_mels: int = 4, n_frames: int = 6, shuffle_index: bool = False
) -> dict:
    """A tiny raw folder and features folder: 20 annotated clips, one skipped, one never extracted.

    ``shuffle_index`` lists the extracted clips in another order than the annotations.
    """
    cat = toy_catalogue(n_artists=5, albums=1, songs=2, clips=2)  # 20 clips, folders 0..4
    cat["mp3_path"] = [p.replace(p[0], "0123456789abcdef"[i % 16], 1) for i, p in enumerate(cat["mp3_path"])]
    tags = ["rock", "guitar", "guitars", "slow", "quiet"]
    rng = np.random.default_rng(1)
    values = rng.integers(0, 2, size=(len(cat), len(tags)))
    raw, features = tmp_path / "data" / "raw", tmp_path / "data" / "features"
    raw.mkdir(parents=True)
    features.mkdir(parents=True)
    write_annotations(
        raw / "annotations_final.csv",
        tags,
        [(cid, mp3, list(v)) for cid, mp3, v in zip(cat["clip_id"], cat["mp3_path"], values, strict=True)],
    )
    write_clip_info(
        raw / "clip_info_final.csv",
        list(zip(cat["clip_id"], cat["artist_name"], cat["album_name"], cat["mp3_path"], strict=True)),
    )
    skipped_id, missing_id = "4", "11"
    kept = cat[~cat["clip_id"].isin([skipped_id, missing_id])].reset_index(drop=True)
    if shuffle_index:
        kept = kept.iloc[rng.permutation(len(kept))].reset_index(drop=True)
    index = pd.DataFrame({"row": range(len(kept)), "clip_id": kept["clip_id"], "mp3_path": kept["mp3_path"]})
    index["seconds"] = 29.1
    index.to_csv(features / "index.csv", index=False)
    skipped_path = cat.loc[cat["clip_id"] == skipped_id, "mp3_path"].item()
    pd.DataFrame([{"clip_id": skipped_id, "mp3_path": skipped_path, "bytes": 0, "reason": "empty"}]).to_csv(
        features / "skipped.csv", index=False
    )
    mel = rng.normal(size=(len(kept), n_mels, n_frames)).astype(np.float16)
    np.save(features / "mel.npy", mel)
    return {"raw": raw, "features": features, "tags": tags, "values": values, "cat": cat, "index": index}


def run_prepare(proj: dict, **overrides):
    kwargs = {
        "synonyms": [["guitar", "guitars"]],
        "top_n": 3,
        "method": "random",
        "valid_size": 3,
        "test_size": 4,
        "seed": 0,
        "progress": False,
        "chunk_clips": 4,
    }
    kwargs.update(overrides)
    return prep.prepare(
        proj["raw"] / "annotations_final.csv", proj["raw"] / "clip_info_final.csv", proj["features"], **kwargs
    )


@pytest.mark.parametrize("shuffle_index", [False, True])
def test_prepare_end_to_end_aligns_rows_and_drops_skipped(tmp_path, shuffle_index):
    proj = make_fake_project(tmp_path, shuffle_index=shuffle_index)
    result = run_prepare(proj)
    index, cat, values, tags = proj["index"], proj["cat"], proj["values"], proj["tags"]
    assert result.labels.dtype == np.uint8
    assert result.labels.shape == (18, 3)
    assert result.split["clip_id"].tolist() == index["clip_id"].tolist()
    # expected merged labels of the kept clips, counted after dropping the skipped and missing clips
    truth = pd.DataFrame(values, columns=tags, index=cat["clip_id"]).loc[index["clip_id"]]
    truth["guitar"] = truth["guitar"] | truth["guitars"]
    truth = truth.drop(columns="guitars")
    expected_top = sorted(((t, int(truth[t].sum())) for t in truth.columns), key=lambda x: (-x[1], x[0]))[:3]
    assert result.tags == expected_top
    assert np.array_equal(result.labels, truth[[t for t, _ in expected_top]].to_numpy())
    s = result.summary
    assert (s["clips_read"], s["skipped_dropped"], s["not_extracted_dropped"], s["clips_kept"]) == (
        20,
        1,
        1,
        18,
    )
    assert (s["tags_read"], s["synonym_groups_merged"], s["tags_after_merge"], s["tags_kept"]) == (5, 1, 4, 3)
    assert s["split_sizes"] == {"train": 11, "valid": 3, "test": 4}
    # statistics over the training rows only
    mel = np.load(proj["features"] / "mel.npy").astype(np.float64)
    train_rows = index["row"][(result.split["split"] == "train").to_numpy()].to_numpy()
    np.testing.assert_allclose(result.mean, mel[train_rows].mean(axis=(0, 2)), atol=1e-12)
    np.testing.assert_allclose(result.std, mel[train_rows].std(axis=(0, 2)), rtol=1e-10)

    prep.write_outputs(result, tmp_path / "prepared", tmp_path / "metrics")
    labels = np.load(tmp_path / "prepared" / "labels.npy")
    assert np.array_equal(labels, result.labels)
    tags_json = json.loads((tmp_path / "prepared" / "tags.json").read_text())
    assert tags_json == {"tags": [{"name": n, "count": c} for n, c in expected_top]}
    split_csv = pd.read_csv(tmp_path / "prepared" / "split.csv", dtype=str)
    assert list(split_csv.columns) == ["clip_id", "split"]
    assert split_csv["clip_id"].tolist() == index["clip_id"].tolist()
    stats = json.loads((tmp_path / "prepared" / "stats.json").read_text())
    assert stats["n_clips"] == 11 and len(stats["mean"]) == len(stats["std"]) == 4
    metrics = json.loads((tmp_path / "metrics" / "prepare.json").read_text())
    assert set(metrics) == {"split_sizes", "leakage"}
    assert json.loads((tmp_path / "prepared" / "summary.json").read_text())["clips_kept"] == 18
    assert not list((tmp_path / "prepared").glob(".*.tmp"))


def test_prepare_rejects_inconsistent_features(tmp_path):
    proj = make_fake_project(tmp_path)
    np.save(proj["features"] / "mel.npy", np.zeros((5, 4, 6), dtype=np.float16))
    with pytest.raises(UserError, match=r"shape \(5, 4, 6\).*lists 18 clips.*extract"):
        run_prepare(proj)
    (proj["features"] / "index.csv").unlink()
    with pytest.raises(UserError, match=r"index\.csv.*run the extract stage"):
        run_prepare(proj)


def test_prepare_rejects_index_clip_missing_from_annotations(tmp_path):
    proj = make_fake_project(tmp_path)
    index = proj["index"].copy()
    index.loc[0, "clip_id"] = "999"
    index.to_csv(proj["features"] / "index.csv", index=False)
    with pytest.raises(UserError, match="clip 999 is not in"):
        run_prepare(proj)


def test_main_writes_outputs_and_reports_bad_params(tmp_path, monkeypatch, capsys):
    proj = make_fake_project(tmp_path)
    mel = np.load(proj["features"] / "mel.npy")
    mel[:, 1, :] = -46.0  # a mel bin with no energy anywhere
    np.save(proj["features"] / "mel.npy", mel)
    params = {
        "seed": 3,
        "tags": {"top_n": 2, "synonyms": [["guitar", "guitars"]]},
        "split": {"method": "song", "valid_size": 2, "test_size": 4},
    }
    (tmp_path / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    monkeypatch.chdir(tmp_path)
    prep.main()
    err = capsys.readouterr().err
    assert "prepare: 20 clips read, 1 skipped by extract dropped" in err
    assert "leakage" in err
    assert "mel bin(s) [1] are constant" in err
    summary = json.loads((tmp_path / "data" / "prepared" / "summary.json").read_text())
    assert summary["stats_over"]["constant_bins"] == [1]
    assert np.load(tmp_path / "data" / "prepared" / "labels.npy").shape == (18, 2)
    assert (
        json.loads((tmp_path / "metrics" / "prepare.json").read_text())["leakage"]["test_song_in_train"]
        == 0.0
    )

    params["tags"]["top_n"] = 10
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    with pytest.raises(SystemExit) as exc:
        prep.main()
    assert exc.value.code == 2
    assert "error: params: tags.top_n: 10 tags requested but only 4" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- mstagger tags


def test_tags_cli_table_and_json(tmp_path, monkeypatch, capsys):
    proj = make_fake_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    ann = str(proj["raw"] / "annotations_final.csv")
    # no params.yaml here: the built-in (paper's) synonym groups name tags this toy file lacks
    assert tags_cli.main(["--annotations", ann]) == 2
    assert "error: params: tags.synonyms[0]: 'beat'" in capsys.readouterr().err

    (tmp_path / "params.yaml").write_text(
        json.dumps({"tags": {"top_n": 3, "synonyms": [["guitar", "guitars"]]}})
    )
    rc = tags_cli.main(["--annotations", ann, "--split", "folder", "--top-n", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "20 clips, 5 tags read, 4 after merging synonyms, top 2:" in out
    assert "split folder (seed 1337): train" in out and "leakage" in out
    assert re.findall(r"^ +(\d+)  (\S+) +(\d+)$", out, flags=re.M) == [
        ("1", "guitar", "18"),
        ("2", "quiet", "9"),
    ]

    info = str(proj["raw"] / "clip_info_final.csv")
    rc = tags_cli.main(
        ["--annotations", ann, "--clip-info", info, "--json", "--split", "random", "--seed", "1"]
    )
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert set(report) == {"tags", "split_sizes", "leakage"}
    assert len(report["tags"]) == 3 and set(report["tags"][0]) == {"name", "count"}
    assert sum(report["split_sizes"].values()) == 20  # metadata alone: nothing is dropped


def test_tags_cli_bad_file_is_one_error_line(tmp_path, capsys):
    rc = tags_cli.main(["--annotations", str(tmp_path / "nope.csv"), "--params", str(tmp_path / "none.yaml")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "none.yaml" in err[0]
    (tmp_path / "p.yaml").write_text("seed: 1\n")
    rc = tags_cli.main(["--annotations", str(tmp_path / "nope.csv"), "--params", str(tmp_path / "p.yaml")])
    assert rc == 2
    assert capsys.readouterr().err.strip() == f"error: annotations not found: {tmp_path / 'nope.csv'}"


# ------------------------------------------------------------------------------- real MTAT metadata


@pytest.fixture(scope="module")
def real():
    if not (MTAT / "annotations_final.csv").is_file() or not (MTAT / "clip_info_final.csv").is_file():
        pytest.skip(f"real MTAT metadata not found in {MTAT}")
    annotations = prep.read_annotations(MTAT / "annotations_final.csv")
    clip_info = prep.read_clip_info(MTAT / "clip_info_final.csv")
    kept = annotations[~annotations["clip_id"].isin(EMPTY_CLIPS)].reset_index(drop=True)
    return {"annotations": annotations, "kept": kept, "meta": prep.clip_meta(kept, clip_info)}


def test_real_tags_merge_and_top50(real):
    annotations = real["annotations"]
    tags = [c for c in annotations.columns if c not in ("clip_id", "mp3_path")]
    assert len(annotations) == 25863 and len(tags) == 188
    assert {name for group in PAPER_SYNONYMS for name in group} <= set(tags)
    merged = prep.merge_synonyms(real["kept"][tags], PAPER_SYNONYMS)
    n_names = sum(len(g) for g in PAPER_SYNONYMS)
    assert merged.shape == (25860, 188 - n_names + len(PAPER_SYNONYMS))
    top = prep.top_n_tags(merged, 50)
    assert len(top) == 50
    assert top[0] == ("guitar", 4860)
    assert [n for n, _ in top[:3]] == ["guitar", "classical", "slow"]


def test_real_split_sizes_and_leakage(real):
    meta = real["meta"]
    assert len(meta) == 25860
    folder = prep.make_split(meta, "folder", 0.1, 0.2, seed=1337)
    assert prep.split_sizes(folder) == {"train": 18706, "valid": 1825, "test": 5329}
    leaks = prep.leakage(meta, folder)
    assert leaks["test_song_in_train"] == 0.0 and leaks["test_album_in_train"] == 0.0
    assert 0.55 < leaks["test_artist_in_train"] < 0.7

    random = prep.make_split(meta, "random", 2000, 5860, seed=1337)
    assert prep.split_sizes(random) == {"train": 18000, "valid": 2000, "test": 5860}
    assert prep.leakage(meta, random)["test_song_in_train"] > 0.9

    song = prep.make_split(meta, "song", 2000, 5860, seed=1337)
    assert prep.leakage(meta, song)["test_song_in_train"] == 0.0
    artist = prep.make_split(meta, "artist", 2000, 5860, seed=1337)
    assert prep.leakage(meta, artist)["test_artist_in_train"] == 0.0


def test_real_tags_cli_json(real, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = tags_cli.main(
        [
            "--annotations",
            str(MTAT / "annotations_final.csv"),
            "--clip-info",
            str(MTAT / "clip_info_final.csv"),
            "--split",
            "folder",
            "--json",
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"tags", "split_sizes", "leakage"}
    assert len(report["tags"]) == 50 and report["tags"][0] == {"name": "guitar", "count": 4861}
    assert report["split_sizes"] == {"train": 18709, "valid": 1825, "test": 5329}  # the 3 empty clips kept
    assert set(report["leakage"]) == {"test_song_in_train", "test_album_in_train", "test_artist_in_train"}
