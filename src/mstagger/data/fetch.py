"""Resumable, retried, verified HTTP(S) and ``file://`` downloads (the ``download`` stage's transfers).

A file streams into ``<name>.part``; a failed connection is retried with exponential backoff and
resumed with a ``Range`` request (appended only when the server answers 206 at the local size); the
finished file must match its pinned SHA-256 before it is renamed into place.
"""

from __future__ import annotations

import http.client
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from mstagger.core.disk import check_free, disk_guard, file_digest, human_size
from mstagger.core.errors import UserError
from mstagger.core.log import log

CHUNK = 1 << 20  # bytes per read and write while streaming
USER_AGENT = "mstagger-download (python urllib)"
# Server answers worth another attempt: overloaded or briefly failing, not "you asked for the wrong thing".
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Connection-level failures, including a connection dropped midway; the next attempt resumes.
_RETRYABLE = (URLError, http.client.HTTPException, ConnectionError, TimeoutError)

# Indirection so tests can record the backoff delays instead of sleeping.
_sleep = time.sleep


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
                    "%s: the server resumed at byte %s instead of %d; starting again from zero",
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
                log.info("%s: the server ignored the resume request; starting again from zero", url)
            offset = 0
        header = response.headers.get("Content-Length")
        length = int(header) if header and header.isdigit() else None
        if length is not None:
            check_free(part.parent, length)
        received = 0
        with (
            disk_guard(part.parent, length),
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
        got = file_digest(dest)
        if got == expected:
            log.info("%s: in the cache %s (checksum ok)", name, dest.parent)
            return Fetched(dest, cached=True, received=0, attempts=0)
        log.warning("%s: cached copy has SHA-256 %s, not %s; moved to %s", name, got, expected, bad)
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
                f"run again to resume from the {human_size(part.stat().st_size) if part.exists() else '0 B'} "
                f"already in {part}"
            )
        delay = backoff * 2 ** (attempt - 1)
        log.warning(
            "%s: attempt %d of %d failed (%s); retrying in %.1f s",
            name,
            attempt,
            retries,
            reason,
            delay,
        )
        _sleep(delay)

    got = file_digest(part)
    if got != expected:
        os.replace(part, bad)
        raise UserError(
            f"checksum mismatch for {name} from {url}: expected SHA-256 {expected}, got {got}; "
            f"the file is kept aside as {bad}; run again to download it afresh, and if it fails again "
            "compare the pinned checksum with the published one"
        )
    os.replace(part, dest)
    log.info("%s: fetched %s in %d attempt(s) (checksum ok)", name, human_size(tally.received), attempt)
    return Fetched(dest, cached=False, received=tally.received, attempts=attempt)
