"""The one inference path: raw log-mel in, logits out, at the precision training used.

:class:`Tagger` is the network with its input standardisation (the training split's mean and std per
mel bin) folded in, so it takes raw log-mel as ``extract`` and ``predict`` compute it.
:func:`predict_logits` runs a tagger over clips in batches; training's validation, ``evaluate`` and
``predict`` all go through it, so the number that selects the model and the test number come from the
same code.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from torch import nn

from mstagger.model import MultiScaleCNN
from mstagger.params import PRECISIONS


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bfloat16 autocast for ``precision: bf16`` (convolutions and matmuls; BatchNorm, loss in float32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


class Tagger(nn.Module):
    """Raw log-mel (B, n_mels, n_frames) -> logits (B, n_tags): standardisation, then the network.

    Args:
        network: the multi-scale CNN.
        mean, std: (n_mels,) training-split statistics per mel bin (std already floored above zero).
    """

    def __init__(self, network: MultiScaleCNN, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.network = network
        shape = (1, 1, -1, 1)  # broadcast over (B, 1, M, T)
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, np.float32)).reshape(shape).clone())
        self.register_buffer("std", torch.as_tensor(np.asarray(std, np.float32)).reshape(shape).clone())

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        x = mels.unsqueeze(1).float()  # (B, 1, M, T), float16 storage -> float32
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.network(x)


def upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` as a tensor on ``device``, without making the host wait for the device.

    A copy from ordinary (pageable) host memory to a GPU blocks the host until the GPU has finished
    all its queued work: one such copy per step serialises host and device. Through pinned memory
    the copy is queued on the stream like a kernel, in order with the steps that use it.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class Gather:
    """Batches of clips of raw log-mel, as tensors on ``device``, in the order of ``rows``.

    ``mel`` is a NumPy array or memmap (each batch is read and copied up as it is needed) or a tensor
    already on the device (the positions ``rows`` are uploaded once, here, and each batch is a slice of
    them: no host-device wait per batch).
    """

    def __init__(self, mel: np.ndarray | torch.Tensor, rows: np.ndarray, device: torch.device) -> None:
        self.mel, self.device = mel, device
        self.rows = np.asarray(rows, dtype=np.int64)
        self.positions = upload(self.rows, mel.device) if isinstance(mel, torch.Tensor) else None

    def __len__(self) -> int:
        return len(self.rows)

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        """Clips ``rows[start:stop]``: (stop - start, n_mels, n_frames) on the device."""
        if self.positions is not None:
            return self.mel[self.positions[start:stop]].to(self.device, non_blocking=True)
        batch = np.ascontiguousarray(self.mel[self.rows[start:stop]])
        return torch.from_numpy(batch).to(self.device, non_blocking=True)


@torch.no_grad()
def predict_logits(
    tagger: Tagger,
    mel: np.ndarray | torch.Tensor,
    rows: np.ndarray | None = None,
    *,
    precision: str,
    batch_size: int = 32,
) -> torch.Tensor:
    """The one inference path: logits of ``tagger`` for clips of raw log-mel, in eval mode.

    Args:
        tagger: the network with its normalisation; its parameters' device is where it runs.
        mel: (clips, n_mels, n_frames) raw log-mel: a NumPy array or memmap (batches are copied to the
            device as they are needed) or a tensor already on the tagger's device.
        rows: the clips to score, in output order (default: all).
        precision: ``bf16`` (bfloat16 autocast) or ``fp32``: the precision the model was trained at.
        batch_size: clips per forward pass.

    Returns:
        (len(rows), n_tags) float32 logits on the CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = next(tagger.parameters()).device
    rows = np.arange(len(mel)) if rows is None else np.asarray(rows, dtype=np.int64)
    tagger.eval()
    clips = Gather(mel, rows, device)
    out = []
    for start in range(0, len(rows), batch_size):
        with autocast(device, precision):
            out.append(tagger(clips(start, start + batch_size)).float())
    n_tags = tagger.network.config.n_tags
    return torch.cat(out).cpu() if out else torch.zeros((0, n_tags))
