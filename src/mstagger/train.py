"""Stage ``train``: fit the multi-scale CNN with the paper's recipe and keep the best validation epoch.

Adam, binary cross-entropy on logits, the learning rate divided by 10 after the milestone epochs. After
each epoch BatchNorm's statistics are re-estimated (``bn_recalibration_clips``), the validation split is
scored through the one inference path (:func:`mstagger.bundle.predict_logits`), per-epoch curves go to
dvclive and a checkpoint is written (:mod:`mstagger.checkpoint`): a killed run resumes after its last
complete epoch. The bundle of the kept epoch is written once, at the end: the epoch with the best
validation ROC-AUC (the paper's rule, ``selection_tolerance: 0``), or the last epoch within
``selection_tolerance`` of it (:func:`selects`).

On several processes (torchrun, or ``nproc_per_node`` > 1) every process trains on a disjoint share of
each batch (DistributedDataParallel; BatchNorm synchronised on CUDA); rank 0 validates, logs,
checkpoints and writes the bundle.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mstagger import checkpoint
from mstagger.artifacts import load_inputs, load_stats
from mstagger.batches import DeviceSource, StreamSource, choose_device_data, epoch_batches, rank_share
from mstagger.bundle import Tagger, autocast, gather, git_revision, predict_logits, save_bundle
from mstagger.distributed import (
    World,
    barrier,
    broadcast_object,
    gather_objects,
    launched_by_torchrun,
    relaunch_under_torchrun,
    setup,
    sum_over_processes,
    teardown,
    world_from_env,
)
from mstagger.metrics import DEFAULT_THRESHOLD, f1_thresholds, macro_scores
from mstagger.model import MultiScaleCNN, count_parameters
from mstagger.outputs import (
    check_replaceable,
    check_writable,
    mark,
    remove_leftovers,
    stage_metrics,
    write_json,
)
from mstagger.params import Params, load_params
from mstagger.util import UserError, check_free, human_size, keep_freed_memory, log, stage_main, timed

Source = DeviceSource | StreamSource


def lr_at(epoch: int, base_lr: float, milestones: list[int], gamma: float) -> float:
    """Learning rate of a 1-based ``epoch``: ``base_lr`` times ``gamma`` per milestone already passed.

    With milestones [20, 30, 35] and gamma 0.1, epochs 1-20 use base_lr, 21-30 base_lr/10,
    31-35 base_lr/100 and 36 on base_lr/1000 ("divided by 10 after epochs 20, 30 and 35").
    """
    return base_lr * gamma ** sum(1 for m in milestones if epoch > m)


@dataclass
class TrainData:
    """Inputs of training, as the upstream stages wrote them."""

    mel: np.ndarray  # (N, n_mels, n_frames) float16 memmap, raw log-mel
    labels: np.ndarray  # (N, n_tags) uint8
    tags: list[str]
    split: np.ndarray  # (N,) "train" / "valid" / "test"
    mean: np.ndarray  # (n_mels,)
    std: np.ndarray  # (n_mels,)

    def rows(self, name: str) -> np.ndarray:
        """Row indices of one split."""
        return np.flatnonzero(self.split == name)


def load_train_data(features: str | Path, prepared: str | Path) -> TrainData:
    """Open the extract and prepare outputs, checked for alignment (the spectrograms stay memory-mapped)."""
    inputs = load_inputs(features, prepared)
    mean, std = load_stats(prepared)
    return TrainData(
        mel=inputs.mel, labels=inputs.labels, tags=inputs.tags, split=inputs.split, mean=mean, std=std
    )


# ------------------------------------------------------------------------------------------- steps


def check_outputs(model_path: Path, log_dir: Path, checkpoint_path: Path) -> None:
    """Before any work: the outputs' folders are writable with room for a model and a checkpoint, the
    log folder is training's own, and leftovers of a killed run's writes are gone."""
    for folder in (model_path.parent, checkpoint_path.parent):
        check_writable(folder)
        check_free(folder, 64 * 2**20)  # a bundle is ~12 MB, a checkpoint ~36 MB
    check_replaceable(log_dir, "train", "paths.train_log")
    remove_leftovers(model_path)


# cuBLAS's workspace setting that makes its matrix products repeat bit for bit (CUDA's documentation).
CUBLAS_DETERMINISTIC = ":4096:8"


def prepare_device(device: torch.device, deterministic: bool = False) -> None:
    """Process-wide settings for training on ``device``: speed, or run-to-run identical bits on CUDA.

    On CUDA, cuDNN picks the fastest convolution algorithms for the fixed input size (its choice can
    move the last bits of a GPU run) unless ``deterministic`` (params ``deterministic``): then no
    autotuning, cuDNN's deterministic algorithms, ``torch.use_deterministic_algorithms`` (an operation
    without a deterministic version is an error, not a silent difference) and cuBLAS's fixed workspace
    (``CUBLAS_WORKSPACE_CONFIG``, unless the user set it). On the CPU the numbers are the same either
    way (bench/train_bits.py); ``deterministic`` still turns on the check for non-deterministic
    operations. Also on the CPU, malloc keeps the step's big activations (~0.5 GB at batch 32) in the
    heap instead of mapping and page-faulting them in again at every step: 2x faster steps on a 2-core
    machine.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)  # read when cuBLAS starts
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    else:
        keep_freed_memory(mmap_threshold=256 * 2**20, trim_threshold=2**30)


def set_cpu_threads(device: torch.device, threads: int) -> None:
    """Train on the CPU with ``threads`` threads (params ``cpu_threads``; 0: leave PyTorch's one per core).

    The weights after a CPU step depend on the thread count: oneDNN and PyTorch split the sums of
    the backward pass (weight gradients over the batch, BatchNorm statistics) by thread, so 1 and 2
    threads give other bits from the first step on (bench/results/train-bits-cpu.json). A count fixed
    in params, not the machine's core count, gives the same bits on machines of the same kind with
    any number of cores. On CUDA the count does not touch the numbers and is left alone.
    """
    if device.type == "cpu" and threads > 0:
        torch.set_num_threads(threads)


def build_tagger(data: TrainData, params: Params, device: torch.device, world: World) -> Tagger:
    """The network, Glorot-initialised from ``seed``, with its normalisation, on ``device``."""
    torch.manual_seed(params.seed)
    n_mels, n_frames = data.mel.shape[1:]
    network = MultiScaleCNN(n_tags=len(data.tags), n_mels=n_mels, n_frames=n_frames)
    tagger = Tagger(network, data.mean, data.std).to(device, memory_format=torch.channels_last)
    if world.size > 1 and device.type == "cuda":
        # Synchronised BatchNorm: statistics over the whole batch, as one process computes them.
        # (PyTorch has none on the CPU; there each process normalises over its own share.)
        tagger = nn.SyncBatchNorm.convert_sync_batchnorm(tagger)
    if world.rank:
        torch.manual_seed(params.seed + 1_000_003 * world.rank)  # other dropout masks on each process
    return tagger


def make_optimizer(tagger: Tagger, params: Params, device: torch.device) -> torch.optim.Adam:
    """Adam as the paper (betas 0.9/0.999, eps 1e-8); one fused kernel for all parameters on CUDA."""
    return torch.optim.Adam(
        tagger.network.parameters(),
        lr=params.lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=params.weight_decay,
        fused=device.type == "cuda" or None,
    )


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Any,
    n_batches: int,
    precision: str,
    device: torch.device,
    world: World,
    desc: str,
) -> float:
    """One pass over this process's share of the epoch's batches; the mean training loss over all processes.

    Losses are summed on the device and checked for finiteness once, at the end of the epoch: no
    ``.item()`` stalls the GPU after each step.

    Raises:
        UserError: a step's loss was NaN or infinite (the same on every process).
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # step of the first non-finite loss
    bad_value = torch.zeros((), dtype=torch.float32, device=device)
    clips = 0
    bar = tqdm(
        batches, total=n_batches, desc=desc, unit="batch", leave=False, disable=None if world.main else True
    )
    for step, (mels, target) in enumerate(bar, start=1):
        with autocast(device, precision):
            logits = model(mels)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss = loss.detach()
        loss_sum += loss.double() * len(target)
        clips += len(target)
        new_bad = (first_bad < 0) & ~torch.isfinite(loss)
        first_bad = torch.where(new_bad, step, first_bad)
        bad_value = torch.where(new_bad, loss, bad_value)
    totals = torch.stack([loss_sum, torch.tensor(float(clips), dtype=torch.float64, device=device)])
    totals = sum_over_processes(totals, world)
    bad = sum_over_processes((first_bad >= 0).to(torch.int64), world)
    if bad.item():
        at = f"step {first_bad.item()}" if first_bad.item() >= 0 else "a step"
        raise UserError(f"training loss became {bad_value.item()} at {at} of {desc}")
    if totals[1].item() == 0:
        raise UserError(f"{desc} took no optimisation step: no batch of at least two clips")
    return (totals[0] / totals[1]).item()


@torch.no_grad()
def recalibrate_batchnorm(
    tagger: Tagger, source: Source, rows: np.ndarray, batch_size: int, precision: str, device: torch.device
) -> None:
    """Re-estimate BatchNorm's running statistics on ``rows`` with the current weights ("precise BN").

    With momentum 0.01 the running averages need a few hundred steps to forget their initial values
    (mean 0, variance 1); MTAT gives 560 steps an epoch, a small dataset a handful, and a network
    evaluated with such statistics scores noise. A cumulative average over a fixed set of training
    clips (the run stays deterministic) gives the statistics of the weights being evaluated. Weights are
    untouched; dropout is off meanwhile. Every process runs it on the same clips.
    """
    norms = [m for m in tagger.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    tagger.train()
    for m in tagger.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    mel, idx = source.for_inference(rows)
    for start in range(0, len(idx) - 1, batch_size):
        chunk = idx[start : start + batch_size]
        if len(chunk) < 2:
            break
        with autocast(device, precision):
            tagger(gather(mel, chunk, device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    tagger.eval()


def validate(tagger: Tagger, source: Source, data: TrainData, rows: np.ndarray, params: Params) -> dict:
    """Loss, macro ROC-AUC and PR-AUC of the validation rows, and their probabilities (``probs``, clips x
    tags), through the one inference path."""
    mel, idx = source.for_inference(rows)
    logits = predict_logits(tagger, mel, idx, precision=params.precision, batch_size=params.batch_size)
    target = torch.from_numpy(data.labels[rows].astype(np.float32))
    loss = nn.functional.binary_cross_entropy_with_logits(logits, target).item()
    probs = torch.sigmoid(logits).numpy()
    scores = macro_scores(data.labels[rows], probs)
    return {"loss": loss, "roc_auc": scores["roc_auc"], "pr_auc": scores["pr_auc"], "probs": probs}


def selection_key(val: dict[str, float]) -> tuple[float, float]:
    """Best validation ROC-AUC first; validation loss breaks ties and stands in when AUC is undefined."""
    roc = val["roc_auc"]
    return (roc if math.isfinite(roc) else -math.inf, -val["loss"])


def selects(key: tuple[float, float], best_key: tuple[float, float], tolerance: float) -> bool:
    """Whether an epoch scoring ``key`` replaces the kept epoch, ``best_key`` being the best so far.

    A new best always does. With ``tolerance`` > 0, so does an epoch whose ROC-AUC is within
    ``tolerance`` below the best so far, so the kept epoch is the last one within ``tolerance`` of the
    best of the run. On the flat end of a validation curve the argmax is a coin toss that differences
    in the last bits (another CPU's bf16 kernels) turn; the last epoch within a tolerance moves only
    when a score crosses the best by more than the tolerance.
    """
    if key > best_key:
        return True
    return tolerance > 0 and math.isfinite(key[0]) and key[0] >= best_key[0] - tolerance


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's RNG state (dropout masks are drawn from it)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def open_source(data: TrainData, params: Params, device: torch.device, rows: np.ndarray) -> Source:
    """Where batches come from: the ``rows`` resident on the device, or streamed from the memory map."""
    if choose_device_data(params.data_on_device, device, data.mel[0].nbytes * len(rows)):
        source = DeviceSource(data.mel, data.labels, rows, device)
        log.info("data on %s: %d clips, %s of device memory", device, len(rows), human_size(source.nbytes))
        return source
    return StreamSource(data.mel, data.labels, device, params.num_workers)


def log_epoch(live: Any, epoch: int, lr: float, train_loss: float, val: dict, note: str) -> None:
    """One epoch's numbers to dvclive (step = epoch - 1) and to the log."""
    metrics = {"train/loss": train_loss, "val/loss": val["loss"], "val/roc_auc": val["roc_auc"]}
    metrics.update({"val/pr_auc": val["pr_auc"], "lr": lr})
    for name, value in metrics.items():
        live.log_metric(name, value)
    live.next_step()
    log.info(
        "epoch %2d  lr %.1e  train loss %.4f  val loss %.4f  val roc-auc %.4f  pr-auc %.4f%s",
        epoch,
        lr,
        train_loss,
        val["loss"],
        val["roc_auc"],
        val["pr_auc"],
        note,
    )


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of a module's state (to keep as the best epoch, or to checkpoint)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------- the loop


def train(
    data: TrainData,
    params: Params,
    model_path: Path,
    log_dir: Path,
    checkpoint_path: Path,
    git_rev: str,
    *,
    world: World | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train with ``params`` on ``data``, resuming from ``checkpoint_path`` when it matches.

    Writes the best epoch's bundle to ``model_path`` (rank 0, at the end), dvclive curves to
    ``log_dir`` and a checkpoint after every epoch; a finished run removes its checkpoint. Checks first
    that all three can be written.

    Returns:
        A summary: best epoch and its validation scores, clips, device, data path, seconds, ...

    Raises:
        UserError: a split too small for one step, a non-finite loss, or no finite validation loss.
    """
    from dvclive import Live  # imported here: it is slow to import and only training logs

    world = world or World()
    device = device or setup(world, params.device)
    prepare_device(device, params.deterministic)
    set_cpu_threads(device, params.cpu_threads)
    if world.main:  # fail now, not after an epoch, when the outputs cannot be written
        check_outputs(model_path, log_dir, checkpoint_path)
    train_rows, valid_rows = data.rows("train"), data.rows("valid")
    if not epoch_batches(train_rows, params.batch_size, params.seed, 1, world.size) or len(valid_rows) == 0:
        raise UserError(
            f"the split has {len(train_rows)} train and {len(valid_rows)} valid clips: training needs a "
            f"batch of at least {2 * world.size} training clips (2 per process, for BatchNorm) and one "
            "valid clip; check split.* and batch_size"
        )

    tagger = build_tagger(data, params, device, world)
    optimizer = make_optimizer(tagger, params, device)
    model: nn.Module = tagger
    if world.size > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(tagger, device_ids=ids)
    step_model = model if params.compile == "none" else torch.compile(model, mode=params.compile)

    source = open_source(data, params, device, np.concatenate([train_rows, valid_rows]))
    on_device = isinstance(source, DeviceSource)

    run_facts = {"device": device.type, "processes": world.size}
    fp, state = None, None  # the main process alone reads and writes the checkpoint
    if world.main:
        inputs = {"mel": data.mel, "labels": data.labels, "split": data.split, "tags": np.asarray(data.tags)}
        fp = checkpoint.fingerprint(params, {**inputs, "mean": data.mean, "std": data.std}, run_facts)
        state = checkpoint.load(checkpoint_path, fp)
    state = broadcast_object(state, world)
    start, best, best_key, best_state, best_probs = 1, {}, (-math.inf, -math.inf), None, None
    if state is not None:
        tagger.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"][world.rank], device)
        start, best, best_key, best_state, best_probs = (
            state["epoch"] + 1,
            state["best"],
            tuple(state["best_key"]),
            state["best_state"],
            state["best_probs"],
        )
        if world.main:
            checkpoint.restore_dir(log_dir, state["live"])
            log.info("resuming from %s after epoch %d of %d", checkpoint_path, state["epoch"], params.epochs)

    if world.main:
        log.info(
            "%d train / %d valid clips, %d tags, input %s, %d parameters, %s x %d, %s, data %s",
            len(train_rows),
            len(valid_rows),
            len(data.tags),
            tuple(data.mel.shape[1:]),
            count_parameters(tagger),
            device,
            world.size,
            params.precision,
            "on the device" if on_device else "streamed from disk",
        )
    recal_rows = np.sort(train_rows)[: params.bn_recalibration_clips]
    live = (
        Live(str(log_dir), dvcyaml=None, report=None, save_dvc_exp=False, resume=state is not None)
        if world.main
        else None
    )
    if live is not None:
        live.step = start - 1  # dvclive's own resume mis-counts after the first step
        mark(log_dir, "train")
    with timed() as elapsed:
        for epoch in range(start, params.epochs + 1):
            lr = lr_at(epoch, params.lr, params.lr_milestones, params.lr_gamma)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches = epoch_batches(train_rows, params.batch_size, params.seed, epoch, world.size)
            mine = [rank_share(b, world.rank, world.size) for b in batches]
            desc = f"epoch {epoch}/{params.epochs}"
            train_loss = train_epoch(
                step_model, optimizer, source.batches(mine), len(mine), params.precision, device, world, desc
            )
            if len(recal_rows):
                recalibrate_batchnorm(tagger, source, recal_rows, params.batch_size, params.precision, device)
            rngs = gather_objects(rng_state(device), world)
            if not world.main:
                continue
            val = validate(tagger, source, data, valid_rows, params)
            key, current = selection_key(val), cpu_state(tagger)
            kept = selects(key, best_key, params.selection_tolerance)
            note = ("  *best" if key > best_key else "  *kept (within selection_tolerance)") if kept else ""
            if kept:
                # the probabilities as a tensor: checkpoints load with torch.load(weights_only=True)
                best_key, best_state, best_probs = max(key, best_key), current, torch.from_numpy(val["probs"])
                best = {
                    "best_epoch": epoch,
                    "val_roc_auc": val["roc_auc"],
                    # the best validation ROC-AUC of the run so far (a new best is always kept)
                    "val_roc_auc_max": best_key[0] if math.isfinite(best_key[0]) else val["roc_auc"],
                    "val_pr_auc": val["pr_auc"],
                    "val_loss": val["loss"],
                    "train_loss": train_loss,
                }
            log_epoch(live, epoch, lr, train_loss, val, note)
            checkpoint.save(
                checkpoint_path,
                {
                    "fingerprint": fp,
                    "epoch": epoch,
                    "model": current,  # the same tensors as best_state when kept: saved once
                    "optimizer": optimizer.state_dict(),
                    "rng": rngs,
                    "best": best,
                    "best_key": list(best_key),
                    "best_state": best_state,
                    "best_probs": best_probs,
                    "live": checkpoint.snapshot_dir(log_dir),
                },
            )
        seconds = elapsed()
    summary: dict[str, Any] = {}
    if world.main:
        if best_state is None or not math.isfinite(best["val_loss"]):
            raise UserError("no epoch gave a finite validation loss; no model was written. Check the inputs")
        live.summary["best"] = best
        live.end()
        tagger.load_state_dict(best_state)
        # Decision thresholds from the saved weights' validation probabilities, kept with them.
        thresholds, n_default = f1_thresholds(data.labels[valid_rows], best_probs.numpy())
        log.info(
            "decision thresholds chosen on the validation split; %d tags without a positive get %s",
            n_default,
            DEFAULT_THRESHOLD,
        )
        save_bundle(
            model_path,
            tagger,
            data.tags,
            params.spectrogram,
            params.precision,
            asdict(params),
            {**best, "epochs": params.epochs, "thresholds_default": n_default},
            git_rev,
            thresholds=thresholds,
        )
        checkpoint.remove(checkpoint_path)
        summary = {
            **best,
            "epochs": params.epochs,
            "resumed_after_epoch": start - 1,
            "train_clips": len(train_rows),
            "valid_clips": len(valid_rows),
            "parameters": count_parameters(tagger),
            "device": str(device),
            "processes": world.size,
            "precision": params.precision,
            "deterministic": params.deterministic,
            "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
            "data_on_device": on_device,
            "compile": params.compile,
            "seconds": seconds,
        }
    barrier(world)
    return summary


@stage_main
def main() -> None:
    """Run the stage with params.yaml (relaunching under torchrun when ``nproc_per_node`` > 1)."""
    params = load_params()
    if params.nproc_per_node > 1 and not launched_by_torchrun():
        log.info("starting %d processes with torchrun", params.nproc_per_node)
        status = relaunch_under_torchrun(params.nproc_per_node, "mstagger.train")
        if status:
            raise SystemExit(status)
        return
    world = world_from_env()
    if not world.main:
        log.setLevel("WARNING")  # one voice: rank 0 reports
    metrics = stage_metrics(params.paths.metrics, "train")
    if world.main:
        check_writable(metrics.parent)
    device = setup(world, params.device)
    try:
        data = load_train_data(params.paths.features, params.paths.prepared)
        paths = params.paths
        summary = train(
            data,
            params,
            Path(paths.model),
            Path(paths.train_log),
            Path(paths.checkpoint),
            git_revision(),
            world=world,
            device=device,
        )
    finally:
        teardown(world)
    if world.main:
        write_json(metrics, summary)
        log.info(
            "kept epoch %d of %d (val roc-auc %.4f, best %.4f; pr-auc %.4f) -> %s in %.1f s",
            summary["best_epoch"],
            summary["epochs"],
            summary["val_roc_auc"],
            summary["val_roc_auc_max"],
            summary["val_pr_auc"],
            paths.model,
            summary["seconds"],
        )


if __name__ == "__main__":
    main()
