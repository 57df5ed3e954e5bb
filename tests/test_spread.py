"""bench/spread.py: re-running some settings (``--only``) keeps the others' results, which CI's
reproduction bound reads."""

import importlib.util
import json
import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))  # the benchmarks import their shared module as ``common``
_spec = importlib.util.spec_from_file_location("spread", REPO / "bench" / "spread.py")
spread = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(spread)


def test_only_some_settings_keep_the_others_results_in_settings_order(tmp_path):
    out = tmp_path / "spread-cpu.json"
    old = [{"setting": s, "roc_auc": 0.8} for s in ("bf16", "fp32", "seed1", "gone")]
    out.write_text(json.dumps({"results": old}))
    new = [{"setting": "seed2", "roc_auc": 0.9}, {"setting": "seed1", "roc_auc": 0.7}]
    kept = spread.kept_results(out, new)
    assert [r["setting"] for r in kept] == ["bf16", "fp32", "seed1", "seed2"]  # "gone" is no setting now
    assert kept[2]["roc_auc"] == 0.7  # the new run replaces the old one
    assert spread.kept_results(tmp_path / "none.json", new) == [new[1], new[0]]
