"""What one epoch does: the optimisation steps, BatchNorm's re-estimated statistics, and validation."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mstagger.core.errors import UserError
from mstagger.evaluation.scores import macro_scores
from mstagger.inference.tagger import Gather, Tagger, autocast, predict_logits
from mstagger.training.batches import DeviceSource, StreamSource
from mstagger.training.distributed import World, sum_over_processes

Source = DeviceSource | StreamSource


class OneShape:
    """Steps through a compiled model that only ever sees one batch shape.

    ``torch.compile`` specialises its graph on the batch size: the last, partial batch of an epoch
    (18,706 = 584 x 32 + 18 on MTAT) would compile a second graph and, with ``reduce-overhead``,
    record and keep a second CUDA graph. Full batches run through ``compiled``, any other size through
    ``eager``, the same module run eagerly: the same parameters, the same clips, one step in an
    epoch on other kernels.

    Args:
        eager: the model (or its DistributedDataParallel wrapper).
        compiled: ``torch.compile`` of ``eager``.
        batch: the clips of a full batch on this process.
    """

    def __init__(self, eager: nn.Module, compiled: nn.Module, batch: int) -> None:
        self.eager, self.compiled, self.batch = eager, compiled, batch

    def train(self, mode: bool = True) -> OneShape:
        self.eager.train(mode)
        return self

    def __call__(self, mels: torch.Tensor) -> torch.Tensor:
        return (self.compiled if mels.shape[0] == self.batch else self.eager)(mels)


def step_model(model: nn.Module, mode: str, batch: int) -> nn.Module | OneShape:
    """What training steps call: ``model`` itself (``compile: none``), else :class:`OneShape` of it
    compiled with ``mode``, for full batches of ``batch`` clips on this process."""
    if mode == "none":
        return model
    return OneShape(model, torch.compile(model, mode=mode), batch)


def train_step(
    model: nn.Module | OneShape,
    optimizer: torch.optim.Optimizer,
    mels: torch.Tensor,
    target: torch.Tensor,
    precision: str,
    device: torch.device,
) -> torch.Tensor:
    """One optimisation step on a batch; its loss, detached and left on the device (no read-back).

    Binary cross-entropy on the logits, computed in float32 whatever the autocast precision.
    """
    with autocast(device, precision):
        logits = model(mels)
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_epoch(
    model: nn.Module | OneShape,
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
        loss = train_step(model, optimizer, mels, target, precision, device)
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
    tagger.train()
    for m in tagger.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    clips = Gather(*source.for_inference(rows), device)
    for k, start in enumerate(range(0, len(clips) - 1, batch_size), start=1):
        if min(len(clips), start + batch_size) - start < 2:
            break
        # The cumulative average over the batches: momentum 1/k at batch k. (BatchNorm's own,
        # momentum None, reads its batch counter from the device, a wait on the GPU per layer.)
        for m in norms:
            m.momentum = 1.0 / k
        with autocast(device, precision):
            tagger(clips(start, start + batch_size))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    tagger.eval()


def validate(
    tagger: Tagger, source: Source, labels: np.ndarray, rows: np.ndarray, precision: str, batch_size: int
) -> dict:
    """Loss, macro ROC-AUC and PR-AUC of the validation ``rows`` (``labels``: every clip's), and their
    probabilities (``probs``, clips x tags), through the one inference path."""
    mel, idx = source.for_inference(rows)
    logits = predict_logits(tagger, mel, idx, precision=precision, batch_size=batch_size)
    target = torch.from_numpy(labels[rows].astype(np.float32))
    loss = nn.functional.binary_cross_entropy_with_logits(logits, target).item()
    probs = torch.sigmoid(logits).numpy()
    scores = macro_scores(labels[rows], probs)
    return {"loss": loss, "roc_auc": scores["roc_auc"], "pr_auc": scores["pr_auc"], "probs": probs}
