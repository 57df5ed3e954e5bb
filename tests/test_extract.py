"""Tests of the audio front end (mstagger.data.audio) and the extract stage on tiny generated MP3s."""

from __future__ import annotations

import contextlib
import csv
import decimal
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import psutil
import pytest
import scipy.signal
import soundfile as sf
import yaml

from helpers import SHARED_MTAT, repo_params_dict
from mstagger import extract as extract_mod
from mstagger.core.errors import UserError
from mstagger.core.outputs import MARKER, marker_text
from mstagger.data import rowfile
from mstagger.data.audio import (
    LIBROSA_BOUND,
    MEL_DTYPE,
    AudioError,
    _mel_power,
    _transform,
    clip_log_mel,
    hann_window,
    load_audio,
    log_float32,
    log_mel,
    mel_filterbank,
)
from mstagger.extract import extract, read_clips
from mstagger.params import SpectrogramParams

# librosa.load (the reference computation) imports audioread, which imports modules Python 3.13 drops.
pytestmark = pytest.mark.filterwarnings("ignore:'(aifc|audioop|sunau)' is deprecated:DeprecationWarning")

SPEC = SpectrogramParams()
MIN_SECONDS = 20.0
FILE_RATE = 16000  # MTAT's MP3s are 16 kHz mono
REAL_MTAT = SHARED_MTAT
# A few of MTAT's real tag names, in the real header's layout: clip_id, tags..., mp3_path.
TAGS = ["no voice", "singer", "duet", "plucking", "hard rock"]


def _tone(seconds: float, seed: int) -> np.ndarray:
    """A sine mixture with a little noise, float32 at FILE_RATE."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FILE_RATE)) / FILE_RATE
    f1, f2 = 200.0 + 60 * seed, 1100.0 + 170 * seed
    x = 0.3 * np.sin(2 * np.pi * f1 * t) + 0.2 * np.sin(2 * np.pi * f2 * t) * (
        1 + np.sin(2 * np.pi * 0.5 * t)
    )
    return (x + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def _write_mp3(path: Path, x: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, FILE_RATE, format="MP3", subtype="MPEG_LAYER_III")


def _write_annotations(raw: Path, clips: list[tuple[str, str]]) -> None:
    """MTAT's annotations_final.csv format: tab-separated, every field quoted, CRLF."""

    def line(fields: list[str]) -> str:
        return "\t".join(f'"{f}"' for f in fields) + "\r\n"

    text = line(["clip_id", *TAGS, "mp3_path"])
    for i, (clip_id, mp3_path) in enumerate(clips):
        text += line([clip_id, *("1" if (i + j) % 3 == 0 else "0" for j in range(len(TAGS))), mp3_path])
    (raw / "annotations_final.csv").write_bytes(text.encode("utf-8"))


# clip_id, mp3_path, how it is made; listed in this order in annotations_final.csv.
GOOD_30S = ("101", "0/artist_a-album_a-01-song_one-0-30.mp3")
EMPTY = ("102", "0/artist_a-album_a-01-song_one-30-59.mp3")
GOOD_29S = ("103", "3/artist_b-album_b-02-song_two-0-29.mp3")
TRUNCATED = ("104", "3/artist_b-album_b-02-song_two-29-58.mp3")
SILENT = ("105", "a/artist_c-album_c-03-song_three-0-29.mp3")
MISSING = ("106", "a/artist_c-album_c-03-song_three-29-58.mp3")
SHORT_OK = ("107", "f/artist_d-album_d-04-song_four-0-25.mp3")
GARBAGE = ("108", "f/artist_d-album_d-04-song_four-25-54.mp3")
ALL = [GOOD_30S, EMPTY, GOOD_29S, TRUNCATED, SILENT, MISSING, SHORT_OK, GARBAGE]
GOOD = [GOOD_30S, GOOD_29S, SHORT_OK]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MTAT-like raw folder: three good clips and one clip of every kind of breakage."""
    raw = tmp_path_factory.mktemp("raw")
    _write_mp3(raw / GOOD_30S[1], _tone(30.0, 1))
    (raw / EMPTY[1]).write_bytes(b"")
    _write_mp3(raw / GOOD_29S[1], _tone(29.1, 2))
    (raw / TRUNCATED[1]).write_bytes((raw / GOOD_30S[1]).read_bytes()[:3000])
    _write_mp3(raw / SILENT[1], np.zeros(int(29.1 * FILE_RATE), np.float32))
    _write_mp3(raw / SHORT_OK[1], _tone(25.0, 3))
    (raw / GARBAGE[1]).write_bytes(b"this is not audio\n" * 500)
    _write_annotations(raw, ALL)
    return raw


@pytest.fixture(scope="module")
def extracted(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The extract stage run in-process (workers=1) on ``raw``."""
    out = tmp_path_factory.mktemp("features")
    return out, extract(raw, out, SPEC, workers=1, min_seconds=MIN_SECONDS)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _librosa_reference(path: Path, pad: bool) -> tuple[np.ndarray, int]:
    """The original code's features: librosa.load at 11025 Hz, melspectrogram, log(max(., 1e-20))."""
    y, _ = librosa.load(path, sr=SPEC.sample_rate)
    n = len(y)
    if pad:
        y = librosa.util.fix_length(y, size=(SPEC.n_frames - 1) * SPEC.hop_length)
    mel = librosa.feature.melspectrogram(y=y, sr=SPEC.sample_rate, n_fft=2048, hop_length=512, n_mels=128)
    return np.log(np.maximum(mel, 1e-20)), n


# --- audio.py ---------------------------------------------------------------------------------------


def test_n_frames_follows_the_params() -> None:
    assert SPEC.n_frames == 628  # the paper's 29.1 s at 11025 Hz, hop 512
    other = SpectrogramParams(sample_rate=16000, n_fft=1024, hop_length=256, n_mels=40, clip_seconds=10.0)
    assert other.n_frames == 1 + math.ceil(10.0 * 16000 / 256) == 626
    y = np.random.default_rng(0).standard_normal(16000 * 12).astype(np.float32)
    assert log_mel(y, other).shape == (40, 626)


GEOMETRIES = [
    (11025, 2048, 512, 128),
    (16000, 512, 256, 96),
    (22050, 1024, 512, 40),
    (44100, 4096, 1024, 256),
]


@pytest.mark.parametrize(("sample_rate", "n_fft", "hop", "n_mels"), GEOMETRIES)
def test_window_and_mel_filters_are_librosas_bit_for_bit(sample_rate, n_fft, hop, n_mels) -> None:
    np.testing.assert_array_equal(hann_window(n_fft), scipy.signal.get_window("hann", n_fft, fftbins=True))
    filters = mel_filterbank(sample_rate, n_fft, n_mels)
    assert filters.dtype == np.float32
    np.testing.assert_array_equal(filters, librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels))


@pytest.mark.parametrize(("sample_rate", "n_fft", "hop", "n_mels"), GEOMETRIES)
def test_log_mel_is_within_the_stated_bound_of_librosas(sample_rate, n_fft, hop, n_mels) -> None:
    """librosa's float32 numbers depend on the BLAS kernel; ours (a fixed-order sum) lie within a bound."""
    spec = SpectrogramParams(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
    rng = np.random.default_rng(sample_rate)
    n_samples = (spec.n_frames - 1) * hop
    t = np.arange(n_samples + 5000) / sample_rate
    music = (0.3 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 0.5 * t)).astype(np.float32)
    decaying = (rng.standard_normal(n_samples) * np.exp(-3 * t[:n_samples])).astype(np.float32)
    for y in (
        music,
        0.1 * rng.standard_normal(n_samples // 3).astype(np.float32),
        decaying,
        np.zeros(n_samples, np.float32),
    ):
        fixed = librosa.util.fix_length(y, size=n_samples)  # as log_mel: padded or cropped first
        mel = librosa.feature.melspectrogram(
            y=fixed, sr=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels
        )
        ref = np.log(np.maximum(mel, spec.log_floor))
        ours = log_mel(y, spec)
        assert ours.dtype == np.float32 and ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, rtol=0, atol=LIBROSA_BOUND)
        # stored as float16: at most one float16 step apart, or LIBROSA_BOUND where steps are finer
        ours16, ref16 = ours.astype(MEL_DTYPE), ref.astype(MEL_DTYPE)
        step = np.spacing(np.maximum(np.abs(ours16), np.abs(ref16))).astype(np.float64)
        assert (np.abs(ours16.astype(np.float64) - ref16) <= np.maximum(step, LIBROSA_BOUND)).all()


def test_log_float32_is_the_correctly_rounded_log() -> None:
    """Also for values whose float64 log lies next to a float32 rounding boundary, where libm's last
    bits (SVML with AVX512, else glibc) would decide."""
    rng = np.random.default_rng(3)
    x = np.exp(rng.uniform(-46, 12, 2000))
    # values whose log is a float32 midpoint to about 1e-15: the hard cases
    below = rng.uniform(-40, 10, 200).astype(np.float32)
    middle = (below.astype(np.float64) + np.nextafter(below, np.float32(np.inf)).astype(np.float64)) / 2
    x = np.concatenate(
        [x, np.exp(middle), np.nextafter(np.exp(middle), 0), np.nextafter(np.exp(middle), 1e9)]
    )
    got = log_float32(x)
    assert got.dtype == np.float32

    def exact(value: float) -> np.float32:
        with decimal.localcontext() as ctx:
            ctx.prec = 60
            d = decimal.Decimal(value).ln()
        lo = np.float32(float(d))
        lo = lo if decimal.Decimal(float(lo)) <= d else np.nextafter(lo, np.float32(-np.inf))
        hi = np.nextafter(lo, np.float32(np.inf))
        mid = (decimal.Decimal(float(lo)) + decimal.Decimal(float(hi))) / 2
        return lo if d < mid else hi

    want = np.array([exact(float(v)) for v in x], np.float32)
    np.testing.assert_array_equal(got, want)


def test_the_mel_sum_adds_each_filters_taps_in_ascending_bin_order() -> None:
    """The order is the contract that makes the bits independent of the machine: checked against a
    plain Python loop, on powers spread over 16 decades so that another order would round otherwise."""
    spec = SpectrogramParams(sample_rate=16000, n_fft=512, hop_length=256, n_mels=40)
    filters = mel_filterbank(spec.sample_rate, spec.n_fft, spec.n_mels).astype(np.float64)
    rng = np.random.default_rng(4)
    power = rng.random((spec.n_fft // 2 + 1, 9)) * 10.0 ** rng.integers(-8, 9, size=(spec.n_fft // 2 + 1, 9))
    got = _mel_power(power, _transform(spec))
    for m in range(spec.n_mels):
        bins = np.flatnonzero(filters[m])
        for t in range(power.shape[1]):
            acc = 0.0
            for k in bins:
                acc += float(filters[m, k]) * float(power[k, t])
            assert got[m, t] == acc
    assert not (got == filters @ power).all()  # another order gives other bits here


def test_decoding_loads_neither_librosa_nor_torch() -> None:
    """Decoding processes import mstagger.inference.windows (and extract's, mstagger.data.audio): NumPy,
    soundfile and soxr, 37 MB, not librosa's stack (numba, scipy) or torch, each over 200 MB a process."""
    code = "import sys, mstagger.inference.windows; print(' '.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert "mstagger.data.audio" in loaded
    assert not {"librosa", "numba", "scipy", "torch"} & loaded


@pytest.mark.parametrize("seconds", [29.1, 30.0, 25.0])
def test_log_mel_has_exactly_n_frames(seconds: float) -> None:
    y = np.random.default_rng(1).standard_normal(int(seconds * SPEC.sample_rate)).astype(np.float32)
    mel = log_mel(y, SPEC)
    assert mel.shape == (128, 628)
    assert mel.dtype == np.float32
    n_samples = 627 * 512
    if len(y) >= n_samples:  # longer input is cropped, not resampled or squeezed
        np.testing.assert_array_equal(mel, log_mel(y[:n_samples], SPEC))
    elif len(y) + 2048 // 2 <= n_samples:  # zero-padded: frames wholly past the audio sit at the log floor
        np.testing.assert_allclose(mel[:, -1], np.log(1e-20), rtol=1e-6)
        assert mel[:, 0].min() > np.log(1e-20) + 10


def test_load_audio_resamples_and_mixes_to_mono(tmp_path: Path) -> None:
    left = np.sin(2 * np.pi * 440 * np.arange(22050) / 22050).astype(np.float32) * 0.5
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 22050, subtype="FLOAT")
    y = load_audio(tmp_path / "s.wav", 22050)
    np.testing.assert_allclose(y, left / 2, atol=1e-7)
    y = load_audio(tmp_path / "s.wav", 11025)
    assert y.dtype == np.float32 and len(y) == 11025


def test_decoder_notes_name_the_clip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The MP3 decoder's notes (printed by C code on stderr) come back in the log with the file's path."""
    _write_mp3(tmp_path / "ok.mp3", _tone(3.0, 0))
    data = (tmp_path / "ok.mp3").read_bytes()
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(data[: len(data) // 3] + b"\x00\xff" * 300 + data[len(data) // 2 :])
    caplog.set_level("WARNING", logger="mstagger")
    y = load_audio(damaged, 11025)  # decodes, with notes
    assert y.size > 0
    notes = [r.getMessage() for r in caplog.records if "decoder notes" in r.getMessage()]
    assert len(notes) == 1 and str(damaged) in notes[0] and "Illegal Audio-MPEG-Header" in notes[0]
    caplog.clear()
    load_audio(tmp_path / "ok.mp3", 11025)
    assert not caplog.records  # a clean file: nothing to say


def test_audio_errors_name_the_reason(tmp_path: Path) -> None:
    (tmp_path / "empty.mp3").write_bytes(b"")
    with pytest.raises(AudioError) as err:
        load_audio(tmp_path / "empty.mp3", 11025)
    assert err.value.reason == "empty file"
    with pytest.raises(AudioError, match="missing file"):
        load_audio(tmp_path / "nope.mp3", 11025)
    (tmp_path / "junk.mp3").write_bytes(b"junk" * 1000)
    with pytest.raises(AudioError, match=r"^not an audio file that can be decoded$"):
        load_audio(tmp_path / "junk.mp3", 11025)

    sf.write(tmp_path / "short.wav", _tone(2.0, 0), FILE_RATE)
    with pytest.raises(AudioError) as err:
        clip_log_mel(tmp_path / "short.wav", SPEC, MIN_SECONDS)
    assert err.value.reason == "too short: 2.0 s < 20.0 s"
    sf.write(tmp_path / "silent.wav", np.zeros(FILE_RATE * 21, np.float32), FILE_RATE)
    with pytest.raises(AudioError, match=r"^silent$"):
        clip_log_mel(tmp_path / "silent.wav", SPEC, MIN_SECONDS)
    bad = _tone(21.0, 0)
    bad[100] = np.nan
    sf.write(tmp_path / "nan.wav", bad, SPEC.sample_rate, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"^non-finite samples$"):
        clip_log_mel(tmp_path / "nan.wav", SPEC, MIN_SECONDS)


# --- extract.py: outputs ----------------------------------------------------------------------------


def test_extract_writes_memmappable_float16_of_good_clips(extracted: tuple[Path, dict]) -> None:
    out, summary = extracted
    mel = np.load(out / "mel.npy", mmap_mode="r")
    assert isinstance(mel, np.memmap)
    assert mel.shape == (3, 128, 628)
    assert mel.dtype == np.float16
    assert np.isfinite(mel).all()
    assert not (mel == 0).all(axis=(1, 2)).any()  # no zero-filled rows
    index = _read_csv(out / "index.csv")
    assert [(r["row"], r["clip_id"], r["mp3_path"]) for r in index] == [
        (str(i), cid, path) for i, (cid, path) in enumerate(GOOD)
    ]
    assert [float(r["seconds"]) for r in index] == pytest.approx([30.0, 29.1, 25.0], abs=0.1)
    assert summary["clips_read"] == 8
    assert summary["extracted"] == 3
    assert summary["skipped"] == 5
    assert summary["shape"] == [3, 128, 628]
    assert summary["dtype"] == "float16"
    assert summary["workers"] == 1
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "index.csv", "mel.npy", "skipped.csv"]


def test_broken_clips_are_skipped_with_distinct_reasons(raw: Path, extracted: tuple[Path, dict]) -> None:
    out, summary = extracted
    skipped = {r["clip_id"]: r for r in _read_csv(out / "skipped.csv")}
    assert list(skipped) == [EMPTY[0], TRUNCATED[0], SILENT[0], MISSING[0], GARBAGE[0]]
    assert skipped[EMPTY[0]]["reason"] == "empty file"
    assert skipped[EMPTY[0]]["bytes"] == "0"
    assert re.fullmatch(r"too short: \d+\.\d s < 20\.0 s", skipped[TRUNCATED[0]]["reason"])
    assert skipped[TRUNCATED[0]]["bytes"] == "3000"
    assert skipped[SILENT[0]]["reason"] == "silent"
    assert skipped[MISSING[0]]["reason"] == "missing file"
    assert skipped[MISSING[0]]["bytes"] == ""
    assert skipped[GARBAGE[0]]["reason"] == "not an audio file that can be decoded"
    assert skipped[GARBAGE[0]]["mp3_path"] == GARBAGE[1]
    assert summary["skipped_reasons"] == {
        "not an audio file that can be decoded": 1,
        "empty file": 1,
        "missing file": 1,
        "silent": 1,
        "too short": 1,
    }


@pytest.mark.parametrize("clip", GOOD, ids=["30s-cropped", "29.1s", "25s-padded"])
def test_features_agree_with_direct_librosa(raw: Path, extracted: tuple[Path, dict], clip: tuple) -> None:
    out, _ = extracted
    row = GOOD.index(clip)
    ours = np.load(out / "mel.npy", mmap_mode="r")[row].astype(np.float32)
    # The original code's way (no fixed length): equal on every frame whose window lies inside the audio.
    ref, n = _librosa_reference(raw / clip[1], pad=False)
    inside = [t for t in range(SPEC.n_frames) if t * 512 + 2048 // 2 <= min(n, 627 * 512)]
    assert len(inside) >= int(MIN_SECONDS * SPEC.sample_rate / 512)
    np.testing.assert_allclose(ours[:, inside], ref[:, inside], rtol=1e-3, atol=1e-2)
    # Padded or cropped the same way: equal on all 628 frames, up to float16 rounding.
    ref_fixed, _ = _librosa_reference(raw / clip[1], pad=True)
    np.testing.assert_allclose(ours, ref_fixed, rtol=1e-3, atol=1e-2)


def test_short_clip_is_padded_not_stretched(extracted: tuple[Path, dict]) -> None:
    out, _ = extracted
    mel = np.load(out / "mel.npy", mmap_mode="r")[GOOD.index(SHORT_OK)]  # 25.0 s of audio
    first_silent = math.ceil((25.0 * SPEC.sample_rate + 1024) / 512)  # first frame wholly past the audio
    floor = np.float16(np.log(1e-20))
    assert (mel[:, first_silent:] == floor).all()
    assert (mel[:, : first_silent - 4] > floor + 10).all()


def test_two_workers_give_identical_outputs(raw: Path, extracted: tuple[Path, dict], tmp_path: Path) -> None:
    out1, _ = extracted
    summary = extract(raw, tmp_path, SPEC, workers=2, min_seconds=MIN_SECONDS)
    assert summary["workers"] == 2
    for name in ("mel.npy", "index.csv", "skipped.csv"):
        assert (tmp_path / name).read_bytes() == (out1 / name).read_bytes(), name


def test_rerun_rewrites_outputs_completely(raw: Path, tmp_path: Path) -> None:
    raw2 = tmp_path / "raw"
    for _, path in (GOOD_29S, EMPTY):
        (raw2 / path).parent.mkdir(parents=True, exist_ok=True)
        (raw2 / path).write_bytes((raw / path).read_bytes())
    _write_annotations(raw2, [GOOD_29S, EMPTY])
    out = tmp_path / "features"
    out.mkdir()
    np.save(out / "mel.npy", np.ones((5, 128, 628), np.float16))
    (out / "index.csv").write_text("stale\n")
    # An earlier extract's folder may be replaced; a folder of anything else may not.
    with pytest.raises(UserError, match="holds files the extract stage did not write"):
        extract(raw2, out, SPEC, workers=1, min_seconds=MIN_SECONDS)
    assert (out / "index.csv").read_text() == "stale\n"
    (out / MARKER).write_text(marker_text("extract"))
    summary = extract(raw2, out, SPEC, workers=1, min_seconds=MIN_SECONDS)
    assert summary["extracted"] == 1
    assert np.load(out / "mel.npy", mmap_mode="r").shape == (1, 128, 628)
    assert [r["clip_id"] for r in _read_csv(out / "index.csv")] == [GOOD_29S[0]]
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "index.csv", "mel.npy", "skipped.csv"]

    # Nothing usable: an error naming skipped.csv, and no stale features left behind.
    _write_annotations(raw2, [EMPTY])
    with pytest.raises(UserError, match=r"no clip .* could be extracted.*skipped\.csv"):
        extract(raw2, out, SPEC, workers=1, min_seconds=MIN_SECONDS)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "skipped.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features", "raw"]  # no staging folder left
    assert _read_csv(out / "skipped.csv")[0]["reason"] == "empty file"


# --- extract.py: pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keep",
    [
        list(range(10)),
        [1, 2, 3, 4, 5, 6, 7, 8, 9],
        [0, 1, 2, 5, 6, 9],
        [0, 9],
        [3],
        [0, 1, 2, 3, 4, 5, 6, 7, 8],
    ],
)
def test_compact_keeps_rows_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: list[int]
) -> None:
    monkeypatch.setattr(rowfile, "COPY_CHUNK_ROWS", 2)  # several chunks per run, overlapping moves
    data = np.arange(10 * 3 * 4, dtype=np.float16).reshape(10, 3, 4)
    path = tmp_path / "x.npy"
    rows = rowfile.create(path, 10, (3, 4), np.float16)
    fd = os.open(path, os.O_WRONLY)
    for i in range(10):
        rowfile.write_row(fd, rows, i, data[i])
    os.close(fd)
    rowfile.compact(rows, keep)
    np.testing.assert_array_equal(np.load(path), data[keep])
    assert path.stat().st_size == rows.offset + len(keep) * rows.row_bytes


def test_read_clips_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"annotations_final\.csv; run the download stage"):
        read_clips(tmp_path)
    (tmp_path / "annotations_final.csv").write_text('"clip_id"\t"guitar"\r\n"1"\t"0"\r\n')
    with pytest.raises(UserError, match=r"lacks column\(s\) mp3_path"):
        read_clips(tmp_path)
    (tmp_path / "annotations_final.csv").write_text(
        '"clip_id"\t"guitar"\t"mp3_path"\r\n"1"\t"0"\t"0/x.mp3"\r\n"1"\t"1"\t"0/y.mp3"\r\n'
    )
    with pytest.raises(UserError, match="clip_id 1 appears more than once"):
        read_clips(tmp_path)
    (tmp_path / "annotations_final.csv").write_text('"clip_id"\t"guitar"\t"mp3_path"\r\n')
    with pytest.raises(UserError, match="lists no clips"):
        extract(tmp_path, tmp_path / "out", SPEC, 1, MIN_SECONDS)


def test_read_clips_on_real_mtat_annotations() -> None:
    path = REAL_MTAT / "annotations_final.csv"
    if not path.exists():
        pytest.skip(f"real MTAT metadata not available at {path}")
    clips = read_clips(REAL_MTAT)
    assert len(clips) == 25863
    assert clips[0].clip_id == "2"
    # The three empty MP3s of MTAT, at the rows the original code zero-filled.
    assert clips[16250].mp3_path == "6/norine_braun-now_and_zen-08-gently-117-146.mp3"
    assert [clips[i].clip_id for i in (16250, 24867, 25546)] == ["35644", "55753", "57881"]


def test_main_reports_missing_input_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    params = repo_params_dict()
    params["paths"].update(raw="nowhere", features="feats")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exc:
        extract_mod.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: annotations not found: nowhere/annotations_final.csv; run the download stage first" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "SIGTERM"])
def test_a_stopped_extract_ends_its_workers_at_once_without_a_traceback(
    raw: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """Ctrl-C reaches every process of the terminal's group: the workers leave it to the stage (no
    KeyboardInterrupt traceback from each) and the stage ends them without waiting for their clips."""
    clips = [(str(200 + i), f"{i % 16:x}/a-b-01-s-{i}-{i + 30}.mp3") for i in range(240)]
    for _, path in clips:
        (tmp_path / "many" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "many" / path).write_bytes((raw / GOOD_30S[1]).read_bytes())
    _write_annotations(tmp_path / "many", clips)
    params = repo_params_dict()
    params["paths"].update(raw="many", features="feats", metrics="metrics")
    params["extract"]["workers"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    log = tmp_path / "extract.log"
    stage = psutil.Popen(
        [sys.executable, "-m", "mstagger.extract"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        start_new_session=True,
    )
    family: set[psutil.Process] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(family) < 2:  # the spawned workers (and a tracker)
        with contextlib.suppress(psutil.Error):
            family.update(stage.children(recursive=True))
        time.sleep(0.05)
    while time.monotonic() < deadline:  # stop it mid-way: once the workers have decoded a few clips
        done = [int(n) for n in re.findall(r"(\d+)/240 \[", log.read_text(errors="replace"))]
        if (done and done[-1] >= 4) or stage.poll() is not None:
            break
        time.sleep(0.05)
    if sig == signal.SIGINT:
        os.killpg(stage.pid, sig)
    else:
        stage.send_signal(sig)
    try:
        stage.wait(timeout=30)
    finally:
        _, alive = psutil.wait_procs(family, timeout=10)
        for p in [stage, *alive]:
            with contextlib.suppress(psutil.Error):
                p.kill()
    assert not alive, [p.cmdline() for p in alive]
    err = log.read_text(errors="replace")
    assert "Traceback" not in err, err
    if sig == signal.SIGINT:
        assert stage.returncode == 130 and "interrupted" in err, err
