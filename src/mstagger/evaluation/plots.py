"""Figures and DVC plot data of the evaluate stage.

Two kinds of output, from the same numbers:

- CSV files that ``dvc plots show`` / ``dvc plots diff`` render (``roc.csv``, ``pr.csv`` in long format
  with a ``tag`` column; ``per_tag_auc.csv`` with the baseline beside the network; ``loss.csv`` and
  ``validation_auc.csv``, dvclive's per-epoch curves in long format with a ``curve`` column and epochs
  numbered 1..N as the training log counts them, dvclive's step + 1);
- PNG figures drawn with matplotlib (``roc.png``, ``pr.png``, ``per_tag_auc.png``, ``training.png``),
  viewable without DVC.

Figures are built on :class:`matplotlib.figure.Figure` (Agg canvas) without pyplot, so nothing here
touches a global backend or needs a display. Every file is written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mstagger.core.log import log
from mstagger.core.outputs import atomic_path, write_text
from mstagger.evaluation.scores import pr_points, roc_points

# Most points kept per curve in the CSV data: enough for a smooth line, small enough for DVC's renderer.
MAX_CURVE_POINTS = 500
# The files ``write_evaluation_plots`` writes under the plots folder (dvc.yaml declares the same names).
PLOT_FILES = (
    "roc.csv",
    "pr.csv",
    "per_tag_auc.csv",
    "loss.csv",
    "validation_auc.csv",
    "roc.png",
    "pr.png",
    "per_tag_auc.png",
    "training.png",
)
# The per-epoch curves of the training log drawn by `dvc plots show`: file -> (value column, dvclive
# TSV under plots/metrics -> the curve's name in the legend).
EPOCH_CURVES = {
    "loss.csv": ("loss", {"train/loss.tsv": "training", "val/loss.tsv": "validation"}),
    "validation_auc.csv": ("auc", {"val/roc_auc.tsv": "ROC-AUC", "val/pr_auc.tsv": "PR-AUC"}),
}


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> None:
    """Write ``fig`` as a PNG to ``path`` atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` as CSV (no index, 6 decimals, empty cell for NaN) to ``path`` atomically."""
    write_text(path, frame.to_csv(index=False, float_format="%.6f", lineterminator="\n"))


def select_curve_tags(table: pd.DataFrame, n: int) -> list[str]:
    """The ``n`` most frequent scorable tags.

    Args:
        table: per-tag scores with ``tag``, ``positives`` and ``roc_auc`` (NaN for an unscorable tag).
        n: how many tags to keep.

    Returns:
        Tag names, most positives first; ties keep the table's (column) order.
    """
    scorable = table.dropna(subset=["roc_auc"])
    ranked = scorable.sort_values("positives", ascending=False, kind="stable")
    return [str(t) for t in ranked["tag"].head(n)]


def _thin(n: int, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` evenly spread points of ``n``, first and last included."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


def curve_frames(
    y_true: np.ndarray,
    y_score: np.ndarray,
    tags: Sequence[str],
    chosen: Sequence[str],
    max_points: int = MAX_CURVE_POINTS,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROC and precision-recall curve points of the chosen tags, in long format.

    Args:
        y_true: (clips, tags) 0/1 ground truth.
        y_score: (clips, tags) predicted scores.
        tags: the tag names, in column order.
        chosen: the tags to draw (each must have positive and negative clips).
        max_points: most points kept per curve (evenly thinned, end points kept).

    Returns:
        ``(roc, pr)``: ``roc`` has columns ``tag, fpr, tpr``; ``pr`` has ``tag, recall, precision``.
    """
    column = {t: j for j, t in enumerate(tags)}
    roc_parts, pr_parts = [], []
    for tag in chosen:
        truth, score = y_true[:, column[tag]], y_score[:, column[tag]]
        fpr, tpr = roc_points(truth, score)
        keep = _thin(len(fpr), max_points)
        roc_parts.append(pd.DataFrame({"tag": tag, "fpr": fpr[keep], "tpr": tpr[keep]}))
        recall, precision = pr_points(truth, score)
        keep = _thin(len(recall), max_points)
        pr_parts.append(pd.DataFrame({"tag": tag, "recall": recall[keep], "precision": precision[keep]}))
    roc = (
        pd.concat(roc_parts, ignore_index=True) if roc_parts else pd.DataFrame(columns=["tag", "fpr", "tpr"])
    )
    pr = (
        pd.concat(pr_parts, ignore_index=True)
        if pr_parts
        else pd.DataFrame(columns=["tag", "recall", "precision"])
    )
    return roc, pr


def _empty_note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_curves(
    curves: pd.DataFrame, x: str, y: str, out_png: str | Path, title: str, aucs: dict[str, float]
) -> None:
    """Draw one line per tag from long-format curve points and save it as a PNG.

    Args:
        curves: columns ``tag``, ``x`` and ``y``.
        x: the x column (``fpr`` or ``recall``).
        y: the y column (``tpr`` or ``precision``).
        out_png: the PNG to write.
        title: the figure title.
        aucs: the area shown beside each tag in the legend.
    """
    fig = Figure(figsize=(6.4, 5.6))
    ax = fig.subplots()
    if curves.empty:
        _empty_note(ax, "no tag has both positive and negative test clips")
    else:
        for tag, part in curves.groupby("tag", sort=False):
            ax.plot(part[x], part[y], lw=1.4, label=f"{tag} ({aucs.get(str(tag), float('nan')):.3f})")
        if x == "fpr":
            ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="chance")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel({"fpr": "false positive rate", "recall": "recall"}.get(x, x))
        ax.set_ylabel({"tpr": "true positive rate", "precision": "precision"}.get(y, y))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if x == "fpr" else "upper right")
    ax.set_title(title, fontsize=10)
    save_figure(fig, out_png)


def plot_per_tag_auc(table: pd.DataFrame, out_png: str | Path) -> None:
    """Horizontal bars of each scorable tag's ROC-AUC, best first, with the baseline's beside them.

    Args:
        table: per-tag scores with ``tag``, ``roc_auc`` and (optionally) ``baseline_roc_auc``.
        out_png: the PNG to write.
    """
    scored = table.dropna(subset=["roc_auc"]).sort_values("roc_auc", ascending=True, kind="stable")
    fig = Figure(figsize=(6.4, 1.5 + 0.22 * max(len(scored), 4)))
    ax = fig.subplots()
    if scored.empty:
        _empty_note(ax, "no tag has both positive and negative test clips")
    else:
        pos = np.arange(len(scored))
        ax.barh(pos, scored["roc_auc"], height=0.7, color="tab:blue", label="network")
        if "baseline_roc_auc" in scored:
            ax.scatter(
                scored["baseline_roc_auc"],
                pos,
                marker="|",
                s=90,
                color="tab:orange",
                zorder=3,
                label="baseline",
            )
        ax.axvline(0.5, ls=":", color="grey", lw=1)
        ax.axvline(float(scored["roc_auc"].mean()), ls="--", color="tab:blue", lw=1, label="network macro")
        if "baseline_roc_auc" in scored:
            base_macro = float(scored["baseline_roc_auc"].mean())
            ax.axvline(base_macro, ls="--", color="tab:orange", lw=1, label="baseline macro")
        ax.set_yticks(pos, [str(t) for t in scored["tag"]], fontsize=7)
        low = (
            np.nanmin(scored[["roc_auc", "baseline_roc_auc"]].to_numpy())
            if "baseline_roc_auc" in scored
            else 0
        )
        ax.set_xlim(min(0.4, float(low) - 0.02), 1.0)
        ax.set_ylim(-0.6, len(scored) - 0.4)
        ax.set_xlabel("test ROC-AUC")
        ax.grid(axis="x", alpha=0.3)
        # Above the axes: bars reach the right edge, where a legend inside would hide them.
        ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    ax.set_title("per-tag test ROC-AUC", fontsize=10, pad=20)
    save_figure(fig, out_png)


def _read_metric_tsv(path: Path) -> pd.DataFrame | None:
    """A dvclive TSV as columns ``step`` and ``value``; None when unreadable or empty."""
    try:
        frame = pd.read_csv(path, sep="\t")
    except (OSError, ValueError) as err:
        log.warning("skipping %s in the training plot: %s", path, err)
        return None
    name = path.stem if path.stem in frame.columns else None
    if name is None:
        others = [c for c in frame.columns if c not in ("step", "timestamp")]
        name = others[-1] if others else None
    if name is None or "step" not in frame.columns or frame.empty:
        return None
    out = pd.DataFrame({"step": frame["step"], "value": pd.to_numeric(frame[name], errors="coerce")})
    return out.dropna()


def write_epoch_curves(train_log_dir: str | Path | None, plots_dir: Path) -> None:
    """Write :data:`EPOCH_CURVES` from dvclive's TSVs: columns ``epoch`` (1..N), ``curve`` and the value.

    A missing or unreadable TSV leaves its curve out; a file without any curve has the header only.
    """
    root = Path(train_log_dir) / "plots" / "metrics" if train_log_dir is not None else None
    for name, (column, sources) in EPOCH_CURVES.items():
        parts = []
        for tsv, curve in sources.items():
            frame = _read_metric_tsv(root / tsv) if root is not None and (root / tsv).is_file() else None
            if frame is not None:
                epochs = frame["step"] + 1  # dvclive counts steps from 0, the log epochs from 1
                parts.append(pd.DataFrame({"epoch": epochs, "curve": curve, column: frame["value"]}))
        empty = pd.DataFrame({"epoch": [], "curve": [], column: []})
        write_csv(pd.concat(parts, ignore_index=True) if parts else empty, plots_dir / name)


def plot_training(train_log_dir: str | Path | None, out_png: str | Path) -> int:
    """Draw the training curves dvclive logged, one panel per metric (e.g. loss: train and val).

    Reads every ``<train_log_dir>/plots/metrics/**/*.tsv`` (columns ``step`` and the metric's name). The
    PNG is always written; without any curve it says so, so the file a pipeline declares always exists.

    Args:
        train_log_dir: the dvclive folder of the train stage (``params.paths.train_log``); None: no log.
        out_png: the PNG to write.

    Returns:
        The number of curves drawn (0 when no TSV was found or readable).
    """
    root = Path(train_log_dir) / "plots" / "metrics" if train_log_dir is not None else None
    panels: dict[str, list[tuple[str, pd.DataFrame]]] = {}
    for path in sorted(root.rglob("*.tsv")) if root is not None and root.is_dir() else []:
        frame = _read_metric_tsv(path)
        if frame is None or frame.empty:
            continue
        group = path.parent.relative_to(root).as_posix()
        panels.setdefault(path.stem, []).append((group if group != "." else path.stem, frame))
    # Loss first, then the scores, then the rest (lr) in name order.
    order = sorted(panels, key=lambda m: (m != "loss", "auc" not in m, m))
    n_curves = sum(len(v) for v in panels.values())
    if not order:
        fig = Figure(figsize=(6.4, 2.4))
        where = f"under {root}" if root is not None else "(no training log given)"
        _empty_note(fig.subplots(), f"no training curves found {where}")
        save_figure(fig, out_png)
        return 0
    cols = min(2, len(order))
    rows = -(-len(order) // cols)
    fig = Figure(figsize=(5.2 * cols, 3.4 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, metric in zip(axes, order, strict=False):
        for label, frame in panels[metric]:
            ax.plot(frame["step"] + 1, frame["value"], marker="o", ms=2.5, lw=1.3, label=label)
        if metric == "lr" and (np.concatenate([f["value"].to_numpy() for _, f in panels[metric]]) > 0).all():
            ax.set_yscale("log")
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(order) :]:
        ax.set_visible(False)
    save_figure(fig, out_png)
    return n_curves


def write_evaluation_plots(
    y_true: np.ndarray,
    y_score: np.ndarray,
    table: pd.DataFrame,
    plots_dir: str | Path,
    curve_tags: int,
    train_log_dir: str | Path | None = None,
    macro: dict[str, float] | None = None,
) -> list[str]:
    """Write every plot data file and PNG of the evaluate stage.

    Args:
        y_true: (test clips, tags) 0/1 ground truth.
        y_score: (test clips, tags) network scores.
        table: per-tag scores (``tag``, ``positives``, ``roc_auc``, ``pr_auc``, ``baseline_roc_auc``, ...),
            in column order.
        plots_dir: the folder to write into (``params.paths.plots``).
        curve_tags: ROC and PR curves are drawn for this many most frequent scorable tags.
        train_log_dir: the dvclive folder for ``training.png`` (None: the PNG says there is no log).
        macro: network macro ``roc_auc`` / ``pr_auc`` (and ``baseline_roc_auc`` / ``baseline_pr_auc``) for
            the titles.

    Returns:
        The tags whose curves were drawn.
    """
    plots_dir = Path(plots_dir)
    macro = macro or {}
    tags = [str(t) for t in table["tag"]]
    chosen = select_curve_tags(table, curve_tags)
    roc, pr = curve_frames(y_true, y_score, tags, chosen)
    write_csv(roc, plots_dir / "roc.csv")
    write_csv(pr, plots_dir / "pr.csv")
    scored = table.dropna(subset=["roc_auc"]).sort_values("roc_auc", ascending=False, kind="stable")
    columns = ["tag", "roc_auc", *(["baseline_roc_auc"] if "baseline_roc_auc" in scored else [])]
    write_csv(scored[columns], plots_dir / "per_tag_auc.csv")
    write_epoch_curves(train_log_dir, plots_dir)

    def _title(kind: str, key: str) -> str:
        net, base = macro.get(key, float("nan")), macro.get(f"baseline_{key}", float("nan"))
        return f"test {kind}, {len(chosen)} most frequent tags\nmacro: network {net:.3f}, baseline {base:.3f}"

    roc_auc = dict(zip(table["tag"].astype(str), table["roc_auc"], strict=True))
    pr_auc = dict(zip(table["tag"].astype(str), table["pr_auc"], strict=True))
    plot_curves(roc, "fpr", "tpr", plots_dir / "roc.png", _title("ROC (AUC)", "roc_auc"), roc_auc)
    plot_curves(
        pr, "recall", "precision", plots_dir / "pr.png", _title("precision-recall (AP)", "pr_auc"), pr_auc
    )
    plot_per_tag_auc(table, plots_dir / "per_tag_auc.png")
    plot_training(train_log_dir, plots_dir / "training.png")
    return chosen
