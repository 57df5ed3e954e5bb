"""Benchmark: ``mstagger predict`` on a folder against the per-file sequential way, in one run.

A library folder is generated once (kept in ``.cache/bench_predict``): ``--files`` synthetic 29.3 s
clips as the demo's (16 kHz mono MP3), plus ``--long`` files of ``--long-minutes`` (44.1 kHz stereo,
MP3 and FLAC, as ripped music is). Then, each in a fresh Python process so imports, model loading and
worker start are counted alike:

- ``sequential``: the per-file way of peers' predict scripts and of ``mstagger predict`` before the
  library work: for one file after the other, decode it whole (``librosa.load``), cut it into
  windows, compute every window's log-mel (librosa), run them through the network (``Bundle.predict``,
  batches of 16 windows, torch's default threads) and average.
- ``sequential-1t``: the same with one torch thread, which suffers less when other processes share the
  CPU (two OpenMP threads on two busy cores mostly wait on each other): a conservative reference.
- ``predict``: ``mstagger predict FOLDER --csv`` as a user runs it (worker processes decode and stream
  windows; windows of several files share a forward pass).

Each way also tags a folder of two clips, to split its time into start-up (imports, model, workers) and
the cost of each further file. Figures: wall seconds, files per second, hours of audio per hour, the
ratio to each reference, and the peak memory (proportional set size of the process tree, sampled every
50 ms, and the main process's VmHWM) from one more run of each way: sampling costs a sixth of a core,
so timed runs are left alone. Then the ways tag one 60-minute file (44.1 kHz mono FLAC) alone,
to compare peak memory. The probabilities are compared file by file. Runs are interleaved (``--repeat``
rounds, the fastest counts). Writes ``bench/results/predict-<device>.json``.

Usage: ``python bench/bench_predict.py [--files 200] [--device cpu|cuda] [--model models/model.pt]``
(without ``--model``, an untrained bundle of MTAT's geometry and bf16 precision: speed and memory do not
depend on the weights).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

from bench_extract import _tree_pss_mib  # the same memory figure as the extract benchmark
from common import machine, write_results  # bench/ is on sys.path when this file runs

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench_predict"
CLIP_SECONDS, CLIP_RATE = 29.3, 16000
LONG_RATE = 44100


# --- the library ---------------------------------------------------------------------------------


def _music(rng: np.random.Generator, seconds: float, rate: int, channels: int) -> np.ndarray:
    """A few partials with slow loudness changes and some noise: (n, channels) float32."""
    t = np.arange(int(seconds * rate)) / rate
    freqs = rng.uniform(80, 2000, size=4)
    x = sum(rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in freqs)
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 3) * t)) + 0.02 * rng.standard_normal(t.size)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def make_library(folder: Path, files: int, long: int, long_minutes: float) -> None:
    """Write the library once: clips in nested folders, then the long files."""
    marker = folder / f".complete-{files}-{long}-{long_minutes}"
    if marker.exists():
        return
    rng = np.random.default_rng(0)
    for i in range(files):
        path = folder / f"artist_{i % 10}" / f"album_{i % 3}" / f"clip_{i:04d}.mp3"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, _music(rng, CLIP_SECONDS, CLIP_RATE, 1), CLIP_RATE, format="MP3")
    for i in range(long):
        fmt = ("MP3", "FLAC")[i % 2]
        path = folder / "long" / f"long_{i}.{fmt.lower()}"
        path.parent.mkdir(parents=True, exist_ok=True)
        with sf.SoundFile(path, "w", LONG_RATE, 2, format=fmt) as f:
            for _ in range(int(long_minutes * 2)):  # 30 s blocks
                f.write(_music(rng, 30.0, LONG_RATE, 2))
    marker.touch()


def make_hour(path: Path) -> None:
    """One 60-minute 44.1 kHz mono FLAC, written in blocks."""
    if path.exists():
        return
    rng = np.random.default_rng(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.flac")
    with sf.SoundFile(tmp, "w", LONG_RATE, 1, format="FLAC") as f:
        for _ in range(120):
            f.write(_music(rng, 30.0, LONG_RATE, 1))
    os.replace(tmp, path)


def make_model(path: Path) -> None:
    """An untrained bundle of MTAT's geometry (128 x 628 log-mel, 50 tags), bf16 as training's default."""
    import torch

    from mstagger.inference.bundle import save_bundle
    from mstagger.inference.tagger import Tagger
    from mstagger.model import MultiScaleCNN
    from mstagger.params import SpectrogramParams

    torch.manual_seed(0)
    tagger = Tagger(MultiScaleCNN(), np.full(128, -5.0, np.float32), np.full(128, 4.0, np.float32))
    tags = [f"tag{j}" for j in range(50)]
    save_bundle(path, tagger, tags, SpectrogramParams(), "bf16", {}, {}, "bench", thresholds=[0.5] * 50)


# --- the sequential way (a child process) --------------------------------------------------------


def run_sequential(folder: Path, model: Path, device: str, out: Path, threads: int | None) -> None:
    """One file after the other: decode whole, every window's log-mel, forward, mean (the old predict).

    Decoding is ``librosa.load``, as in peers' scripts and the old predict: the whole file at its own
    rate, then resampled (mstagger's decoder streams, which would flatter this way's memory); the
    spectrogram is librosa's, as theirs (``mstagger.data.audio.log_mel`` gives the same numbers).
    """
    import librosa
    import torch

    from mstagger.data.audio import checked
    from mstagger.inference.bundle import load_bundle

    def log_mel(y: np.ndarray, spec) -> np.ndarray:
        y = librosa.util.fix_length(y, size=(spec.n_frames - 1) * spec.hop_length)
        mel = librosa.feature.melspectrogram(
            y=y, sr=spec.sample_rate, n_fft=spec.n_fft, hop_length=spec.hop_length, n_mels=spec.n_mels
        )
        return np.log(np.maximum(mel, spec.log_floor))

    if threads:
        torch.set_num_threads(threads)
    bundle = load_bundle(model, device=device)
    spec = bundle.spectrogram
    window = (spec.n_frames - 1) * spec.hop_length
    paths = sorted(p for p in folder.rglob("*") if p.suffix in (".mp3", ".flac"))
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        for path in paths:
            try:
                y, _ = librosa.load(path, sr=spec.sample_rate)
                y = np.concatenate(list(checked([y], spec.sample_rate, min_seconds=1.0)))
            except Exception:  # undecodable, too short or silent: skipped, as predict skips it
                continue
            starts = list(range(0, max(len(y) - window, 0) + 1, window))
            if len(y) - (starts[-1] + window) >= window // 2:
                starts.append(starts[-1] + window)
            mels = np.stack([log_mel(y[s : s + window], spec) for s in starts])  # (W, M, T)
            probs = bundle.predict(mels, batch_size=16).mean(axis=0)
            writer.writerow([os.path.abspath(path), *(f"{p:.6f}" for p in probs)])


# --- measuring -----------------------------------------------------------------------------------


def _hwm_mib(pid: int) -> float:
    """A process's peak resident memory so far (VmHWM), 0 once it is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        status = Path(f"/proc/{pid}/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    return 0.0


def measure(command: list[str], env: dict[str, str], memory: bool = False) -> dict:
    """Run a command: its wall seconds; with ``memory``, the peaks of its process tree's memory too.

    Memory is sampled every 50 ms, which costs the sampler about a sixth of a core (reading
    ``smaps_rollup`` of each process): on two cores that slows a command using both by 8-11%, so
    timed runs are not sampled and memory comes from runs of their own.
    """
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
        tree_pss = main_hwm = 0.0
        while memory and proc.poll() is None:  # the main process's VmHWM only grows: the last is its peak
            with contextlib.suppress(psutil.NoSuchProcess):
                tree_pss = max(tree_pss, _tree_pss_mib(proc))
            main_hwm = max(main_hwm, _hwm_mib(proc.pid))
            time.sleep(0.05)
        proc.wait()
        seconds = time.perf_counter() - start
        if proc.returncode not in (0, 1):  # 1: some file failed, which predict reports and survives
            log.seek(0)
            sys.exit(f"{command} failed (exit {proc.returncode}):\n{log.read()[-3000:]}")
    if not memory:
        return {"seconds": round(seconds, 3)}
    return {
        "seconds": round(seconds, 3),
        "peak_tree_pss_mib": round(tree_pss, 1),
        "peak_main_hwm_mib": round(main_hwm, 1),
    }


def read_probs(path: Path) -> dict[str, np.ndarray]:
    """{absolute path: probabilities} from a CSV (ours: the tag columns after the fixed ones)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if rows and rows[0][0] == "path":  # predict's table
        from mstagger.inference.library import FIXED_COLUMNS

        return {r[0]: np.array(r[len(FIXED_COLUMNS) :], float) for r in rows[1:]}
    return {r[0]: np.array(r[1:], float) for r in rows}


def audio_seconds(folder: Path) -> float:
    return sum(sf.info(p).duration for p in folder.rglob("*") if p.suffix in (".mp3", ".flac"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200, help="29 s clips in the library (default 200)")
    parser.add_argument("--long", type=int, default=4, help="long files in the library (default 4)")
    parser.add_argument("--long-minutes", type=float, default=5.0, help="their length (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--workers", type=int, help="predict --workers (default: predict's)")
    parser.add_argument("--batch-size", type=int, help="predict --batch-size (default: predict's)")
    parser.add_argument("--model", type=Path, help="a bundle (default: an untrained one of MTAT's shape)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each way, interleaved; the fastest counts"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the 60-minute file")
    parser.add_argument(
        "--output", type=Path, help="JSON figures (default: bench/results/predict-<device>.json)"
    )
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run == "sequential":
        run_sequential(args.folder, args.model, args.device, args.out, args.threads)
        return
    output = args.output or ROOT / "bench" / "results" / f"predict-{args.device}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    library, few, hour = CACHE / "library", CACHE / "few", CACHE / "hour" / "hour.flac"
    t0 = time.perf_counter()
    make_library(library, args.files, args.long, args.long_minutes)
    if not few.exists():  # two clips of the library: start-up runs
        for clip in sorted(library.rglob("clip_000[01].mp3")):
            (few / clip.name).parent.mkdir(parents=True, exist_ok=True)
            (few / clip.name).write_bytes(clip.read_bytes())
    if not args.no_memory:
        make_hour(hour)
    print(f"library ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            model = tmp / "model.pt"
            make_model(model)

        def sequential(threads: int | None):
            def command(folder: Path, out: Path) -> list[str]:
                extra = [] if threads is None else ["--threads", str(threads)]
                return [sys.executable, __file__, "--run", "sequential", "--folder", str(folder), "--model",
                        str(model), "--device", args.device, "--out", str(out), *extra]  # fmt: skip

            return command

        def predict(folder: Path, out: Path) -> list[str]:
            extra = [] if args.workers is None else ["--workers", str(args.workers)]
            extra += [] if args.batch_size is None else ["--batch-size", str(args.batch_size)]
            return [sys.executable, "-m", "mstagger", "predict", str(folder),
                    "--model", str(model), "--device", args.device, "--csv", str(out), *extra]  # fmt: skip

        ways = {"sequential": sequential(None), "sequential-1t": sequential(1), "predict": predict}
        best: dict[str, dict] = {}
        startup: dict[str, float] = {}
        for i in range(args.repeat):  # interleaved, so every way sees the same machine
            for name, command in ways.items():
                print(f"{name} on the library (round {i + 1}) ...", file=sys.stderr)
                out = tmp / f"{name}-{i}.csv"
                r = measure(command(library, out), env)
                if name not in best or r["seconds"] < best[name]["seconds"]:
                    best[name] = {**r, "csv": out}
                t = measure(command(few, tmp / f"{name}-few-{i}.csv"), env)["seconds"]
                startup[name] = min(startup.get(name, t), t)
        for name, command in ways.items():  # memory, in runs of its own (sampling slows a run)
            print(f"{name} on the library, memory sampled ...", file=sys.stderr)
            r = measure(command(library, tmp / f"{name}-memory.csv"), env, memory=True)
            best[name].update({k: v for k, v in r.items() if k.startswith("peak_")})
        probs = {name: read_probs(r.pop("csv")) for name, r in best.items()}
        common = sorted(set(probs["sequential"]) & set(probs["predict"]))
        diff = max(np.abs(probs["sequential"][k] - probs["predict"][k]).max() for k in common)
        memory = {}
        if not args.no_memory:
            for name in ("sequential", "predict"):
                print(f"{name} on one 60-minute file ...", file=sys.stderr)
                memory[name] = measure(ways[name](hour.parent, tmp / f"hour-{name}.csv"), env, memory=True)

    n_files = len(probs["predict"])
    hours = audio_seconds(library) / 3600
    for name, r in best.items():
        marginal = (r["seconds"] - startup[name]) / (n_files - 2)
        r["startup_seconds"] = round(startup[name], 3)
        r["files_per_second"] = round(n_files / r["seconds"], 2)
        r["audio_hours_per_hour"] = round(hours * 3600 / r["seconds"], 1)
        r["marginal_ms_per_file"] = round(1000 * marginal, 1)
    for r in best.values():
        for ref in ("sequential", "sequential-1t"):
            r[f"vs_{ref}"] = round(best[ref]["seconds"] / r["seconds"], 2)
            r[f"marginal_vs_{ref}"] = round(best[ref]["marginal_ms_per_file"] / r["marginal_ms_per_file"], 2)
    print(f"\n{n_files} files, {hours:.2f} hours of audio, device {args.device}, {os.cpu_count()} CPUs")
    header = (
        f"{'way':<14} {'seconds':>8} {'files/s':>8} {'audio h/h':>10} {'ratio':>7} {'ratio 1t':>9}"
        f" {'start s':>8} {'ms/file':>8} {'ratio':>7} {'ratio 1t':>9} {'peak MiB':>9}"
    )
    print(f"{'':<14} {'--- end to end ---':^46} {'--- per further file ---':^35}")
    print(header + "\n" + "-" * len(header))
    for name, r in best.items():
        print(
            f"{name:<14} {r['seconds']:>8.2f} {r['files_per_second']:>8.2f}"
            f" {r['audio_hours_per_hour']:>10.0f}"
            f" {r['vs_sequential']:>6.2f}x {r['vs_sequential-1t']:>8.2f}x {r['startup_seconds']:>8.2f}"
            f" {r['marginal_ms_per_file']:>8.1f} {r['marginal_vs_sequential']:>6.2f}x"
            f" {r['marginal_vs_sequential-1t']:>8.2f}x {r['peak_tree_pss_mib']:>9.0f}"
        )
    print(
        "\nratio: sequential's seconds / this way's; ratio 1t: the same against sequential with one torch"
        " thread.\nstart s: the same run on two clips; ms/file: (seconds - start s) / (files - 2)."
        "\npeak MiB: highest proportional set size of the process and its children, sampled every 50 ms"
        " in a run of its own."
    )
    print(f"largest probability difference, sequential vs predict: {diff:.2e} over {len(common)} files")
    for name, r in memory.items():
        print(
            f"60-minute file, {name}: {r['seconds']:.1f} s, peak {r['peak_tree_pss_mib']:.0f} MiB"
            f" (process tree PSS), main process VmHWM {r['peak_main_hwm_mib']:.0f} MiB"
        )
    report = {
        "benchmark": "predict",
        "device": args.device,
        "files": n_files,
        "audio_hours": round(hours, 3),
        "library": {
            "clips": args.files,
            "clip_seconds": CLIP_SECONDS,
            "long": args.long,
            "long_minutes": args.long_minutes,
        },
        "workers": args.workers,
        "batch_size": args.batch_size,
        "repeat": args.repeat,
        "model": "untrained, MTAT shape, bf16" if args.model is None else str(args.model),
        "machine": machine(),
        "load_average_after": os.getloadavg(),
        "results": best,
        "max_probability_difference": float(diff),
        "hour_file_memory": memory,
    }
    write_results(output, report)
    print(f"figures written to {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
