"""Stage ``evaluate``: score the trained network on the test split, beside a simple baseline.

Reads the log-mel spectrograms (``<features>/mel.npy``, memory-mapped), the labels, tag order and split
(``<prepared>``) and the model bundle (``paths.model``). Writes

- ``<metrics>/scores.json``: the headline that experiments are compared on (:func:`headline`), the
  only metrics file dvc.yaml declares, so ``dvc exp show --only-changed`` and ``dvc metrics diff``
  compare results, not timings or counts;
- ``<metrics>/test.json``: everything else: macro ROC-AUC and PR-AUC of the network at full precision,
  the clip and tag counts, and the baseline's macro scores under ``baseline`` (listed on request:
  ``dvc metrics show metrics/test.json``);
- ``<metrics>/test_per_tag.csv``: per tag, in column order: ``tag, positives, roc_auc, pr_auc,
  baseline_roc_auc, baseline_pr_auc`` (an empty cell where a score is undefined);
- plot data and PNGs under ``<plots>`` (see :mod:`mstagger.evaluation.plots`).

A tag without a positive or without a negative test clip has no ROC-AUC: it is left out of the macro
averages and counted in ``n_tags_excluded``.

With ``bootstrap_resamples``, ``test.json`` also gets 95% intervals (``roc_auc_ci``, ``pr_auc_ci``, and the
baseline's), from resampling whole test songs (:mod:`mstagger.evaluation.bootstrap`), and
``network_beats_baseline``: the share of those resamples in which the network's macro score is higher.

The baseline (:mod:`mstagger.evaluation.baseline`), a logistic regression per tag on each mel band's mean and
standard deviation, tells how much the network adds over the clip's average spectrum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from mstagger.core.errors import UserError
from mstagger.core.log import log, stage_main, timed
from mstagger.core.outputs import check_replaceable, check_writable, stage_metrics, staged_dir, write_json
from mstagger.data.artifacts import load_inputs
from mstagger.data.mtat import song_key
from mstagger.evaluation.baseline import CHUNK_CLIPS, fit_baseline
from mstagger.evaluation.bootstrap import paired_bootstrap
from mstagger.evaluation.plots import write_csv, write_evaluation_plots
from mstagger.evaluation.scores import macro_from_table, per_tag_scores, scores_at_thresholds
from mstagger.params import load_params

Predict = Callable[[np.ndarray], np.ndarray]
# Fixed, not params.seed: the resamples then depend on the test songs alone, so every experiment (any
# seed) on the same test split is scored on the same resamples and its intervals compare like for like.
BOOTSTRAP_SEED = 0


def tag_order(model_tags: Sequence[str], tags: Sequence[str], source: str = "the model") -> np.ndarray | None:
    """The model's columns that give ``tags`` (the label order); None when the orders agree.

    Raises:
        UserError: the two tag sets differ (the model was trained on other labels).
    """
    model_tags, tags = [str(t) for t in model_tags], [str(t) for t in tags]
    if model_tags == tags:
        return None
    if sorted(model_tags) != sorted(tags):
        missing = sorted(set(tags) - set(model_tags))[:5]
        extra = sorted(set(model_tags) - set(tags))[:5]
        raise UserError(
            f"{source} predicts other tags than the prepared labels "
            f"(missing {missing}, extra {extra}); run `dvc repro train`"
        )
    return np.array([model_tags.index(t) for t in tags])


def align_predict(
    predict: Predict, model_tags: Sequence[str], tags: Sequence[str], source: str = "the model"
) -> Predict:
    """Make a predictor's columns follow ``tags`` (the label order).

    Args:
        predict: maps (B, n_mels, n_frames) log-mel to (B, len(model_tags)) scores.
        model_tags: the predictor's output order.
        tags: the wanted order (``tags.json``).
        source: names the model in the error message.

    Returns:
        ``predict`` itself when the orders agree, else a wrapper reordering its columns.

    Raises:
        UserError: as :func:`tag_order`.
    """
    order = tag_order(model_tags, tags, source)
    if order is None:
        return predict
    return lambda mels: np.asarray(predict(mels))[:, order]


def predict_rows(
    predict: Predict, mel: np.ndarray, rows: np.ndarray, n_tags: int, chunk: int = CHUNK_CLIPS
) -> np.ndarray:
    """Run ``predict`` over the given rows of ``mel``, a chunk of clips at a time.

    Args:
        predict: maps (B, n_mels, n_frames) float32 raw log-mel to (B, n_tags) scores.
        mel: (clips, n_mels, n_frames), e.g. a memmap.
        rows: the row indices to score, in output order.
        n_tags: the expected number of output columns.
        chunk: clips read and passed to ``predict`` at once.

    Returns:
        (len(rows), n_tags) float32 scores.

    Raises:
        UserError: the predictor returned a wrong shape, or NaN/inf (a diverged model).
    """
    out = np.empty((len(rows), n_tags), dtype=np.float32)
    with tqdm(total=len(rows), desc="evaluate: network", unit="clip", leave=False) as bar:
        for start in range(0, len(rows), chunk):
            idx = rows[start : start + chunk]
            scores = np.asarray(predict(np.asarray(mel[idx], dtype=np.float32)))
            if scores.shape != (len(idx), n_tags):
                raise UserError(
                    f"the model returned scores of shape {scores.shape} for {len(idx)} clips "
                    f"and {n_tags} tags; retrain it on the current data (`dvc repro train`)"
                )
            out[start : start + len(idx)] = scores
            bar.update(len(idx))
    bad = int((~np.isfinite(out)).any(axis=1).sum())
    if bad:
        raise UserError(
            f"the model gives NaN or infinite scores for {bad} of {len(rows)} test clips; "
            "training diverged (try a lower lr or precision: fp32) and retrain"
        )
    return out


def score_table(y_true: np.ndarray, net: np.ndarray, base: np.ndarray, tags: Sequence[str]) -> pd.DataFrame:
    """Per-tag scores of the network and the baseline, in column order.

    Returns:
        Columns ``tag, positives, roc_auc, pr_auc, baseline_roc_auc, baseline_pr_auc`` (NaN where a tag
        lacks positive or negative clips).
    """
    table = per_tag_scores(y_true, net, list(tags))
    baseline = per_tag_scores(y_true, base, list(tags))
    table["baseline_roc_auc"] = baseline["roc_auc"].to_numpy()
    table["baseline_pr_auc"] = baseline["pr_auc"].to_numpy()
    return table


def _number(x: float) -> float | None:
    """A JSON-safe score: rounded to 6 decimals, None when undefined."""
    return None if x is None or math.isnan(x) else round(float(x), 6)


def _numbers(scores: dict[str, Any]) -> dict[str, Any]:
    """:func:`_number` applied to each value of a mapping, and to each item of a list value."""
    return {k: [_number(x) for x in v] if isinstance(v, list) else _number(v) for k, v in scores.items()}


def headline(result: dict[str, Any]) -> dict[str, float | None]:
    """The few test scores that experiments are compared on (``scores.json``, dvc.yaml's only metrics).

    ``dvc exp show --only-changed`` prints one column per key that differs between experiments, so the
    names are short and the values rounded to 4 decimals: a change of lr must fit 120 columns. The
    baseline does not depend on the network's params and drops out of such a comparison, so
    ``roc_gain`` (network minus baseline ROC-AUC) keeps it in view.

    Args:
        result: the content of ``test.json`` (see :func:`evaluate`).

    Returns:
        ``roc_auc``, ``roc_lo``, ``roc_hi`` (95% bootstrap interval), ``pr_auc``, ``pr_lo``, ``pr_hi``,
        ``baseline_roc``, ``baseline_pr`` and ``roc_gain``; None where undefined (no interval without
        ``bootstrap_resamples``, no score without a scorable tag).
    """

    def r4(x: float | None) -> float | None:
        return None if x is None else round(float(x), 4)

    def bounds(name: str) -> list[float | None]:
        interval = result.get(f"{name}_ci") or [None, None]
        return [r4(x) for x in interval]

    roc, pr, base = result["roc_auc"], result["pr_auc"], result["baseline"]
    roc_lo, roc_hi = bounds("roc_auc")
    pr_lo, pr_hi = bounds("pr_auc")
    gain = None if roc is None or base["roc_auc"] is None else roc - base["roc_auc"]
    return {
        "roc_auc": r4(roc),
        "roc_lo": roc_lo,
        "roc_hi": roc_hi,
        "pr_auc": r4(pr),
        "pr_lo": pr_lo,
        "pr_hi": pr_hi,
        "baseline_roc": r4(base["roc_auc"]),
        "baseline_pr": r4(base["pr_auc"]),
        "roc_gain": r4(gain),
    }


def evaluate(
    mel: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    tags: Sequence[str],
    predict: Predict,
    metrics_dir: str | Path,
    plots_dir: str | Path,
    *,
    curve_tags: int = 10,
    baseline_c: float = 1.0,
    train_log_dir: str | Path | None = None,
    chunk: int = CHUNK_CLIPS,
    thresholds: np.ndarray | None = None,
    songs: Sequence[str] | None = None,
    bootstrap_resamples: int = 0,
    protocol: str | None = None,
) -> dict[str, Any]:
    """Score the network and the baseline on the test split and write metrics and plots.

    Args:
        mel: (clips, n_mels, n_frames) raw log-mel (a memmap is read in chunks).
        labels: (clips, tags) 0/1, row-aligned with ``mel``.
        split: (clips,) ``train``, ``valid`` or ``test``.
        tags: tag names in label column order.
        predict: maps (B, n_mels, n_frames) float32 raw log-mel to (B, tags) probabilities, columns in
            ``tags`` order (see :func:`align_predict`).
        metrics_dir: writes ``test.json``, its headline ``scores.json`` and ``test_per_tag.csv`` here.
        plots_dir: writes the plot data and PNGs here.
        curve_tags: draw ROC and PR curves for this many most frequent scorable tags.
        baseline_c: inverse L2 strength of the logistic-regression baseline.
        train_log_dir: the dvclive folder drawn into ``training.png`` (None: no training curves).
        chunk: clips read from ``mel`` at a time.
        thresholds: (tags,) the model's decision thresholds in ``tags`` order (None: not scored).
        songs: (clips,) each clip's song key, for the bootstrap (None: every clip its own song).
        bootstrap_resamples: song resamples for the intervals (0: no intervals).
        protocol: the protocol the scores are measured on (``params.yaml`` ``protocol``), written first
            into ``test.json`` so that a score is never read without it (None: unknown, an old bundle).

    Returns:
        The content of ``test.json``: ``protocol``, ``roc_auc``, ``pr_auc`` (None if no tag is scorable),
        ``n_clips``, ``n_tags_scored``, ``n_tags_excluded`` and ``baseline`` {``roc_auc``, ``pr_auc``}; with
        ``bootstrap_resamples`` also ``roc_auc_ci``, ``pr_auc_ci`` ([low, high], None if undefined, and
        the same in ``baseline``), ``n_songs`` and ``network_beats_baseline`` {``roc_auc``, ``pr_auc``};
        with ``thresholds``, ``at_thresholds`` (see :func:`mstagger.evaluation.scores.scores_at_thresholds`).

    Raises:
        UserError: the inputs do not line up, the test or training split is empty, or the network's
            output is malformed.
    """
    tags = [str(t) for t in tags]
    labels = np.asarray(labels)
    test_rows, train_rows = split_rows(mel, labels, np.asarray(split).astype(str), tags)
    y_test = labels[test_rows].astype(np.uint8)
    net = predict_rows(predict, mel, test_rows, len(tags), chunk)
    base = fit_baseline(mel, labels, train_rows, test_rows, baseline_c, tags, chunk)
    test_songs = [str(r) for r in test_rows] if songs is None else np.asarray(songs)[test_rows]
    result, table = score(y_test, net, base, tags, test_songs, thresholds, bootstrap_resamples)
    result = {"protocol": protocol, **result}  # first: a score is never read without its protocol
    metrics_dir = Path(metrics_dir)
    write_json(metrics_dir / "test.json", result)
    write_json(metrics_dir / "scores.json", headline(result))
    write_csv(table, metrics_dir / "test_per_tag.csv")
    macro = {"roc_auc": result["roc_auc"], "pr_auc": result["pr_auc"]}
    macro |= {f"baseline_{k}": result["baseline"][k] for k in ("roc_auc", "pr_auc")}
    with staged_dir(plots_dir, "evaluate", "paths.plots") as staging:
        write_evaluation_plots(
            y_test,
            net,
            table,
            staging,
            curve_tags,
            train_log_dir=train_log_dir,
            macro={k: float("nan") if v is None else v for k, v in macro.items()},
        )
    return result


def split_rows(
    mel: np.ndarray, labels: np.ndarray, split: np.ndarray, tags: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The test rows and the training rows (the baseline's), once the inputs are checked to line up."""
    if not (len(mel) == len(labels) == len(split)) or labels.shape[1] != len(tags):
        raise UserError(
            f"inputs disagree: mel {mel.shape}, labels {labels.shape}, split {split.shape}, "
            f"{len(tags)} tags; run `dvc repro`"
        )
    test_rows, train_rows = np.flatnonzero(split == "test"), np.flatnonzero(split == "train")
    if len(test_rows) == 0:
        raise UserError("the test split is empty; check the split parameters (split.*)")
    log.info(
        "%d test clips, %d training clips for the baseline, %d tags",
        len(test_rows),
        len(train_rows),
        len(tags),
    )
    return test_rows, train_rows


def score(
    y_test: np.ndarray,
    net: np.ndarray,
    base: np.ndarray,
    tags: list[str],
    songs: Sequence[str],
    thresholds: np.ndarray | None,
    bootstrap_resamples: int,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Scores of the network's and the baseline's test probabilities (``test.json``) and the per-tag
    table; writes nothing. See :func:`evaluate` for the keys."""
    table = score_table(y_test, net, base, tags)
    net_macro = macro_from_table(table, "roc_auc", "pr_auc")
    base_macro = macro_from_table(table, "baseline_roc_auc", "baseline_pr_auc")
    excluded = table.loc[table["roc_auc"].isna(), "tag"].tolist()
    if excluded:
        log.warning(
            "%d tags lack positive or negative test clips and are left out of the macro scores: %s",
            len(excluded),
            ", ".join(excluded),
        )
    result: dict[str, Any] = {
        "roc_auc": _number(net_macro["roc_auc"]),
        "pr_auc": _number(net_macro["pr_auc"]),
        "n_clips": len(y_test),
        "n_tags_scored": int(net_macro["n_tags_scored"]),
        "n_tags_excluded": int(net_macro["n_tags_excluded"]),
        "baseline": {"roc_auc": _number(base_macro["roc_auc"]), "pr_auc": _number(base_macro["pr_auc"])},
    }
    if bootstrap_resamples:
        with timed() as elapsed:
            boot = paired_bootstrap(
                y_test, {"network": net, "baseline": base}, songs, bootstrap_resamples, BOOTSTRAP_SEED
            )
        log.info("%s (%.1f s)", boot.describe("network", "baseline"), elapsed())
        result["baseline"].update(_numbers(boot.intervals("baseline")))
        result.update(_numbers(boot.intervals("network")), n_songs=boot.n_songs)
        result["network_beats_baseline"] = _numbers(boot.beats("network", "baseline"))
    if thresholds is not None:  # the tags the model asserts, scored: F1, precision, recall
        decided = scores_at_thresholds(y_test, net, thresholds)
        result["at_thresholds"] = {k: v if k == "n_tags_scored" else _number(v) for k, v in decided.items()}
        log.info(
            "at the model's thresholds: F1 micro %.4f, macro %.4f; precision micro %.4f, recall micro %.4f",
            decided["f1_micro"],
            decided["f1_macro"],
            decided["precision_micro"],
            decided["recall_micro"],
        )
    return result, table


def format_summary(result: dict[str, Any], seconds: float) -> str:
    """The stage's closing table: network vs baseline, clips, tags and time."""

    def cell(x: float | None) -> str:
        return "   n/a" if x is None else f"{x:.4f}"

    base = result["baseline"]
    return "\n".join(
        [
            f"{result['n_clips']} test clips, {result['n_tags_scored']} tags scored, "
            f"{result['n_tags_excluded']} excluded, {seconds:.1f} s",
            "              ROC-AUC  PR-AUC",
            f"  network      {cell(result['roc_auc'])}   {cell(result['pr_auc'])}",
            f"  baseline     {cell(base['roc_auc'])}   {cell(base['pr_auc'])}",
        ]
    )


@stage_main
def main() -> None:
    """Evaluate the trained model on the test split (params from ``params.yaml``)."""
    params = load_params()
    paths = params.paths
    check_writable(paths.metrics)
    check_replaceable(paths.plots, "evaluate", "paths.plots")
    inputs = load_inputs(paths.features, paths.prepared)
    from mstagger.core.runtime import resolve_device
    from mstagger.inference.bundle import load_bundle  # imported here: it pulls in torch

    device = str(resolve_device(params.device))
    bundle = load_bundle(paths.model, device=device)
    log.info("model %s on %s", paths.model, device)

    def bundle_predict(mels: np.ndarray) -> np.ndarray:
        try:
            return bundle.predict(mels)
        except ValueError as err:  # the spectrogram settings changed since training
            raise UserError(
                f"{paths.model} does not fit the features in {paths.features} ({err}); run `dvc repro train`"
            ) from None

    predict = align_predict(bundle_predict, bundle.tags, inputs.tags, source=paths.model)
    thresholds = getattr(bundle, "thresholds", None)  # the decision thresholds, if the bundle has them
    order = tag_order(bundle.tags, inputs.tags, source=paths.model)
    if thresholds is not None and order is not None:  # in label order, as align_predict orders the scores
        thresholds = thresholds[order]
    with timed() as elapsed:
        result = evaluate(
            inputs.mel,
            inputs.labels,
            inputs.split,
            inputs.tags,
            predict,
            paths.metrics,
            paths.plots,
            curve_tags=params.evaluate.curve_tags,
            baseline_c=params.evaluate.baseline_c,
            train_log_dir=paths.train_log,
            thresholds=thresholds,
            songs=[song_key(p) for p in inputs.mp3_path],
            bootstrap_resamples=params.evaluate.bootstrap_resamples,
            protocol=bundle.params.get("protocol"),  # what the model was trained and prepared under
        )
        seconds = elapsed()
    summary = {"test_clips": result["n_clips"], "tags_scored": result["n_tags_scored"], "device": device}
    write_json(stage_metrics(paths.metrics, "evaluate"), {**summary, "seconds": seconds})
    log.info("%s", format_summary(result, seconds))
    where = paths.metrics
    log.info(
        "wrote %s/scores.json, %s/test.json, %s/test_per_tag.csv and %s/", where, where, where, paths.plots
    )


if __name__ == "__main__":
    main()
