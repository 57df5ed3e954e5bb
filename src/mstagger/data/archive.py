"""MTAT's split zip read as one archive and extracted safely (the ``download`` stage's unpacking).

The parts ``mp3.zip.001..003`` are read as one seekable file without writing the joined 3 GB copy;
entries that would escape the output folder are refused before anything is written; each entry's
CRC-32 is checked as it is extracted.
"""

from __future__ import annotations

import bisect
import errno
import io
import os
import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from tqdm import tqdm

from mstagger.core.disk import check_free, disk_guard, human_size
from mstagger.core.errors import UserError
from mstagger.core.log import log
from mstagger.data.fetch import CHUNK


class ArchiveError(UserError):
    """A zip archive is unreadable, fails its integrity test, or holds an entry escaping its folder."""


class _JoinedParts(io.RawIOBase):
    """The parts of a split archive read as one seekable file, without writing the joined copy to disk."""

    def __init__(self, parts: list[Path]) -> None:
        super().__init__()
        self.name = "+".join(p.name for p in parts)
        self._files: list[BinaryIO] = []
        try:
            for p in parts:
                self._files.append(open(p, "rb"))  # noqa: SIM115 (closed in close())
        except BaseException:
            self.close()
            raise
        sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self._sizes = sizes
        self._total = sum(sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._total}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._total:
            return 0
        i = bisect.bisect_right(self._starts, self._pos) - 1
        within = self._pos - self._starts[i]
        view = memoryview(buffer)[: self._sizes[i] - within]
        f = self._files[i]
        f.seek(within)
        n = f.readinto(view) or 0
        self._pos += n
        return n

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def open_parts(parts: list[Path]) -> BinaryIO:
    """Open the parts of a split archive (``mp3.zip.001``...) as one seekable binary file.

    Equivalent to reading ``cat parts > joined``, but streams from the parts, so the joined archive
    (3 GB for MTAT) is never written to disk.

    Args:
        parts: the part files, in order.

    Returns:
        A buffered, seekable, read-only file; close it (or use it in a ``with`` block) when done.
    """
    return io.BufferedReader(_JoinedParts([Path(p) for p in parts]), buffer_size=CHUNK)


def _entry_target(out_dir: Path, name: str, archive: str) -> Path:
    """Where the zip entry ``name`` goes under ``out_dir``; an entry that would escape it is an error."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ArchiveError(f"{archive}: entry {name!r} points outside the output folder; refusing to extract")
    return out_dir.joinpath(*path.parts)


def extract_zip(archive: str | Path | BinaryIO, out_dir: Path, progress: bool = True) -> int:
    """Extract a zip archive into ``out_dir``, testing each entry's integrity as it is written.

    Entries with an absolute path or ``..`` are refused before anything is written. Each entry's CRC-32
    is checked as it is extracted; an entry that fails is removed and extraction stops with an error.

    Args:
        archive: the zip file, as a path or an open seekable binary file (see :func:`open_parts`).
        out_dir: the folder to extract into (created if needed).
        progress: show a tqdm progress bar.

    Returns:
        The number of files extracted.

    Raises:
        ArchiveError: the archive is not a zip, fails its integrity test or holds an escaping entry.
        UserError: the disk is full.
    """
    out_dir = Path(out_dir)
    label = str(getattr(archive, "name", archive))
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as err:
        raise ArchiveError(f"{label} is not a readable zip archive ({err})") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            _entry_target(out_dir, info.filename, label)
        log.info(
            "extracting %s (%d entries, %s), checking each entry's CRC",
            label,
            len(infos),
            human_size(sum(i.file_size for i in infos)),
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        needed = sum(info.file_size for info in infos)
        check_free(out_dir, needed)
        count = 0
        with disk_guard(out_dir, needed):
            for info in tqdm(infos, desc="extract", unit="file", mininterval=1.0, disable=not progress):
                target = _entry_target(out_dir, info.filename, label)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                # Reading an entry to its end checks its CRC-32: one pass both tests and extracts.
                try:
                    with zf.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
                except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as err:
                    target.unlink(missing_ok=True)  # never leave a corrupt entry looking extracted
                    raise ArchiveError(
                        f"{label} fails its integrity test at entry {info.filename!r} ({err})"
                    ) from None
                count += 1
    return count
