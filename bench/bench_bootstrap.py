"""Benchmark: the song-level bootstrap of ``evaluate`` at MTAT's test size, against the obvious one.

The table is MTAT's folder-split test set (folders d-f): 5,329 clips of 1,129 songs, their top-50 merged
tags (``params.yaml``'s synonym groups), read from ``../shared/mtat/annotations_final.csv`` when it is
there (else a synthetic table of the same size, songs of 1 to 10 clips, tags at MTAT's prevalences).
The scores are synthetic: a network-like and a baseline-like float32 score per clip and tag (the labels
plus noise, so the AUCs are about 0.9 and 0.8). Side by side in one run:

- ``reference``: :func:`mstagger.evaluation.bootstrap.resampled_macro_slow`, the obvious implementation: each
  resample written out clip by clip and scored with scikit-learn, tag by tag. It runs ``--reference``
  resamples; its time is extrapolated to ``--resamples``.
- ``vectorised``: :func:`mstagger.evaluation.bootstrap.resampled_macro` on the same draws (checked to
  agree with the reference to 1e-12), then ``--resamples`` of them for one model, and ``paired_bootstrap``
  of two models (what ``evaluate`` runs: the network and the baseline on the same resamples).

Prints a table (seconds, the ratio to the reference, the load average while it ran: the machine may be
shared) and writes ``bench/results/bootstrap-cpu.json``. The goal: the two-model bootstrap with 1,000
resamples in at most 10 s on a 2-core CPU.

Usage: ``PYTHONPATH=src python bench/bench_bootstrap.py [--resamples 1000] [--reference 20] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from common import machine, write_results  # bench/ is on sys.path when this file runs
from mstagger.data.labels import merge_synonyms, top_n_tags
from mstagger.data.mtat import FOLDER_SPLIT, folder_of, read_annotations, song_key
from mstagger.evaluation.bootstrap import (
    draw_songs,
    paired_bootstrap,
    resampled_macro,
    resampled_macro_slow,
    song_index,
)
from mstagger.params import load_params

REPO = Path(__file__).resolve().parents[1]
ANNOTATIONS = REPO.parent / "shared" / "mtat" / "annotations_final.csv"
RESULTS = REPO / "bench" / "results" / "bootstrap-cpu.json"
GOAL_SECONDS = 10.0


def mtat_test_table(n_tags: int = 50) -> tuple[np.ndarray, np.ndarray, str]:
    """(labels, song keys, source) of MTAT's folder-split test clips, or a synthetic stand-in."""
    if ANNOTATIONS.is_file():
        table = read_annotations(ANNOTATIONS)
        tags = table.drop(columns=["clip_id", "mp3_path"])
        merged = merge_synonyms(tags, load_params(REPO / "params.yaml").tags.synonyms)
        top = [name for name, _ in top_n_tags(merged, n_tags)]  # ranked on every clip, as prepare ranks
        test = table["mp3_path"].map(lambda p: FOLDER_SPLIT.get(folder_of(p)) == "test").to_numpy()
        songs = table.loc[test, "mp3_path"].map(song_key).to_numpy()
        return merged.loc[test, top].to_numpy(dtype=np.uint8), songs, str(ANNOTATIONS)
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 11, size=1129)
    songs = np.repeat(np.arange(len(sizes)), sizes)[:5329].astype(str)
    prevalence = np.geomspace(0.16, 0.01, n_tags)
    return (rng.random((len(songs), n_tags)) < prevalence).astype(np.uint8), songs, "synthetic"


def timed(fn, repeat: int) -> tuple[float, float, object]:
    """(best, median) seconds of ``repeat`` calls and the last result."""
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return min(seconds), float(np.median(seconds)), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--reference", type=int, default=20, help="resamples the slow reference runs")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    labels, songs, source = mtat_test_table()
    rng = np.random.default_rng(1)
    network = (labels * 1.5 + rng.standard_normal(labels.shape)).astype(np.float32)
    baseline = (labels * 0.9 + rng.standard_normal(labels.shape)).astype(np.float32)
    clip_song, n_songs = song_index(songs)
    print(f"{len(labels)} clips of {n_songs} songs, {labels.shape[1]} tags ({source}); {os.cpu_count()} CPUs")
    load = [os.getloadavg()[0]]

    few = draw_songs(n_songs, args.reference, seed=0)
    ref_best, _, ref = timed(lambda: resampled_macro_slow(labels, network, clip_song, few), 1)
    fast_few = resampled_macro(labels, network, clip_song, few)
    agree = max(float(np.max(np.abs(a - b))) for a, b in zip(fast_few, ref, strict=True))
    ref_projected = ref_best / args.reference * args.resamples

    draws = draw_songs(n_songs, args.resamples, seed=0)
    one_best, one_median, _ = timed(lambda: resampled_macro(labels, network, clip_song, draws), args.repeat)
    scores = {"network": network, "baseline": baseline}
    two_best, two_median, boot = timed(
        lambda: paired_bootstrap(labels, scores, songs, args.resamples, seed=0), args.repeat
    )
    load.append(os.getloadavg()[0])

    rows = [
        ("reference, 1 model (projected)", ref_projected, ref_projected, 1.0),
        ("vectorised, 1 model", one_best, one_median, ref_projected / one_best),
        ("vectorised, 2 models paired (evaluate)", two_best, two_median, 2 * ref_projected / two_best),
    ]
    print(f"{args.resamples} resamples; reference timed on {args.reference} ({ref_best:.1f} s) and projected")
    print(f"{'variant':<42}{'best s':>9}{'median s':>10}{'speed-up':>10}")
    for name, best, median, ratio in rows:
        print(f"{name:<42}{best:>9.2f}{median:>10.2f}{ratio:>9.0f}x")
    print(f"largest difference from the reference: {agree:.1e}; load average {load[0]:.1f} -> {load[1]:.1f}")
    print(boot.describe("network", "baseline"))
    ok = two_best <= GOAL_SECONDS
    verdict = "met" if ok else "NOT met"
    print(f"goal (2 models, {args.resamples} resamples, <= {GOAL_SECONDS:.0f} s): {verdict}")

    doc = {
        "benchmark": "bootstrap",
        "table": {"clips": len(labels), "songs": n_songs, "tags": int(labels.shape[1]), "source": source},
        "resamples": args.resamples,
        "reference_resamples": args.reference,
        "repeat": args.repeat,
        "machine": machine(),
        "load_average": load,
        "max_abs_difference_from_reference": agree,
        "results": [
            {"name": n, "best_seconds": round(b, 3), "median_seconds": round(m, 3), "speedup": round(r)}
            for n, b, m, r in rows
        ],
        "goal_seconds": GOAL_SECONDS,
        "goal_met": ok,
    }
    write_results(RESULTS, doc)
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
