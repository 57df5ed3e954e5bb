"""The ``download`` stage: build ``paths.raw``, the dataset in MagnaTagATune's folder layout.

``dataset: demo`` synthesises the small offline demo dataset (:mod:`mstagger.demo`).
``dataset: mtat`` fetches MagnaTagATune: the three parts of ``mp3.zip`` and the two CSV files, each
resumable, retried and verified against the SHA-256 pinned in ``params.yaml``, into ``download.cache_dir``
(outside the stage's outs, so nothing is fetched twice), then extracts the audio folders ``0``..``f``
and copies the CSVs beside them. With ``download.local_dir`` an existing MTAT copy is verified and
linked instead of downloaded.

The output folder is built in a temporary sibling and renamed into place at the end, so an interrupted
run never leaves a half-built ``paths.raw``.

Run as ``python -m mstagger.download``.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import http.client
import io
import os
import shutil
import tempfile
import time
import urllib.parse
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from mstagger.params import DemoParams, DownloadParams, Params, load_params
from mstagger.util import UserError, log, stage_main, timed, write_json

MTAT_CSVS = ("annotations_final.csv", "clip_info_final.csv")
MTAT_PARTS = ("mp3.zip.001", "mp3.zip.002", "mp3.zip.003")
# The small CSVs first: a wrong base_url fails in seconds, not after a gigabyte.
MTAT_FILES = MTAT_CSVS + MTAT_PARTS
AUDIO_FOLDERS = tuple("0123456789abcdef")
SUMMARY_NAME = "download_summary.json"

CHUNK = 1 << 20  # bytes per read and write while streaming
USER_AGENT = "mstagger-download (python urllib)"
# Server answers worth another attempt: overloaded or briefly failing, not "you asked for the wrong thing".
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Connection-level failures, including a connection dropped midway; the next attempt resumes.
_RETRYABLE = (URLError, http.client.HTTPException, ConnectionError, TimeoutError)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

# Indirection so tests can record the backoff delays instead of sleeping.
_sleep = time.sleep


class ArchiveError(UserError):
    """A zip archive is unreadable, fails its integrity test, or holds an entry escaping its folder."""


class _Truncated(ConnectionError):
    """The server closed the connection before sending the whole body it announced."""


@dataclass
class _Tally:
    received: int = 0  # bytes received over the network, across attempts


@dataclass(frozen=True)
class Fetched:
    """What :func:`fetch` did for one file.

    Attributes:
        path: the verified file in the cache.
        cached: True when the file was already there with the right checksum (nothing transferred).
        received: bytes transferred over the network in this call.
        attempts: connection attempts made (0 when cached).
    """

    path: Path
    cached: bool
    received: int
    attempts: int


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@contextmanager
def _disk_guard(folder: Path, needed: int | None = None) -> Iterator[None]:
    """Turn "no space left on device" into a one-line error naming the folder (and the size, if known)."""
    try:
        yield
    except OSError as err:
        if err.errno not in _DISK_FULL:
            raise
        need = f"; about {_size(needed)} needed" if needed else ""
        raise UserError(
            f"disk full while writing into {folder}{need}; free some space and run again"
        ) from None


def _check_free(folder: Path, needed: int) -> None:
    """Fail before writing when ``folder``'s file system cannot hold ``needed`` more bytes."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise UserError(f"not enough disk space in {folder}: {_size(needed)} needed, {_size(free)} free")


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _pinned(sha256: Mapping[str, str] | None, name: str) -> str:
    """The checksum pinned for ``name`` in ``download.sha256``; missing or empty is an error."""
    digest = (sha256 or {}).get(name, "")
    if not digest:
        raise UserError(
            f"no SHA-256 pinned for {name}: add download.sha256.{name} to params.yaml "
            "(the published checksum; verification is never skipped)"
        )
    return digest.lower()


def _file_url(base_url: str, name: str) -> str:
    return base_url.rstrip("/") + "/" + urllib.parse.quote(name)


def _range_start(content_range: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes START-END/TOTAL`` header, or None if unreadable."""
    if not content_range:
        return None
    unit, _, spec = content_range.strip().partition(" ")
    start = spec.split("-", 1)[0].strip()
    return int(start) if unit.lower() == "bytes" and start.isdigit() else None


def _download_once(url: str, part: Path, timeout: float, progress: bool, tally: _Tally) -> None:
    """One request for ``url`` into ``part``, resuming from its size; ``tally`` counts the bytes received.

    The body is appended only when the server answers 206 with a Content-Range that starts at the
    size of ``part``; any other success restarts ``part`` from zero (a 206 that starts elsewhere
    than zero is discarded and the file asked for again without a Range).

    Raises:
        HTTPError: a non-2xx answer (416 included).
        _Truncated, URLError, ...: the connection failed; ``part`` keeps what arrived.
    """
    offset = part.stat().st_size if part.exists() else 0
    request = Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    with urlopen(request, timeout=timeout) as response:
        status = response.status or 200  # file:// answers carry no status
        if status == 206:
            start = _range_start(response.headers.get("Content-Range"))
            if start != offset and start != 0:
                if offset == 0:
                    raise UserError(f"{url}: the server sent a partial answer that was not asked for")
                log.warning(
                    "download: %s: the server resumed at byte %s instead of %d; starting again from zero",
                    part.name.removesuffix(".part"),
                    start,
                    offset,
                )
                response.close()
                part.unlink()
                return _download_once(url, part, timeout, progress, tally)
            offset = start
        else:
            if offset:
                log.info("download: %s: the server ignored the resume request; starting again from zero", url)
            offset = 0
        header = response.headers.get("Content-Length")
        length = int(header) if header and header.isdigit() else None
        if length is not None:
            _check_free(part.parent, length)
        received = 0
        with (
            _disk_guard(part.parent, length),
            open(part, "ab" if offset else "wb") as out,
            tqdm(
                total=offset + length if length is not None else None,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
                mininterval=1.0,
                disable=not progress,
            ) as bar,
        ):
            # read1: whatever has arrived, so a stall or a drop midway keeps every byte received.
            while chunk := response.read1(CHUNK):
                out.write(chunk)
                received += len(chunk)
                tally.received += len(chunk)
                bar.update(len(chunk))
    if length is not None and received < length:
        raise _Truncated(f"connection closed after {received} of {length} bytes")


def fetch(
    url: str,
    dest: Path,
    sha256: str,
    retries: int,
    timeout: float,
    backoff: float = 1.0,
    progress: bool = True,
) -> Fetched:
    """Download ``url`` to ``dest``, resumable and verified; a verified ``dest`` is not fetched again.

    The body streams into ``dest`` + ``.part``. A failed connection (refused, reset, timed out, dropped
    midway, or an HTTP 408/429/5xx answer) is retried up to ``retries`` attempts in all, waiting
    ``backoff``, ``2 * backoff``, ``4 * backoff``... seconds; each attempt resumes the ``.part`` with a
    ``Range`` request. The finished file must match ``sha256``; it is then renamed to ``dest``.

    Args:
        url: http(s):// or file:// address of the file.
        dest: where the verified file ends up; its folder is created.
        sha256: the expected hex SHA-256; empty is an error (verification is never skipped).
        retries: attempts in all (at least 1).
        timeout: seconds without data before a connection counts as failed.
        backoff: seconds to wait after the first failed attempt; doubled after each further one.
        progress: show a tqdm progress bar on stderr.

    Returns:
        A :class:`Fetched` record (path, whether it was cached, bytes received, attempts).

    Raises:
        UserError: no checksum given; an HTTP error (status and URL); all attempts failed; the
            checksum does not match (the file is kept aside as ``dest`` + ``.bad``); the disk is full.
    """
    dest = Path(dest)
    if retries < 1:
        raise ValueError(f"retries must be at least 1, got {retries}")
    if not sha256:
        raise UserError(
            f"no SHA-256 checksum given for {url}; refusing to download a file that cannot be verified"
        )
    expected = sha256.lower()
    name = dest.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    bad = dest.with_name(name + ".bad")
    if dest.exists():
        got = sha256_file(dest)
        if got == expected:
            log.info("download: %s: in the cache %s (checksum ok)", name, dest.parent)
            return Fetched(dest, cached=True, received=0, attempts=0)
        log.warning("download: %s: cached copy has SHA-256 %s, not %s; moved to %s", name, got, expected, bad)
        os.replace(dest, bad)

    part = dest.with_name(name + ".part")
    tally = _Tally()
    reason = ""
    for attempt in range(1, retries + 1):
        try:
            _download_once(url, part, timeout, progress, tally)
            break
        except HTTPError as err:
            err.close()
            if err.code == 416 and part.exists() and part.stat().st_size:
                # Nothing left past the end of the .part: it is complete (the checksum decides).
                break
            reason = f"HTTP {err.code} {err.reason} for {url}"
            if err.code not in RETRY_STATUS:
                raise UserError(f"{reason}; check download.base_url") from None
        except _RETRYABLE as err:
            reason = str(getattr(err, "reason", None) or err) or type(err).__name__
            if url.startswith("file:"):
                raise UserError(f"cannot read {url}: {reason}") from None
        if attempt == retries:
            raise UserError(
                f"downloading {url} failed after {retries} attempts: {reason}; "
                f"run again to resume from the {_size(part.stat().st_size) if part.exists() else '0 B'} "
                f"already in {part}"
            )
        delay = backoff * 2 ** (attempt - 1)
        log.warning(
            "download: %s: attempt %d of %d failed (%s); retrying in %.1f s",
            name,
            attempt,
            retries,
            reason,
            delay,
        )
        _sleep(delay)

    got = sha256_file(part)
    if got != expected:
        os.replace(part, bad)
        raise UserError(
            f"checksum mismatch for {name} from {url}: expected SHA-256 {expected}, got {got}; "
            f"the file is kept aside as {bad}; run again to download it afresh, and if it fails again "
            "compare the pinned checksum with the published one"
        )
    os.replace(part, dest)
    log.info("download: %s: fetched %s in %d attempt(s) (checksum ok)", name, _size(tally.received), attempt)
    return Fetched(dest, cached=False, received=tally.received, attempts=attempt)


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
    """Test a zip archive's integrity, then extract it into ``out_dir``.

    Every member's CRC is checked (``ZipFile.testzip``) before anything is written; entries with an
    absolute path or ``..`` are refused.

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
            "download: extracting %s (%d entries, %s), checking each entry's CRC",
            label,
            len(infos),
            _size(sum(i.file_size for i in infos)),
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        needed = sum(info.file_size for info in infos)
        _check_free(out_dir, needed)
        count = 0
        with _disk_guard(out_dir, needed):
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


def _audio_layout(root: Path, source: str) -> dict[str, int]:
    """MP3 files per audio folder ``0``..``f`` of ``root``; a missing folder is an error."""
    missing = [f for f in AUDIO_FOLDERS if not (root / f).is_dir()]
    if missing:
        raise UserError(
            f"{source} lacks the audio folder(s) {', '.join(missing)}; "
            "MagnaTagATune has 16 folders 0..f of mp3 files"
        )
    return {f: sum(1 for p in (root / f).iterdir() if p.suffix == ".mp3") for f in AUDIO_FOLDERS}


def _link_or_copy(src: Path, dst: Path, state: dict[str, bool]) -> bool:
    """Hardlink ``src`` to ``dst``, or copy it where linking fails; return True if linked.

    After the first failed link (another file system, no permission), the rest are copied directly.
    """
    if state.setdefault("link", True):
        try:
            os.link(src, dst)
            return True
        except OSError:
            state["link"] = False
    shutil.copyfile(src, dst)
    return False


def link_local(
    local_dir: Path, out_dir: Path, sha256: Mapping[str, str] | None, progress: bool = True
) -> dict[str, Any]:
    """Use an existing MagnaTagATune folder instead of downloading.

    ``local_dir`` must hold the audio folders ``0``..``f`` and both CSV files; the CSVs must match
    their pinned checksums. Every file is hardlinked into ``out_dir`` (copied where linking fails).

    Args:
        local_dir: the user's MTAT folder.
        out_dir: the folder to fill (created if needed).
        sha256: the pinned checksums (``download.sha256``); the CSVs' are required.
        progress: show a tqdm progress bar.

    Returns:
        A summary: ``mode``, ``source``, ``audio_files``, ``per_folder``, ``linked``, ``copied``.

    Raises:
        UserError: the folder or a file is missing, or a CSV does not match its checksum.
    """
    local_dir, out_dir = Path(local_dir), Path(out_dir)
    if not local_dir.is_dir():
        raise UserError(
            f'download.local_dir {local_dir} is not a folder; fix the path or set it to "" to download'
        )
    missing = [n for n in MTAT_CSVS if not (local_dir / n).is_file()]
    missing += [f"{f}/" for f in AUDIO_FOLDERS if not (local_dir / f).is_dir()]
    if missing:
        raise UserError(
            f"download.local_dir {local_dir} lacks {', '.join(missing)}; it must hold MagnaTagATune's "
            f"audio folders 0..f and {' and '.join(MTAT_CSVS)}"
        )
    for name in MTAT_CSVS:
        expected = _pinned(sha256, name)
        got = sha256_file(local_dir / name)
        if got != expected:
            raise UserError(
                f"{local_dir / name}: SHA-256 {got} does not match the pinned {expected} "
                f"(download.sha256.{name}); use the official MagnaTagATune file"
            )
    files = [local_dir / name for name in MTAT_CSVS]
    for folder in AUDIO_FOLDERS:
        files += sorted(p for p in (local_dir / folder).iterdir() if p.is_file())
    state: dict[str, bool] = {}
    linked = 0
    out_dir.mkdir(parents=True, exist_ok=True)
    with _disk_guard(out_dir):
        for folder in AUDIO_FOLDERS:
            (out_dir / folder).mkdir(exist_ok=True)
        for src in tqdm(files, desc="link", unit="file", mininterval=1.0, disable=not progress):
            linked += _link_or_copy(src, out_dir / src.relative_to(local_dir), state)
    per_folder = _audio_layout(out_dir, str(local_dir))
    return {
        "mode": "local",
        "source": str(local_dir),
        "audio_files": sum(per_folder.values()),
        "per_folder": per_folder,
        "linked": linked,
        "copied": len(files) - linked,
    }


def download_mtat(
    params: DownloadParams, out_dir: Path, backoff: float = 1.0, progress: bool = True
) -> dict[str, Any]:
    """Fill ``out_dir`` with MagnaTagATune: audio folders ``0``..``f`` and the two CSV files.

    With ``params.local_dir`` set, that folder is verified and linked (:func:`link_local`). Otherwise
    each file is fetched into ``params.cache_dir`` (:func:`fetch`; cached verified files are reused),
    the three ``mp3.zip`` parts are read as one archive, tested and extracted, and the CSVs copied.

    Args:
        params: the ``download`` section of the parameters.
        out_dir: the folder to fill (created if needed; normally an empty staging folder).
        backoff: first retry delay in seconds (doubled after each failed attempt).
        progress: show progress bars.

    Returns:
        A summary: ``mode``, ``source``, ``audio_files``, ``per_folder`` and, when downloading,
        ``downloaded_bytes``, ``from_cache`` and ``fetched`` (file names).

    Raises:
        UserError: see :func:`fetch`, :func:`extract_zip` and :func:`link_local`.
    """
    out_dir = Path(out_dir)
    if params.local_dir:
        return link_local(Path(params.local_dir), out_dir, params.sha256, progress)
    cache = Path(params.cache_dir)
    checksums = {name: _pinned(params.sha256, name) for name in MTAT_FILES}  # all checked before any transfer
    results = {
        name: fetch(
            _file_url(params.base_url, name),
            cache / name,
            checksums[name],
            params.retries,
            params.timeout,
            backoff=backoff,
            progress=progress,
        )
        for name in MTAT_FILES
    }
    with open_parts([results[name].path for name in MTAT_PARTS]) as archive:
        try:
            extracted = extract_zip(archive, out_dir, progress=progress)
        except ArchiveError as err:
            raise ArchiveError(
                f"{err}; the parts in {cache} matched download.sha256, so compare those checksums with "
                "the published ones, delete the parts and run again"
            ) from None
    with _disk_guard(out_dir):
        for name in MTAT_CSVS:
            shutil.copyfile(results[name].path, out_dir / name)
    per_folder = _audio_layout(out_dir, f"the archive {'+'.join(MTAT_PARTS)}")
    return {
        "mode": "download",
        "source": params.base_url,
        "audio_files": sum(per_folder.values()),
        "per_folder": per_folder,
        "extracted_files": extracted,
        "downloaded_bytes": sum(r.received for r in results.values()),
        "from_cache": [name for name, r in results.items() if r.cached],
        "fetched": [name for name, r in results.items() if not r.cached],
    }


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


@contextmanager
def _staged_dir(out_dir: Path) -> Iterator[Path]:
    """Yield an empty sibling folder of ``out_dir``; on success it replaces ``out_dir`` whole.

    On an exception the staging folder is removed and ``out_dir`` is left as it was. Staging folders
    left by a killed run are removed on the next one.
    """
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out_dir.name}.download-"
    for stale in parent.glob(f"{prefix}*.tmp"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    try:
        yield staging
        old = None
        if out_dir.exists() or out_dir.is_symlink():
            old = parent / f"{prefix}old-{os.getpid()}.tmp"
            os.rename(out_dir, old)
        os.rename(staging, out_dir)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _generate_demo(out_dir: Path, params: DemoParams, seed: int) -> dict[str, Any]:
    # Imported here: the demo generator pulls in audio libraries the mtat path does not need.
    from mstagger.demo import generate_demo

    return generate_demo(out_dir, params, seed)


def make_raw(params: Params, out_dir: Path, backoff: float = 1.0, progress: bool = True) -> dict[str, Any]:
    """Rebuild ``out_dir`` for ``params.dataset`` and write its ``download_summary.json``.

    The folder is built in a temporary sibling and renamed into place only when complete.

    Args:
        params: all parameters (``dataset``, ``seed``, ``demo``, ``download``).
        out_dir: the folder to rebuild (``paths.raw``).
        backoff: first retry delay of downloads, seconds.
        progress: show progress bars.

    Returns:
        The summary written to ``out_dir / download_summary.json`` (``dataset``, counts, ``seconds``).

    Raises:
        UserError: ``download.cache_dir`` or ``download.local_dir`` lies inside ``out_dir``, or a
            download, check or extraction failed (``out_dir`` is then left unchanged).
    """
    out_dir = Path(out_dir)
    if params.dataset == "mtat":
        dl = params.download
        if _inside(Path(dl.cache_dir), out_dir):
            raise UserError(
                f"download.cache_dir {dl.cache_dir} lies inside paths.raw {out_dir}, which is rebuilt "
                "on every run; put the cache elsewhere"
            )
        if dl.local_dir and _inside(Path(dl.local_dir), out_dir):
            raise UserError(
                f"download.local_dir {dl.local_dir} lies inside paths.raw {out_dir}, which is rebuilt on "
                "every run; point it at a folder outside the pipeline's outputs"
            )
    with timed() as seconds, _staged_dir(out_dir) as staging:
        if params.dataset == "demo":
            summary = {"dataset": "demo", **_generate_demo(staging, params.demo, params.seed)}
        else:
            summary = {"dataset": "mtat", **download_mtat(params.download, staging, backoff, progress)}
        summary["seconds"] = seconds()
        write_json(staging / SUMMARY_NAME, summary)
    return summary


@stage_main
def main() -> None:
    """The ``download`` stage: rebuild ``paths.raw`` for the configured dataset."""
    params = load_params()
    out_dir = Path(params.paths.raw)
    summary = make_raw(params, out_dir)
    if params.dataset == "mtat":
        log.info(
            "download: %d audio files in %d folders + %s (%s) -> %s in %.1f s",
            summary["audio_files"],
            len(AUDIO_FOLDERS),
            " and ".join(MTAT_CSVS),
            summary["mode"],
            out_dir,
            summary["seconds"],
        )
    else:
        log.info("download: demo dataset -> %s in %.1f s: %s", out_dir, summary["seconds"], summary)


if __name__ == "__main__":
    main()
