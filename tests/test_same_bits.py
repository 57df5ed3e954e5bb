"""Same bits on every machine: ``extract`` and ``prepare`` run in subprocesses with the machine changed
under them (the BLAS kernel, NumPy's SIMD dispatch, soxr's AVX path, thread and worker counts) write
byte-identical outputs.

One x86-64 machine stands in for others: ``OPENBLAS_CORETYPE`` makes OpenBLAS run the kernels it
would pick on another CPU, ``NPY_DISABLE_CPU_FEATURES`` turns off NumPy's AVX512 (or all dispatched)
code paths and ``SOXR_USE_SIMD64=0`` soxr's AVX path. Each variant runs both stages on the same demo
clips (the default spectrogram: 128 mels, 628 frames) in its own folder and is compared with a run
under the unchanged environment. docs/reproducibility.md says what this covers and what it does not.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY_PIPELINE, write_params
from mstagger.demo import generate_demo
from mstagger.params import DemoParams

# Variables that change what runs under the code; cleared for the reference run.
MACHINE_VARIABLES = (
    "OPENBLAS_CORETYPE",
    "NPY_DISABLE_CPU_FEATURES",
    "NPY_ENABLE_CPU_FEATURES",
    "SOXR_USE_SIMD",
    "SOXR_USE_SIMD64",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
)
# The tiny pipeline's data (12 clips, two of them broken; random split) at the real spectrogram size:
# ~10 clips x 80,384 values, enough for a kernel that sums in another order to show (the old code's
# BLAS product differed in about 1 value in 80,000).
PARAMS = {
    **{k: v for k, v in TINY_PIPELINE.items() if k in ("protocol", "demo", "tags", "split")},
    "extract": {"workers": 1},
}
OUTPUTS = (
    "data/features/mel.npy",
    "data/features/index.csv",
    "data/features/skipped.csv",
    "data/prepared/labels.npy",
    "data/prepared/tags.json",
    "data/prepared/split.csv",
    "data/prepared/stats.json",
)


def _cpu_features() -> tuple[dict[str, bool], list[str]]:
    from numpy._core import _multiarray_umath as umath

    return umath.__cpu_features__, list(umath.__cpu_dispatch__)


def _dispatched(avx512_only: bool) -> str:
    """The NumPy SIMD targets this machine would dispatch to (the AVX512 families, or all of them)."""
    found, dispatch = _cpu_features()
    names = [n for n in dispatch if found.get(n)]
    if avx512_only:
        names = [n for n in names if n.startswith("AVX512") or n == "X86_V4"]
    return " ".join(names)


def _openblas(core: str, needs: str) -> dict[str, str]:
    return {"OPENBLAS_CORETYPE": core, "_NEEDS": needs}


THREADS_1 = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
THREADS_2 = {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
# name -> (environment, extract.workers); "_NEEDS" names a CPU feature the variant needs to run at all.
VARIANTS: dict[str, tuple[dict[str, str], int]] = {
    "openblas-skylakex": (_openblas("SkylakeX", "AVX512F"), 1),
    "openblas-haswell": (_openblas("Haswell", "AVX2"), 1),
    "openblas-zen": (_openblas("Zen", "AVX2"), 1),
    "openblas-prescott": (_openblas("Prescott", "SSE3"), 1),
    "numpy-without-avx512": ({"NPY_DISABLE_CPU_FEATURES": "avx512", "_NEEDS": "AVX512F"}, 1),
    "numpy-baseline-only": ({"NPY_DISABLE_CPU_FEATURES": "all"}, 1),
    "soxr-without-avx": ({"SOXR_USE_SIMD64": "0"}, 1),
    "threads-1": (THREADS_1, 1),
    "threads-2": (THREADS_2, 1),
    "workers-2-threads-2": (THREADS_2, 2),
}


def _env(over: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in MACHINE_VARIABLES}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for key, value in over.items():
        if key == "_NEEDS":
            continue
        if key == "NPY_DISABLE_CPU_FEATURES":
            value = _dispatched(avx512_only=value == "avx512")
            if not value:
                pytest.skip("NumPy dispatches to no SIMD target above its baseline here")
        env[key] = value
    return env


def _run_stages(folder: Path, raw: Path, env: dict[str, str], workers: int) -> dict[str, str]:
    """extract then prepare in ``folder`` (raw linked in); the sha256 of each output."""
    folder.mkdir()
    (folder / "data").mkdir()
    (folder / "data" / "raw").symlink_to(raw)
    write_params(folder, **{**PARAMS, "extract": {"workers": workers}})
    for stage in ("extract", "prepare"):
        done = subprocess.run(
            [sys.executable, "-m", f"mstagger.{stage}"], cwd=folder, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{stage} failed:\n{done.stderr[-3000:]}"
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in OUTPUTS}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("same_bits") / "raw"
    generate_demo(out, DemoParams(**PARAMS["demo"]), seed=1337)
    return out


@pytest.fixture(scope="module")
def reference(raw: Path) -> tuple[Path, dict[str, str]]:
    folder = raw.parent / "reference"
    return folder, _run_stages(folder, raw, _env({}), workers=1)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_extract_and_prepare_write_the_same_bytes_when_the_machine_changes(
    variant: str, raw: Path, reference: tuple[Path, dict[str, str]]
) -> None:
    over, workers = VARIANTS[variant]
    needs = over.get("_NEEDS")
    if needs and not _cpu_features()[0].get(needs):
        pytest.skip(f"this CPU lacks {needs}, which {variant} runs")
    folder, want = reference
    got = _run_stages(raw.parent / variant, raw, _env(over), workers)
    mel = np.load(raw.parent / variant / OUTPUTS[0])
    assert mel.shape[0] >= 8 and mel.shape[1:] == (128, 628)  # the real size, most clips extracted
    differ = [name for name in OUTPUTS if got[name] != want[name]]
    if OUTPUTS[0] in differ:
        ref = np.load(folder / OUTPUTS[0])
        moved = np.abs(ref.astype(np.float64) - mel)
        detail = f"mel.npy: {int((moved > 0).sum())} of {mel.size} values differ, by up to {moved.max():g}"
    else:
        detail = ""
    assert not differ, f"{variant} changed {', '.join(differ)}. {detail}"
