"""Benchmark: where one training step and one validation batch spend their time, per kind of operation.

What issue 19's "the step itself" asks to measure before anything is kept: each candidate change can
save at most the time of what it removes, so the profile bounds each one in the same run:

- casting weights once per step instead of per use: at most the ``dtype casts`` (``aten::_to_copy``);
- the first block's int64 max-pool indices: at most the ``max-pool`` time (forward, backward with its
  zero-fill of the gradient);
- channels-last against NCHW (channel counts 50/70/100/210): the ``nchw`` variant against ``stage``;
- fused kernels: the ``compiled`` variant (``torch.compile``, inductor) against ``stage``; CUDA graphs:
  ``graphs`` (``reduce-overhead``) against ``compiled``;
- compiling validation and BatchNorm recalibration: the ``eval_ms`` of ``compiled`` against ``stage``
  (a forward pass in eval mode; recalibration is the same forward pass in training mode).

Variants (``--variants``): ``stage`` is the train stage's step (params precision, channels-last, eager,
Adam as :func:`mstagger.train.make_optimizer`), the others change one thing. Per variant: wall
milliseconds per step and per eval batch (synchronised, best of ``--repeats``), and a profile of
``--steps`` steps (``torch.profiler``: CPU time on a CPU, GPU kernel time on CUDA) split into
convolution, max-pool, dtype casts, ReLU, optimiser and the rest. The operations are those of the
eager step; a compiled step's time is reported whole.

    PYTHONPATH=src python bench/step_profile.py [--device auto] [--variants stage nchw compiled] [--out F]

Writes ``bench/results/step-profile-<cpu|cuda>.json`` (or ``--out``) after each variant. A variant
other than ``stage`` that fails (a compiler, CUDA graphs) is recorded under ``failed`` and the others
still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from common import cpu_model, failure, machine, write_results  # bench/ is on sys.path when this file runs
from mstagger.core.runtime import resolve_device
from mstagger.inference.tagger import autocast
from mstagger.params import Params, load_params
from mstagger.train import TrainData, build_tagger, make_optimizer, prepare_device, set_cpu_threads
from mstagger.training.distributed import World
from mstagger.training.epoch import train_step

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
N_TAGS = 50

# Operation kinds: the profiler's names whose inclusive time each kind sums (no name nests in another).
KINDS = {
    "convolution": ("aten::convolution", "aten::convolution_backward"),
    "max-pool": ("aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward"),
    "dtype casts": ("aten::_to_copy",),
    "relu": ("aten::relu", "aten::threshold_backward"),
    "optimiser": ("Optimizer.step#Adam.step",),
}
# What each variant changes against the stage's step: (memory format, compile mode).
VARIANTS = {
    "stage": (torch.channels_last, "none"),
    "nchw": (torch.contiguous_format, "none"),
    "compiled": (torch.channels_last, "default"),
    "graphs": (torch.channels_last, "reduce-overhead"),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_ms(device: torch.device, work, n: int, repeats: int) -> float:
    """Milliseconds per call of ``work``: the best of ``repeats`` timings of ``n`` calls, synchronised."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(n):
            work()
        sync(device)
        best = min(best, (time.perf_counter() - start) * 1000 / n)
    return best


def kind_ms(prof: profile, device: torch.device, n_steps: int) -> dict[str, float]:
    """Milliseconds per step of each kind of :data:`KINDS`, ``other`` and ``total`` (CPU or GPU time)."""
    cuda = device.type == "cuda"

    def inclusive(e) -> float:
        return e.device_time_total if cuda else e.cpu_time_total

    def own(e) -> float:
        return e.self_device_time_total if cuda else e.self_cpu_time_total

    events = prof.key_averages()
    by_name = {e.key: inclusive(e) for e in events}
    total = sum(own(e) for e in events)  # every microsecond once
    out = {kind: sum(by_name.get(n, 0.0) for n in names) / 1000 / n_steps for kind, names in KINDS.items()}
    out["total"] = total / 1000 / n_steps
    out["other"] = out["total"] - sum(out[k] for k in KINDS)
    return {k: round(v, 3) for k, v in out.items()}


def run_variant(
    name: str, data: TrainData, device: torch.device, base: Params, steps: int, repeats: int
) -> dict:
    """Time and profile the training step and the eval batch of one variant (``base``: the params)."""
    layout, mode = VARIANTS[name]
    params, batch = replace(base, compile=mode), base.batch_size
    tagger = build_tagger(data, params, device, World()).to(memory_format=layout)
    optimizer = make_optimizer(tagger, params, device)
    model = tagger if mode == "none" else torch.compile(tagger, mode=mode)
    mels = torch.from_numpy(data.mel[:batch]).to(device)
    target = torch.from_numpy(data.labels[:batch].astype(np.float32)).to(device)
    precision = params.precision

    def step() -> None:
        train_step(model, optimizer, mels, target, precision, device)  # the stage's step

    @torch.no_grad()
    def evaluate() -> None:
        with autocast(device, precision):
            model(mels)

    started = time.perf_counter()
    tagger.train()
    step()  # compilation, cuDNN autotuning, first touches of memory
    step()
    tagger.eval()
    evaluate()
    evaluate()
    warmup_s = time.perf_counter() - started
    row = {"variant": name, "precision": precision, "layout": str(layout).split(".")[-1], "compile": mode}
    row["warmup_s"] = round(warmup_s, 2)
    tagger.train()
    row["step_ms"] = round(best_ms(device, step, steps, repeats), 2)
    tagger.eval()
    row["eval_ms"] = round(best_ms(device, evaluate, steps, repeats), 2)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    tagger.train()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    row["step_profile_ms"] = kind_ms(prof, device, steps)
    print(f"{name:9s} step {row['step_ms']:9.2f} ms  eval {row['eval_ms']:8.2f} ms  {row['step_profile_ms']}")
    return row


def bounds(rows: dict[str, dict]) -> dict:
    """Each candidate of the issue against the stage's step: what it can save at most, or what it did."""
    stage = rows["stage"]
    prof, step = stage["step_profile_ms"], stage["step_ms"]
    out = {
        "cast weights once per step: at most": f"{prof['dtype casts']:.2f} ms, "
        f"{100 * prof['dtype casts'] / prof['total']:.1f}% of the profiled step",
        "max-pool without int64 indices: at most": f"{prof['max-pool']:.2f} ms, "
        f"{100 * prof['max-pool'] / prof['total']:.1f}% of the profiled step",
    }
    for name, against, what in (
        ("nchw", "stage", "NCHW against channels-last, step"),
        ("compiled", "stage", "compiled (fused kernels) against eager, step"),
        ("graphs", "compiled", "CUDA graphs against compiled, step"),
    ):
        if name in rows and against in rows:
            out[what] = f"{rows[against]['step_ms'] / rows[name]['step_ms']:.2f}x"
    if "compiled" in rows:
        out["compiled against eager, eval batch"] = f"{stage['eval_ms'] / rows['compiled']['eval_ms']:.2f}x"
    out["stage step wall ms"] = step
    return out


def features(batch: int, n_mels: int, n_frames: int) -> TrainData:
    rng = np.random.default_rng(0)
    return TrainData(
        mel=rng.standard_normal((batch, n_mels, n_frames), dtype=np.float32).astype(np.float16),
        labels=(rng.random((batch, N_TAGS)) < 0.06).astype(np.uint8),
        tags=[f"tag{j}" for j in range(N_TAGS)],
        split=np.array(["train"] * batch),
        mean=np.zeros(n_mels, np.float32),
        std=np.ones(n_mels, np.float32),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--mels", type=int, default=128)
    parser.add_argument("--frames", type=int, default=628)
    parser.add_argument(
        "--steps", type=int, default=3, help="steps (and eval batches) per timing and profile"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timings per variant; the best is kept")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        help="default: stage nchw compiled, and graphs on CUDA",
    )
    parser.add_argument("--out", type=Path, help="default bench/results/step-profile-<device>.json")
    args = parser.parse_args()
    device = resolve_device(args.device, source="--device")
    names = args.variants or ["stage", "nchw", "compiled"] + (["graphs"] if device.type == "cuda" else [])
    names = ["stage", *(n for n in names if n != "stage")]  # first: the reference the others are held against
    params = replace(load_params(REPO / "params.yaml"), batch_size=args.batch)
    prepare_device(device)
    set_cpu_threads(device, params.cpu_threads)  # as the stage
    data = features(args.batch, args.mels, args.frames)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model() or "cpu"
    print(f"device: {device} ({name}), torch {torch.__version__}, {os.cpu_count()} CPUs, batch {args.batch}")
    out = args.out or RESULTS / f"step-profile-{device.type}.json"
    report = {
        "benchmark": "step_profile",
        "command": " ".join(["python", "bench/step_profile.py", *sys.argv[1:]]),
        "device": str(device),
        "device_name": name,
        "machine": machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "input": [args.mels, args.frames],
        "time_kind": "GPU kernel time" if device.type == "cuda" else "CPU time",
        "rows": [],
    }
    rows: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for variant in names:  # written after each variant: a run cut short keeps what it measured
        try:
            rows[variant] = run_variant(variant, data, device, params, args.steps, args.repeats)
        except Exception as err:  # a compiler or CUDA graphs failing must not cost the other figures
            if variant == "stage":
                raise  # the reference itself: nothing to hold the others against
            failed[variant] = failure(err)
            print(f"{variant:9s} FAILED: {failed[variant]}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        report.update(rows=list(rows.values()), failed=failed, candidates=bounds(rows))
        write_results(out, report)
    for key, value in report["candidates"].items():
        print(f"  {key}: {value}")
    print(f"wrote {out}")
    if failed:
        raise SystemExit(
            f"step_profile: variant(s) failed: {', '.join(failed)} (the others' figures are in {out})"
        )


if __name__ == "__main__":
    main()
