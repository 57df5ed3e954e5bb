"""How much batch company moves a probability: identical copies of a clip in one ``predict`` run.

``predict`` runs the windows of several files through the network together, so a file's windows share
a batch with whatever else is waiting. This tags ``--copies`` identical copies of one clip, each after
0 to 2 other clips (so every copy meets other company, at another position in its batch), once per
``--batch-size``, in this process with ``tag_files`` (no workers: the batches are the same on every
run). The reference is batch size 1 (every window alone). Prints the spread over the copies per batch
size and the largest difference to the reference, and writes them to
``bench/results/predict-batching-<device>.json``.

Usage: ``python bench/predict_batching.py [--model models/model.pt] [--clips data/raw]
[--batch-sizes 1 3 4] [--copies 24] [--device cpu]``
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mstagger.core.outputs import write_text
from mstagger.inference.bundle import load_bundle
from mstagger.inference.tagging import tag_files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("models/model.pt"))
    p.add_argument("--clips", type=Path, default=Path("data/raw"), help="a folder of MP3 clips")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 3, 4])
    p.add_argument("--copies", type=int, default=24)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    clips = [c for c in sorted(args.clips.rglob("*.mp3")) if c.stat().st_size > 100_000][:12]
    if len(clips) < 2:
        raise SystemExit(f"need MP3 clips under {args.clips}; run `dvc repro download` first")
    bundle = load_bundle(args.model, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        files: list[Path] = []
        for i in range(args.copies):
            files += [clips[1 + (i + j) % (len(clips) - 1)] for j in range(i % 3 + 1)]
            files.append(Path(shutil.copy(clips[0], Path(tmp) / f"copy{i}.mp3")))
        copies = [k for k, f in enumerate(files) if f.name.startswith("copy")]
        probs = {}
        for size in args.batch_sizes:
            results = {r.index: r.probs for r in tag_files(bundle, files, workers=0, batch_size=size)}
            probs[size] = np.stack([results[k] for k in copies])  # (copies, tags)
    reference = probs[min(args.batch_sizes)][0]
    rows = {
        size: {
            "spread_over_copies": float(np.ptp(p, axis=0).max()),
            "max_diff_to_reference": float(np.abs(p - reference).max()),
        }
        for size, p in probs.items()
    }
    print(
        f"{len(copies)} copies of {clips[0].name} among {len(files)} files, {bundle.precision}, {args.device}"
    )
    print(f"{'batch size':>10}  {'spread over copies':>18}  {'max diff to batch ' + str(min(probs)):>22}")
    for size, row in rows.items():
        print(f"{size:>10}  {row['spread_over_copies']:>18.3g}  {row['max_diff_to_reference']:>22.3g}")
    out = Path("bench/results") / f"predict-batching-{args.device.split(':')[0]}.json"
    doc = {
        "model": str(args.model),
        "precision": bundle.precision,
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "files": len(files),
        "copies": len(copies),
        "batch_sizes": rows,
    }
    write_text(out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
