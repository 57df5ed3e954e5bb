"""Stage ``check_params``: validate ``params.yaml`` and the output paths before any other stage runs.

``dvc repro`` runs a stage only when something it depends on changed, so a key that no stage reads (a
typo such as ``learning_rate`` for ``lr``) would pass unnoticed. This stage depends on the whole file,
so any edit runs it: an unknown key, a wrong type or an impossible value stops the pipeline with one
line naming the key.

DVC deletes a stage's outputs just before it runs the stage. The download stage depends on this
stage's stamp, so this check runs first: when a ``paths.*`` folder holds files the pipeline did not
write (no marker, not recorded in ``dvc.lock``), or ``paths.model`` is a file that is no model bundle,
the pipeline stops before DVC deletes anything. So it does when a ``paths.*`` entry leaves the
repository through a symbolic link, when ``paths.checkpoint`` is a file that is no checkpoint, and
for values that only this machine or the network can refuse: a ``device`` it does not have, or a
spectrogram too small for the network.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import fields
from pathlib import Path

from mstagger.core.errors import UserError
from mstagger.core.log import log, stage_main
from mstagger.core.outputs import check_replaceable, is_locked_output, stage_metrics, write_json
from mstagger.params import WHOLE_FOLDERS, Params, load_params

# The stamp's content never changes, so the download stage, which depends on it, never reruns for it.
STAMP = {"params": "params.yaml", "checked": ["keys", "types", "values", "output paths"]}


def check_inside(params: Params, root: str | Path = ".") -> None:
    """Every ``paths.*`` entry stays in the repository on disk.

    A relative path can still leave it through a folder on the way that is a symbolic link to
    elsewhere; a stage would write there before DVC refuses the output. A file on the way (where a
    folder must be) is refused too. An output may itself be a link (DVC's cache links outputs, and
    stages replace a link, never write through it), except ``paths.metrics``, which stages write into.

    Raises:
        UserError: naming the key, the link and where it leads.
    """
    top = Path(os.path.realpath(root))
    for key in (f.name for f in fields(params.paths)):
        value = Path(getattr(params.paths, key))
        on_the_way = [*reversed(value.parents[:-1]), *([value] if key == "metrics" else [])]
        for folder in on_the_way:
            where = top / folder
            if where.is_symlink():
                real = Path(os.path.realpath(where))
                if real != top and top not in real.parents:
                    raise UserError(
                        f"params: paths.{key}: {value} leads out of the repository: {folder} is a link to "
                        f"{real}; DVC keeps outputs inside the repository, choose a path without the link"
                    )
            if where.exists() and not where.is_dir():
                raise UserError(
                    f"params: paths.{key}: {value} cannot be made: {folder} is a file, not a folder"
                )


def check_local_dir(params: Params, root: str | Path = ".") -> None:
    """``download.local_dir``, the user's own MTAT copy that ``download`` reads, is no output and holds
    none: the stages replace their outputs whole, which would delete the user's copy.

    Raises:
        UserError: naming ``download.local_dir`` and the output it meets.
    """
    if not params.download.local_dir:
        return
    top = Path(os.path.realpath(root))
    mine = Path(os.path.realpath(top / params.download.local_dir))  # absolute or relative, links followed
    outputs = {f"paths.{f.name}": getattr(params.paths, f.name) for f in fields(params.paths)}
    outputs["download.cache_dir"] = params.download.cache_dir
    for key, value in outputs.items():
        out = Path(os.path.realpath(top / value))
        if mine == out or out in mine.parents or mine in out.parents:
            relation = "is" if mine == out else "lies in" if out in mine.parents else "holds"
            raise UserError(
                f"params: download.local_dir: {params.download.local_dir} {relation} {key} ({value}), which "
                "the pipeline replaces whole; point download.local_dir at your MTAT copy outside the outputs"
            )


def check_checkpoint(params: Params) -> None:
    """``paths.checkpoint`` is absent or a checkpoint (a ``torch.save`` zip archive), not a user's file.

    Train would set it aside (rename it) as unreadable, then write, and at the end delete, its own.

    Raises:
        UserError: naming the path and what to do.
    """
    path = Path(params.paths.checkpoint)
    if (path.exists() or path.is_symlink()) and not (path.is_file() and zipfile.is_zipfile(path)):
        raise UserError(
            f"params: paths.checkpoint: {path} exists and is no training checkpoint; train would move it "
            "aside and delete the file it writes there when done. Move it away or point paths.checkpoint "
            "elsewhere"
        )


def check_runnable(params: Params) -> None:
    """What only this machine or the network can refuse: the device, and the network's input size.

    Raises:
        UserError: a device this machine lacks, more processes than GPUs, or spectrograms too small for
            the network (its pooling needs a minimum of mel bands and frames; :class:`MultiScaleCNN`).
    """
    import torch

    from mstagger.core.runtime import resolve_device
    from mstagger.model import MultiScaleCNN

    device = resolve_device(params.device, "params: device")
    if device.type == "cuda" and params.nproc_per_node > torch.cuda.device_count():
        raise UserError(
            f"params: nproc_per_node: {params.nproc_per_node} processes asked for on "
            f"{torch.cuda.device_count()} GPU(s); lower nproc_per_node"
        )
    spec = params.spectrogram
    try:
        with torch.device("meta"):  # the network's shapes, without allocating its weights
            MultiScaleCNN(n_tags=params.tags.top_n, n_mels=spec.n_mels, n_frames=spec.n_frames)
    except ValueError as err:
        raise UserError(
            f"params: spectrogram: {spec.n_mels} mel bands x {spec.n_frames} frames ({spec.clip_seconds} s "
            f"at {spec.sample_rate} Hz, hop {spec.hop_length}): {err}; raise clip_seconds or n_mels"
        ) from None


def check_outputs(params: Params) -> None:
    """Every output folder is absent, empty or the pipeline's, and ``paths.model`` is a bundle or absent.

    Raises:
        UserError: naming the ``paths.*`` key, the path and what to do.
    """
    for key, stage in WHOLE_FOLDERS.items():
        check_replaceable(getattr(params.paths, key), stage, f"paths.{key}")
    model = Path(params.paths.model)
    # torch.save writes a zip archive; anything else there is a file of the user's
    is_bundle = model.is_file() and zipfile.is_zipfile(model)
    if (model.exists() or model.is_symlink()) and not is_bundle and not is_locked_output(model, "train"):
        raise UserError(
            f"paths.model: {model} exists and is no model bundle; the train stage would replace it. "
            "Move it away or point paths.model elsewhere"
        )


@stage_main
def main() -> None:
    """Load and validate ``params.yaml``, check the output paths, write the stamp."""
    params = load_params()
    check_inside(params)
    check_local_dir(params)
    check_outputs(params)
    check_checkpoint(params)
    check_runnable(params)
    stamp = stage_metrics(params.paths.metrics, "params")
    write_json(stamp, STAMP)
    log.info("params.yaml is valid and every output path is the pipeline's to write")


if __name__ == "__main__":
    main()
