"""Finding the audio of a library, and the --csv table that a rerun resumes."""

import csv
import os

import numpy as np
import pytest

from mstagger.core.errors import UserError
from mstagger.inference.library import FIXED_COLUMNS, AudioFile, Ledger, find_audio

TAGS = ["guitar", "drum", "piano"]


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_find_audio_searches_folders_and_takes_named_files(tmp_path):
    lib = tmp_path / "lib"
    for rel in ["b.mp3", "a/x.FLAC", "a/deep/y.wav", "a/cover.jpg", "notes.txt", "README", ".hidden.mp3",
                ".git/z.mp3", "a/._x.flac"]:  # fmt: skip
        touch(lib / rel)
    named = touch(tmp_path / "named.m4a")  # a named file is taken whatever its extension
    files, ignored, unreadable = find_audio([lib, named, lib / "b.mp3"])
    rel = [f.path.relative_to(tmp_path).as_posix() for f in files]
    assert rel == ["lib/b.mp3", "lib/a/x.FLAC", "lib/a/deep/y.wav", "named.m4a"]  # sorted per folder, once
    assert ignored == {".jpg": 1, ".txt": 1, "(none)": 1} and unreadable == []
    assert files[0].key == os.path.abspath(lib / "b.mp3") and files[0].size == 1
    narrowed, _, _ = find_audio([lib], "*.flac")
    assert [f.path.name for f in narrowed] == ["x.FLAC"]  # any depth, any case
    assert [f.path.name for f in find_audio([lib], "a/*")[0]] == ["x.FLAC", "y.wav"]
    with pytest.raises(UserError, match=r"nowhere\.mp3: no such file or folder"):
        find_audio([lib, tmp_path / "nowhere.mp3"])


def files_in(tmp_path, n):
    return [AudioFile.of(touch(tmp_path / f"song{i}.mp3", b"x" * (i + 1))) for i in range(n)]


def read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def write_all(ledger, files):
    for f in files:
        ledger.add(f, 30.5, 2, np.array([0.9, 0.1, 0.5]), ["guitar", "piano"])


def test_the_table_has_a_header_and_one_row_per_file(tmp_path):
    files = files_in(tmp_path, 2)
    with Ledger(tmp_path / "out.csv", TAGS, "abc123") as ledger:
        assert ledger.resume(files) == files
        write_all(ledger, files)
    rows = read(tmp_path / "out.csv")
    assert rows[0] == [*FIXED_COLUMNS, *TAGS]
    assert rows[0][:7] == ["path", "size", "mtime_ns", "model", "seconds", "windows", "asserted"]
    assert rows[1] == [files[0].key, "1", str(files[0].mtime_ns), "abc123", "30.500", "2", "guitar;piano",
                       "0.900000", "0.100000", "0.500000"]  # fmt: skip


def test_a_rerun_skips_tagged_files_and_redoes_changed_ones(tmp_path):
    files = files_in(tmp_path, 3)
    table = tmp_path / "out.csv"
    with Ledger(table, TAGS, "m") as ledger:
        ledger.resume(files[:2])
        write_all(ledger, files[:2])
    os.utime(files[0].path, ns=(1, 1))  # the file changed since it was tagged
    again = [AudioFile.of(f.path) for f in files]
    with Ledger(table, TAGS, "m") as ledger:
        todo = ledger.resume(again)
        assert [f.path.name for f in todo] == ["song0.mp3", "song2.mp3"]
        write_all(ledger, todo)
    paths = [row[0] for row in read(table)[1:]]
    assert sorted(paths) == sorted(f.key for f in files)  # each file once: the stale row was dropped
    with Ledger(table, TAGS, "m") as ledger:
        assert ledger.resume(again) == []
    with Ledger(table, TAGS, "m") as ledger:
        assert ledger.resume(again, force=True) == again
    assert len(read(table)) == 1  # --force drops the rows it will write again


def test_a_row_cut_by_a_kill_is_dropped(tmp_path):
    files = files_in(tmp_path, 2)
    table = tmp_path / "out.csv"
    with Ledger(table, TAGS, "m") as ledger:
        ledger.resume(files)
        write_all(ledger, files)
    text = table.read_text()
    table.write_text(text[: len(text) - 9])  # the last row's write was cut short
    with Ledger(table, TAGS, "m") as ledger:
        assert [f.key for f in ledger.resume(files)] == [files[1].key]
        write_all(ledger, files[1:])
    rows = read(table)
    assert [r[0] for r in rows[1:]] == [f.key for f in files] and all(len(r) == len(rows[0]) for r in rows)


def test_a_table_of_another_model_is_refused_unless_forced(tmp_path):
    files = files_in(tmp_path, 1)
    table = tmp_path / "out.csv"
    with Ledger(table, ["rock", "jazz"], "m") as ledger:
        ledger.resume(files)
        write_all(ledger, [])
    with pytest.raises(UserError, match=r"out.csv was written by another model .*another --csv, or --force"):
        Ledger(table, TAGS, "m").resume(files)
    with Ledger(table, TAGS, "m") as ledger:
        assert ledger.resume(files, force=True) == files
    assert read(table)[0][7:] == TAGS
    # the same tags, rows of another model file
    with Ledger(table, TAGS, "m") as ledger:
        write_all(ledger, ledger.resume(files))
    with pytest.raises(UserError, match=r"rows of another model \(m; this one is n\)"):
        Ledger(table, TAGS, "n").resume(files)
    with pytest.raises(UserError, match="is a folder"):
        Ledger(tmp_path, TAGS, "m").resume(files)
