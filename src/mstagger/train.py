"""Stage ``train``: fit the multi-scale CNN with the paper's recipe and keep the best validation epoch.

Adam, binary cross-entropy on logits, the learning rate divided by 10 after the milestone epochs. After
each epoch BatchNorm's statistics are re-estimated (``bn_recalibration_clips``), the validation split is
scored through the one inference path (:func:`mstagger.inference.tagger.predict_logits`), per-epoch
curves go to dvclive and a checkpoint is written (:mod:`mstagger.training.checkpoint`): a killed run
resumes after its last complete epoch. The bundle of the kept epoch is written once, at the end: the epoch
with the best validation ROC-AUC (the paper's rule, ``selection_tolerance: 0``), or the last epoch within
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

from mstagger.core.disk import check_free, human_size
from mstagger.core.errors import UserError
from mstagger.core.log import log, stage_main, timed
from mstagger.core.outputs import (
    check_replaceable,
    check_writable,
    mark,
    remove_leftovers,
    stage_metrics,
    write_json,
)
from mstagger.core.runtime import git_revision
from mstagger.core.system import keep_freed_memory
from mstagger.data.artifacts import load_inputs, load_stats
from mstagger.evaluation.scores import DEFAULT_THRESHOLD, MIN_POSITIVES, f1_thresholds
from mstagger.inference.bundle import save_bundle, weights_digest
from mstagger.inference.tagger import Tagger
from mstagger.model import MultiScaleCNN, count_parameters
from mstagger.params import Params, load_params
from mstagger.training import checkpoint
from mstagger.training.batches import (
    DeviceSource,
    StreamSource,
    choose_device_data,
    epoch_batches,
    rank_share,
)
from mstagger.training.distributed import (
    World,
    barrier,
    broadcast_object,
    gather_objects,
    launched_by_torchrun,
    relaunch_under_torchrun,
    setup,
    teardown,
    world_from_env,
)
from mstagger.training.epoch import OneShape, Source, recalibrate_batchnorm, step_model, train_epoch, validate
from mstagger.training.selection import Selection


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
    heap instead of mapping and page-faulting them in again at every step (faster steps:
    bench/bench_train.py, docs/benchmarks.md).
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


# ---------------------------------------------------------------------------------------- the run


@dataclass
class Run:
    """One training run's moving parts, shared by its steps."""

    data: TrainData
    params: Params
    world: World
    device: torch.device
    tagger: Tagger
    optimizer: torch.optim.Optimizer
    step_model: nn.Module | OneShape  # the tagger wrapped for steps (DistributedDataParallel, compiled)
    source: Source
    train_rows: np.ndarray
    valid_rows: np.ndarray
    selection: Selection
    start: int = 1  # the first epoch to run (after a resumed checkpoint's last)
    fingerprint: str | None = None  # of params and inputs, in checkpoints (main process)


def start_run(data: TrainData, params: Params, device: torch.device, world: World) -> Run:
    """Check the split can train, then build the network, its optimiser and the batch source."""
    train_rows, valid_rows = data.rows("train"), data.rows("valid")
    if not epoch_batches(train_rows, params.batch_size, params.seed, 1, world.size) or len(valid_rows) == 0:
        raise UserError(
            f"the split has {len(train_rows)} train and {len(valid_rows)} valid clips: training needs a "
            f"batch of at least {2 * world.size} training clips (2 per process, for BatchNorm) and one "
            "valid clip; check split.* and batch_size"
        )
    tagger = build_tagger(data, params, device, world)
    model: nn.Module = tagger
    if world.size > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(tagger, device_ids=ids)
    return Run(
        data=data,
        params=params,
        world=world,
        device=device,
        tagger=tagger,
        optimizer=make_optimizer(tagger, params, device),
        # compiled for full batches only: the last, partial one runs eagerly (no second graph)
        step_model=step_model(
            model, params.compile, len(rank_share(np.arange(params.batch_size), world.rank, world.size))
        ),
        source=open_source(data, params, device, np.concatenate([train_rows, valid_rows])),
        train_rows=train_rows,
        valid_rows=valid_rows,
        selection=Selection(params.selection_tolerance),
    )


def resume(run: Run, checkpoint_path: Path, log_dir: Path) -> None:
    """Continue from the checkpoint when it was written by this configuration on these inputs."""
    data, world, state = run.data, run.world, None
    if world.main:  # the main process alone reads and writes the checkpoint
        inputs = {"mel": data.mel, "labels": data.labels, "split": data.split, "tags": np.asarray(data.tags)}
        run_facts = {"device": run.device.type, "processes": world.size}
        run.fingerprint = checkpoint.fingerprint(
            run.params, {**inputs, "mean": data.mean, "std": data.std}, run_facts
        )
        state = checkpoint.load(checkpoint_path, run.fingerprint)
    state = broadcast_object(state, world)
    if state is None:
        return
    run.tagger.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    checkpoint.set_rng_state(state["rng"][world.rank], run.device)
    run.start, run.selection = state["epoch"] + 1, Selection.restored(state, run.params.selection_tolerance)
    if world.main:
        checkpoint.restore_dir(log_dir, state["live"])
        log.info("resuming from %s after epoch %d of %d", checkpoint_path, state["epoch"], run.params.epochs)


def log_start(run: Run) -> None:
    """One line: the data, the network and where it trains."""
    log.info(
        "%d train / %d valid clips, %d tags, input %s, %d parameters, %s x %d, %s, data %s",
        len(run.train_rows),
        len(run.valid_rows),
        len(run.data.tags),
        tuple(run.data.mel.shape[1:]),
        count_parameters(run.tagger),
        run.device,
        run.world.size,
        run.params.precision,
        "on the device" if isinstance(run.source, DeviceSource) else "streamed from disk",
    )


def epoch_loop(run: Run, live: Any, checkpoint_path: Path, log_dir: Path) -> None:
    """Epochs ``run.start`` .. ``epochs``: train, re-estimate BatchNorm, validate, select, checkpoint."""
    params, world = run.params, run.world
    recal_rows = np.sort(run.train_rows)[: params.bn_recalibration_clips]
    for epoch in range(run.start, params.epochs + 1):
        lr = lr_at(epoch, params.lr, params.lr_milestones, params.lr_gamma)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        batches = epoch_batches(run.train_rows, params.batch_size, params.seed, epoch, world.size)
        mine = [rank_share(b, world.rank, world.size) for b in batches]
        desc = f"epoch {epoch}/{params.epochs}"
        batch_source = run.source.batches(mine)
        train_loss = train_epoch(
            run.step_model, run.optimizer, batch_source, len(mine), params.precision, run.device, world, desc
        )
        if len(recal_rows):
            recalibrate_batchnorm(
                run.tagger, run.source, recal_rows, params.batch_size, params.precision, run.device
            )
        rngs = gather_objects(checkpoint.rng_state(run.device), world)
        if not world.main:
            continue
        val = validate(
            run.tagger, run.source, run.data.labels, run.valid_rows, params.precision, params.batch_size
        )
        current = checkpoint.cpu_state(run.tagger)
        note = run.selection.consider(epoch, val, current, train_loss)
        log_epoch(live, epoch, lr, train_loss, val, note)
        checkpoint.save(
            checkpoint_path,
            {
                "fingerprint": run.fingerprint,
                "epoch": epoch,
                "model": current,  # the same tensors as the selection's when kept: saved once
                "optimizer": run.optimizer.state_dict(),
                "rng": rngs,
                **run.selection.saved(),
                "live": checkpoint.snapshot_dir(log_dir),
            },
        )


def finish(run: Run, model_path: Path, checkpoint_path: Path, git_rev: str, seconds: float) -> dict[str, Any]:
    """Write the kept epoch's bundle with its decision thresholds, remove the checkpoint; the summary."""
    params, selection, data = run.params, run.selection, run.data
    if selection.state is None or not math.isfinite(selection.best["val_loss"]):
        raise UserError("no epoch gave a finite validation loss; no model was written. Check the inputs")
    run.tagger.load_state_dict(selection.state)
    # Decision thresholds from the kept weights' validation probabilities, kept with them.
    thresholds, fallback = f1_thresholds(data.labels[run.valid_rows], selection.probs.numpy())
    n_default = int(fallback.sum())
    log.info(
        "decision thresholds chosen on the validation split; %d tags with under %d validation "
        "positives or no better-than-chance threshold get %s",
        n_default,
        MIN_POSITIVES,
        DEFAULT_THRESHOLD,
    )
    training = {
        **selection.best,
        "epochs": params.epochs,
        "thresholds_default": n_default,
        "thresholds_fallback": [tag for tag, f in zip(data.tags, fallback, strict=True) if f],
    }
    save_bundle(
        model_path,
        run.tagger,
        data.tags,
        params.spectrogram,
        params.precision,
        asdict(params),
        training,
        git_rev,
        thresholds=thresholds,
    )
    checkpoint.remove(checkpoint_path)
    return {
        **selection.best,
        "epochs": params.epochs,
        "resumed_after_epoch": run.start - 1,
        "train_clips": len(run.train_rows),
        "valid_clips": len(run.valid_rows),
        "parameters": count_parameters(run.tagger),
        "device": str(run.device),
        "processes": run.world.size,
        "precision": params.precision,
        "deterministic": params.deterministic,
        "cpu_threads": torch.get_num_threads() if run.device.type == "cpu" else None,
        "data_on_device": isinstance(run.source, DeviceSource),
        "compile": params.compile,
        "seconds": seconds,
        "weights_sha256": weights_digest(run.tagger),  # the kept weights, loaded above
    }


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

    Writes the kept epoch's bundle to ``model_path`` (rank 0, at the end), dvclive curves to
    ``log_dir`` and a checkpoint after every epoch; a finished run removes its checkpoint. Checks first
    that all three can be written.

    Returns:
        A summary: kept epoch and its validation scores, clips, device, data path, seconds, ...
        (empty on processes other than the main one).

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
    run = start_run(data, params, device, world)
    try:
        resume(run, checkpoint_path, log_dir)
        live = None
        if world.main:
            log_start(run)
            live = Live(str(log_dir), dvcyaml=None, report=None, save_dvc_exp=False, resume=run.start > 1)
            live.step = run.start - 1  # dvclive's own resume mis-counts after the first step
            mark(log_dir, "train")
        with timed() as elapsed:
            epoch_loop(run, live, checkpoint_path, log_dir)
            seconds = elapsed()
    finally:
        run.source.close()  # the streamed path's DataLoader workers persist until now, also after a failure
    summary: dict[str, Any] = {}
    if world.main:
        live.summary["best"] = run.selection.best
        live.end()
        summary = finish(run, model_path, checkpoint_path, git_rev, seconds)
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
