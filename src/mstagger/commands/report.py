"""``mstagger report``: each metric's mean, standard deviation, min and max across DVC experiments.

One run is one draw: a score that moves by 0.01 between seeds cannot show a 0.005 gain. Run the same
configuration with several seeds (``dvc exp run --queue -S seed=1,2,3,4,5``, then ``dvc queue start``)
and this command summarises them: it reads ``dvc exp show --json`` (run in the current folder, or a
saved copy given with ``--from``), keeps the finished experiments and the workspace's run (all of them,
or those named), and
prints, per metrics file, every numeric metric's count, mean, sample standard deviation (n - 1), min and
max, after the protocol and the params that differ between the selected experiments (with a warning
when the protocols differ: scores of different protocols do not pool), and says when there are too
few runs for a spread. Lists (the bootstrap intervals) and text are not summarised.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mstagger.commands.parser import Parser
from mstagger.core.errors import UserError, guarded


@dataclass(frozen=True)
class Experiment:
    """One finished experiment of ``dvc exp show``.

    Attributes:
        name: the experiment's name (its short rev when unnamed).
        rev: the full git rev.
        params: flattened ``key`` -> value of every params file (``seed``, ``evaluate.curve_tags``).
        metrics: metrics file -> flattened ``key`` -> number.
    """

    name: str
    rev: str
    params: dict[str, Any]
    metrics: dict[str, dict[str, float]]


def _flatten(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys and leaf values of nested mappings (lists are leaves)."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], data


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _file_data(files: dict[str, Any] | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, content) of each readable file of an experiment's ``params`` or ``metrics``."""
    for path, result in (files or {}).items():
        if isinstance(result, dict) and isinstance(result.get("data"), dict):
            yield path, result["data"]


def _states(shown: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], bool]]:
    """Every row of ``dvc exp show --json``: (state, is an experiment) for commits and their experiments."""
    for row in shown:
        yield row, False
        for exp_range in row.get("experiments") or []:
            for state in exp_range.get("revs") or []:
                yield state, True


def parse_experiments(shown: list[dict[str, Any]], names: Sequence[str] = ()) -> list[Experiment]:
    """The finished experiments of ``dvc exp show --json`` output.

    Args:
        shown: the parsed JSON (a list of commit rows, each with its ``experiments``).
        names: keep these, matched by experiment name, commit name or rev prefix (a commit row or the
            ``workspace`` may be named too); empty: every experiment and the workspace's run (not the
            commits), the workspace only when it is not the result of one of those experiments (same
            params and metrics: `dvc exp run` leaves its result in the workspace).

    Returns:
        The selected experiments that have metrics: in the order named, else oldest first (the
        workspace first).

    Raises:
        UserError: the JSON is not ``dvc exp show --json`` output, or a named experiment is missing or
            has no metrics (still queued, running or failed).
    """
    if not isinstance(shown, list):
        raise UserError("expected the JSON list that `dvc exp show --json` prints")
    names = [str(n) for n in names]
    wanted = set(names)
    found: list[tuple[Any, Experiment]] = []  # (sort key, experiment)
    seen: set[str] = set()
    for state, is_exp in _states(shown):
        if not isinstance(state, dict) or "rev" not in state:
            raise UserError("expected the JSON list that `dvc exp show --json` prints")
        rev, name = str(state["rev"]), state.get("name")
        keys = {rev, str(name)} | ({rev[:7]} if len(rev) >= 7 else set())
        match = {n for n in wanted if n in keys or (len(n) >= 4 and rev.startswith(n))}
        if (wanted and not match) or (not wanted and not is_exp and rev != "workspace"):
            continue
        seen |= match
        data = state.get("data") or {}
        metrics = {
            path: {k: float(v) for k, v in _flatten(content) if _is_number(v)}
            for path, content in _file_data(data.get("metrics"))
        }
        if not any(metrics.values()):
            if match:
                raise UserError(f"experiment {name or rev[:7]} has no metrics (queued, running or failed?)")
            continue
        params = {k: v for _, content in _file_data(data.get("params")) for k, v in _flatten(content)}
        order = min(names.index(n) for n in match) if match else str(data.get("timestamp") or "")
        label = str(name or (rev if rev == "workspace" else rev[:7]))
        found.append((order, Experiment(label, rev, params, metrics)))
    missing = sorted(wanted - seen)
    if missing:
        raise UserError(f"no experiment named {', '.join(missing)} in `dvc exp show`")
    if not wanted:  # the workspace once: not again when it holds the last `dvc exp run`'s result
        runs = [e for _, e in found if e.rev != "workspace"]
        found = [
            (order, e)
            for order, e in found
            if e.rev != "workspace" or not any((r.params, r.metrics) == (e.params, e.metrics) for r in runs)
        ]
    return [exp for _, exp in sorted(found, key=lambda item: item[0])]


def differing_params(experiments: Sequence[Experiment]) -> dict[str, list[Any]]:
    """Params whose values are not the same in every experiment: key -> value per experiment (None: unset)."""
    keys = dict.fromkeys(k for e in experiments for k in e.params)
    out = {}
    for key in keys:
        values = [e.params.get(key) for e in experiments]
        if len({json.dumps(v, sort_keys=True) for v in values}) > 1:
            out[key] = values
    return out


def summarise(experiments: Sequence[Experiment]) -> dict[str, dict[str, dict[str, float]]]:
    """Per metrics file and key: ``n``, ``mean``, ``std`` (sample, n - 1; NaN for one value), min, max."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    files = dict.fromkeys(path for e in experiments for path in e.metrics)
    for path in files:
        keys = dict.fromkeys(k for e in experiments for k in e.metrics.get(path, {}))
        for key in keys:
            values = [e.metrics[path][key] for e in experiments if key in e.metrics.get(path, {})]
            out.setdefault(path, {})[key] = {
                "n": len(values),
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else float("nan"),  # exact: 0 when equal
                "min": min(values),
                "max": max(values),
            }
    return out


def _cell(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:.0f}" if x == int(x) and abs(x) >= 1 else f"{x:.4g}" if abs(x) >= 1000 else f"{x:.4f}"


def format_report(experiments: Sequence[Experiment]) -> str:
    """The printed report: the experiments, the params that differ, the metrics table."""
    lines = [f"{len(experiments)} experiments: {', '.join(e.name for e in experiments)}"]
    differ = differing_params(experiments)
    protocols = {e.params.get("protocol") for e in experiments}
    if len(protocols) == 1 and None not in protocols:
        lines.append(f"protocol: {protocols.pop()} (every experiment)")
    lines.append("params that differ:" if differ else "params: the same in every experiment")
    for key, values in differ.items():
        shown = (f"{json.dumps(v)} ({e.name})" for v, e in zip(values, experiments, strict=True))
        lines.append(f"  {key}: " + ", ".join(shown))
    if "protocol" in differ:
        lines.append(
            "warning: the experiments are measured on different protocols; their scores are not "
            "comparable, and the table below pools them: name the experiments of one protocol"
        )
    table = summarise(experiments)
    width = max([len(k) for keys in table.values() for k in keys] + [6]) + 2
    lines.append(f"{'metric':<{width}}{'n':>3}{'mean':>10}{'std':>10}{'min':>10}{'max':>10}")
    for path, keys in table.items():
        lines.append(path)
        for key, s in keys.items():
            cells = "".join(f"{_cell(s[c]):>10}" for c in ("mean", "std", "min", "max"))
            lines.append(f"  {key:<{width - 2}}{s['n']:>3}{cells}")
    lines.append("std: sample standard deviation (n - 1)")
    note = spread_note(table)
    if note:
        lines.append(note)
    return "\n".join(lines)


def spread_note(table: dict[str, dict[str, dict[str, float]]]) -> str | None:
    """What to say when the runs are too few for a spread (fewer than 3 values of a metric), else None."""
    n = min((s["n"] for keys in table.values() for s in keys.values()), default=0)
    more = "queue more seeds: `dvc exp run --queue -S seed=1,2,3` then `dvc queue start`"
    if n < 2:
        return f"n = {n}: one run has no spread, so no std; {more}"
    if n < MIN_RUNS_FOR_SPREAD:
        return f"n = {n}: a std from {n} runs is a rough guess; {more}"
    return None


MIN_RUNS_FOR_SPREAD = 3


def read_exp_show(source: str | Path | None) -> list[dict[str, Any]]:
    """The parsed ``dvc exp show --json``: from ``source`` (a file, ``-`` for stdin), else by running it.

    Raises:
        UserError: dvc is missing or failed, or the text is not JSON.
    """
    if source is None:
        try:
            done = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
        except FileNotFoundError:
            raise UserError("dvc not found; activate the environment where DVC is installed") from None
        if done.returncode != 0:
            raise UserError(f"`dvc exp show --json` failed: {done.stderr.strip() or done.stdout.strip()}")
        text, where = done.stdout, "`dvc exp show --json`"
    elif str(source) == "-":
        text, where = sys.stdin.read(), "stdin"
    else:
        try:
            text, where = Path(source).read_text(encoding="utf-8"), str(source)
        except OSError as err:
            raise UserError(f"cannot read {source}: {err.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{where} is not JSON: {err}") from None


def _parser() -> Parser:
    what = "Every metric's mean, std, min and max across DVC experiments, and the params that differ."
    p = Parser(prog="mstagger report", description=what)
    p.add_argument(
        "experiments",
        nargs="*",
        metavar="EXP",
        help="experiment names or revs to include (default: every finished experiment and the workspace)",
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="FILE",
        help="read saved `dvc exp show --json` output from FILE ('-': stdin) instead of running it",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    """Run ``mstagger report``.

    Args:
        argv: the arguments after ``report`` (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 2 on an error (one ``error: ...`` line on stderr).
    """
    args = _parser().parse_args(argv)
    experiments = parse_experiments(read_exp_show(args.source), args.experiments)
    if not experiments:
        raise UserError("no finished experiment to report; run some (`dvc exp run`, `dvc queue start`)")
    if args.json:
        names = [e.name for e in experiments]
        table = summarise(experiments)
        doc = {
            "experiments": [{"name": e.name, "rev": e.rev} for e in experiments],
            "params_differ": {
                k: dict(zip(names, v, strict=True)) for k, v in differing_params(experiments).items()
            },
            "metrics": {  # JSON has no NaN: the std of a single value is null
                path: {k: {c: None if math.isnan(x) else x for c, x in s.items()} for k, s in keys.items()}
                for path, keys in table.items()
            },
            "note": spread_note(table),
        }
        print(json.dumps(doc))
    else:
        print(format_report(experiments))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
