"""Tests of the download stage against a real HTTP server on 127.0.0.1 that misbehaves on request."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import shutil
import sys
import threading
import time
import types
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from helpers import REPO, SHARED_MTAT, make_params, repo_params_dict
from mstagger import download
from mstagger.core.errors import UserError
from mstagger.core.outputs import MARKER, marker_text
from mstagger.data import fetch as fetch_mod
from mstagger.data.archive import ArchiveError, extract_zip, open_parts
from mstagger.data.fetch import fetch
from mstagger.data.mtat import ARCHIVE_PARTS, AUDIO_FOLDERS, CSV_FILES
from mstagger.download import MTAT_FILES, download_mtat, link_local, make_raw
from mstagger.params import DownloadParams, load_params

BACKOFF = 0.01


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- a small HTTP server whose answers each test scripts ------------------------------------------


@dataclass
class Hit:
    name: str
    range: str | None
    status: int | None  # None: connection closed without an answer


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    plans: dict[str, list[str]] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    stall_seconds: float = 1.0


class Handler(BaseHTTPRequestHandler):
    """Serves ``state.files`` with Range support; ``state.plans[name]`` scripts the next answers.

    Modes: ok, drop (headers + half the body, then close), stall (half the body, then silence),
    ignore_range (200 with the whole file), wrong_start (206 starting at half the asked offset),
    wrong_bytes (every byte flipped), reset (close without an answer), 404, 500.
    """

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        name = urllib.parse.unquote(self.path.lstrip("/"))
        asked = self.headers.get("Range")
        plan = state.plans.get(name)
        mode = plan.pop(0) if plan else "ok"
        data = state.files.get(name)

        def hit(status: int | None) -> None:
            state.hits.append(Hit(name, asked, status))

        if mode == "reset":
            hit(None)
            self.close_connection = True
            return
        if data is None or mode in ("404", "500"):
            status = 404 if data is None else int(mode)
            hit(status)
            self.send_error(status)
            return
        if mode == "wrong_bytes":
            data = bytes(b ^ 0xFF for b in data)
        start, status = 0, 200
        if asked and mode != "ignore_range":
            start = int(asked.removeprefix("bytes=").split("-")[0])
            if mode == "wrong_start":
                start //= 2
            if start >= len(data):
                hit(416)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        hit(status)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if mode in ("drop", "stall"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if mode == "stall":
                time.sleep(state.stall_seconds)
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Server:
    state: ServerState
    base_url: str

    def url(self, name: str) -> str:
        return self.base_url + name

    def plan(self, name: str, *modes: str) -> None:
        self.state.plans[name] = list(modes)

    @property
    def hits(self) -> list[Hit]:
        return self.state.hits


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = ServerState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    yield Server(httpd.state, f"http://{host}:{port}/")  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()


# --- fixtures: a tiny MTAT-shaped archive ----------------------------------------------------------


def fake_members() -> dict[str, bytes]:
    """Tiny fake mp3 files, at least one in each of the 16 audio folders."""
    rng = random.Random(0)
    members = {f"{f}/artist_{f}-album-01-song-0-29.mp3": rng.randbytes(3000) for f in AUDIO_FOLDERS}
    members["0/artist_0-album-01-song-29-58.mp3"] = rng.randbytes(5000)
    members["f/artist_f-album-02-other-0-29.mp3"] = b""  # MTAT has empty mp3s too
    return members


def make_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for folder in ("0/", "f/"):
            zf.writestr(folder, b"")  # directory entries, as real archives carry
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def split3(data: bytes) -> dict[str, bytes]:
    a, b = len(data) // 2, len(data) * 3 // 4
    return dict(zip(ARCHIVE_PARTS, (data[:a], data[a:b], data[b:]), strict=True))


def fake_files(members: dict[str, bytes]) -> dict[str, bytes]:
    files = split3(make_zip(members))
    files["annotations_final.csv"] = b'"clip_id"\t"guitar"\t"mp3_path"\r\n"2"\t"1"\t"0/a.mp3"\r\n'
    files["clip_info_final.csv"] = b'"clip_id"\t"title"\r\n"2"\t"Song"\r\n'
    return files


def real_files(members: dict[str, bytes]) -> dict[str, bytes]:
    if not all((SHARED_MTAT / name).is_file() for name in CSV_FILES):
        pytest.skip(f"the real MTAT CSV files are not in {SHARED_MTAT}")
    files = split3(make_zip(members))
    for name in CSV_FILES:
        files[name] = (SHARED_MTAT / name).read_bytes()
    return files


def checksums(files: dict[str, bytes]) -> dict[str, str]:
    return {name: sha(data) for name, data in files.items()}


def dl_params(base_url: str, tmp_path: Path, files: dict[str, bytes], **kw: object) -> DownloadParams:
    values = {
        "base_url": base_url,
        "cache_dir": str(tmp_path / "cache"),
        "retries": 3,
        "timeout": 5.0,
        "sha256": checksums(files),
    }
    values.update(kw)
    return DownloadParams(**values)  # type: ignore[arg-type]


def assert_layout(raw: Path, members: dict[str, bytes], files: dict[str, bytes]) -> None:
    assert sorted(p.name for p in raw.iterdir() if p.is_dir()) == sorted(AUDIO_FOLDERS)
    for name, data in members.items():
        assert (raw / name).read_bytes() == data, name
    for name in CSV_FILES:
        assert sha((raw / name).read_bytes()) == sha(files[name])


# --- end to end --------------------------------------------------------------------------------------


def test_make_raw_downloads_joins_and_extracts_the_mtat_layout(server, tmp_path):
    members = fake_members()
    files = real_files(members)
    pins = load_params(REPO / "params.yaml").download.sha256 or {}
    sums = {**checksums(files), **{name: pins[name] for name in CSV_FILES}}  # the CSVs' published values
    server.state.files = files
    params = make_params(dataset="mtat", download=dl_params(server.base_url, tmp_path, files, sha256=sums))
    raw = tmp_path / "data" / "raw"

    summary = make_raw(params, raw, backoff=BACKOFF, progress=False)

    assert_layout(raw, members, files)
    assert summary["audio_files"] == len(members)
    assert summary["per_folder"]["0"] == 2 and summary["per_folder"]["5"] == 1
    assert summary["fetched"] == list(MTAT_FILES) and summary["from_cache"] == []
    assert summary["downloaded_bytes"] == sum(len(d) for d in files.values())
    assert (raw / MARKER).is_file()  # the download's own folder, which a later run may replace
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(MTAT_FILES)  # no .part left
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]  # no staging folder left
    assert [h.status for h in server.hits] == [200] * 5


def test_rerun_downloads_nothing_and_rebuilds_the_folder(server, tmp_path):
    members = fake_members()
    server.state.files = files = fake_files(members)
    params = make_params(dataset="mtat", download=dl_params(server.base_url, tmp_path, files))
    raw = tmp_path / "raw"
    make_raw(params, raw, backoff=BACKOFF, progress=False)
    assert len(server.hits) == 5
    (raw / "stray.txt").write_text("left by hand")

    summary = make_raw(params, raw, backoff=BACKOFF, progress=False)

    assert len(server.hits) == 5
    assert summary["from_cache"] == list(MTAT_FILES) and summary["downloaded_bytes"] == 0
    assert not (raw / "stray.txt").exists()
    assert_layout(raw, members, files)


def test_a_folder_of_the_users_at_paths_raw_survives(tmp_path, monkeypatch, capsys):
    precious = tmp_path / "victim" / "precious"
    precious.mkdir(parents=True)
    (precious / "thesis.txt").write_text("years of work")
    params = make_params(dataset="demo")
    with pytest.raises(UserError, match=r"paths\.raw: .*victim already exists and holds files the download"):
        make_raw(params, tmp_path / "victim")
    assert (precious / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]  # no staging folder left either
    # through the stage, with the path in params.yaml: one line, exit status 2, nothing touched
    text = yaml.safe_dump({**repo_params_dict(), "paths": {**repo_params_dict()["paths"], "raw": "victim"}})
    (tmp_path / "params.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        download.main()
    assert exit_info.value.code == 2
    assert "error: paths.raw: victim already exists" in capsys.readouterr().err
    assert (precious / "thesis.txt").read_text() == "years of work"


def test_file_url_base(tmp_path):
    members = fake_members()
    files = fake_files(members)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, data in files.items():
        (mirror / name).write_bytes(data)
    raw = tmp_path / "raw"

    summary = download_mtat(dl_params(mirror.as_uri() + "/", tmp_path, files), raw, BACKOFF, progress=False)

    assert_layout(raw, members, files)
    assert summary["fetched"] == list(MTAT_FILES)


def test_file_url_missing_file_fails_at_once(tmp_path):
    url = (tmp_path / "nowhere.bin").as_uri()
    with pytest.raises(UserError, match=r"cannot read .*nowhere\.bin"):
        fetch(url, tmp_path / "c" / "x.bin", "0" * 64, retries=5, timeout=1.0, backoff=10.0, progress=False)


# --- fetch: resume, restart, retry, verify -----------------------------------------------------------


@pytest.fixture
def blob(server):
    data = random.Random(1).randbytes(200_000)
    server.state.files["blob.bin"] = data
    return data


def test_resume_after_a_dropped_connection(server, blob, tmp_path):
    server.plan("blob.bin", "drop", "ok")
    dest = tmp_path / "cache" / "blob.bin"

    result = fetch(
        server.url("blob.bin"), dest, sha(blob), retries=3, timeout=5.0, backoff=BACKOFF, progress=False
    )

    half = len(blob) // 2
    assert server.hits == [Hit("blob.bin", None, 200), Hit("blob.bin", f"bytes={half}-", 206)]
    assert dest.read_bytes() == blob
    assert result.attempts == 2 and result.received == len(blob)  # nothing fetched twice
    assert not dest.with_name("blob.bin.part").exists()


def test_a_stalled_connection_times_out_and_resumes(server, blob, tmp_path):
    server.state.stall_seconds = 1.5
    server.plan("blob.bin", "stall", "ok")
    dest = tmp_path / "blob.bin"

    fetch(server.url("blob.bin"), dest, sha(blob), retries=2, timeout=0.3, backoff=BACKOFF, progress=False)

    assert [(h.range, h.status) for h in server.hits] == [(None, 200), (f"bytes={len(blob) // 2}-", 206)]
    assert dest.read_bytes() == blob


def test_restart_from_zero_when_the_server_ignores_range(server, blob, tmp_path):
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(b"stale bytes" * 100)  # a wrong prefix: appending would fail
    server.plan("blob.bin", "ignore_range")

    result = fetch(server.url("blob.bin"), dest, sha(blob), retries=1, timeout=5.0, progress=False)

    assert server.hits == [Hit("blob.bin", "bytes=1100-", 200)]
    assert dest.read_bytes() == blob
    assert result.received == len(blob)


def test_restart_from_zero_when_content_range_starts_elsewhere(server, blob, tmp_path):
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(b"x" * 1000)
    server.plan("blob.bin", "wrong_start")

    fetch(server.url("blob.bin"), dest, sha(blob), retries=1, timeout=5.0, progress=False)

    assert server.hits == [Hit("blob.bin", "bytes=1000-", 206), Hit("blob.bin", None, 200)]
    assert dest.read_bytes() == blob


def test_a_complete_part_answered_416_is_verified_and_kept(server, blob, tmp_path):
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(blob)

    result = fetch(server.url("blob.bin"), dest, sha(blob), retries=1, timeout=5.0, progress=False)

    assert server.hits == [Hit("blob.bin", f"bytes={len(blob)}-", 416)]
    assert dest.read_bytes() == blob and result.received == 0


def test_checksum_mismatch_keeps_the_file_aside(server, blob, tmp_path):
    server.plan("blob.bin", "wrong_bytes")
    dest = tmp_path / "blob.bin"
    wrong = bytes(b ^ 0xFF for b in blob)

    with pytest.raises(UserError) as info:
        fetch(server.url("blob.bin"), dest, sha(blob), retries=3, timeout=5.0, progress=False)

    message = str(info.value)
    assert sha(blob) in message and sha(wrong) in message and "blob.bin.bad" in message
    assert dest.with_name("blob.bin.bad").read_bytes() == wrong
    assert not dest.exists() and not dest.with_name("blob.bin.part").exists()
    # The next run downloads afresh.
    fetch(server.url("blob.bin"), dest, sha(blob), retries=1, timeout=5.0, progress=False)
    assert dest.read_bytes() == blob


def test_a_corrupted_cached_file_is_set_aside_and_fetched_again(server, blob, tmp_path):
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"bit rot")

    result = fetch(server.url("blob.bin"), dest, sha(blob), retries=1, timeout=5.0, progress=False)

    assert not result.cached and dest.read_bytes() == blob
    assert dest.with_name("blob.bin.bad").read_bytes() == b"bit rot"


def test_connection_errors_are_retried_with_exponential_backoff(server, blob, tmp_path, monkeypatch):
    delays: list[float] = []
    monkeypatch.setattr(fetch_mod, "_sleep", delays.append)
    server.plan("blob.bin", "reset", "500", "ok")

    result = fetch(server.url("blob.bin"), tmp_path / "b", sha(blob), retries=3, timeout=5.0, backoff=0.5)

    assert [h.status for h in server.hits] == [None, 500, 200]
    assert delays == [0.5, 1.0]
    assert result.attempts == 3


@pytest.mark.parametrize(("mode", "text"), [("reset", "Remote end closed"), ("500", "HTTP 500")])
def test_gives_up_after_the_last_attempt(server, blob, tmp_path, mode, text):
    server.plan("blob.bin", *[mode] * 5)
    url = server.url("blob.bin")

    with pytest.raises(UserError, match="failed after 3 attempts") as info:
        fetch(url, tmp_path / "b", sha(blob), retries=3, timeout=5.0, backoff=BACKOFF, progress=False)

    assert text in str(info.value) and url in str(info.value)
    assert len(server.hits) == 3


def test_http_404_names_status_and_url_without_retrying(server, tmp_path):
    url = server.url("missing.bin")
    with pytest.raises(UserError) as info:
        fetch(url, tmp_path / "missing.bin", "0" * 64, retries=5, timeout=5.0, backoff=10.0, progress=False)
    assert "HTTP 404" in str(info.value) and url in str(info.value)
    assert len(server.hits) == 1


def test_missing_checksum_is_an_error_before_any_request(server, tmp_path):
    server.state.files = files = fake_files(fake_members())
    with pytest.raises(UserError, match="no SHA-256"):
        fetch(server.url("mp3.zip.001"), tmp_path / "x", "", retries=1, timeout=5.0)
    sums = checksums(files)
    sums["mp3.zip.002"] = ""
    del sums["clip_info_final.csv"]
    params = dl_params(server.base_url, tmp_path, files, sha256=sums)
    with pytest.raises(UserError, match=r"download\.sha256\.clip_info_final\.csv"):
        download_mtat(params, tmp_path / "raw", BACKOFF, progress=False)
    assert server.hits == []


def test_not_enough_disk_space_is_reported_before_writing(server, blob, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 10, 10))
    folder = tmp_path / "cache"
    with pytest.raises(UserError, match=rf"not enough disk space in {folder}: 200.0 KB needed, 10 B free"):
        fetch(server.url("blob.bin"), folder / "blob.bin", sha(blob), retries=1, timeout=5.0, progress=False)


# --- archives ------------------------------------------------------------------------------------------


def test_open_parts_reads_like_the_concatenation(tmp_path):
    rng = random.Random(2)
    chunks = [rng.randbytes(1000), b"", rng.randbytes(1), rng.randbytes(4097)]
    paths = []
    for i, chunk in enumerate(chunks):
        paths.append(tmp_path / f"p{i}")
        paths[-1].write_bytes(chunk)
    whole = b"".join(chunks)
    with open_parts(paths) as f:
        assert f.read() == whole
        for pos in (0, 999, 1000, 1001, 1002, 3000, len(whole) - 1):
            f.seek(pos)
            assert f.read(7) == whole[pos : pos + 7]
        f.seek(-5, os.SEEK_END)
        assert f.read() == whole[-5:]


def test_an_archive_that_is_not_a_zip_is_a_clear_error_and_leaves_raw_alone(server, tmp_path):
    files = fake_files(fake_members())
    files.update(split3(random.Random(3).randbytes(5000)))
    server.state.files = files
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "previous.txt").write_text("the last good build")
    (raw / MARKER).write_text(marker_text("download"))  # written by an earlier download
    params = make_params(dataset="mtat", download=dl_params(server.base_url, tmp_path, files))

    with pytest.raises(
        ArchiveError, match=r"mp3\.zip\.001\+mp3\.zip\.002\+mp3\.zip\.003 is not a readable zip"
    ):
        make_raw(params, raw, backoff=BACKOFF, progress=False)

    assert sorted(p.name for p in raw.iterdir()) == [MARKER, "previous.txt"]
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw"]


def test_an_archive_failing_its_crc_test_names_the_entry(tmp_path):
    members = fake_members()
    data = bytearray(make_zip(members, zipfile.ZIP_STORED))
    target = "7/artist_7-album-01-song-0-29.mp3"
    at = data.index(members[target]) + 100
    data[at] ^= 0xFF
    archive = tmp_path / "bad.zip"
    archive.write_bytes(bytes(data))

    with pytest.raises(ArchiveError, match=rf"bad\.zip fails its integrity test at entry '{target}'"):
        extract_zip(archive, tmp_path / "out", progress=False)
    # One pass tests and extracts: the corrupt entry is not left behind (the stage builds paths.raw in
    # a staging folder that it removes on any error, see the not-a-zip test above).
    assert not (tmp_path / "out" / target).exists()


@pytest.mark.parametrize("entry", ["../evil.mp3", "0/../../evil.mp3", "/tmp/evil.mp3"])
def test_zip_entries_escaping_the_folder_are_refused(tmp_path, entry):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("0/fine.mp3", b"ok")
        info = zipfile.ZipInfo("placeholder")
        info.filename = entry  # ZipInfo() would sanitise the name; real hostile archives are not so kind
        zf.writestr(info, b"evil")
    out = tmp_path / "deep" / "out"
    with pytest.raises(ArchiveError, match="points outside the output folder"):
        extract_zip(io.BytesIO(buf.getvalue()), out, progress=False)
    assert not out.exists() and not (tmp_path / "deep" / "evil.mp3").exists()


def test_disk_full_during_extraction_names_the_folder(tmp_path, monkeypatch):
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", full)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=rf"disk full while writing into {out}; about 53.0 KB needed"):
        extract_zip(io.BytesIO(make_zip(fake_members())), out, progress=False)


# --- local_dir -----------------------------------------------------------------------------------------


@pytest.fixture
def local_mtat(tmp_path):
    members = fake_members()
    files = fake_files(members)
    local = tmp_path / "my_mtat"
    for name, data in members.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
    for name in CSV_FILES:
        (local / name).write_bytes(files[name])
    return local, members, files


def test_local_dir_is_verified_and_hardlinked(local_mtat, tmp_path):
    local, members, files = local_mtat
    # Nothing listens on this port: any download attempt would fail.
    params = make_params(
        dataset="mtat",
        download=dl_params("http://127.0.0.1:9/", tmp_path, files, local_dir=str(local), retries=1),
    )
    raw = tmp_path / "raw"

    summary = make_raw(params, raw, progress=False)

    assert_layout(raw, members, files)
    assert summary["mode"] == "local" and summary["audio_files"] == len(members)
    assert summary["linked"] == len(members) + 2 and summary["copied"] == 0
    name = next(iter(members))
    assert (raw / name).stat().st_ino == (local / name).stat().st_ino
    assert not (tmp_path / "cache").exists()


def test_local_dir_falls_back_to_copying(local_mtat, tmp_path, monkeypatch):
    local, members, files = local_mtat

    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    summary = link_local(local, tmp_path / "raw", checksums(files), progress=False)

    assert summary["linked"] == 0 and summary["copied"] == len(members) + 2
    assert_layout(tmp_path / "raw", members, files)


def test_local_dir_problems_are_clear_errors(local_mtat, tmp_path):
    local, _, files = local_mtat
    sums = checksums(files)
    with pytest.raises(UserError, match="is not a folder"):
        link_local(tmp_path / "nope", tmp_path / "o1", sums)
    with pytest.raises(UserError, match=r"download\.sha256\.annotations_final\.csv"):
        link_local(local, tmp_path / "o2", {})
    (local / "annotations_final.csv").write_bytes(b"edited by hand")
    with pytest.raises(UserError, match=rf"SHA-256 {sha(b'edited by hand')} does not match the pinned"):
        link_local(local, tmp_path / "o3", sums)
    (local / "clip_info_final.csv").unlink()
    shutil.rmtree(local / "7")
    with pytest.raises(UserError, match=r"lacks clip_info_final\.csv, 7/"):
        link_local(local, tmp_path / "o4", sums)


def test_cache_or_local_dir_inside_raw_is_refused(tmp_path):
    raw = tmp_path / "raw"
    inside = make_params(dataset="mtat", download=DownloadParams(cache_dir=str(raw / "cache")))
    with pytest.raises(UserError, match=r"cache_dir .* lies inside paths\.raw"):
        make_raw(inside, raw)
    overlap = make_params(dataset="mtat", download=DownloadParams(local_dir=str(raw)))
    with pytest.raises(UserError, match=r"local_dir .* lies inside paths\.raw"):
        make_raw(overlap, raw)


# --- the stage -----------------------------------------------------------------------------------------


def test_demo_dataset_calls_the_generator_and_writes_the_summary(tmp_path, monkeypatch):
    calls = []

    def generate_demo(out_dir: Path, params: object, seed: int) -> dict:
        calls.append((params, seed))
        (out_dir / "0").mkdir()
        (out_dir / "0" / "demo.mp3").write_bytes(b"fake")
        return {"clips": 1}

    monkeypatch.setitem(sys.modules, "mstagger.demo", types.SimpleNamespace(generate_demo=generate_demo))
    params = make_params(dataset="demo", seed=7)
    raw = tmp_path / "raw"

    summary = make_raw(params, raw)

    assert calls == [(params.demo, 7)]
    assert (raw / "0" / "demo.mp3").read_bytes() == b"fake"
    assert summary["dataset"] == "demo" and summary["clips"] == 1 and summary["seconds"] >= 0
    assert sorted(p.name for p in raw.iterdir()) == [MARKER, "0"]


def write_params(tmp_path: Path, download_section: dict) -> None:
    text = yaml.safe_dump({**repo_params_dict(), "dataset": "mtat", "download": download_section})
    (tmp_path / "params.yaml").write_text(text)


def test_main_on_mtat_builds_paths_raw(server, tmp_path, monkeypatch):
    members = fake_members()
    files = real_files(members)
    server.state.files = files
    sums = {**checksums(files), **(load_params(REPO / "params.yaml").download.sha256 or {})}
    sums.update({name: sha(files[name]) for name in ARCHIVE_PARTS})
    write_params(tmp_path, {"base_url": server.base_url, "cache_dir": ".cache/mtat", "sha256": sums})
    monkeypatch.chdir(tmp_path)

    download.main()

    assert_layout(tmp_path / "data" / "raw", members, files)
    summary = json.loads((tmp_path / "metrics" / "download.json").read_text())  # where DVC tracks it
    assert summary["dataset"] == "mtat" and summary["audio_files"] == len(members)
    assert len(server.hits) == 5 and (tmp_path / ".cache" / "mtat" / "mp3.zip.003").is_file()


def test_main_reports_an_http_error_in_one_line(server, tmp_path, monkeypatch, capsys):
    files = fake_files(fake_members())
    write_params(tmp_path, {"base_url": server.base_url + "wrong/", "sha256": checksums(files), "retries": 1})
    monkeypatch.chdir(tmp_path)

    with pytest.raises(SystemExit) as exit_info:
        download.main()

    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: HTTP 404 Not Found for {server.base_url}wrong/annotations_final.csv; check download.base_url"
    ]
    assert not (tmp_path / "data" / "raw").exists()
