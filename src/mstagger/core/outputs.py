"""How stages write their outputs: whole or not at all, and only over what the pipeline made.

- A file is written to a temporary sibling and renamed into place (:func:`atomic_path`).
- A folder of several files is built in a temporary sibling folder and swapped in with two renames
  (:func:`staged_dir`), so a kill at any moment leaves the old outputs or the new ones, never a mix.
- Every folder a stage writes carries a marker file, :data:`MARKER`, naming the stage. A stage replaces
  a folder only when it is absent, empty, marked by that stage, or recorded as that stage's output in
  ``dvc.lock``; a folder of the user's is never deleted (:func:`check_replaceable`).
- Temporary files and folders that a killed run left behind are removed at the next start.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mstagger.core.disk import disk_guard
from mstagger.core.errors import UserError

MARKER = ".mstagger-output"
LOCK_FILE = Path("dvc.lock")


def stage_metrics(metrics_dir: str | Path, stage: str) -> Path:
    """Where a stage's summary (counts, sizes, seconds) goes: ``<paths.metrics>/<stage>.json``."""
    return Path(metrics_dir) / f"{stage}.json"


def check_writable(folder: str | Path) -> None:
    """Fail before any work when ``folder`` (created if missing) cannot take a new file.

    Raises:
        UserError: naming the folder and the reason (read-only, no permission, not a folder).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(
            f"cannot write into {folder}: {err.strerror or err}; make it writable or change its paths.* "
            "entry in params.yaml"
        ) from None


def mark(folder: str | Path, stage: str) -> None:
    """Write ``stage``'s marker into a folder it writes in place (dvclive's log)."""
    (Path(folder) / MARKER).write_text(marker_text(stage), encoding="utf-8")


def marker_text(stage: str) -> str:
    """The marker's content: the same on every run, so it never changes an output's hash."""
    return f"written by the mstagger {stage} stage; the stage replaces this folder whole\n"


def remove_leftovers(path: str | Path) -> None:
    """Delete the temporary siblings of ``path`` that an interrupted write left (``.<name>.*.tmp``)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with disk_guard(path):
            yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _locked_outputs(stage: str) -> set[Path]:
    """The outputs ``dvc.lock`` records for ``stage`` (none when there is no lock file)."""
    import yaml

    try:
        lock = yaml.safe_load(LOCK_FILE.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return set()
    outs = (lock.get("stages", {}).get(stage) or {}).get("outs") or []
    return {Path(o["path"]) for o in outs if isinstance(o, dict) and "path" in o}


def is_locked_output(path: str | Path, stage: str) -> bool:
    """Whether ``dvc.lock`` records ``path`` as an output of ``stage`` (the pipeline made it)."""
    return Path(os.path.normpath(path)) in _locked_outputs(stage)


def check_replaceable(folder: str | Path, stage: str, key: str) -> None:
    """Refuse to replace a folder the pipeline did not write.

    Args:
        folder: the output folder the stage is about to replace.
        stage: the stage that writes it.
        key: the param naming it (for the message), e.g. ``paths.raw``.

    Raises:
        UserError: ``folder`` exists, is not a folder or not empty, carries no marker of ``stage``
            and is not ``stage``'s output in ``dvc.lock``.
    """
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_dir() and not folder.is_symlink():
        marker = folder / MARKER
        if not any(folder.iterdir()):
            return
        if marker.is_file() and marker.read_text(encoding="utf-8", errors="replace") == marker_text(stage):
            return
    if is_locked_output(folder, stage):
        return
    raise UserError(
        f"{key}: {folder} already exists and holds files the {stage} stage did not write (no {MARKER} "
        f"marker); the stage replaces its output folder whole, so it stops here. Move those files away "
        f"or point {key} at another folder"
    )


@contextmanager
def staged_dir(folder: str | Path, stage: str, key: str) -> Iterator[Path]:
    """Yield an empty sibling folder to build ``folder`` in; on success it replaces ``folder`` whole.

    The marker of ``stage`` is written into it. On an exception the staging folder is removed and
    ``folder`` is left as it was; staging folders of a killed run are removed first.

    Args:
        folder: the output folder (a ``paths.*`` value).
        stage: the stage writing it.
        key: the param naming it, for :func:`check_replaceable`'s message.
    """
    folder = Path(folder)
    check_replaceable(folder, stage, key)
    remove_leftovers(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        with disk_guard(folder):  # a full disk names the output, not a temporary file
            (staging / MARKER).write_text(marker_text(stage), encoding="utf-8")
            yield staging
        os.chmod(staging, 0o755)  # mkdtemp creates 0700
        if not (folder.exists() or folder.is_symlink()):
            os.rename(staging, folder)
        elif folder.is_dir() and not folder.is_symlink() and _exchange(staging, folder):
            pass  # staging now holds the old outputs, removed below
        else:  # no atomic exchange here: two renames, the old folder kept aside until the second is done
            aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
            os.rmdir(aside)
            os.rename(folder, aside)
            os.rename(staging, folder)
            staging = aside
    finally:
        if staging.is_dir() and not staging.is_symlink():
            shutil.rmtree(staging, ignore_errors=True)
        elif staging.exists() or staging.is_symlink():
            staging.unlink()


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    status = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return status == 0
