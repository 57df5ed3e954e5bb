"""The benchmark scripts' own behaviour, not their figures: what a partial or failing run keeps.

bench/spread.py's ``--only`` keeps the other settings' results (CI's reproduction bound reads them);
bench/step_profile.py and bench/bench_train.py, run on a GPU by the check with little time to rerun,
lose only a failing variant's figures and still exit non-zero.
"""

import importlib.util
import json
import sys
from types import ModuleType

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))  # the benchmarks import their shared module as ``common``


def load_bench(name: str) -> ModuleType:
    """bench/<name>.py as a module (a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_spread_only_some_settings_keep_the_others_results_in_settings_order(tmp_path):
    spread = load_bench("spread")
    out = tmp_path / "spread-cpu.json"
    old = [{"setting": s, "roc_auc": 0.8} for s in ("bf16", "fp32", "seed1", "gone")]
    out.write_text(json.dumps({"results": old}))
    new = [{"setting": "seed2", "roc_auc": 0.9}, {"setting": "seed1", "roc_auc": 0.7}]
    kept = spread.kept_results(out, new)
    assert [r["setting"] for r in kept] == ["bf16", "fp32", "seed1", "seed2"]  # "gone" is no setting now
    assert kept[2]["roc_auc"] == 0.7  # the new run replaces the old one
    assert spread.kept_results(tmp_path / "none.json", new) == [new[1], new[0]]


def breaking(module: ModuleType, monkeypatch, broken) -> None:
    """Make ``module.run_variant`` raise for the variant ``broken(variant)`` names, run the others."""
    real = module.run_variant

    def run_variant(variant, *args):
        if broken(variant):
            raise RuntimeError("its kernel is missing\nmore lines")
        return real(variant, *args)

    monkeypatch.setattr(module, "run_variant", run_variant)


def test_step_profile_a_failing_variant_keeps_the_others_figures_and_fails_the_run(tmp_path, monkeypatch):
    step_profile = load_bench("step_profile")
    breaking(step_profile, monkeypatch, lambda name: name == "nchw")
    out = tmp_path / "profile.json"
    argv = ["step_profile.py", "--device", "cpu", "--batch", "2", "--mels", "16", "--frames", "64"]
    argv += ["--steps", "1", "--repeats", "1", "--variants", "nchw", "stage", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="variant\\(s\\) failed: nchw"):
        step_profile.main()
    doc = json.loads(out.read_text())
    assert [r["variant"] for r in doc["rows"]] == ["stage"]  # stage first: the reference
    assert doc["failed"] == {"nchw": "RuntimeError: its kernel is missing"}
    kinds = doc["rows"][0]["step_profile_ms"]
    assert kinds["total"] > 0 and kinds["convolution"] > 0


def test_bench_train_a_failing_variant_keeps_the_others_figures_and_fails_the_run(tmp_path, monkeypatch):
    bench_train = load_bench("bench_train")
    breaking(bench_train, monkeypatch, lambda variant: variant.seed_loop)
    out = tmp_path / "train.json"
    argv = ["bench_train.py", "--device", "cpu", "--train-clips", "16", "--valid-clips", "8", "--steps", "1"]
    argv += ["--valid-batches", "1", "--only", "0", "1", "--mels", "16", "--frames", "64", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="variant\\(s\\) failed: seed loop"):
        bench_train.main()
    doc = json.loads(out.read_text())
    assert [r["variant"] for r in doc["rows"]] == [bench_train.VARIANTS[1].name]
    assert list(doc["failed"].values()) == ["RuntimeError: its kernel is missing"]
    assert doc["rows"][0]["s_per_step"] > 0 and doc["rows"][0]["speedup_vs_seed_loop"] is None
