"""Streaming decode and windows: the same samples and windows as whole-file decoding, bounded memory."""

import os
import signal
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from mstagger.data.audio import MEL_DTYPE, StreamStats, decode_blocks, load_audio, log_mel
from mstagger.inference.windows import (
    Done,
    Failed,
    Window,
    decode_here,
    decode_in_workers,
    file_windows,
    windows,
)
from mstagger.params import SpectrogramParams

SPEC = SpectrogramParams(n_mels=32, clip_seconds=3.0)  # windows of 65 * 512 samples at 11025 Hz
WINDOW = (SPEC.n_frames - 1) * SPEC.hop_length


def noise(path, seconds, sr, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    sf.write(path, (0.2 * rng.standard_normal((int(seconds * sr), channels))).astype(np.float32), sr)
    return path


@pytest.mark.parametrize(
    ("sr", "channels", "ext"), [(44100, 2, "wav"), (22050, 1, "flac"), (11025, 1, "wav")]
)
def test_streamed_decoding_gives_librosa_loads_samples(tmp_path, sr, channels, ext):
    """Block by block, whatever the block size: the samples of the whole file decoded and resampled."""
    path = noise(tmp_path / f"a.{ext}", 7.77, sr, channels)
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    whole = librosa.resample(data.mean(axis=1), orig_sr=rate, target_sr=11025, res_type="soxr_hq")
    for block_frames in (5000, 1 << 17):
        streamed = np.concatenate(list(decode_blocks(path, 11025, block_frames=block_frames)))
        np.testing.assert_array_equal(streamed, whole)  # bit for bit, length included
    np.testing.assert_array_equal(load_audio(path, 11025), whole)


def test_an_mp3_clip_decodes_to_librosa_loads_samples(tmp_path):
    """A clip is read in one call: libsndfile's MP3 reader can return other samples after a cut."""
    t = np.arange(int(29.1 * 16000)) / 16000  # an MTAT clip's length and rate
    y = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 0.7 * t))
    path = tmp_path / "clip.mp3"
    sf.write(path, y.astype(np.float32), 16000)  # libsndfile's encoder: a reservoir mpg123 complains of
    whole, _ = librosa.load(path, sr=11025)  # the original code's features start here
    np.testing.assert_array_equal(np.concatenate(list(decode_blocks(path, 11025))), whole)
    np.testing.assert_array_equal(load_audio(path, 11025), whole)


def test_windows_cover_the_signal_and_drop_a_short_tail():
    assert [len(w) for w in windows([np.zeros(100)], 30)] == [30, 30, 30]  # tail of 10 < 15 dropped
    assert [len(w) for w in windows([np.zeros(110)], 30)] == [30, 30, 30, 20]  # tail of 20 kept
    assert [len(w) for w in windows([np.zeros(12)], 30)] == [12]  # shorter than a window
    # where the blocks begin and end does not matter
    y = np.arange(110, dtype=np.float32)
    blocks = [y[:7], y[7:8], y[8:64], y[64:110]]
    for a, b in zip(windows(blocks, 30), windows([y], 30), strict=True):
        np.testing.assert_array_equal(a, b)


def test_file_windows_equal_the_whole_file_way(tmp_path):
    path = noise(tmp_path / "song.flac", 10.0, 22050, 2)
    stats = StreamStats()
    streamed = np.stack(list(file_windows(path, SPEC, 1.0, stats)))
    y = load_audio(path, SPEC.sample_rate)
    whole = np.stack([log_mel(y[s : s + WINDOW], SPEC) for s in range(0, 3 * WINDOW, WINDOW)])
    assert streamed.shape == (3, SPEC.n_mels, SPEC.n_frames)  # a 0.9 s tail is dropped
    # rounded as extract stores a clip (rowfile.write_row casts to mel.npy's dtype): the network's
    # input for a clip is the same in predict as in evaluate
    assert streamed.dtype == MEL_DTYPE
    np.testing.assert_array_equal(streamed, whole.astype(MEL_DTYPE))
    assert stats.samples == len(y)


def test_unusable_files_fail_with_the_reason(tmp_path):
    (tmp_path / "empty.mp3").write_bytes(b"")
    (tmp_path / "broken.mp3").write_bytes(b"ID3 this is not audio" * 50)
    sf.write(tmp_path / "silent.wav", np.zeros(22050, np.float32), 11025)
    noise(tmp_path / "short.wav", 0.5, 11025)
    names = ["missing.wav", "empty.mp3", "broken.mp3", "silent.wav", "short.wav"]
    messages = list(decode_here([tmp_path / n for n in names], SPEC, 1.0))
    failed = {m.index: m.reason for m in messages if isinstance(m, Failed)}
    assert failed[0] == "missing file" and failed[1] == "empty file"
    assert failed[2] == "not an audio file that can be decoded"
    assert failed[3] == "silent" and failed[4] == "too short: 0.5 s < 1.0 s"
    assert not [m for m in messages if isinstance(m, Done)]


def _outcomes(messages):
    """{file: Done or Failed}, checking each file ends once and its windows all come before its end."""
    ends, counts = {}, {}
    for m in messages:
        if m is None:
            continue
        assert m.index not in ends, "a message after the file's end"
        if isinstance(m, Window):
            counts[m.index] = counts.get(m.index, 0) + 1
        else:
            ends[m.index] = m
    for index, end in ends.items():
        if isinstance(end, Done):
            assert counts.get(index, 0) == end.windows
    return ends


def test_workers_stream_every_file_once(tmp_path):
    paths = [noise(tmp_path / f"{i}.wav", 3.5 + i, 16000, seed=i) for i in range(5)]
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    paths.insert(2, tmp_path / "broken.wav")
    ends = _outcomes(decode_in_workers(paths, SPEC, 1.0, workers=2, queued=3))
    assert sorted(ends) == list(range(6))
    assert isinstance(ends[2], Failed) and ends[2].reason.startswith("decode failed: ")  # a damaged WAV
    here = _outcomes(decode_here(paths, SPEC, 1.0))
    assert {i: e.windows for i, e in ends.items() if isinstance(e, Done)} == {
        i: e.windows for i, e in here.items() if isinstance(e, Done)
    }


def descendants(root: int) -> dict[int, int]:
    """{pid: parent pid} of every process below ``root``, from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found[child] = pid
                todo.append(child)
    return found


def test_a_dead_worker_fails_its_files_and_the_run_goes_on(tmp_path):
    paths = [noise(tmp_path / f"{i}.wav", 12.0, 16000, seed=i) for i in range(8)]
    stream = decode_in_workers(paths, SPEC, 1.0, workers=2, queued=2)
    first = next(m for m in stream if m is not None)
    workers = [p for p, parent in descendants(os.getpid()).items() if parent != os.getpid()]
    assert workers  # the forkserver's children
    os.kill(workers[0], signal.SIGKILL)
    ends = _outcomes([first, *stream])
    assert sorted(ends) == list(range(8))  # every file ends once, in a fresh pool if need be
    died = [e for e in ends.values() if isinstance(e, Failed)]
    assert died and all("decoding process died" in e.reason for e in died)
    assert any(isinstance(e, Done) for e in ends.values())
