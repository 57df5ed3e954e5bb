"""bench/step_profile.py (run on a GPU by the check, with little time to rerun): a variant that fails
(a compiler, CUDA graphs) costs only its own figures, and the run still says it failed."""

import importlib.util
import json
import sys

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))  # the benchmarks import their shared module as ``common``
_spec = importlib.util.spec_from_file_location("step_profile", REPO / "bench" / "step_profile.py")
step_profile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(step_profile)


def test_a_failing_variant_keeps_the_others_figures_and_fails_the_run(tmp_path, monkeypatch):
    real = step_profile.run_variant

    def nchw_breaks(name, *args):
        if name == "nchw":
            raise RuntimeError("the layout's kernel is missing\nmore lines")
        return real(name, *args)

    monkeypatch.setattr(step_profile, "run_variant", nchw_breaks)
    out = tmp_path / "profile.json"
    argv = ["step_profile.py", "--device", "cpu", "--batch", "2", "--mels", "16", "--frames", "64"]
    argv += ["--steps", "1", "--repeats", "1", "--variants", "nchw", "stage", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="variant\\(s\\) failed: nchw"):
        step_profile.main()
    doc = json.loads(out.read_text())
    assert [r["variant"] for r in doc["rows"]] == ["stage"]  # stage first: the reference
    assert doc["failed"] == {"nchw": "RuntimeError: the layout's kernel is missing"}
    kinds = doc["rows"][0]["step_profile_ms"]
    assert kinds["total"] > 0 and kinds["convolution"] > 0
