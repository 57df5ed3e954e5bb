"""Bootstrap confidence intervals for macro ROC-AUC and PR-AUC, resampling whole songs.

Clips cut from one song share its audio and its labels, so they are not independent observations: a
bootstrap that drew clips would count one song's evidence several times and give intervals that are too
narrow. Here each resample draws as many songs as the test split has, with replacement, and a drawn song
brings all its clips; a clip's weight in a resample is the number of times its song was drawn. Scoring a
resample with these weights gives exactly what scikit-learn gives on the resampled clips written out
(each clip repeated as often as its song was drawn): ties count as in ``roc_auc_score`` (half a pair)
and ``average_precision_score`` (one threshold per distinct score). A tag without a positive or without
a negative clip in a resample is left out of that resample's macro average, as the point estimate
leaves out a tag without both classes in the test split.

:func:`resampled_macro` scores every resample at once, one tag at a time: the clips are sorted by score
once; each positive clip needs the weight of the clips ranked above it and tied with it, which for all
resamples at once is one sparse (ranks x songs) by dense (songs x resamples) integer product and a
cumulative sum; the rest is arithmetic on (positives x resamples) arrays.
:func:`resampled_macro_slow` is the obvious implementation (write each resample out, call
scikit-learn), the definition the fast one is tested and benchmarked against.

:func:`paired_bootstrap` scores two models on the same resamples: the share of resamples in which one
beats the other is the paired comparison (overlapping intervals are not a test: the two models' errors
on the same songs are correlated, and pairing removes that shared part).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from mstagger.evaluation.scores import macro_scores

LEVEL = 0.95  # coverage of the percentile intervals


def draw_songs(n_songs: int, n_resamples: int, seed: int) -> np.ndarray:
    """Songs drawn with replacement, ``n_songs`` per resample.

    Args:
        n_songs: songs in the test split.
        n_resamples: how many resamples.
        seed: the random seed; the draws depend on nothing else.

    Returns:
        (n_resamples, n_songs) int song indices.
    """
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_songs, size=(n_resamples, n_songs))


def song_index(songs: Sequence[str]) -> tuple[np.ndarray, int]:
    """Each clip's song as an index into the sorted distinct song keys, and the number of songs.

    Sorting makes the index, and so the resamples of a seed, independent of the clips' order.
    """
    _, index = np.unique(np.asarray(songs, dtype=str), return_inverse=True)
    return index.ravel(), int(index.max()) + 1 if len(index) else 0


def _song_counts(draws: np.ndarray, n_songs: int) -> np.ndarray:
    """(resamples, songs) how many times each song was drawn in each resample."""
    n_resamples = len(draws)
    flat = (draws + np.arange(n_resamples)[:, None] * n_songs).ravel()
    return np.bincount(flat, minlength=n_resamples * n_songs).reshape(n_resamples, n_songs)


def _tag_scores(
    truth: np.ndarray, score: np.ndarray, clip_song: np.ndarray, counts_t: np.ndarray, total_w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and average precision of one tag in every resample; NaN where a class is missing.

    Args:
        truth: (clips,) bool.
        score: (clips,) float scores.
        clip_song: (clips,) song index of each clip.
        counts_t: (songs, resamples) integer draw counts.
        total_w: (resamples,) total weight (clips drawn) of each resample.

    Returns:
        ``(roc_auc, pr_auc)``, each (resamples,) float64.
    """
    n_resamples = counts_t.shape[1]
    if truth.all() or not truth.any():
        return np.full(n_resamples, np.nan), np.full(n_resamples, np.nan)
    order = np.argsort(-score, kind="stable")  # best score first
    ranked = score[order]
    first = np.r_[True, ranked[1:] != ranked[:-1]]  # starts of groups of tied scores
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(ranked)]  # one past each group's last position
    pos = np.flatnonzero(truth[order])  # ranks of the positive clips
    # Each positive needs the weight ranked at least as high as it (through its tie group's end) and
    # strictly higher (before its group's start): the weight of the first k ranked clips at these marks.
    end, start = ends[group[pos]], starts[group[pos]]
    marks = np.unique(np.r_[start, end])
    marks = marks[marks > 0]
    # Weight between consecutive marks, for every resample at once: a (marks, songs) matrix counting each
    # song's clips between two marks, times the draw counts. Sparse: one entry per clip.
    segment = np.searchsorted(marks, np.arange(marks[-1]), side="right")
    songs_between = sparse.csr_matrix(
        (np.ones(len(segment), dtype=counts_t.dtype), (segment, clip_song[order[: len(segment)]])),
        shape=(len(marks), len(counts_t)),
    )
    cum_w = np.zeros((len(marks) + 1, n_resamples), dtype=counts_t.dtype)  # row i: weight above mark i
    np.cumsum(songs_between @ counts_t, axis=0, out=cum_w[1:])
    at = np.r_[0, marks]
    w_end, w_start = cum_w[np.searchsorted(at, end)], cum_w[np.searchsorted(at, start)]
    w_pos = counts_t[clip_song[order[pos]]]  # (positives, resamples)
    cum_p = np.zeros((len(pos) + 1, n_resamples), dtype=counts_t.dtype)  # row m: first m positives
    np.cumsum(w_pos, axis=0, out=cum_p[1:])
    tp_end, tp_start = cum_p[np.searchsorted(pos, end)], cum_p[np.searchsorted(pos, start)]
    fp_end, fp_start = w_end - tp_end, w_start - tp_start
    total_p = cum_p[-1].astype(np.float64)
    total_n = total_w - total_p

    defined = (total_p > 0) & (total_n > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # ROC-AUC: each positive beats the negatives below its group and half of those tied with it.
        pairs = (w_pos * (2 * total_n - fp_end - fp_start)).sum(axis=0)
        roc = pairs / (2 * total_p * total_n)
        # Average precision: each positive adds its recall step at its group's precision.
        precision = np.divide(tp_end, w_end, out=np.zeros(w_end.shape), where=w_end > 0)
        ap = (w_pos * precision).sum(axis=0) / total_p
    return np.where(defined, roc, np.nan), np.where(defined, ap, np.nan)


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Mean of each row over its non-NaN entries; NaN for a row without any."""
    finite = ~np.isnan(values)
    n = finite.sum(axis=1)
    total = np.where(finite, values, 0.0).sum(axis=1)
    return np.divide(total, n, out=np.full(len(values), np.nan), where=n > 0)


def resampled_macro(
    y_true: np.ndarray, y_score: np.ndarray, clip_song: np.ndarray, draws: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Macro ROC-AUC and PR-AUC of every resample, vectorised over the resamples.

    Args:
        y_true: (clips, tags) 0/1 ground truth.
        y_score: (clips, tags) scores.
        clip_song: (clips,) each clip's song index (:func:`song_index`).
        draws: (resamples, songs) drawn song indices (:func:`draw_songs`).

    Returns:
        ``(roc_auc, pr_auc)``, each (resamples,): the mean over the tags that have a positive and a
        negative clip in the resample (NaN when none has).
    """
    y_true = np.asarray(y_true).astype(bool)
    y_score = np.asarray(y_score, dtype=np.float64)
    clip_song = np.asarray(clip_song)
    n_songs = draws.shape[1]
    sizes = np.bincount(clip_song, minlength=n_songs)
    # int32 halves the memory traffic; no weight sum exceeds songs x the largest song.
    dtype = np.int32 if n_songs * sizes.max(initial=0) < 2**31 else np.int64
    counts_t = np.ascontiguousarray(_song_counts(draws, n_songs).T, dtype=dtype)  # (songs, resamples)
    total_w = (sizes @ counts_t).astype(np.float64)
    rocs, aps = zip(
        *(
            _tag_scores(y_true[:, j], y_score[:, j], clip_song, counts_t, total_w)
            for j in range(y_true.shape[1])
        ),
        strict=True,
    )
    return _nanmean_rows(np.stack(rocs, axis=1)), _nanmean_rows(np.stack(aps, axis=1))


def resampled_macro_slow(
    y_true: np.ndarray, y_score: np.ndarray, clip_song: np.ndarray, draws: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The obvious implementation of :func:`resampled_macro`, the definition it is checked against.

    Writes each resample out (the clips of every drawn song, in draw order) and scores it with
    :func:`mstagger.evaluation.scores.macro_scores` (scikit-learn): O(resamples x clips x tags), slow.
    """
    y_true, y_score, clip_song = np.asarray(y_true), np.asarray(y_score), np.asarray(clip_song)
    clips_of = [np.flatnonzero(clip_song == s) for s in range(draws.shape[1])]
    roc, pr = np.empty(len(draws)), np.empty(len(draws))
    for b, drawn in enumerate(draws):
        rows = np.concatenate([clips_of[s] for s in drawn])
        macro = macro_scores(y_true[rows], y_score[rows])
        roc[b], pr[b] = macro["roc_auc"], macro["pr_auc"]
    return roc, pr


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """The central ``level`` percentile interval of the defined (non-NaN) values; None if there are none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return [float(low), float(high)]


def beats_share(a: np.ndarray, b: np.ndarray) -> float | None:
    """Share of paired resamples in which ``a`` scores above ``b`` (a tie counts half).

    Resamples where either score is undefined are left out; None if none is left.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = ~(np.isnan(a) | np.isnan(b))
    if not both.any():
        return None
    a, b = a[both], b[both]
    return float(np.mean((a > b) + 0.5 * (a == b)))


@dataclass(frozen=True)
class PairedBootstrap:
    """Macro scores of two models on the same song resamples.

    Attributes:
        roc_auc: model name -> (resamples,) macro ROC-AUC.
        pr_auc: model name -> (resamples,) macro PR-AUC.
        n_songs: songs the resamples draw from.
    """

    roc_auc: dict[str, np.ndarray]
    pr_auc: dict[str, np.ndarray]
    n_songs: int

    def intervals(self, model: str, level: float = LEVEL) -> dict[str, list[float] | None]:
        """``roc_auc_ci`` and ``pr_auc_ci`` of one model: [low, high] percentile intervals."""
        return {
            "roc_auc_ci": percentile_interval(self.roc_auc[model], level),
            "pr_auc_ci": percentile_interval(self.pr_auc[model], level),
        }

    def beats(self, model: str, other: str) -> dict[str, float | None]:
        """Per metric, the share of resamples in which ``model`` beats ``other`` (:func:`beats_share`)."""
        return {
            "roc_auc": beats_share(self.roc_auc[model], self.roc_auc[other]),
            "pr_auc": beats_share(self.pr_auc[model], self.pr_auc[other]),
        }

    def describe(self, model: str, other: str) -> str:
        """A few lines for the log: both models' intervals and how often ``model`` beats ``other``."""

        def ci(interval: list[float] | None) -> str:
            return "undefined" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}]"

        n_resamples = len(self.roc_auc[model])
        lines = [f"95% intervals over {n_resamples} resamples of {self.n_songs} songs:"]
        for name in (model, other):
            iv = self.intervals(name)
            lines.append(f"  {name:<9} ROC-AUC {ci(iv['roc_auc_ci'])}  PR-AUC {ci(iv['pr_auc_ci'])}")
        shares = [
            "undefined" if share is None else f"{share:.1%}" for share in self.beats(model, other).values()
        ]
        lines.append(f"  {model} beats {other} in {shares[0]} (ROC-AUC), {shares[1]} (PR-AUC) of them")
        return "\n".join(lines)


def paired_bootstrap(
    y_true: np.ndarray,
    scores: dict[str, np.ndarray],
    songs: Sequence[str],
    n_resamples: int,
    seed: int,
) -> PairedBootstrap:
    """Score several models' test predictions on the same song resamples.

    Args:
        y_true: (clips, tags) 0/1 ground truth.
        scores: model name -> (clips, tags) scores, rows aligned with ``y_true``.
        songs: (clips,) each clip's song key (:func:`mstagger.data.mtat.song_key`).
        n_resamples: how many resamples (at least 1).
        seed: seeds the draws; with the same songs and seed every model and every experiment is scored
            on the same resamples.

    Returns:
        The per-resample macro scores of every model.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    clip_song, n_songs = song_index(songs)
    if len(clip_song) != len(y_true):
        raise ValueError(f"{len(clip_song)} song keys for {len(y_true)} clips")
    draws = draw_songs(n_songs, n_resamples, seed)
    roc, pr = {}, {}
    for name, score in scores.items():
        roc[name], pr[name] = resampled_macro(y_true, score, clip_song, draws)
    return PairedBootstrap(roc_auc=roc, pr_auc=pr, n_songs=n_songs)
