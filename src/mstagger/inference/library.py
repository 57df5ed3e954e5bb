"""A music library for ``predict``: the audio files under folders, and the ``--csv`` table that resumes.

:func:`find_audio` lists the files named on the command line and the audio files under the folders.
:class:`Ledger` is the table ``predict --csv`` writes: one row per tagged file, appended and flushed as
each file finishes, so a run killed after 5,000 of 10,000 files keeps 5,000 rows. A rerun with the
same table skips the files already in it with the same size and modification time, and tags the rest.
"""

from __future__ import annotations

import csv
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


def _folder_files(folder: Path) -> Iterator[Path]:
    """Files under ``folder``, sorted, skipping hidden files and folders (``.git``, macOS ``._x.mp3``)."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(root) / name


def find_audio(paths: Sequence[str | Path], pattern: str | None = None) -> tuple[list[AudioFile], Counter]:
    """The files to tag: files named as given, and the audio files found under folders, recursively.

    Args:
        paths: files and folders. A file is taken whatever its extension (the decoder has the last
            word); in a folder only files with an audio extension (:data:`AUDIO_EXTENSIONS`, any case).
        pattern: keeps only the folder files whose path relative to their folder matches it (fnmatch,
            case-insensitive; ``*`` also matches ``/``, so ``*.flac`` matches at any depth).

    Returns:
        (the files in argument order, each folder's sorted, each file once; how many other files the
        folders held, by extension, e.g. ``{".jpg": 3, "(none)": 1}``).

    Raises:
        UserError: a path that does not exist.
    """
    found: dict[str, AudioFile] = {}
    ignored: Counter = Counter()
    for arg in map(Path, paths):
        if arg.is_dir():
            for path in _folder_files(arg):
                suffix = path.suffix.lower()
                if suffix not in AUDIO_EXTENSIONS:
                    ignored[suffix or "(none)"] += 1
                elif pattern is None or fnmatch.fnmatchcase(
                    path.relative_to(arg).as_posix().lower(), pattern.lower()
                ):
                    file = AudioFile.of(path)
                    found.setdefault(file.key, file)
        elif arg.is_file():
            file = AudioFile.of(arg)
            found.setdefault(file.key, file)
        else:
            raise UserError(f"{arg}: no such file or folder")
    return list(found.values()), ignored


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
        self.path = Path(path)
        self.header = [*FIXED_COLUMNS, *tags]
        self.model = model
        self._file: IO[str] | None = None
        self._writer: Any = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

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
            self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed in __exit__)
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
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None, [], True
        text = self.path.read_text(encoding="utf-8")
        table = list(csv.reader(io.StringIO(text)))
        header, rows = table[0], table[1:]
        whole = text.endswith("\n")
        if not whole and rows:
            rows.pop()
        complete = [row for row in rows if len(row) == len(header)]
        return header, complete, whole and len(complete) == len(rows)

    def _rewrite(self, rows: list[list[str]]) -> None:
        """Replace the table in one step by the header and ``rows``."""
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(self.header)
            writer.writerows(rows)

    def add(
        self, file: AudioFile, seconds: float, windows: int, probs: np.ndarray, asserted: Sequence[str]
    ) -> None:
        """Append one file's row and flush it to the operating system (a kill keeps it)."""
        self._writer.writerow(
            [
                file.key,
                file.size,
                file.mtime_ns,
                self.model,
                f"{seconds:.3f}",
                windows,
                ";".join(asserted),
                *(f"{p:.6f}" for p in probs),
            ]
        )
        self._file.flush()
