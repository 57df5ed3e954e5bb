"""What a CPU training step's bits depend on, once the features are fixed.

Runs a few real optimisation steps of the paper's network (128 x 628 inputs, 50 tags, batch 32,
Adam, the training stage's autocast) from the same initialisation on the same fixed inputs, each
setting in a fresh process, and compares the weights after each step with the first setting of
the same precision, bit for bit. Settings: precision bf16 and fp32; torch intra-op threads 1 and 2
(``torch.set_num_threads``); oneDNN limited to older instruction sets (``ONEDNN_MAX_CPU_ISA``:
the kernels another CPU would run) and ``deterministic: true`` (``mstagger.train.prepare_device``).

Prints a table and writes ``bench/results/train-bits-<device>.json``: per setting the sha256 of
the weights after the last step, whether they equal the reference's and the largest weight change.
Usage: ``python bench/train_bits.py [--steps 3]``. About 10 s a setting on a quiet 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import machine, write_results  # bench/ is on sys.path when this file runs

ROOT = Path(__file__).resolve().parents[1]
# name -> (precision, threads, environment, deterministic)
SETTINGS: dict[str, tuple[str, int, dict[str, str], bool]] = {
    "bf16-threads2": ("bf16", 2, {}, False),
    "bf16-threads1": ("bf16", 1, {}, False),
    "bf16-threads2-deterministic": ("bf16", 2, {}, True),
    "bf16-threads1-deterministic": ("bf16", 1, {}, True),
    "bf16-avx512core": ("bf16", 2, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, False),
    "bf16-avx2": ("bf16", 2, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
    "fp32-threads2": ("fp32", 2, {}, False),
    "fp32-threads1": ("fp32", 1, {}, False),
    "fp32-avx512core": ("fp32", 2, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, False),
    "fp32-avx2": ("fp32", 2, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
}

CHILD = r"""
import hashlib, json, sys
import numpy as np, torch
from torch import nn
from mstagger.inference.tagger import Tagger, autocast
from mstagger.model import MultiScaleCNN
from mstagger.train import prepare_device

precision, threads, deterministic, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
torch.set_num_threads(threads)
device = torch.device("cpu")
prepare_device(device, deterministic)
rng = np.random.default_rng(0)
mel = torch.from_numpy((rng.normal(size=(32 * steps, 128, 628)) * 8 - 20).astype(np.float16))
labels = torch.from_numpy((rng.random((32 * steps, 50)) < 0.1).astype(np.float32))
torch.manual_seed(1337)
tagger = Tagger(MultiScaleCNN(n_tags=50, n_mels=128, n_frames=628), np.full(128, -20.0), np.full(128, 8.0))
tagger = tagger.to(device, memory_format=torch.channels_last)
opt = torch.optim.Adam(tagger.network.parameters(), lr=1e-3)
tagger.train()
out = []
for step in range(steps):
    rows = slice(32 * step, 32 * (step + 1))
    with autocast(device, precision):
        logits = tagger(mel[rows])
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels[rows])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in tagger.network.parameters()]).numpy()
    out.append({"loss": loss.item(), "sha256": hashlib.sha256(flat.tobytes()).hexdigest()})
np.save(sys.argv[5], flat)
print(json.dumps({"steps": out, "isa": torch.backends.mkldnn.is_available()}))
"""


def run(name: str, steps: int, work: Path) -> dict:
    precision, threads, env_over, deterministic = SETTINGS[name]
    env = {**os.environ, **env_over, "PYTHONPATH": str(ROOT / "src")}
    weights = work / f"{name}.npy"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, precision, str(threads), str(int(deterministic)), str(steps), weights],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.splitlines()[-1])
    return {
        "precision": precision,
        "threads": threads,
        "env": env_over,
        "deterministic": deterministic,
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/train_bits"))
    args = parser.parse_args()
    import numpy as np

    args.work.mkdir(parents=True, exist_ok=True)
    results, reference = {}, {}
    print(f"{'setting':30} {'same bits as':16} {'max |weight diff|':>18} {'loss after step 1':>18}")
    for name in SETTINGS:
        r = run(name, args.steps, args.work)
        ref = reference.setdefault(r["precision"], name)
        w, w_ref = np.load(args.work / f"{name}.npy"), np.load(args.work / f"{ref}.npy")
        r["reference"] = ref
        r["identical_to_reference"] = r["steps"][-1]["sha256"] == results.get(ref, r)["steps"][-1]["sha256"]
        r["max_abs_weight_diff"] = float(np.abs(w.astype(np.float64) - w_ref).max())
        results[name] = r
        same = "yes" if r["identical_to_reference"] else "no"
        print(
            f"{name:30} {ref + ': ' + same:16} {r['max_abs_weight_diff']:18.3g} {r['steps'][0]['loss']:18.9f}"
        )
    import torch

    doc = {
        "benchmark": "train_bits",
        "machine": machine(),
        "torch": torch.__version__,
        "steps": args.steps,
        "results": results,
    }
    write_results(ROOT / "bench" / "results" / "train-bits-cpu.json", doc)
    print(f"wrote {ROOT / 'bench' / 'results' / 'train-bits-cpu.json'}")


if __name__ == "__main__":
    main()
