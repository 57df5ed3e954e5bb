"""The multi-scale CNN of Dabral, Deshmukh and Malapati (2018), as the original Theano code builds it.

Three branches look at the log-mel spectrogram at three time-frequency scales: the input itself and two
average-pooled subsamplings of it. Each branch ends at the same (70, 16, 19) grid for a 128 x 628 input;
the branches are stacked on channels and go through two more convolutions, BatchNorm over the
flattened features, dropout and two dense layers. All convolutions are stride 1, "same" padding, ReLU;
pooling is max unless said otherwise; weights are Glorot-normal, biases zero. A ReLU that the original
applies before a max-pool is applied after it here (:class:`MaxPoolReLU`): the same numbers, cheaper.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Geometry and regularisation of :class:`MultiScaleCNN`; geometry comes from the data artifacts."""

    n_tags: int = 50
    n_mels: int = 128
    n_frames: int = 628
    dropout: float = 0.4  # drop probability (the original keeps 0.6)
    bn_momentum: float = 0.01  # running stats: 0.99 * old + 0.01 * new (PyTorch convention)
    bn_eps: float = 1.0e-3
    hidden: int = 500


def _conv(in_ch: int, out_ch: int, kernel: tuple[int, int], relu: bool = True) -> nn.Sequential:
    """A "same" convolution, then its ReLU unless a :class:`MaxPoolReLU` follows (which applies it).

    Wrapped in a Sequential either way, so the weights keep their names (``branch1.0.0.weight``).
    """
    layers = [nn.Conv2d(in_ch, out_ch, kernel, padding="same")] + ([nn.ReLU()] if relu else [])
    return nn.Sequential(*layers)


class MaxPoolReLU(nn.MaxPool2d):
    """Max-pooling, then ReLU: what the original's ReLU then max-pooling computes, bit for bit.

    ReLU is monotonic, so it commutes with taking a maximum: the outputs are equal, and so are the
    gradients (the same element wins each pooling window, or the window's output is zero and passes
    none). Applied after the pool, it touches 4-8 times fewer values (the ReLU of the first layer was
    a pass over 32 MB at batch 4, and again in the backward pass), which makes CPU steps faster
    (measured in docs/benchmarks.md).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


def _pooled(size: int, *factors: int) -> int:
    for f in factors:
        size //= f
    return size


class MultiScaleCNN(nn.Module):
    """Multi-scale CNN tagger: (B, 1, n_mels, n_frames) log-mel -> (B, n_tags) logits.

    Args:
        n_tags: output tags.
        n_mels: mel bands of the input.
        n_frames: frames of the input.
        dropout, bn_momentum, bn_eps, hidden: see :class:`ModelConfig`.
    """

    def __init__(
        self,
        *,
        n_tags: int = 50,
        n_mels: int = 128,
        n_frames: int = 628,
        dropout: float = 0.4,
        bn_momentum: float = 0.01,
        bn_eps: float = 1.0e-3,
        hidden: int = 500,
    ) -> None:
        super().__init__()
        self.config = ModelConfig(n_tags, n_mels, n_frames, dropout, bn_momentum, bn_eps, hidden)
        # Every branch ends on the same grid: the pooling factors compose to /8 in mel and /32 in time.
        grid = (_pooled(n_mels, 2, 2, 2), _pooled(n_frames, 4, 4, 2))
        if min(grid) < 2:
            raise ValueError(f"input {n_mels} x {n_frames} is too small for the network (needs >= 16 x 64)")

        # Branch 1 on the input x (B, 1, M, T).
        self.branch1 = nn.Sequential(
            _conv(1, 50, (3, 7), relu=False),
            MaxPoolReLU((2, 4)),  # (B, 50, M/2, T/4)
            _conv(50, 100, (3, 5), relu=False),
            MaxPoolReLU((2, 4)),  # (B, 100, M/4, T/16)
            _conv(100, 70, (3, 3), relu=False),
            MaxPoolReLU((2, 2)),  # (B, 70, M/8, T/32)
        )
        # Branch 2 on s1 = avg-pool(x, (2, 4)) (B, 1, M/2, T/4).
        self.branch2 = nn.Sequential(
            _conv(1, 100, (3, 5), relu=False),
            MaxPoolReLU((2, 4)),  # (B, 100, M/4, T/16)
            _conv(100, 70, (3, 3), relu=False),
            MaxPoolReLU((2, 2)),  # (B, 70, M/8, T/32)
        )
        # Branch 3 on s2 = avg-pool(s1, (2, 4)) (B, 1, M/4, T/16).
        self.branch3 = nn.Sequential(
            _conv(1, 70, (3, 3), relu=False),
            MaxPoolReLU((2, 2)),  # (B, 70, M/8, T/32)
        )
        self.merge = nn.Sequential(
            _conv(3 * 70, 70, (3, 3)),
            _conv(70, 70, (3, 3), relu=False),
            MaxPoolReLU((2, 2)),  # (B, 70, M/16, T/64)
            nn.Flatten(),  # (B, 70 * M/16 * T/64) = (B, 5040) for 128 x 628
        )
        self.n_features = 70 * (grid[0] // 2) * (grid[1] // 2)
        self.head = nn.Sequential(
            nn.BatchNorm1d(self.n_features, eps=bn_eps, momentum=bn_momentum),
            nn.Dropout(dropout),
            nn.Linear(self.n_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_tags),  # logits; the sigmoid lives in the loss and in predict
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-normal weights and zero biases for every convolution and dense layer."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three branch outputs, each (B, 70, M/8, T/32), for x of shape (B, 1, M, T)."""
        s1 = nn.functional.avg_pool2d(x, (2, 4))  # (B, 1, M/2, T/4)
        s2 = nn.functional.avg_pool2d(s1, (2, 4))  # (B, 1, M/4, T/16)
        return self.branch1(x), self.branch2(s1), self.branch3(s2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_tags) for normalised log-mel x of shape (B, 1, M, T) or (B, M, T)."""
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (B, M, T) -> (B, 1, M, T)
        features = torch.cat(self.branches(x), dim=1)  # (B, 210, M/8, T/32)
        return self.head(self.merge(features))

    def config_dict(self) -> dict:
        """The constructor's keyword arguments, to rebuild the network from a bundle."""
        return asdict(self.config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
