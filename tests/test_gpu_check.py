"""The GPU check (bench/gpu_check.sh) in its CPU dry run: tiny sizes, every step, so it never rots.

On a GPU machine it runs the same steps at MTAT size; here it proves the plumbing: the stage learns,
predict agrees across batch sizes, a SIGKILLed stage resumes to the same weights, the step breakdown
and bench_train write their figures, and everything lands in one summary.json.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")
def test_the_gpu_check_dry_run_passes_every_step(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {
        **os.environ,
        "DRY": "1",
        "PY": sys.executable,
        "GPU_CHECK_OUT": str(out),
        "WORK": str(work),
        "WHEELS": str(tmp_path / "no-wheels"),  # what is installed here: the real dvclive
    }
    results = REPO / "bench" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500
    )
    log = (out / "log").read_text()
    assert done.returncode == 0, log[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["step"]: s["rc"] for s in summary["steps"]}
    assert steps == dict.fromkeys(
        ["env", "deps", "project", "stage", "micro", "predict", "resume", "bench", "profile"], 0
    )
    assert summary["stage_eager"]["val_roc_auc"] > 0.55
    assert {r["part"] for r in summary["timing_eager"]["records"]} >= {"train_epoch", "validate", "save"}
    assert summary["predict"]["ok"] and summary["predict"]["max_abs_diff_batch7_vs_batch64"] < 1e-5
    assert summary["resume_compare"]["identical_weights"]  # on the CPU a resumed run is bit-identical
    assert summary["resume_compare"]["b"]["resumed_after_epoch"] == 1
    assert summary["micro"]["bf16_channels_last"]["wall_ms_per_step"] > 0
    rows = summary["bench_train_eager"]["rows"]
    assert rows[0]["variant"].startswith("seed loop") and all(r["tflops_per_s"] > 0 for r in rows)
    assert summary["bench_train_eager"]["flops_per_clip"]["train_step"] > 0
    profiled = {r["variant"]: r for r in summary["step_profile"]["rows"]}
    assert set(profiled) == {"stage", "nchw"} and profiled["nchw"]["layout"] == "contiguous_format"
    kinds = profiled["stage"]["step_profile_ms"]
    assert kinds["convolution"] > 0 and kinds["max-pool"] > 0 and kinds["total"] >= kinds["convolution"]
    assert before == {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}  # results untouched
