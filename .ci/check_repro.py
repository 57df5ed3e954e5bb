"""CI, after the demo ``dvc repro`` on a fresh clone: did this machine reproduce the committed run?

- ``download``, ``extract``, ``prepare``: their data outputs (``paths.raw``, ``paths.features``,
  ``paths.prepared``) must have the hashes of the committed ``dvc.lock``, bit for bit, on any x86-64
  machine (docs/reproducibility.md). A difference fails, naming the stage.
- ``train`` and ``evaluate``: the model's bits depend on the CPU kind's convolution kernels and on the
  precision, so the test ROC-AUC may move; it fails when it moves by more than the spread measured
  across CPU kinds and precisions (``bench/spread.py``: the range of the test ROC-AUC over its
  settings other than seeds, read from ``bench/results/spread-cpu.json``). It says plainly whether
  the model's weights (``weights_sha256`` in ``metrics/train.json``: the model file also records the
  git revision, so its own hash changes with every commit) and the scores are bit-identical.

Usage: ``python .ci/check_repro.py [--rev HEAD]``, from the repository root; exit status 1 on a failure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

DATA_STAGES = {"download": "raw", "extract": "features", "prepare": "prepared"}
SPREAD = Path("bench/results/spread-cpu.json")


def committed(rev: str, path: str) -> str:
    """The text of ``path`` at git revision ``rev``."""
    done = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"check_repro: cannot read {path} at {rev}: {done.stderr.strip()}")
    return done.stdout


def out_hash(lock: dict, stage: str, path: str) -> str | None:
    """The md5 that ``lock`` (a parsed dvc.lock) records for output ``path`` of ``stage``."""
    for out in lock.get("stages", {}).get(stage, {}).get("outs", []):
        if out["path"] == path:
            return out.get("md5")
    return None


def spread_bound(spread_file: Path) -> tuple[float, list[str]]:
    """The range of the test ROC-AUC over the CPU-kind and precision settings of ``bench/spread.py``."""
    doc = json.loads(spread_file.read_text())
    runs = [r for r in doc["results"] if not r["setting"].startswith("seed")]
    scores = [r["roc_auc"] for r in runs]
    return max(scores) - min(scores), [f"{r['setting']} {r['roc_auc']:.4f}" for r in runs]


def same_weights(rev: str, paths: dict, same_file: bool) -> tuple[bool, str]:
    """Whether the model's weights equal the committed run's, and what was compared.

    The train stage writes the SHA-256 of the kept weights to ``<metrics>/train.json``
    (``weights_sha256``); the bundle file itself also records the git revision, so its hash in
    dvc.lock changes with every commit. Without the digest on both sides, the file hashes decide.
    """
    train_json = f"{paths['metrics']}/train.json"
    try:
        now = json.loads(Path(train_json).read_text()).get("weights_sha256")
        then = json.loads(committed(rev, train_json)).get("weights_sha256")
    except (OSError, ValueError, SystemExit):
        now = then = None
    if now and then:
        return now == then, f"the model's weights (sha256 {now[:12]} in {train_json})"
    return same_file, paths["model"]


def check(rev: str, spread_file: Path) -> list[str]:
    """Print what reproduced; return one line per failure."""
    paths = yaml.safe_load(Path("params.yaml").read_text())["paths"]
    now = yaml.safe_load(Path("dvc.lock").read_text())
    then = yaml.safe_load(committed(rev, "dvc.lock"))
    failures = []
    for stage, key in DATA_STAGES.items():
        path = paths[key]
        want, got = out_hash(then, stage, path), out_hash(now, stage, path)
        if got != want:
            failures.append(
                f"stage {stage}: {path} hashes to {got}, the committed dvc.lock says {want}: this machine "
                "computed other bits (docs/reproducibility.md says what must be identical), or the "
                "committed dvc.lock is stale (run dvc repro and commit dvc.lock with the code)"
            )
        else:
            print(f"{stage}: {path} is bit-identical to the committed dvc.lock ({got})")

    model = paths["model"]
    same_model, what = same_weights(
        rev, paths, out_hash(now, "train", model) == out_hash(then, "train", model)
    )
    test_json = f"{paths['metrics']}/test.json"
    got = json.loads(Path(test_json).read_text())["roc_auc"]
    want = json.loads(committed(rev, test_json))["roc_auc"]
    bound, settings = spread_bound(spread_file)
    moved = got - want
    if same_model and moved == 0:
        print(
            f"train, evaluate: {what} and the test ROC-AUC ({got:.4f}) are bit-identical to the committed run"
        )
        return failures
    print(
        f"train, evaluate: {what}: {'bit-identical' if same_model else 'differs from the committed one'}; "
        f"test ROC-AUC {got:.4f} against the committed {want:.4f} ({moved:+.4f}); allowed: {bound:.4f}, the "
        f"range measured across CPU kinds and precisions in {spread_file} ({', '.join(settings)})"
    )
    if abs(moved) > bound:
        failures.append(
            f"stage evaluate: test ROC-AUC moved by {moved:+.4f}, more than {bound:.4f}, the spread measured "
            f"across CPU kinds and precisions ({spread_file})"
        )
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rev", default="HEAD", help="the git revision whose dvc.lock and metrics to compare with"
    )
    parser.add_argument("--spread", type=Path, default=SPREAD, help="bench/spread.py's results file")
    args = parser.parse_args()
    failures = check(args.rev, args.spread)
    for line in failures:
        print(f"not reproduced: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
