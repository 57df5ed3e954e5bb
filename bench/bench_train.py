"""Benchmark: training at MTAT size, the seed loop against ours with each optimisation switched on in turn.

Random float16 features of MTAT's geometry (18,706 train and 1,825 valid clips of 128 x 628, 50 tags)
are written to a memory-mapped ``.npy``, then trained on, side by side in one run:

- ``seed loop``: what the PyTorch reimplementation does: float32, NCHW, a DataLoader over the whole
  array in host memory, ``loss.item()`` after every step, validation in float32 each epoch;
- ours, through the real training code (``mstagger.train``), adding in turn: channels-last memory and
  our loop (losses summed on the device, no per-step sync; batches streamed from the memory map), the
  device settings of ``prepare_device`` (cuDNN autotuning; on the CPU, malloc keeping the heap), bf16
  autocast, the features resident on the device, fused Adam, ``torch.compile``, CUDA graphs.

Every variant uses batch 32 and the paper's recipe (no BatchNorm re-estimation). For each: seconds per
epoch including validation, clips per second, peak host and device memory, the projected time of the
40-epoch recipe and the ratio to the seed loop. On a GPU whole epochs run (``--epochs``; the first,
with its warm-up and compilation, is reported apart); on the CPU ``--steps`` training steps and
``--valid-batches`` validation batches are timed and an epoch is projected from them.

Against the physical limit: the FLOPs of an epoch are counted once by PyTorch's FLOP counter
(``torch.utils.flop_counter.FlopCounterMode``, on the meta device: shapes only, no arithmetic), and
each variant reports the TFLOP/s it achieves and their share of the device's dense bf16 peak
(:data:`BF16_PEAK_TFLOPS`; none on a CPU). The warm-up (the first epoch on a GPU, the warm-up steps
on the CPU: compilation, cuDNN autotuning) is reported apart, and the 40-epoch projection is given
without it (steady state) and with it.

    python bench/bench_train.py [--device auto] [--epochs 2] [--steps 6] [--valid-batches 4] [--out F]

Runs with ``PYTHONPATH=src`` and torch, numpy and scikit-learn alone. Prints a table and writes
``bench/results/train-<cpu|cuda>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from common import cpu_model, failure, machine, write_results  # bench/ is on sys.path when this file runs
from mstagger.core.runtime import resolve_device
from mstagger.evaluation.scores import macro_scores
from mstagger.model import MultiScaleCNN
from mstagger.params import load_params
from mstagger.train import TrainData, build_tagger, make_optimizer, prepare_device
from mstagger.training.batches import DeviceSource, StreamSource, epoch_batches
from mstagger.training.distributed import World
from mstagger.training.epoch import step_model, train_epoch, validate

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
N_MELS, N_FRAMES, N_TAGS, BATCH, EPOCHS = 128, 628, 50, 32, 40
# Dense (no sparsity) bfloat16 tensor-core peaks, TFLOP/s, from the vendor's data sheets, matched
# against torch.cuda.get_device_name in this order; a device not listed gets no share.
BF16_PEAK_TFLOPS = (("H100 PCIe", None), ("H100", 989.0), ("H200", 989.0))


def bf16_peak(device_name: str) -> float | None:
    """The dense bf16 peak of a named GPU in TFLOP/s (:data:`BF16_PEAK_TFLOPS`), else None."""
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in device_name), None)


def flops_per_clip(n_mels: int = N_MELS, n_frames: int = N_FRAMES, batch: int = BATCH) -> dict[str, float]:
    """FLOPs of the network per clip, forward alone and forward + backward, counted by PyTorch.

    Counted on the meta device (shapes only: instant, whatever the machine); a multiply-add counts 2.
    """
    model = MultiScaleCNN(n_tags=N_TAGS, n_mels=n_mels, n_frames=n_frames).to("meta")
    x = torch.empty((batch, 1, n_mels, n_frames), device="meta")
    with FlopCounterMode(display=False) as forward:
        model.eval()(x)
    with FlopCounterMode(display=False) as step:
        model.train()(x).sum().backward()
    return {"forward": forward.get_total_flops() / batch, "train_step": step.get_total_flops() / batch}


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str = "fp32"
    on_device: bool = False
    fused: bool = False
    compile: str = "none"
    seed_loop: bool = False
    cuda_only: bool = False
    tuned: bool = False  # train.prepare_device; process-wide, so every later variant has it too


def _cumulative() -> tuple[Variant, ...]:
    """Each variant adds one optimisation to the one before it."""
    steps = (
        ("+ device settings (CPU: malloc keeps the heap)", {"tuned": True}),
        ("+ bf16 autocast", {"precision": "bf16"}),
        ("+ data on the device", {"on_device": True}),
        ("+ fused Adam", {"fused": True, "cuda_only": True}),
        ("+ torch.compile", {"compile": "default"}),
        ("+ CUDA graphs (compile reduce-overhead)", {"compile": "reduce-overhead"}),
    )
    variants = [Variant("ours: channels-last, device-side loss, streamed")]
    for name, change in steps:
        variants.append(replace(variants[-1], name=name, **change))
    return (Variant("seed loop (fp32, NCHW, DataLoader, .item() per step)", seed_loop=True), *variants)


VARIANTS = _cumulative()


class PeakMemory:
    """Peak anonymous resident memory of this process while the block runs (sampled every 20 ms).

    Anonymous: what the process holds, not the pages of the memory-mapped features it has touched
    (the OS page cache, which it can drop at will).
    """

    def __enter__(self) -> PeakMemory:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _anon(self) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon"))

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._anon())
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._anon())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_features(
    folder: Path, n_train: int, n_valid: int, n_mels: int = N_MELS, n_frames: int = N_FRAMES
) -> TrainData:
    """Random float16 log-mel-like features and labels of MTAT's geometry, as a memory-mapped file."""
    n = n_train + n_valid
    rng = np.random.default_rng(0)
    path = folder / "mel.npy"
    mel = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, n_mels, n_frames))
    for start in range(0, n, 512):
        stop = min(n, start + 512)
        mel[start:stop] = rng.standard_normal((stop - start, n_mels, n_frames), dtype=np.float32)
    mel.flush()
    del mel
    labels = (rng.random((n, N_TAGS)) < 0.06).astype(np.uint8)  # MTAT's top-50 density is ~6%
    return TrainData(
        mel=np.load(path, mmap_mode="r"),
        labels=labels,
        tags=[f"tag{j}" for j in range(N_TAGS)],
        split=np.array(["train"] * n_train + ["valid"] * n_valid),
        mean=np.zeros(n_mels, np.float32),
        std=np.ones(n_mels, np.float32),
    )


class SeedLoop:
    """The reimplementation's loop: the whole array in host memory, a DataLoader, fp32, NCHW."""

    def __init__(self, data: TrainData, device: torch.device) -> None:
        self.host = np.array(data.mel)  # read whole into host memory, as the reimplementation does
        self.data, self.device = data, device
        torch.manual_seed(0)
        n_mels, n_frames = data.mel.shape[1:]
        self.model = MultiScaleCNN(n_tags=N_TAGS, n_mels=n_mels, n_frames=n_frames).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def _loader(self, rows: np.ndarray, shuffle: bool) -> torch.utils.data.DataLoader:
        host, labels = self.host, self.data.labels

        class Clips(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return len(rows)

            def __getitem__(self, i: int):
                x = torch.from_numpy(host[rows[i]].astype(np.float32))
                return x, torch.from_numpy(labels[rows[i]].astype(np.float32))

        return torch.utils.data.DataLoader(Clips(), batch_size=BATCH, shuffle=shuffle)

    def train(self, n_steps: int) -> None:
        self.model.train()
        for step, (x, y) in enumerate(self._loader(self.data.rows("train"), shuffle=True)):
            if step == n_steps:
                break
            x, y = x.to(self.device).unsqueeze(1), y.to(self.device)  # (B, 1, M, T)
            loss = nn.functional.binary_cross_entropy_with_logits(self.model(x), y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss.item()  # the per-step synchronisation of the reimplementation's logging

    @torch.no_grad()
    def validate(self, rows: np.ndarray) -> None:
        self.model.eval()
        probs = [
            torch.sigmoid(self.model(x.to(self.device).unsqueeze(1))).cpu().numpy()
            for x, _ in self._loader(rows, shuffle=False)
        ]
        macro_scores(self.data.labels[rows], np.concatenate(probs))


class OurLoop:
    """Ours, through the real training code of mstagger.train, with the variant's optimisations."""

    def __init__(self, data: TrainData, variant: Variant, device: torch.device, workers: int) -> None:
        self.params = replace(
            load_params(REPO / "params.yaml"),
            precision=variant.precision,
            batch_size=BATCH,
            bn_recalibration_clips=0,
            compile=variant.compile,
        )
        self.data, self.device, self.world = data, device, World()
        if variant.tuned:
            prepare_device(device)
        self.tagger = build_tagger(data, self.params, device, self.world)
        if variant.fused:
            self.optimizer = make_optimizer(self.tagger, self.params, device)  # fused on CUDA
        else:
            self.optimizer = torch.optim.Adam(self.tagger.network.parameters(), lr=1e-3, foreach=True)
        # compiled for full batches; the last, partial one of an epoch runs eagerly (as the stage)
        self.model = step_model(self.tagger, variant.compile, BATCH)
        resident = np.concatenate([data.rows("train"), data.rows("valid")])
        self.source = (
            DeviceSource(data.mel, data.labels, resident, device)
            if variant.on_device
            else StreamSource(data.mel, data.labels, device, workers)
        )
        self.epoch = 0

    def train(self, n_steps: int) -> None:
        self.epoch += 1
        batches = epoch_batches(self.data.rows("train"), BATCH, self.params.seed, self.epoch)[:n_steps]
        args = (self.params.precision, self.device, self.world, "epoch")
        train_epoch(self.model, self.optimizer, self.source.batches(batches), len(batches), *args)

    def validate(self, rows: np.ndarray) -> None:
        validate(
            self.tagger, self.source, self.data.labels, rows, self.params.precision, self.params.batch_size
        )


def default_workers(device: torch.device) -> int:
    """4 DataLoader workers on CUDA when /dev/shm has room for their batches, else 0 (in-process)."""
    if device.type != "cuda":
        return 0
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return 0
    return 4 if stat.f_bavail * stat.f_frsize >= 2**30 else 0


def timed(device: torch.device, work) -> float:
    sync(device)
    start = time.perf_counter()
    work()
    sync(device)
    return time.perf_counter() - start


def measure(loop, device: torch.device, whole_epochs: int, n_steps: int, n_valid: int) -> dict:
    """Seconds of the warm-up and of a steady epoch (whole epochs), or of an epoch projected from samples.

    The 40-epoch projection comes without the warm-up (``recipe_40_epochs_s``: steady state) and with it
    (``recipe_40_epochs_with_warmup_s``); on a GPU the warm-up is the first epoch's excess over a
    steady one, on the CPU the two warm-up steps (compilation happens there).
    """
    data = loop.data
    steps_per_epoch, valid = len(data.rows("train")) // BATCH, data.rows("valid")
    valid_batches = -(-len(valid) // BATCH)
    if whole_epochs:
        epochs = [
            timed(device, lambda: (loop.train(steps_per_epoch + 1), loop.validate(valid)))
            for _ in range(whole_epochs)
        ]
        first, steady = epochs[0], epochs[-1]
        return {
            "first_epoch_s": first,
            "warmup_s": first - steady,
            "s_per_epoch": steady,
            "s_per_step": None,
            "recipe_40_epochs_s": EPOCHS * steady,
            "recipe_40_epochs_with_warmup_s": first + (EPOCHS - 1) * steady,
            "measured": f"{whole_epochs} whole epochs",
        }
    warmup_s = timed(device, lambda: loop.train(2))  # compilation, first touches of memory
    step_s = timed(device, lambda: loop.train(n_steps)) / n_steps
    rows = valid[: n_valid * BATCH]
    valid_batch_s = timed(device, lambda: loop.validate(rows)) / n_valid
    epoch_s = steps_per_epoch * step_s + valid_batches * valid_batch_s
    return {
        "first_epoch_s": None,
        "warmup_s": warmup_s,
        "s_per_epoch": epoch_s,
        "s_per_step": step_s,
        "recipe_40_epochs_s": EPOCHS * epoch_s,
        "recipe_40_epochs_with_warmup_s": warmup_s + EPOCHS * epoch_s,
        "measured": f"{n_steps} steps and {n_valid} validation batches, projected to an epoch",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=2, help="GPU: whole epochs per variant")
    parser.add_argument("--steps", type=int, default=6, help="CPU: timed training steps per variant")
    parser.add_argument("--valid-batches", type=int, default=4, help="CPU: timed validation batches")
    parser.add_argument("--train-clips", type=int, default=18706)
    parser.add_argument("--valid-clips", type=int, default=1825)
    parser.add_argument("--only", nargs="*", type=int, help="variant numbers to run (default: all)")
    parser.add_argument(
        "--workers",
        type=int,
        help="DataLoader workers of the streamed variants (default: 4 on CUDA when /dev/shm has 1 GiB "
        "free, else 0: workers pass batches through /dev/shm and die when it is small)",
    )
    parser.add_argument("--mels", type=int, default=N_MELS, help="input height (a dry run: small)")
    parser.add_argument("--frames", type=int, default=N_FRAMES, help="input width")
    parser.add_argument(
        "--out", type=Path, help="the results JSON (default bench/results/train-<device>.json)"
    )
    args = parser.parse_args()
    device = resolve_device(args.device, source="--device")
    whole_epochs = args.epochs if device.type == "cuda" else 0  # whole epochs on a GPU only
    workers = args.workers if args.workers is not None else default_workers(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model() or "cpu"
    peak = bf16_peak(name) if device.type == "cuda" else None
    flops = flops_per_clip(args.mels, args.frames)
    epoch_flops = args.train_clips * flops["train_step"] + args.valid_clips * flops["forward"]
    out = args.out or RESULTS / f"train-{device.type}.json"
    report = {
        "benchmark": "train",
        "device": str(device),
        "device_name": name,
        "machine": machine(),
        "torch": torch.__version__,
        "geometry": {
            "train": args.train_clips,
            "valid": args.valid_clips,
            "mels": args.mels,
            "frames": args.frames,
        },
        "batch": BATCH,
        "streamed_workers": workers,
        "flops_per_clip": flops,
        "flops_per_epoch": epoch_flops,
        "bf16_peak_tflops": peak,
        "rows": [],
        "failed": {},
    }
    rows, failed = report["rows"], report["failed"]
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:
        data = make_features(Path(tmp), args.train_clips, args.valid_clips, args.mels, args.frames)
        for number, variant in enumerate(VARIANTS):
            if (args.only and number not in args.only) or (variant.cuda_only and device.type != "cuda"):
                continue
            try:
                row = run_variant(variant, data, device, workers, whole_epochs, args)
            except Exception as err:  # one variant failing (a compiler, workers) must not cost the others
                failed[variant.name] = failure(err)
                print(f"{variant.name:55s} FAILED: {failed[variant.name]}", flush=True)
            else:
                row["clips_per_s"] = args.train_clips / row["s_per_epoch"]
                row["tflops_per_s"] = epoch_flops / row["s_per_epoch"] / 1e12
                row["share_of_bf16_peak"] = row["tflops_per_s"] / peak if peak else None
                rows.append(row)
                print(f"{row['variant']:55s} {row['s_per_epoch']:9.1f} s/epoch", flush=True)
                add_speedups(rows)
            finally:
                gc.collect()  # the seed loop's host copy of the features lives in reference cycles
            write_results(out, report)  # after each variant: a run cut short keeps what it measured
    print(f"\ndevice: {device} ({name}), torch {torch.__version__}, {os.cpu_count()} CPUs, batch {BATCH}")
    print(
        f"FLOPs per clip (PyTorch's counter): {flops['forward'] / 1e9:.3f} G forward, "
        f"{flops['train_step'] / 1e9:.3f} G forward + backward; an epoch with validation "
        f"{epoch_flops / 1e12:.1f} TFLOP; bf16 peak {f'{peak:.0f} TFLOP/s' if peak else 'n/a'}"
    )
    print(
        f"{'variant':55s} {'s/epoch':>8s} {'warm-up':>8s} {'40 ep. s':>9s} {'+warm-up':>9s} "
        f"{'TFLOP/s':>8s} {'% peak':>7s} {'host GiB':>8s} {'x seed':>7s}"
    )
    for r in rows:
        share = f"{100 * r['share_of_bf16_peak']:6.2f}%" if r["share_of_bf16_peak"] else "    n/a"
        print(
            f"{r['variant']:55s} {r['s_per_epoch']:8.1f} {r['warmup_s']:8.1f} {r['recipe_40_epochs_s']:9.0f} "
            f"{r['recipe_40_epochs_with_warmup_s']:9.0f} {r['tflops_per_s']:8.3f} {share} "
            f"{r['peak_host_gib']:8.2f} {r['speedup_vs_seed_loop'] or 0:6.2f}x"
        )
    print(f"wrote {out}")
    if failed:
        raise SystemExit(
            f"bench_train: variant(s) failed: {'; '.join(failed)} (the others' figures are in {out})"
        )


def run_variant(
    variant: Variant, data: TrainData, device: torch.device, workers: int, whole_epochs: int, args
) -> dict:
    """One variant's timings (:func:`measure`) with its peak host and device memory."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with PeakMemory() as memory:
        loop = SeedLoop(data, device) if variant.seed_loop else OurLoop(data, variant, device, workers)
        try:
            row = {
                "variant": variant.name,
                **measure(loop, device, whole_epochs, args.steps, args.valid_batches),
            }
        finally:
            if isinstance(loop, OurLoop):
                loop.source.close()  # a streamed DataLoader's workers persist until closed
    row["peak_host_gib"] = memory.peak / 2**30
    row["peak_device_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if whole_epochs else None
    return row


def add_speedups(rows: list[dict]) -> None:
    """Each row's ratio to the seed loop, when the seed loop ran (first)."""
    seed = rows[0] if rows and VARIANTS[0].name == rows[0]["variant"] else None
    for row in rows:
        row["speedup_vs_seed_loop"] = seed["s_per_epoch"] / row["s_per_epoch"] if seed else None
        if seed and row["s_per_step"]:
            row["step_speedup_vs_seed_loop"] = seed["s_per_step"] / row["s_per_step"]


if __name__ == "__main__":
    main()
