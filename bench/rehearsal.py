"""Rehearsal at MTAT size: a dataset in MTAT's exact layout, 25,863 clips, through the real stages.

The real ``annotations_final.csv`` and ``clip_info_final.csv`` (from ``../shared/mtat``, or
``--metadata``) name every clip; each clip's MP3 is one of the demo's synthesised clips, hard-linked
(so the audio repeats, the layout and the counts are MTAT's; MTAT's three empty MP3s are empty here
too). Then, in a scratch project folder with the repository's ``params.yaml`` (``dataset: mtat``,
``download.local_dir`` pointing at that layout), the stages run one after another exactly as
``dvc repro`` runs them: ``python -m mstagger.download`` (verifies and links), ``extract``,
``prepare``, ``train`` (``--epochs``; on a CPU 1 is a reduced rehearsal), ``evaluate``. Each stage's
seconds and the peak memory of its process tree (workers included) are reported: resident (which
counts the touched pages of the memory-mapped features) and anonymous (what the processes hold).

It is the proof that the real MTAT run works before a user downloads 3 GB.

    python bench/rehearsal.py [--work DIR] [--epochs 1] [--device auto] [--keep]

Writes ``bench/results/rehearsal-<cpu|cuda>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from common import machine, write_results  # bench/ is on sys.path when this file runs

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
STAGES = ("download", "extract", "prepare", "train", "evaluate")


def tree_memory(pid: int) -> tuple[int, int]:
    """(resident, anonymous resident) bytes of a process and all its descendants, from /proc.

    Resident memory counts the pages of a memory-mapped file a process has touched (the OS can drop
    them at will); anonymous memory is what the processes themselves hold.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    rss = anon = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            rss += int(fields["VmRSS"].split()[0]) * 1024
            anon += int(fields["RssAnon"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            continue
    return rss, anon


def run_stage(stage: str, project: Path, log: Path) -> dict:
    """Run ``python -m mstagger.<stage>`` in ``project``; its seconds and peak tree memory."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", f"mstagger.{stage}"], cwd=project, env=env, stderr=out)
        peak_rss = peak_anon = 0
        while proc.poll() is None:
            rss, anon = tree_memory(proc.pid)
            peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
            time.sleep(0.2)
        seconds = time.perf_counter() - start
    if proc.returncode:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"stage {stage} failed ({proc.returncode}):\n{tail}")
    return {
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(peak_rss / 2**30, 2),
        "peak_anonymous_gib": round(peak_anon / 2**30, 2),
    }


def build_layout(metadata: Path, layout: Path, seed: int) -> dict:
    """MTAT's folders 0..f with one MP3 per annotated clip (demo audio, hard-linked) and its two CSVs."""
    import pandas as pd

    sys.path.insert(0, str(REPO / "src"))
    from mstagger.data.mtat import ANNOTATIONS_FILE, AUDIO_FOLDERS, CSV_FILES
    from mstagger.demo import generate_demo
    from mstagger.params import DemoParams

    demo = layout.parent / "demo-audio"
    generate_demo(demo, DemoParams(broken_clips=0), seed)
    pool = sorted(p for p in demo.rglob("*.mp3") if p.stat().st_size)
    table = pd.read_csv(metadata / ANNOTATIONS_FILE, sep="\t", usecols=["clip_id", "mp3_path"], dtype=str)
    for folder in AUDIO_FOLDERS:
        (layout / folder).mkdir(parents=True, exist_ok=True)
    for i, (_, mp3_path) in enumerate(table.itertuples(index=False)):
        os.link(pool[i % len(pool)], layout / mp3_path)
    for clip_id in ("35644", "55753", "57881"):  # MTAT's three empty MP3s
        path = table.loc[table["clip_id"] == clip_id, "mp3_path"]
        if len(path):
            (layout / path.item()).unlink()
            (layout / path.item()).write_bytes(b"")
    for name in CSV_FILES:
        shutil.copyfile(metadata / name, layout / name)
    shutil.rmtree(demo)
    return {"clips": len(table), "distinct_audio": len(pool)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metadata", type=Path, default=REPO.parent / "shared" / "mtat")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    if not (args.metadata / "annotations_final.csv").is_file():
        raise SystemExit(
            f"MTAT's annotations_final.csv and clip_info_final.csv are needed in {args.metadata}"
        )
    work = Path(args.work or tempfile.mkdtemp(prefix="mstagger-rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"epochs": args.epochs, "stages": {}}
    try:
        start = time.perf_counter()
        report["layout"] = build_layout(args.metadata, work / "mtat", seed=1337)
        report["layout"]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"layout: {report['layout']}", flush=True)
        project = work / "project"
        project.mkdir(exist_ok=True)
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params.update(dataset="mtat", epochs=args.epochs, device=args.device)
        params["download"]["local_dir"] = str(work / "mtat")
        params["extract"]["workers"] = os.cpu_count() or 1
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for stage in STAGES:
            result = run_stage(stage, project, work / f"{stage}.log")
            report["stages"][stage] = result
            print(
                f"{stage:9s} {result['seconds']:8.1f} s  peak resident {result['peak_rss_gib']:6.2f} GiB,"
                f" anonymous {result['peak_anonymous_gib']:6.2f} GiB",
                flush=True,
            )
        summaries = {
            name: project / f"metrics/{name}.json" for name in ("extract", "prepare", "train", "test")
        }
        report["outputs"] = {k: json.loads(p.read_text()) for k, p in summaries.items() if p.is_file()}
        report["device"] = report["outputs"].get("train", {}).get("device", args.device)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    kind = "cuda" if str(report.get("device", "")).startswith("cuda") else "cpu"
    out = RESULTS / f"rehearsal-{kind}.json"
    report["machine"] = machine()
    write_results(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
