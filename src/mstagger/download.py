"""The ``download`` stage: build ``paths.raw``, the dataset in MagnaTagATune's folder layout.

``dataset: demo`` synthesises the small offline demo dataset (:mod:`mstagger.demo`).
``dataset: mtat`` fetches MagnaTagATune: the three parts of ``mp3.zip`` and the two CSV files, each
resumable, retried and verified against the SHA-256 pinned in ``params.yaml``, into ``download.cache_dir``
(outside the stage's outs, so nothing is fetched twice), then extracts the audio folders ``0``..``f``
and copies the CSVs beside them. With ``download.local_dir`` an existing MTAT copy is verified and
linked instead of downloaded.

The output folder is built in a temporary sibling and renamed into place at the end, so an interrupted
run never leaves a half-built ``paths.raw``; a folder there that the download did not write is never
replaced. What it did (counts, seconds) goes to ``<paths.metrics>/download.json``.

Run as ``python -m mstagger.download``.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mstagger.core.disk import disk_guard, file_digest
from mstagger.core.errors import UserError
from mstagger.core.log import log, stage_main, timed
from mstagger.core.outputs import check_writable, stage_metrics, staged_dir, write_json
from mstagger.data.archive import ArchiveError, extract_zip, open_parts
from mstagger.data.fetch import fetch
from mstagger.data.mtat import ARCHIVE_PARTS, AUDIO_FOLDERS, CSV_FILES
from mstagger.params import DemoParams, DownloadParams, Params, load_params

# The small CSVs first: a wrong base_url fails in seconds, not after a gigabyte.
MTAT_FILES = CSV_FILES + ARCHIVE_PARTS


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
    missing = [n for n in CSV_FILES if not (local_dir / n).is_file()]
    missing += [f"{f}/" for f in AUDIO_FOLDERS if not (local_dir / f).is_dir()]
    if missing:
        raise UserError(
            f"download.local_dir {local_dir} lacks {', '.join(missing)}; it must hold MagnaTagATune's "
            f"audio folders 0..f and {' and '.join(CSV_FILES)}"
        )
    for name in CSV_FILES:
        expected = _pinned(sha256, name)
        got = file_digest(local_dir / name)
        if got != expected:
            raise UserError(
                f"{local_dir / name}: SHA-256 {got} does not match the pinned {expected} "
                f"(download.sha256.{name}); use the official MagnaTagATune file"
            )
    files = [local_dir / name for name in CSV_FILES]
    for folder in AUDIO_FOLDERS:
        files += sorted(p for p in (local_dir / folder).iterdir() if p.is_file())
    state: dict[str, bool] = {}
    linked = 0
    out_dir.mkdir(parents=True, exist_ok=True)
    with disk_guard(out_dir):
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
    with open_parts([results[name].path for name in ARCHIVE_PARTS]) as archive:
        try:
            extracted = extract_zip(archive, out_dir, progress=progress)
        except ArchiveError as err:
            raise ArchiveError(
                f"{err}; the parts in {cache} matched download.sha256, so compare those checksums with "
                "the published ones, delete the parts and run again"
            ) from None
    with disk_guard(out_dir):
        for name in CSV_FILES:
            shutil.copyfile(results[name].path, out_dir / name)
    per_folder = _audio_layout(out_dir, f"the archive {'+'.join(ARCHIVE_PARTS)}")
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


def _generate_demo(out_dir: Path, params: DemoParams, seed: int) -> dict[str, Any]:
    # Imported here: the demo generator pulls in audio libraries the mtat path does not need.
    from mstagger.demo import generate_demo

    return generate_demo(out_dir, params, seed)


def make_raw(params: Params, out_dir: Path, backoff: float = 1.0, progress: bool = True) -> dict[str, Any]:
    """Rebuild ``out_dir`` for ``params.dataset``.

    The folder is built in a temporary sibling and renamed into place only when complete; a folder the
    download did not write is never replaced (:func:`mstagger.core.outputs.staged_dir`).

    Args:
        params: all parameters (``dataset``, ``seed``, ``demo``, ``download``).
        out_dir: the folder to rebuild (``paths.raw``).
        backoff: first retry delay of downloads, seconds.
        progress: show progress bars.

    Returns:
        A summary: ``dataset``, counts, ``seconds``.

    Raises:
        UserError: ``out_dir`` holds files the download did not write, ``download.cache_dir`` or
            ``download.local_dir`` lies inside it, or a download, check or extraction failed
            (``out_dir`` is then left unchanged).
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
    with timed() as seconds, staged_dir(out_dir, "download", "paths.raw") as staging:
        if params.dataset == "demo":
            summary = {"dataset": "demo", **_generate_demo(staging, params.demo, params.seed)}
        else:
            summary = {"dataset": "mtat", **download_mtat(params.download, staging, backoff, progress)}
    summary["seconds"] = seconds()
    return summary


@stage_main
def main() -> None:
    """The ``download`` stage: rebuild ``paths.raw`` for the configured dataset."""
    params = load_params()
    out_dir = Path(params.paths.raw)
    metrics = stage_metrics(params.paths.metrics, "download")
    check_writable(metrics.parent)
    summary = make_raw(params, out_dir)
    write_json(metrics, summary)
    if params.dataset == "mtat":
        log.info(
            "%d audio files in %d folders + %s (%s) -> %s in %.1f s",
            summary["audio_files"],
            len(AUDIO_FOLDERS),
            " and ".join(CSV_FILES),
            summary["mode"],
            out_dir,
            summary["seconds"],
        )
    else:
        log.info("demo dataset -> %s in %.1f s: %s", out_dir, summary["seconds"], summary)


if __name__ == "__main__":
    main()
