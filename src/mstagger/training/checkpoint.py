"""Resumable training state, written after every epoch outside the stage's outputs (``paths.checkpoint``).

A checkpoint holds everything a killed run needs to continue as if it had not stopped: the weights,
the optimiser, the last complete epoch, the kept epoch so far and its weights, every process's RNG
state and the dvclive folder as it was after that epoch. It is written atomically, so a kill at any
moment leaves the previous checkpoint or the new one. It carries a fingerprint of the params and the
input files: a checkpoint of another configuration is never resumed, it is reported and set aside.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mstagger.core.log import log
from mstagger.core.outputs import atomic_path, remove_leftovers
from mstagger.params import Params

FORMAT = "mstagger-checkpoint/2"  # 2: the best epoch's validation probabilities (best_probs)
# Params that never change the numbers: a checkpoint stays valid when only these differ.
_NEUTRAL = {"num_workers", "data_on_device", "paths"}
# Inputs up to 64 MB are hashed whole; mel.npy (4.2 GB on MTAT) by 64 evenly spread clips.
_WHOLE_BYTES, _SAMPLED_ROWS = 1 << 26, 64


def _array_digest(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and content (of 64 evenly spread rows when it is large)."""
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    if array.nbytes <= _WHOLE_BYTES or len(array) <= _SAMPLED_ROWS:
        digest.update(np.ascontiguousarray(array).tobytes())
    else:
        for i in np.linspace(0, len(array) - 1, _SAMPLED_ROWS).round().astype(np.int64):
            digest.update(np.ascontiguousarray(array[i]).tobytes())
    return digest.hexdigest()


def fingerprint(params: Params, arrays: dict[str, Any], run: dict[str, Any]) -> str:
    """What a checkpoint must match to be resumed: the training params and the inputs.

    Args:
        params: all params (those in :data:`_NEUTRAL` are left out).
        arrays: the inputs by name (spectrograms, labels, split, statistics; long ones are sampled).
        run: facts of the run that change the numbers, e.g. the device type and the process count.
    """
    chosen = {k: v for k, v in asdict(params).items() if k not in _NEUTRAL}
    digests = {name: _array_digest(np.asarray(value)) for name, value in arrays.items()}
    text = json.dumps({"params": chosen, "inputs": digests, "run": run}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically as the checkpoint."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def set_aside(path: Path, why: str) -> None:
    """Move a checkpoint that must not be resumed to ``<name>.set-aside`` and say why."""
    aside = path.with_name(path.name + ".set-aside")
    os.replace(path, aside)
    log.warning("the checkpoint %s %s; not resuming from it (kept as %s)", path, why, aside)


def load(path: str | Path, expected: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it exists and matches the fingerprint ``expected``, else None.

    A checkpoint that cannot be read, is of another format or was written for other params or
    inputs is set aside (:func:`set_aside`), never resumed and never deleted.
    """
    path = Path(path)
    remove_leftovers(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign or damaged file: torch raises several types
        set_aside(path, f"cannot be read ({type(err).__name__})")
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        set_aside(path, "is of another format")
        return None
    if state.get("fingerprint") != expected:
        set_aside(path, "was written with other params or other inputs")
        return None
    return state


def remove(path: str | Path) -> None:
    """Delete the checkpoint of a finished run (and leftovers of interrupted writes)."""
    Path(path).unlink(missing_ok=True)
    remove_leftovers(path)


def snapshot_dir(folder: str | Path) -> dict[str, str]:
    """Every file under ``folder`` as {relative path: text} (the dvclive log: small text files)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {
        p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def restore_dir(folder: str | Path, files: dict[str, str]) -> None:
    """Make ``folder`` hold exactly ``files`` (as :func:`snapshot_dir` returned them)."""
    folder = Path(folder)
    if folder.is_dir():
        for p in sorted(folder.rglob("*"), reverse=True):
            if p.is_file() or p.is_symlink():
                p.unlink()
            elif p.is_dir():
                p.rmdir()
    for rel, text in files.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


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


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of a module's state (to keep as the best epoch, or to checkpoint)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
