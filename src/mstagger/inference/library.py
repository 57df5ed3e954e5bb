"""A music library for ``predict``: the audio files under folders, and the ``--csv`` table that resumes.

:func:`find_audio` lists the files named on the command line and the audio files under the folders.
:class:`Ledger` is the table ``predict --csv`` writes: one row per tagged file, appended and flushed as
each file finishes, so a run killed after 5,000 of 10,000 files keeps 5,000 rows. A rerun with the
same table skips the files already in it with the same size and modification time, and tags the rest.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fnmatch
import io
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from mstagger.core.disk import file_digest
from mstagger.core.errors import UserError
from mstagger.core.locks import exclusive
from mstagger.core.log import log
from mstagger.core.outputs import atomic_path

# Extensions of the formats libsndfile decodes (MP3, FLAC, Ogg Vorbis and Opus, WAV, AIFF, ...).
# AAC and M4A are not among them.
AUDIO_EXTENSIONS = frozenset(
    {
        ".mp3",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".wav",
        ".wave",
        ".aif",
        ".aiff",
        ".aifc",
        ".au",
        ".caf",
        ".w64",
    }
)
# The table's first columns; one column per tag follows, in the model's output order.
FIXED_COLUMNS = ("path", "size", "mtime_ns", "model", "seconds", "windows", "asserted")


@dataclass(frozen=True)
class AudioFile:
    """A file to tag: its path as found, and its size and modification time when listed."""

    path: Path
    size: int
    mtime_ns: int
    key: str = field(init=False)  # the absolute path: how the table names the file

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", os.path.abspath(self.path))

    @classmethod
    def of(cls, path: Path) -> AudioFile:
        """Stat ``path`` now."""
        st = path.stat()
        return cls(path, st.st_size, st.st_mtime_ns)


def _folder_files(folder: Path, unreadable: list[tuple[Path, str]]) -> Iterator[Path]:
    """Files under ``folder``, sorted, skipping hidden files and folders (``.git``, macOS ``._x.mp3``).

    Linked folders are searched too, each folder once; a subfolder that cannot be read, or a link
    leading back to a folder above it, is added to ``unreadable`` with the reason.
    """

    def cannot_read(err: OSError) -> None:
        unreadable.append((Path(err.filename), f"cannot read this folder: {err.strerror or err}"))

    seen: set[tuple[int, int]] = set()
    for root, dirs, names in os.walk(folder, onerror=cannot_read, followlinks=True):
        try:
            st = os.stat(root)
        except OSError as err:
            cannot_read(err)
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # reached again through a link: searched already
            dirs[:] = []
            real = os.path.realpath(root)
            above = os.path.realpath(Path(root).parent)
            if above == real or above.startswith(real.rstrip(os.sep) + os.sep):
                unreadable.append((Path(root), f"symlink loop: leads back to {real}, searched already"))
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(root) / name


def _why_unreadable(path: Path, err: OSError) -> str:
    """Why a listed file cannot be opened, in words."""
    if err.errno == errno.ELOOP:
        return "symlink loop"
    if isinstance(err, FileNotFoundError) and path.is_symlink():
        return f"dangling symlink (its target {os.readlink(path)} does not exist)"
    return err.strerror or str(err)


def find_audio(
    paths: Sequence[str | Path], pattern: str | None = None
) -> tuple[list[AudioFile], Counter, list[tuple[Path, str]]]:
    """The files to tag: files named as given, and the audio files found under folders, recursively.

    Args:
        paths: files and folders. A file is taken whatever its extension (the decoder has the last
            word); in a folder only files with an audio extension (:data:`AUDIO_EXTENSIONS`, any case).
        pattern: keeps only the folder files whose path relative to their folder matches it (fnmatch,
            case-insensitive; ``*`` also matches ``/``, so ``*.flac`` matches at any depth).

    Returns:
        (the files in argument order, each folder's sorted, each file once; how many other files the
        folders held, by extension, e.g. ``{".jpg": 3, "(none)": 1}``; the entries that cannot even
        be opened, with the reason: dangling symlinks, symlink loops, folders that cannot be read).

    Raises:
        UserError: a path that does not exist (and is no link).
    """
    found: dict[str, AudioFile] = {}
    ignored: Counter = Counter()
    unreadable: list[tuple[Path, str]] = []

    def take(path: Path) -> None:
        try:
            file = AudioFile.of(path)
        except OSError as err:
            unreadable.append((path, _why_unreadable(path, err)))
            return
        found.setdefault(file.key, file)

    for arg in map(Path, paths):
        if arg.is_dir():
            for path in _folder_files(arg, unreadable):
                suffix = path.suffix.lower()
                if suffix not in AUDIO_EXTENSIONS:
                    ignored[suffix or "(none)"] += 1
                elif pattern is None or fnmatch.fnmatchcase(
                    path.relative_to(arg).as_posix().lower(), pattern.lower()
                ):
                    take(path)
        elif arg.is_file() or arg.is_symlink():
            take(arg)
        else:
            raise UserError(f"{arg}: no such file or folder")
    return list(found.values()), ignored, unreadable


def model_id(path: str | Path) -> str:
    """A short identity of a model file: the first 12 hex digits of its SHA-256."""
    return file_digest(path)[:12]


class Ledger:
    """The ``--csv`` table of a library run, written as files finish, resumed by the next run.

    Columns: ``path`` (absolute), ``size`` (bytes) and ``mtime_ns`` (of the file when it was listed: the
    skip check), ``model`` (:func:`model_id` of the bundle), ``seconds`` (decoded), ``windows``,
    ``asserted`` (the tags at or above their threshold, ``;``-separated, most probable first), then one
    probability per tag in the model's order. Use it as a context manager around :meth:`resume` and
    :meth:`add`.

    Args:
        path: the CSV file.
        tags: the model's tags, in output order.
        model: :func:`model_id` of the bundle.
    """

    def __init__(self, path: str | Path, tags: Sequence[str], model: str) -> None:
        self.path = Path(path)  # as given: what messages name
        # a symlink is written through: the table is its target, rewritten in the target's folder
        self.target = Path(os.path.realpath(self.path))
        self.header = [*FIXED_COLUMNS, *tags]
        self.model = model
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._lock = contextlib.ExitStack()

    def __enter__(self) -> Ledger:
        """Take the table's lock (``.<name>.lock`` beside it): one run writes a table at a time.

        Raises:
            UserError: another run writes the table, or its folder cannot be written.
        """
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self._lock.enter_context(
                exclusive(
                    self.target.parent / f".{self.target.name}.lock",
                    f"--csv {self.path} is being written by another mstagger predict; wait for it to "
                    "end or use another --csv",
                )
            )
        except OSError as err:
            raise UserError(f"--csv {self.path}: {err.strerror or err}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # a write that failed (full disk) was reported already
                self._file.close()
            self._file = None
        self._lock.close()

    def resume(self, files: Sequence[AudioFile], force: bool = False) -> list[AudioFile]:
        """Read what earlier runs wrote, drop the rows about to be redone, and open the table for appending.

        Args:
            files: the files of this run.
            force: tag every file again (their old rows are dropped); a table of another model is replaced.

        Returns:
            The files to tag: those without a row of the same size and modification time (all with force).

        Raises:
            UserError: the table was written by another model and ``force`` is off, or it cannot be
                read or written.
        """
        try:
            header, rows, whole = self._read()
            if header is not None and header != self.header:
                if not force:
                    raise UserError(
                        f"{self.path} was written by another model or program (other columns); "
                        "use another --csv, or --force to replace it"
                    )
                log.warning("replacing %s, written by another model (--force)", self.path)
                rows = []
            others = sorted({row[3] for row in rows} - {self.model})
            if others and not force:
                raise UserError(
                    f"{self.path} holds rows of another model ({', '.join(others)}; this one is "
                    f"{self.model}); use another --csv, or --force to tag every file again with this model"
                )
            done = {row[0]: (row[1], row[2]) for row in rows}
            todo = [f for f in files if force or done.get(f.key) != (str(f.size), str(f.mtime_ns))]
            redo = {f.key for f in todo}
            kept = [row for row in rows if row[0] not in redo and row[3] == self.model]
            if header != self.header or len(kept) < len(rows) or not whole:
                self._rewrite(kept)
            self._file = open(self.target, "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed in __exit__)
        except OSError as err:
            raise UserError(f"--csv {self.path}: {err.strerror or err}") from None
        except (UnicodeDecodeError, csv.Error) as err:
            raise UserError(f"--csv {self.path}: not a CSV table ({err}); use another --csv") from None
        self._writer = csv.writer(self._file, lineterminator="\n")
        return todo

    def _read(self) -> tuple[list[str] | None, list[list[str]], bool]:
        """(header or None for a missing or empty file, the rows, whether the last line was whole).

        A row cut short by a kill during its write (no line end, or too few fields) is left out.
        """
        if self.path.is_dir():
            raise UserError(f"--csv {self.path}: is a folder; name a file")
        if not self.target.exists() or self.target.stat().st_size == 0:
            return None, [], True
        text = self.target.read_text(encoding="utf-8")
        table = list(csv.reader(io.StringIO(text)))
        header, rows = table[0], table[1:]
        whole = text.endswith("\n")
        if not whole and rows:
            rows.pop()
        complete = [row for row in rows if len(row) == len(header)]
        return header, complete, whole and len(complete) == len(rows)

    def _rewrite(self, rows: list[list[str]]) -> None:
        """Replace the table in one step by the header and ``rows``."""
        with atomic_path(self.target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(self.header)
            writer.writerows(rows)

    def add(
        self, file: AudioFile, seconds: float, windows: int, probs: np.ndarray, asserted: Sequence[str]
    ) -> None:
        """Append one file's row and flush it to the operating system (a kill keeps it).

        Raises:
            UserError: the row cannot be written (a full disk); the rows before it are kept.
        """
        row = [
            file.key,
            file.size,
            file.mtime_ns,
            self.model,
            f"{seconds:.3f}",
            windows,
            ";".join(asserted),
            *(f"{p:.6f}" for p in probs),
        ]
        try:
            self._writer.writerow(row)
            self._file.flush()
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(f"disk full while writing --csv {self.path}; free some space") from None
            raise UserError(f"cannot write --csv {self.path}: {err.strerror or err}") from None
