"""How far the demo's scores move: precision, CPU kernels and seeds, on the same features and split.

Each setting runs the real ``train`` and ``evaluate`` stages in its own folder under ``--work``, on
the repository's ``data/features`` and ``data/prepared`` (linked, not copied: run ``dvc repro`` first),
with ``params.yaml`` changed as the setting says and the environment variables it sets. Settings:

- ``bf16``: the defaults, run again: on the same machine it must give the committed metrics exactly.
- ``fp32``: ``precision: fp32``.
- ``bf16-avx512core`` / ``fp32-avx2``: oneDNN limited to older instruction sets
  (``ONEDNN_MAX_CPU_ISA``), so other convolution kernels run, as on another kind of CPU; a stand-in
  for a machine that this one cannot become.
- ``seed1`` .. ``seed5``: ``seed`` set (initialisation and batch order; the data stay those linked).

Prints a table and writes ``bench/results/spread-<device>.json``: per setting the test ROC-AUC,
PR-AUC and interval, the kept epoch (``selection_tolerance``), its validation ROC-AUC and the epoch
the paper's rule (the best validation ROC-AUC) would keep, the git revision; then the spread of the
seeds. ``--only`` re-runs some settings and keeps the others' earlier results in the file.
Usage: ``python bench/spread.py [--only bf16,fp32] [--work /tmp/spread]``. About 2 minutes a setting
on a quiet 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from common import machine, write_results  # bench/ is on sys.path when this file runs
from mstagger.core.runtime import git_revision

ROOT = Path(__file__).resolve().parents[1]
SETTINGS: dict[str, tuple[dict[str, str], dict[str, object]]] = {
    "bf16": ({}, {}),
    "fp32": ({}, {"precision": "fp32"}),
    "bf16-avx512core": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, {}),
    "fp32-avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"precision": "fp32"}),
    **{f"seed{s}": ({}, {"seed": s}) for s in range(1, 6)},
}


def argmax_epoch(train_log: Path) -> int:
    """The epoch with the highest validation ROC-AUC (the first of equals): the paper's choice."""
    with open(train_log / "plots" / "metrics" / "val" / "roc_auc.tsv") as f:
        rows = [line.split("\t") for line in f.read().splitlines()[1:]]  # step, value
    values = [float(row[-1]) for row in rows]
    return values.index(max(values)) + 1


def run_setting(name: str, work: Path, base: dict, revision: str) -> dict:
    """Train and evaluate under one setting in ``work/name``; its scores and seconds."""
    env_over, params_over = SETTINGS[name]
    run = work / name
    (run / "data").mkdir(parents=True, exist_ok=True)
    for key in ("features", "prepared"):
        link = run / base["paths"][key]
        if not link.exists():
            link.symlink_to(ROOT / base["paths"][key])
    (run / "params.yaml").write_text(yaml.safe_dump({**base, **params_over}, sort_keys=False))
    env = {**os.environ, **env_over, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    for stage in ("train", "evaluate"):
        with open(run / f"{stage}.log", "w") as log:
            cmd = [sys.executable, "-m", f"mstagger.{stage}"]
            subprocess.run(cmd, cwd=run, env=env, stdout=log, stderr=log, check=True)
    metrics = run / base["paths"]["metrics"]
    test = json.loads((metrics / "test.json").read_text())
    train = json.loads((metrics / "train.json").read_text())
    return {
        "setting": name,
        "env": env_over,
        "params": params_over,
        "roc_auc": test["roc_auc"],
        "pr_auc": test["pr_auc"],
        "roc_auc_ci": test.get("roc_auc_ci"),
        "network_beats_baseline": test.get("network_beats_baseline", {}).get("roc_auc"),
        "best_epoch": train["best_epoch"],  # the kept epoch, under the setting's selection_tolerance
        "val_roc_auc": round(train["val_roc_auc"], 6),
        "argmax_epoch": argmax_epoch(run / base["paths"]["train_log"]),  # the paper's rule's choice
        "seconds": round(time.perf_counter() - start, 1),
        "git_rev": revision,
    }


def kept_results(out: Path, new: list[dict]) -> list[dict]:
    """``new``, and the results in ``out`` of the settings not run this time (``--only``), in
    :data:`SETTINGS` order: re-running some settings never drops the others (CI's bound reads them).
    Each result records the git revision it was measured at."""
    ran = {r["setting"] for r in new}
    old = json.loads(out.read_text())["results"] if out.is_file() else []
    merged = {r["setting"]: r for r in old if r["setting"] not in ran and r["setting"] in SETTINGS}
    merged.update({r["setting"]: r for r in new})
    return [merged[name] for name in SETTINGS if name in merged]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SETTINGS), help="comma-separated settings")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mstagger-spread"))
    args = parser.parse_args()
    names = args.only.split(",")
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        parser.error(f"--only: unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    committed = json.loads((ROOT / base["paths"]["metrics"] / "test.json").read_text())
    results, revision = [], git_revision(ROOT)  # the code every setting of this run runs
    header = ("setting", "ROC-AUC", "PR-AUC", "interval", "epoch", "val ROC", "argmax", "s")
    print(
        "".join(
            f"{h:{w}}"
            for h, w in zip(header, ("<18", ">9", ">8", ">18", ">7", ">9", ">7", ">7"), strict=True)
        )
    )
    for name in names:
        r = run_setting(name, args.work, base, revision)
        results.append(r)
        ci = r["roc_auc_ci"] or [float("nan")] * 2
        print(
            f"{name:<18}{r['roc_auc']:>9.4f}{r['pr_auc']:>8.4f}   [{ci[0]:.4f}, {ci[1]:.4f}]"
            f"{r['best_epoch']:>7}{r['val_roc_auc']:>9.4f}{r['argmax_epoch']:>7}{r['seconds']:>7.0f}",
            flush=True,
        )
    same = [r for r in results if r["setting"] == "bf16"]
    if same:
        print(f"bf16 again == committed metrics/test.json: {same[0]['roc_auc'] == committed['roc_auc']}")
    out = ROOT / "bench" / "results" / "spread-cpu.json"
    results = kept_results(out, results)
    seeds = [r["roc_auc"] for r in results if r["setting"].startswith("seed")]
    spread = None
    if len(seeds) >= 2:
        spread = {
            "n": len(seeds),
            "mean": round(statistics.mean(seeds), 6),
            "std": round(statistics.stdev(seeds), 6),
            "min": min(seeds),
            "max": max(seeds),
        }
        mean, std, low, high = (spread[k] for k in ("mean", "std", "min", "max"))
        print(f"seeds: ROC-AUC mean {mean:.4f}, std {std:.4f}, min {low:.4f}, max {high:.4f}")
    doc = {
        "benchmark": "spread",
        "machine": machine(),
        "committed_roc_auc": committed["roc_auc"],
        "results": results,
        "seeds": spread,
    }
    write_results(out, doc)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
