"""Tests of `mstagger report`: metrics summarised across DVC experiments."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from mstagger.commands import report
from mstagger.commands.main import main as cli_main
from test_pipeline import repo as tiny_repo  # noqa: F401 (the module-scoped tiny pipeline run, reused)
from test_pipeline import sh


def state(rev: str, name: str | None, params: dict, metrics: dict | None, experiments=None, hour=0) -> dict:
    """One row of `dvc exp show --json` (DVC 3's layout)."""
    data = {
        "rev": rev,
        "timestamp": f"2026-01-01T{hour:02d}:00:00",
        "params": {"params.yaml": {"data": params}},
        "metrics": {path: {"data": content} for path, content in (metrics or {}).items()},
        "deps": {},
        "outs": {},
        "meta": {},
    }
    return {"rev": rev, "name": name, "data": data, "error": None, "experiments": experiments}


def exp_show() -> list[dict]:
    base = {"seed": 1337, "lr": 0.001, "evaluate": {"curve_tags": 10}}

    def test_json(roc: float, epoch: int) -> dict:
        test = {"roc_auc": roc, "roc_auc_ci": [roc - 0.1, roc + 0.1], "baseline": {"roc_auc": 0.8}}
        return {
            "metrics/test.json": test,
            "metrics/train/metrics.json": {"best": {"best_epoch": epoch}},
        }

    def exp(rev: str, name: str, seed: int, metrics: dict | None, status: str = "success") -> dict:
        run = state(rev, name, {**base, "seed": seed}, metrics, hour=seed)
        return {"revs": [run], "executor": {"state": status, "name": None, "local": None}, "name": name}

    return [
        state("workspace", None, base, test_json(0.85, 30)),
        state(
            "a" * 40,
            "main",
            base,
            test_json(0.85, 30),
            experiments=[  # newest first, as DVC lists them
                exp("e" * 40, "queued", 4, None, status="queued"),
                exp("d" * 40, "seed-3", 3, test_json(0.86, 40)),
                exp("c" * 40, "seed-2", 2, test_json(0.90, 24)),
                exp("b" * 40, "seed-1", 1, test_json(0.88, 20)),
            ],
        ),
    ]


def test_every_finished_experiment_and_the_workspace_by_default():
    exps = report.parse_experiments(exp_show())
    # The workspace's run (seed 1337), then the experiments oldest first; not the commit or the queued one.
    assert [e.name for e in exps] == ["workspace", "seed-1", "seed-2", "seed-3"]
    assert report.differing_params(exps) == {"seed": [1337, 1, 2, 3]}
    table = report.summarise(exps)
    roc = table["metrics/test.json"]["roc_auc"]
    assert roc["n"] == 4 and roc["min"] == 0.85 and roc["max"] == 0.90
    assert roc["mean"] == pytest.approx(statistics.mean([0.85, 0.88, 0.90, 0.86]))
    assert roc["std"] == pytest.approx(statistics.stdev([0.85, 0.88, 0.90, 0.86]))
    assert table["metrics/train/metrics.json"]["best.best_epoch"]["max"] == 40
    assert "roc_auc_ci" not in table["metrics/test.json"]  # lists are not summarised
    assert table["metrics/test.json"]["baseline.roc_auc"]["std"] == 0.0


def test_a_workspace_holding_an_experiments_result_counts_once():
    shown = exp_show()
    last = shown[1]["experiments"][1]["revs"][0]["data"]  # seed-3, as `dvc exp run` leaves it
    shown[0]["data"] = {**last, "timestamp": None}
    assert [e.name for e in report.parse_experiments(shown)] == ["seed-1", "seed-2", "seed-3"]


def test_too_few_runs_for_a_spread_are_said(tmp_path, capsys):
    saved = tmp_path / "exp.json"
    shown = exp_show()
    shown[1]["experiments"] = []  # right after the quick start: the workspace's run alone
    saved.write_text(json.dumps(shown))
    assert cli_main(["report", "--from", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "1 experiments: workspace" in out
    assert "n = 1: one run has no spread" in out and "dvc exp run --queue -S seed=1,2,3" in out
    assert cli_main(["report", "--from", str(saved), "--json", "workspace", "main"]) == 0
    assert json.loads(capsys.readouterr().out)["note"].startswith("n = 2: a std from 2 runs is a rough guess")
    saved.write_text(json.dumps(exp_show()))
    assert cli_main(["report", "--from", str(saved)]) == 0
    assert "n = " not in capsys.readouterr().out


def test_named_experiments_and_errors():
    shown = exp_show()
    named = report.parse_experiments(shown, ["seed-2", "bbbbbbb", "main"])
    assert [e.name for e in named] == ["seed-2", "seed-1", "main"]  # in the order named
    with pytest.raises(report.UserError, match="no experiment named nope"):
        report.parse_experiments(shown, ["nope"])
    with pytest.raises(report.UserError, match="queued has no metrics"):
        report.parse_experiments(shown, ["queued"])
    with pytest.raises(report.UserError, match="dvc exp show --json"):
        report.parse_experiments({"not": "a list"})


def test_printed_report_and_json(tmp_path, capsys):
    saved = tmp_path / "exp.json"
    saved.write_text(json.dumps(exp_show()))
    assert cli_main(["report", "--from", str(saved), "seed-1", "seed-2"]) == 0
    out = capsys.readouterr().out
    assert "2 experiments: seed-1, seed-2" in out
    assert "seed: 1 (seed-1), 2 (seed-2)" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("roc_auc"))
    assert line.split()[1:] == ["2", "0.8900", "0.0141", "0.8800", "0.9000"]
    assert cli_main(["report", "--from", str(saved), "--json", "seed-1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metrics"]["metrics/test.json"]["roc_auc"] == {
        "n": 1,
        "mean": 0.88,
        "std": None,
        "min": 0.88,
        "max": 0.88,
    }
    assert doc["params_differ"] == {}
    assert cli_main(["report", "--from", str(tmp_path / "missing.json")]) == 2
    assert "error: cannot read" in capsys.readouterr().err


@pytest.mark.slow
def test_report_on_two_real_experiments(tiny_repo):  # noqa: F811
    # Two seeds of the tiny pipeline, each run as a DVC experiment; the metrics files they wrote are
    # the truth the report must reproduce.
    written = {}
    for seed in (1, 2):
        sh(["dvc", "exp", "run", "-n", f"seed{seed}", "-S", f"seed={seed}"], tiny_repo)
        written[seed] = json.loads((tiny_repo / "metrics" / "scores.json").read_text())
    run = subprocess.run(
        [sys.executable, "-m", "mstagger.commands.report", "--json", "seed1", "seed2"],
        cwd=tiny_repo,
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(run.stdout)
    assert [e["name"] for e in doc["experiments"]] == ["seed1", "seed2"]
    assert doc["params_differ"]["seed"] == {"seed1": 1, "seed2": 2}
    assert set(doc["metrics"]) == {"metrics/scores.json"}  # the headline, not timings or counts
    summary = doc["metrics"]["metrics/scores.json"]
    for key in ("roc_auc", "pr_auc"):
        values = [written[1][key], written[2][key]]
        assert summary[key]["n"] == 2
        assert summary[key]["mean"] == pytest.approx(statistics.mean(values))
        assert summary[key]["std"] == pytest.approx(statistics.stdev(values))
        assert (summary[key]["min"], summary[key]["max"]) == (min(values), max(values))
    base = [written[1]["baseline_roc"], written[2]["baseline_roc"]]
    assert summary["baseline_roc"]["mean"] == pytest.approx(statistics.mean(base))
    text = subprocess.run(
        [sys.executable, "-m", "mstagger.commands.report"],
        cwd=tiny_repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # by default the workspace too, counted once: it holds seed2's result
    assert "seed: 1 (seed1), 2 (seed2)" in text and "metrics/scores.json" in text
    assert "n = 2: a std from 2 runs is a rough guess" in text
