"""Random draws shared by the demo's modules: every choice comes from a seeded generator."""

from __future__ import annotations

import zlib

import numpy as np


def pick(rng: np.random.Generator, items: tuple[str, ...]) -> str:
    """One of ``items``, uniformly (one ``integers`` draw)."""
    return items[int(rng.integers(len(items)))]


def maybe(rng: np.random.Generator, p: float) -> bool:
    """True with probability ``p`` (one ``random`` draw)."""
    return bool(rng.random() < p)


def rng_for(*key: object) -> np.random.Generator:
    """A random source that depends only on ``key`` (stable across runs and processes)."""
    return np.random.default_rng([zlib.crc32(repr(key).encode())])
