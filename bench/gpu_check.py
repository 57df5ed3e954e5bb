"""The Python half of ``bench/gpu_check.sh``: one subcommand per part of the GPU check.

    python bench/gpu_check.py env OUT.json
    python bench/gpu_check.py project DIR [--train 18706] [--valid 1825] [--test 256] [--mels 128] ...
    python bench/gpu_check.py setup-run REPO PROJECT RUN key=value ...
    python bench/gpu_check.py stage                     (in a run folder; TIMING_JSON=... to keep timings)
    python bench/gpu_check.py micro --device cuda --params params.yaml --out micro.json [--clips 2048 ...]
    python bench/gpu_check.py predict BUNDLE FEATURES --device cuda --out predict.json
    python bench/gpu_check.py compare RUN_A RUN_B --out compare.json
    python bench/gpu_check.py summarize WORK OUT/summary.json
    python bench/gpu_check.py tslines                   (a filter: seconds since start before each line)

Needs PyTorch, NumPy, pandas and PyYAML, and ``PYTHONPATH=src`` (the script sets it). Only what the
train stage and predict import besides (dvclive, soundfile, soxr) comes from the wheels the check
carries or, for dvclive, a stub (``bench/gpu_check_stub``).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------- env


def env(out: Path) -> None:
    """Versions, the GPU, and which of the packages the project imports exist here."""
    import torch

    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cuda_available": torch.cuda.is_available(),
        "gpus": torch.cuda.device_count(),
        "cpus": os.cpu_count(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=p.name,
            gpu_mem_gib=round(p.total_memory / 2**30, 1),
            sms=p.multi_processor_count,
            capability=f"{p.major}.{p.minor}",
            bf16=torch.cuda.is_bf16_supported(),
        )
    for module in ("numpy", "pandas", "sklearn", "scipy", "yaml", "tqdm", "matplotlib", "triton"):
        info[module] = _version(module)
    for module in ("soundfile", "soxr", "threadpoolctl", "psutil", "dvclive", "dvc", "librosa"):
        info[module] = _version(module)
    print(json.dumps(info, indent=1))
    out.write_text(json.dumps(info, indent=1))


def _version(module: str) -> str:
    try:
        return getattr(__import__(module), "__version__", "present")
    except Exception as err:  # any import failure is a finding, not a crash
        return f"MISSING ({type(err).__name__})"


# ------------------------------------------------------------------------------------------ project


def project(root: Path, n_train: int, n_valid: int, n_test: int, n_mels: int, n_frames: int) -> None:
    """What extract and prepare would leave, at MTAT's size, synthetic and learnable.

    Tag j adds +1.0 to mel bands 2j and 2j+1, so a working run's validation ROC-AUC rises far above
    0.5 within an epoch or two; tag rates are skewed like MTAT's top 50.
    """
    import pandas as pd

    start = time.perf_counter()
    n, n_tags = n_train + n_valid + n_test, 50
    features, prepared = root / "data" / "features", root / "data" / "prepared"
    features.mkdir(parents=True, exist_ok=True)
    prepared.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = (rng.random((n, n_tags)) < np.linspace(0.2, 0.02, n_tags)).astype(np.uint8)
    bands = np.zeros((n_tags, n_mels), np.float32)  # tag j -> bands 2j, 2j+1 (mod n_mels)
    for j in range(n_tags):
        bands[j, (2 * j) % n_mels] = bands[j, (2 * j + 1) % n_mels] = 1.0
    mel = np.lib.format.open_memmap(features / "mel.npy", "w+", np.float16, (n, n_mels, n_frames))
    for s in range(0, n, 512):
        e = min(n, s + 512)
        x = rng.standard_normal((e - s, n_mels, n_frames), dtype=np.float32)
        x += (labels[s:e].astype(np.float32) @ bands)[:, :, None]
        mel[s:e] = x - 20.0  # a log-mel-like offset: the normalisation is not the identity
    mel.flush()
    sample = np.asarray(mel[: min(n_train, 1024)], dtype=np.float32)
    mean, std = sample.mean(axis=(0, 2)), sample.std(axis=(0, 2))
    del mel, sample
    ids = [str(100000 + i) for i in range(n)]
    paths = [
        f"{'0123456789abcdef'[i % 16]}/artist_{i % 97}-album-{i // 16:05d}-song_{i}-0-29.mp3"
        for i in range(n)
    ]
    index = pd.DataFrame({"row": range(n), "clip_id": ids, "mp3_path": paths, "seconds": 29.1})
    index.to_csv(features / "index.csv", index=False)
    pd.DataFrame(columns=["clip_id", "mp3_path", "bytes", "reason"]).to_csv(
        features / "skipped.csv", index=False
    )
    np.save(prepared / "labels.npy", labels)
    counts = labels[:n_train].sum(axis=0)
    tags = {"tags": [{"name": f"tag{j:02d}", "count": int(c)} for j, c in enumerate(counts)]}
    (prepared / "tags.json").write_text(json.dumps(tags))
    split = ["train"] * n_train + ["valid"] * n_valid + ["test"] * n_test
    pd.DataFrame({"clip_id": ids, "split": split}).to_csv(prepared / "split.csv", index=False)
    stats = {"mean": mean.tolist(), "std": std.tolist(), "n_clips": n_train}
    (prepared / "stats.json").write_text(json.dumps(stats))
    gb = n * n_mels * n_frames * 2 / 1e9
    seconds = time.perf_counter() - start
    print(f"project: {n} clips ({n_train}/{n_valid}/{n_test}), {gb:.2f} GB in {seconds:.1f} s")


def setup_run(repo: Path, root: Path, run: Path, overrides: list[str]) -> None:
    """RUN/params.yaml: the repository's with ``key=value`` overrides (YAML); RUN/data -> PROJECT/data."""
    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    for item in overrides:
        key, value = item.split("=", 1)
        node = params
        *parents, last = key.split(".")
        for k in parents:
            node = node[k]
        node[last] = yaml.safe_load(value)
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "data").exists():
        (run / "data").symlink_to(root.resolve() / "data")
    (run / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    print("setup-run:", run, " ".join(overrides))


# -------------------------------------------------------------------------------------------- stage


def stage() -> None:
    """The train stage (``mstagger.train.main``) with timers around its per-epoch parts.

    Each timer synchronises the GPU before and after (a few waits an epoch, not per step). Prints
    ``timing: <part> <seconds>`` on stderr and, with TIMING_JSON set, writes them as JSON.
    """
    import torch

    from mstagger import train
    from mstagger.training import checkpoint

    records = []

    def sync() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def wrap(module, name: str) -> None:
        inner = getattr(module, name)

        def timed(*args, **kwargs):
            sync()
            start = time.perf_counter()
            result = inner(*args, **kwargs)
            sync()
            rec = {"part": name, "s": round(time.perf_counter() - start, 4)}
            if name == "train_epoch":
                rec["steps"] = args[3]
                rec["ms_per_step"] = round(1000 * rec["s"] / max(1, args[3]), 3)
            records.append(rec)
            print(f"timing: {json.dumps(rec)}", file=sys.stderr, flush=True)
            return result

        setattr(module, name, timed)

    for name in ("train_epoch", "recalibrate_batchnorm", "validate"):
        wrap(train, name)
    wrap(checkpoint, "save")

    @atexit.register
    def report() -> None:
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_initialized() else None
        print(f"timing: peak device memory allocated {peak} GiB", file=sys.stderr, flush=True)
        if os.environ.get("TIMING_JSON"):
            Path(os.environ["TIMING_JSON"]).write_text(
                json.dumps({"records": records, "peak_device_gib": peak})
            )

    train.main()


# -------------------------------------------------------------------------------------------- micro


@contextmanager
def sync_forbidden(device):
    """Inside: any host-device synchronisation raises (``torch.cuda.set_sync_debug_mode("error")``)."""
    import torch

    if device.type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def guarded(batches, device):
    """The batches, with every step they feed run under :func:`sync_forbidden` (not what follows them:
    train_epoch reads its summed loss once, after the last step)."""
    with sync_forbidden(device):
        yield from batches


def micro(a: argparse.Namespace) -> None:
    """One training step split into data, host overhead and GPU time; the sync check; layouts.

    Per variant (bf16 channels-last as the stage, bf16 NCHW, fp32 NCHW):
    ``wall_ms_per_step``: train_epoch over the project's DeviceSource (host and GPU together);
    ``data_gpu_ms_per_batch``: gathering a batch on the device alone;
    ``gpu_ms_per_step``: steps queued behind a sleep kernel and timed with CUDA events (the GPU alone,
    without launch gaps) and ``host_ms_per_step``: the time the host took to queue them (Python,
    dispatch, launches). A step is host-bound when host > GPU.
    The sync check runs an epoch of train_epoch, a BatchNorm recalibration and a validation forward
    pass under ``set_sync_debug_mode("error")``.
    """
    import torch

    from mstagger.core.runtime import resolve_device
    from mstagger.inference.tagger import predict_logits
    from mstagger.params import load_params
    from mstagger.train import TrainData, build_tagger, make_optimizer, prepare_device
    from mstagger.training.batches import DeviceSource, epoch_batches
    from mstagger.training.distributed import World
    from mstagger.training.epoch import recalibrate_batchnorm, train_epoch, train_step

    device = resolve_device(a.device, source="--device")
    cuda = device.type == "cuda"
    prepare_device(device)
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((a.clips, a.mels, a.frames), dtype=np.float32).astype(np.float16)
    labels = (rng.random((a.clips, 50)) < 0.1).astype(np.uint8)
    data = TrainData(
        mel=mel,
        labels=labels,
        tags=[f"t{j}" for j in range(50)],
        split=np.array(["train"] * a.clips),
        mean=np.zeros(a.mels, np.float32),
        std=np.ones(a.mels, np.float32),
    )
    world, rows = World(), np.arange(a.clips)
    src = DeviceSource(mel, labels, rows, device)
    batches = [b for b in epoch_batches(rows, a.batch, 1337, 1) if len(b) == a.batch][: a.steps]
    n = len(batches)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def wall(fn) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    def gpu_and_host_ms(fn, items: list, reps: int = 3) -> tuple[float | None, float | None]:
        """GPU ms per item (CUDA events, the queue fed ahead by a sleep kernel) and host ms to queue one."""
        if not cuda or not hasattr(torch.cuda, "_sleep"):
            return None, None
        best = None
        for _ in range(reps):
            sync()
            torch.cuda._sleep(200_000_000)  # ~0.1 s: the host queues everything before the GPU starts
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start = time.perf_counter()
            e0.record()
            for item in items:
                fn(*item)
            e1.record()
            host = (time.perf_counter() - start) * 1000 / len(items)
            sync()
            gpu = e0.elapsed_time(e1) / len(items)
            if best is None or gpu < best[0]:
                best = (gpu, host)
        return round(best[0], 3), round(best[1], 3)

    results = {
        "device": str(device),
        "name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "batch": a.batch,
        "steps": n,
        "input": [a.mels, a.frames],
    }
    params = replace(load_params(a.params), batch_size=a.batch, bn_recalibration_clips=0, compile="none")
    for label, precision, layout in (
        ("bf16_channels_last", "bf16", torch.channels_last),
        ("bf16_nchw", "bf16", torch.contiguous_format),
        ("fp32_nchw", "fp32", torch.contiguous_format),
    ):
        p = replace(params, precision=precision)
        tagger = build_tagger(data, p, device, world).to(memory_format=layout)
        opt = make_optimizer(tagger, p, device)
        args = (precision, device, world, label)
        train_epoch(tagger, opt, src.batches(batches[:3]), 3, *args)  # warm-up: cuDNN autotuning
        epoch_s = wall(lambda t=tagger, o=opt, g=args: train_epoch(t, o, src.batches(batches), n, *g))
        row = {"wall_ms_per_step": round(1000 * epoch_s / n, 3)}
        idx = torch.as_tensor(src.slots(np.concatenate(batches[:5])), device=device).view(-1, a.batch)
        row["data_gpu_ms_per_batch"], row["data_host_ms_per_batch"] = gpu_and_host_ms(
            lambda i: (src.mel[i], src.labels[i]), [(i,) for i in idx]
        )

        def step(mels, target, tagger=tagger, opt=opt, precision=precision):
            train_step(tagger, opt, mels, target, precision, device)

        row["gpu_ms_per_step"], row["host_ms_per_step"] = gpu_and_host_ms(
            step, list(src.batches(batches[:5]))
        )
        if label == "bf16_channels_last":
            try:  # the sync check: no host-device synchronisation inside an epoch
                train_epoch(tagger, opt, guarded(src.batches(batches), device), n, *args)
                with sync_forbidden(device):
                    recalibrate_batchnorm(tagger, src, rows[: 4 * a.batch + 3], a.batch, precision, device)
                row["sync_check"] = "ok" if cuda else "not run (no CUDA)"
            except RuntimeError as err:
                row["sync_check"] = f"FAILED: {str(err).splitlines()[0]}"
            print(f"micro: sync check: {row['sync_check']}", flush=True)
            mel_dev, slots = src.for_inference(rows[: 16 * a.batch])
            n_eval = -(-len(slots) // a.batch)
            eval_s = wall(
                lambda t=tagger, m=mel_dev, r=slots, p=precision: predict_logits(
                    t, m, r, precision=p, batch_size=a.batch
                )
            )
            row["eval_wall_ms_per_batch"] = round(1000 * eval_s / n_eval, 3)
        results[label] = row
        print(f"micro: {label:20s} {json.dumps(row)}", flush=True)
    if cuda:
        results["peak_device_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    Path(a.out).write_text(json.dumps(results, indent=1))
    if any(
        str(r.get("sync_check", "")).startswith("FAILED") for r in results.values() if isinstance(r, dict)
    ):
        raise SystemExit("micro: the sync check FAILED: a host-device synchronisation inside an epoch")


# ------------------------------------------------------------------------------------------ predict


def predict(a: argparse.Namespace) -> None:
    """``load_bundle`` on the device against the CPU: the same probabilities, odd batch sizes, speed."""
    import torch

    from mstagger.inference.bundle import load_bundle

    mel = np.load(Path(a.features) / "mel.npy", mmap_mode="r")
    clips = np.asarray(mel[len(mel) - min(a.n, len(mel)) :])
    res = {"device": a.device, "clips": len(clips)}
    start = time.perf_counter()
    dev = load_bundle(a.bundle, device=a.device)
    res["load_s"] = round(time.perf_counter() - start, 3)
    cpu = load_bundle(a.bundle, device="cpu")
    dev.predict(clips[:64], batch_size=64)  # warm-up
    if dev.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    p64 = dev.predict(clips, batch_size=64)
    res["clips_per_s_batch64"] = round(len(clips) / (time.perf_counter() - start), 1)
    p7 = dev.predict(clips[:70], batch_size=7)  # odd batch sizes, a last batch of 0 < B < 7
    p1 = dev.predict(clips[:3], batch_size=1)
    pc = cpu.predict(clips[:64], batch_size=32)
    res["max_abs_diff_device_vs_cpu"] = float(np.abs(p64[:64] - pc).max())
    res["max_abs_diff_batch7_vs_batch64"] = float(np.abs(p7 - p64[: len(p7)]).max())
    res["max_abs_diff_batch1_vs_batch64"] = float(np.abs(p1 - p64[: len(p1)]).max())
    res["finite"] = bool(np.isfinite(p64).all())
    # bf16 on the GPU against the CPU: agreement to a few thousandths of a probability
    res["ok"] = res["finite"] and res["max_abs_diff_device_vs_cpu"] < 0.05
    try:  # predict's batching across files (needs soundfile and soxr, which its decoding imports)
        from mstagger.inference.tagging import default_batch_size, tag_messages
        from mstagger.inference.windows import Done, Window

        msgs: list = []
        for f in range(5):
            count = 3 + 4 * f
            msgs += [Window(f, clips[(7 * f + w) % len(clips)]) for w in range(count)] + [
                Done(f, 29.1 * count, count)
            ]
        msgs.insert(5, None)  # a pause: a partial batch runs
        tagged = list(tag_messages(dev, iter(msgs), default_batch_size(dev.device)))
        res["tag_messages_files"] = len(tagged)
        res["tag_messages_ok"] = all(t.probs is not None and np.isfinite(t.probs).all() for t in tagged)
    except ImportError as err:
        res["tag_messages_skipped"] = f"{type(err).__name__}: {err}"
    print("predict:", json.dumps(res), flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    if not res["ok"]:
        raise SystemExit("predict: the device's probabilities differ from the CPU's")


# ------------------------------------------------------------------------------ compare, summarize


def compare(run_a: Path, run_b: Path, out: Path) -> None:
    """Two finished runs of the stage (uninterrupted, killed and resumed): weights and metrics."""
    import torch

    wa = torch.load(run_a / "models/model.pt", weights_only=True)["state_dict"]
    wb = torch.load(run_b / "models/model.pt", weights_only=True)["state_dict"]
    keys = ("best_epoch", "val_roc_auc", "val_loss", "train_loss", "resumed_after_epoch", "seconds")
    ma, mb = (json.loads((r / "metrics/train.json").read_text()) for r in (run_a, run_b))
    res = {
        "max_abs_weight_diff": max(
            float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if wa[k].is_floating_point()
        ),
        "identical_weights": all(torch.equal(wa[k], wb[k]) for k in wa),
        "a": {k: ma.get(k) for k in keys},
        "b": {k: mb.get(k) for k in keys},
    }
    print("compare:", json.dumps(res), flush=True)
    out.write_text(json.dumps(res, indent=1))


def summarize(work: Path, out: Path) -> None:
    """One JSON: every step's rc and seconds, every part's results, per-epoch times, notable log lines."""
    doc: dict = {"steps": []}
    status = work / "status.tsv"
    if status.is_file():
        for line in status.read_text().splitlines():
            name, rc, seconds, *note = line.split("\t")
            doc["steps"].append(
                {"step": name, "rc": int(rc), "seconds": int(seconds), "note": " ".join(note)}
            )
    for path in sorted((work / "res").glob("*.json")):
        try:
            doc[path.stem] = json.loads(path.read_text())
        except ValueError as err:
            doc[path.stem] = f"unreadable: {err}"
    for log in sorted(work.glob("run_*/*.log")):
        text = log.read_text(errors="replace")
        name = f"{log.parent.name}/{log.name}"
        epochs = re.findall(r"\[\s*([\d.]+)s\].*epoch\s+(\d+)  lr", text)
        doc.setdefault("epoch_lines", {})[name] = [{"epoch": int(e), "t": float(t)} for t, e in epochs]
        for key in ("recompil", "skipping cudagraphs", "graph break", "Traceback", "error"):
            hits = [ln for ln in text.splitlines() if key.lower() in ln.lower()][:5]
            if hits:
                doc.setdefault("notable_lines", {}).setdefault(name, {})[key] = hits
    doc["failed_steps"] = [s["step"] for s in doc["steps"] if s["rc"] not in (0, -1)]
    out.write_text(json.dumps(doc, indent=1, default=str))
    print(f"summary written to {out}")


def tslines() -> None:
    """Copy stdin to stdout, each line prefixed with the seconds since this filter started."""
    start = time.perf_counter()
    for line in sys.stdin:
        sys.stdout.write(f"[{time.perf_counter() - start:7.2f}s] {line}")
        sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env").add_argument("out", type=Path)
    p = sub.add_parser("project")
    p.add_argument("dir", type=Path)
    for name, default in (("train", 18706), ("valid", 1825), ("test", 256), ("mels", 128), ("frames", 628)):
        p.add_argument(f"--{name}", type=int, default=default)
    p = sub.add_parser("setup-run")
    p.add_argument("repo", type=Path)
    p.add_argument("project", type=Path)
    p.add_argument("run", type=Path)
    p.add_argument("overrides", nargs="*")
    sub.add_parser("stage")
    p = sub.add_parser("micro")
    p.add_argument("--device", default="cuda")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", required=True)
    for name, default in (("clips", 2048), ("steps", 60), ("batch", 32), ("mels", 128), ("frames", 628)):
        p.add_argument(f"--{name}", type=int, default=default)
    p = sub.add_parser("predict")
    p.add_argument("bundle")
    p.add_argument("features")
    p.add_argument("--device", default="cuda")
    p.add_argument("--n", type=int, default=1825)
    p.add_argument("--out", required=True)
    p = sub.add_parser("compare")
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("summarize")
    p.add_argument("work", type=Path)
    p.add_argument("out", type=Path)
    sub.add_parser("tslines")
    a = ap.parse_args()
    if a.cmd == "env":
        env(a.out)
    elif a.cmd == "project":
        project(a.dir, a.train, a.valid, a.test, a.mels, a.frames)
    elif a.cmd == "setup-run":
        setup_run(a.repo, a.project, a.run, a.overrides)
    elif a.cmd == "stage":
        stage()
    elif a.cmd == "micro":
        micro(a)
    elif a.cmd == "predict":
        predict(a)
    elif a.cmd == "compare":
        compare(a.run_a, a.run_b, a.out)
    elif a.cmd == "summarize":
        summarize(a.work, a.out)
    else:
        tslines()


if __name__ == "__main__":
    main()
