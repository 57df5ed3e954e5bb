"""Benchmark: training-step throughput of our Trainer against the plain reference set-up, in one run.

Reference: the paper's network trained the way a straightforward PyTorch port does it (float32,
contiguous NCHW tensors). Ours: the same network through ``mstagger.train.Trainer`` (channels-last
memory, bf16 autocast when ``precision: bf16``). Both see the same random batches of the real input
geometry (batch 32 x 1 x 128 x 628, 50 tags) on the same device.

    python bench/bench_train.py [--steps 6] [--batch 32] [--device auto]

Prints a table and writes the figures to bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mstagger.bundle import resolve_device
from mstagger.model import MultiScaleCNN
from mstagger.params import params_from_dict
from mstagger.train import TrainData, Trainer

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, steps: int, device: torch.device) -> float:
    """Seconds per step, after two warm-up steps."""
    for _ in range(2):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    n, tags = args.batch, 50
    mel = rng.normal(size=(n, 128, 628)).astype(np.float16)
    labels = (rng.random((n, tags)) < 0.1).astype(np.uint8)
    x16 = torch.from_numpy(mel)
    target = torch.from_numpy(labels.astype(np.float32)).to(device)

    torch.manual_seed(0)
    ref = MultiScaleCNN(n_tags=tags).to(device)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    x_ref = x16.float().unsqueeze(1).to(device)

    def ref_step() -> None:
        ref_opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(ref(x_ref), target).backward()
        ref_opt.step()

    rows = []
    ref_s = time_steps(ref_step, args.steps, device)
    rows.append({"implementation": "reference (fp32, NCHW)", "s_per_step": ref_s})
    data = TrainData(
        mel=mel,
        labels=labels,
        tags=[str(j) for j in range(tags)],
        split=np.array(["train"] * n),
        mean=np.zeros(128, np.float32),
        std=np.ones(128, np.float32),
    )
    for precision in ("fp32", "bf16"):
        trainer = Trainer(data, params_from_dict({"precision": precision}), device)
        trainer.model.train()

        def our_step(trainer: Trainer = trainer) -> None:
            x = trainer.inputs(x16)
            with trainer.autocast():
                logits = trainer.model(x)
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trainer.optimizer.step()

        rows.append(
            {
                "implementation": f"mstagger Trainer ({precision}, channels-last)",
                "s_per_step": time_steps(our_step, args.steps, device),
            }
        )
    for row in rows:
        row["clips_per_s"] = n / row["s_per_step"]
        row["speedup_vs_reference"] = ref_s / row["s_per_step"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device} ({name}), torch {torch.__version__}, batch {n}, {args.steps} timed steps")
    print(f"{'implementation':42s} {'s/step':>8s} {'clips/s':>9s} {'speed-up':>9s}")
    for row in rows:
        print(
            f"{row['implementation']:42s} {row['s_per_step']:8.3f} {row['clips_per_s']:9.1f} "
            f"{row['speedup_vs_reference']:8.2f}x"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "device": str(device),
                "device_name": name,
                "torch": torch.__version__,
                "batch": n,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
