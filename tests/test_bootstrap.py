"""Tests of the song-level bootstrap (mstagger.evaluation.bootstrap) and its place in the evaluate stage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import make_params
from mstagger import evaluate as ev
from mstagger.evaluation import bootstrap as bs
from mstagger.evaluation.scores import macro_scores
from mstagger.params import ParamsError


def small_table(seed: int = 0, n_songs: int = 12, n_tags: int = 6):
    """Songs of 1 to 4 clips; scores rounded to a few levels (many ties); a rare tag on one song only."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, size=n_songs)
    songs = np.repeat([f"artist-album-{s:02d}-title" for s in range(n_songs)], sizes)
    n = len(songs)
    y = (rng.random((n, n_tags)) < 0.35).astype(np.uint8)
    y[:, -1] = songs == songs[0]  # present on one song: missing from many resamples
    score = np.round(rng.random((n, n_tags)) * 4) / 4  # 5 levels: ties within and across classes
    score[:, 1] = rng.random(n)  # one tag without ties
    score[:, 2] = y[:, 2] * 0.5 + rng.random(n)  # one informative tag
    return y, score, songs


def test_fast_matches_the_obvious_implementation_resample_by_resample():
    y, score, songs = small_table()
    clip_song, n_songs = bs.song_index(songs)
    draws = bs.draw_songs(n_songs, 300, seed=3)
    fast = bs.resampled_macro(y, score, clip_song, draws)
    slow = bs.resampled_macro_slow(y, score, clip_song, draws)
    for f, s in zip(fast, slow, strict=True):
        np.testing.assert_allclose(f, s, rtol=0, atol=1e-12)
    # And so the intervals agree exactly.
    for f, s in zip(fast, slow, strict=True):
        assert bs.percentile_interval(f) == pytest.approx(bs.percentile_interval(s), abs=1e-12)


def test_a_resample_drawing_every_song_once_is_the_point_estimate():
    y, score, songs = small_table(seed=1)
    clip_song, n_songs = bs.song_index(songs)
    roc, pr = bs.resampled_macro(y, score, clip_song, np.arange(n_songs)[None, :])
    point = macro_scores(y, score)
    assert roc[0] == pytest.approx(point["roc_auc"], abs=1e-12)
    assert pr[0] == pytest.approx(point["pr_auc"], abs=1e-12)


def test_a_resample_without_any_scorable_tag_is_undefined_and_left_out():
    y = np.array([[1], [0], [1]], dtype=np.uint8)  # song a: clips 0 and 1; song b: clip 2
    score = np.array([[0.9], [0.1], [0.5]])
    clip_song = np.array([0, 0, 1])
    draws = np.array([[0, 0], [1, 1], [0, 1]])  # b alone has no negative
    roc, pr = bs.resampled_macro(y, score, clip_song, draws)
    assert roc[0] == 1.0 and np.isnan(roc[1]) and np.isnan(pr[1])
    assert roc[2] == pytest.approx(1.0)
    assert bs.percentile_interval(roc) == [1.0, 1.0]
    assert bs.percentile_interval(np.array([np.nan])) is None


def test_clips_of_a_song_move_together():
    # Four identical clips per song weigh like one clip per song: same resampled scores.
    y, score, _ = small_table(seed=2, n_songs=15)
    y, score = y[:15], score[:15]
    one = np.arange(15)
    draws = bs.draw_songs(15, 200, seed=0)
    single = bs.resampled_macro(y, score, one, draws)
    repeated = np.repeat(y, 4, axis=0), np.repeat(score, 4, axis=0), np.repeat(one, 4)
    quadruple = bs.resampled_macro(*repeated, draws)
    for a, b in zip(single, quadruple, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_resamples_do_not_depend_on_the_order_of_the_clips():
    y, score, songs = small_table(seed=4)
    first = bs.paired_bootstrap(y, {"m": score}, songs, 100, seed=7)
    order = np.random.default_rng(0).permutation(len(songs))
    second = bs.paired_bootstrap(y[order], {"m": score[order]}, songs[order], 100, seed=7)
    np.testing.assert_allclose(first.roc_auc["m"], second.roc_auc["m"], atol=1e-12)
    np.testing.assert_allclose(first.pr_auc["m"], second.pr_auc["m"], atol=1e-12)


def test_paired_shares():
    y, score, songs = small_table(seed=5)
    noise = np.random.default_rng(1).random(score.shape)
    boot = bs.paired_bootstrap(y, {"oracle": y + 0.1 * noise, "noise": noise, "same": noise}, songs, 200, 0)
    assert boot.n_songs == 12
    assert boot.beats("oracle", "noise") == {"roc_auc": 1.0, "pr_auc": 1.0}
    assert boot.beats("noise", "oracle") == {"roc_auc": 0.0, "pr_auc": 0.0}
    assert boot.beats("noise", "same") == {"roc_auc": 0.5, "pr_auc": 0.5}  # ties count half
    low, high = boot.intervals("oracle")["roc_auc_ci"]
    assert low == high == 1.0
    text = boot.describe("oracle", "noise")
    assert "200 resamples of 12 songs" in text and "oracle beats noise in 100.0% (ROC-AUC)" in text
    with pytest.raises(ValueError, match="song keys"):
        bs.paired_bootstrap(y, {"m": score}, songs[:-1], 10, 0)


def test_mtat_sized_table_is_fast_enough():
    # A smoke check of the vectorisation (the benchmark measures it properly): 1/10 of MTAT's test split.
    rng = np.random.default_rng(0)
    n, n_tags = 533, 50
    songs = np.sort(rng.integers(0, 113, n)).astype(str)
    y = (rng.random((n, n_tags)) < 0.05).astype(np.uint8)
    boot = bs.paired_bootstrap(y, {"m": rng.random((n, n_tags))}, songs, 1000, 0)
    low, high = boot.intervals("m")["roc_auc_ci"]
    assert 0.4 < low < 0.5 < high < 0.6


def test_evaluate_writes_intervals_and_the_paired_share(tmp_path):
    from test_evaluate import TAGS, make_data, oracle

    mel, labels, split = make_data()
    songs = [f"a-b-{i // 2:02d}-t" for i in range(len(mel))]  # two clips per song
    result = ev.evaluate(
        mel,
        labels,
        split,
        TAGS,
        oracle(labels),
        tmp_path / "metrics",
        tmp_path / "plots",
        songs=songs,
        bootstrap_resamples=200,
    )
    assert json.loads((tmp_path / "metrics" / "test.json").read_text()) == result
    assert result["n_songs"] == 16 and result["n_clips"] == 32
    assert result["roc_auc_ci"] == [1.0, 1.0] and result["pr_auc_ci"] == [1.0, 1.0]
    base = result["baseline"]
    for key in ("roc_auc", "pr_auc"):
        low, high = base[f"{key}_ci"]
        assert low <= base[key] <= high
    assert result["network_beats_baseline"] == {"roc_auc": 1.0, "pr_auc": 1.0}


def test_bootstrap_resamples_param():
    assert make_params().evaluate.bootstrap_resamples == 1000
    assert make_params(evaluate={"bootstrap_resamples": 0}).evaluate.bootstrap_resamples == 0
    with pytest.raises(ParamsError, match=r"evaluate\.bootstrap_resamples: must be 0 .* or at least 100"):
        make_params(evaluate={"bootstrap_resamples": 50})
