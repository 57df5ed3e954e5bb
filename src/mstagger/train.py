"""Stage ``train``: fit the multi-scale CNN with the paper's recipe and keep the best validation model.

Adam, binary cross-entropy on logits, the learning rate divided by 10 after the milestone epochs.
After each epoch the validation split is scored (macro ROC-AUC and PR-AUC, loss); the epoch with the
best validation ROC-AUC is written as the model bundle. Per-epoch curves go to dvclive.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mstagger.artifacts import load_inputs, load_stats
from mstagger.bundle import Tagger, autocast, git_revision, predict_logits, resolve_device, save_bundle
from mstagger.metrics import macro_scores
from mstagger.model import MultiScaleCNN, count_parameters
from mstagger.params import Params, load_params
from mstagger.util import UserError, log, stage_main, timed, write_json


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


class BatchDataset(torch.utils.data.Dataset):
    """Returns whole batches: item ``i`` is (mels float16 (B, M, T), labels float32 (B, n_tags))."""

    def __init__(self, mel: np.ndarray, labels: np.ndarray, batches: list[np.ndarray]) -> None:
        self.mel, self.labels, self.batches = mel, labels, batches

    def __getstate__(self) -> dict:
        # DataLoader workers started by spawn/forkserver get this object pickled: send the memmap's
        # path, not the 4.2 GB it maps (pickling an np.memmap copies its data).
        state = self.__dict__.copy()
        if isinstance(self.mel, np.memmap) and self.mel.filename:
            state["mel"] = str(self.mel.filename)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["mel"], str):
            state["mel"] = np.load(state["mel"], mmap_mode="r")
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.sort(self.batches[i])  # sorted rows read the memmap sequentially
        return torch.from_numpy(np.ascontiguousarray(self.mel[rows])), torch.from_numpy(
            self.labels[rows].astype(np.float32)
        )


def epoch_batches(rows: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Shuffle ``rows`` for one epoch (a pure function of seed and epoch) and cut them into batches.

    A last batch of one clip is dropped: BatchNorm cannot train on a single example.
    """
    order = np.random.default_rng([seed, epoch]).permutation(rows)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [b for b in batches if len(b) > 1]


class Trainer:
    """Holds the network, optimiser and normalisation on one device."""

    def __init__(self, data: TrainData, params: Params, device: torch.device) -> None:
        self.data, self.params, self.device = data, params, device
        torch.manual_seed(params.seed)
        n_mels, n_frames = data.mel.shape[1:]
        network = MultiScaleCNN(n_tags=len(data.tags), n_mels=n_mels, n_frames=n_frames)
        self.tagger = Tagger(network, data.mean, data.std).to(device, memory_format=torch.channels_last)
        self.model = self.tagger.network
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=params.lr,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=params.weight_decay,
        )
        self.saved_any = False  # whether a bundle of this run has been written

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training split; returns the mean training loss."""
        p = self.params
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(epoch, p.lr, p.lr_milestones, p.lr_gamma)
        batches = epoch_batches(self.data.rows("train"), p.batch_size, p.seed, epoch)
        loader = torch.utils.data.DataLoader(
            BatchDataset(self.data.mel, self.data.labels, batches),
            batch_size=None,
            shuffle=False,
            num_workers=p.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.model.train()
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{p.epochs}", unit="batch", leave=False, disable=None)
        for step, (mels, target) in enumerate(bar, start=1):
            mels, target = mels.to(self.device, non_blocking=True), target.to(self.device, non_blocking=True)
            with autocast(self.device, p.precision):
                logits = self.tagger(mels)
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
            if not torch.isfinite(loss):
                kept = (
                    f"the best model so far is kept at {p.paths.model}"
                    if self.saved_any
                    else "no model was written"
                )
                raise UserError(
                    f"training loss became {loss.item()} at epoch {epoch}, step {step}; {kept}. "
                    f"Lower lr (now {p.lr}) or check the inputs"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(target)
            count += len(target)
            bar.set_postfix(loss=f"{total / count:.4f}")
        return total / max(count, 1)

    @torch.no_grad()
    def recalibrate_batchnorm(self, rows: np.ndarray) -> None:
        """Re-estimate BatchNorm's running statistics on ``rows`` with the current weights ("precise BN").

        With momentum 0.01 the running averages need a few hundred steps to forget their initial
        values (mean 0, variance 1); MTAT gives 560 steps an epoch, a small dataset a handful, and a
        network evaluated with such statistics scores noise. A cumulative average over the first
        ``bn_recalibration_clips`` training clips (a fixed set, so the run stays deterministic) gives
        the statistics of the weights being evaluated. Weights are untouched; dropout is off meanwhile.
        """
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        self.model.train()
        for m in self.model.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
        size = self.params.batch_size
        for start in range(0, len(rows) - 1, size):
            chunk = rows[start : start + size]
            if len(chunk) < 2:
                break
            with autocast(self.device, self.params.precision):
                self.tagger(torch.from_numpy(np.ascontiguousarray(self.data.mel[chunk])).to(self.device))
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        self.model.eval()

    def score(self, rows: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean loss and probabilities (len(rows), n_tags) on ``rows``, through the one inference path."""
        logits = predict_logits(
            self.tagger,
            self.data.mel,
            rows,
            precision=self.params.precision,
            batch_size=self.params.batch_size,
        )
        target = torch.from_numpy(self.data.labels[rows].astype(np.float32))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target).item() if len(rows) else 0.0
        return loss, torch.sigmoid(logits).numpy()


def _selection_key(scores: dict[str, Any], val_loss: float) -> tuple[float, float]:
    """Best validation ROC-AUC first; validation loss breaks ties and stands in when AUC is undefined."""
    roc = scores["roc_auc"]
    return (roc if math.isfinite(roc) else -math.inf, -val_loss)


def train(data: TrainData, params: Params, model_path: Path, log_dir: Path, git_rev: str) -> dict:
    """Train with ``params`` on ``data``; write the best bundle to ``model_path`` and curves to ``log_dir``.

    Returns:
        A summary: best epoch, its validation scores, parameter count, device, seconds.
    """
    from dvclive import Live  # imported here: it is slow to import and only training logs

    device = resolve_device(params.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    trainer = Trainer(data, params, device)
    train_rows, valid_rows = data.rows("train"), data.rows("valid")
    if len(train_rows) < 2 or len(valid_rows) == 0:
        raise UserError(f"split has {len(train_rows)} train and {len(valid_rows)} valid clips; need more")
    log.info(
        "%d train / %d valid clips, %d tags, input %s, %d parameters, %s, %s",
        len(train_rows),
        len(valid_rows),
        len(data.tags),
        tuple(data.mel.shape[1:]),
        count_parameters(trainer.model),
        device,
        params.precision,
    )
    valid_truth = data.labels[valid_rows]
    best: dict[str, Any] = {}
    best_key = (-math.inf, -math.inf)
    with timed() as elapsed, Live(str(log_dir), dvcyaml=None, report=None, save_dvc_exp=False) as live:
        for epoch in range(1, params.epochs + 1):
            lr = lr_at(epoch, params.lr, params.lr_milestones, params.lr_gamma)
            train_loss = trainer.train_epoch(epoch)
            if params.bn_recalibration_clips:
                trainer.recalibrate_batchnorm(np.sort(train_rows)[: params.bn_recalibration_clips])
            val_loss, val_probs = trainer.score(valid_rows)
            scores = macro_scores(valid_truth, val_probs)
            live.log_metric("train/loss", train_loss)
            live.log_metric("val/loss", val_loss)
            live.log_metric("val/roc_auc", scores["roc_auc"])
            live.log_metric("val/pr_auc", scores["pr_auc"])
            live.log_metric("lr", lr)
            key = _selection_key(scores, val_loss)
            improved = key > best_key
            log.info(
                "epoch %2d  lr %.1e  train loss %.4f  val loss %.4f  val roc-auc %.4f  pr-auc %.4f%s",
                epoch,
                lr,
                train_loss,
                val_loss,
                scores["roc_auc"],
                scores["pr_auc"],
                "  *best" if improved else "",
            )
            if improved:
                best_key = key
                best = {
                    "best_epoch": epoch,
                    "val_roc_auc": scores["roc_auc"],
                    "val_pr_auc": scores["pr_auc"],
                    "val_loss": val_loss,
                    "train_loss": train_loss,
                }
                save_bundle(
                    model_path,
                    trainer.tagger,
                    data.tags,
                    params.spectrogram,
                    params.precision,
                    asdict(params),
                    {**best, "epochs": params.epochs},
                    git_rev,
                )
                trainer.saved_any = True
            live.next_step()
        if not best:
            raise UserError("no epoch gave a finite validation loss; no model was written. Check the inputs")
        live.summary["best"] = best
        seconds = elapsed()
    summary = {
        **best,
        "epochs": params.epochs,
        "train_clips": len(train_rows),
        "valid_clips": len(valid_rows),
        "parameters": count_parameters(trainer.model),
        "device": str(device),
        "precision": params.precision,
        "seconds": seconds,
    }
    write_json(log_dir / "summary.json", summary)
    return summary


@stage_main
def main() -> None:
    """Run the stage with params.yaml."""
    params = load_params()
    data = load_train_data(params.paths.features, params.paths.prepared)
    summary = train(data, params, Path(params.paths.model), Path(params.paths.train_log), git_revision())
    log.info(
        "best epoch %d of %d (val roc-auc %.4f, pr-auc %.4f) -> %s in %.1f s",
        summary["best_epoch"],
        summary["epochs"],
        summary["val_roc_auc"],
        summary["val_pr_auc"],
        params.paths.model,
        summary["seconds"],
    )


if __name__ == "__main__":
    main()
