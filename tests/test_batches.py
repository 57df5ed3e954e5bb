"""Training batches: a pure function of seed and epoch, shared out between processes, read from disk."""

import multiprocessing
import os
import pickle
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from mstagger.training.batches import (
    StreamSource,
    _BatchDataset,
    choose_device_data,
    epoch_batches,
    rank_share,
)

N_MELS, N_FRAMES, N_TAGS = 16, 64, 4


def test_epoch_batches_are_a_pure_function_of_seed_and_epoch():
    rows = np.arange(33)
    a, b = epoch_batches(rows, 8, 1, 1), epoch_batches(rows, 8, 1, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(np.concatenate(a), np.concatenate(epoch_batches(rows, 8, 1, 2)))
    # 33 = 4 x 8 + 1: the single-clip remainder is dropped (BatchNorm needs two).
    assert [len(x) for x in a] == [8, 8, 8, 8]
    assert all(np.array_equal(x, np.sort(x)) for x in a)  # sorted: sequential memmap reads


def test_every_process_gets_a_disjoint_share_of_every_batch():
    rows = np.arange(100, 150)
    batches = epoch_batches(rows, 8, 3, 1, world_size=2)
    # 50 = 6 x 8 + 2: the last batch gives each of 2 processes one clip, too few for BatchNorm
    assert [len(b) for b in batches] == [8] * 6
    for batch in batches:
        shares = [rank_share(batch, r, 2) for r in range(2)]
        assert [len(s) for s in shares] == [4, 4]
        assert np.array_equal(np.sort(np.concatenate(shares)), batch)
    assert len(epoch_batches(rows, 8, 3, 1, world_size=1)) == 7  # one process keeps the batch of 2


def test_auto_streams_on_the_cpu_and_true_or_false_are_obeyed():
    cpu = torch.device("cpu")
    assert choose_device_data("auto", cpu, 10) is False
    assert choose_device_data(True, cpu, 10**15) is True
    assert choose_device_data(False, cpu, 10) is False


def test_batch_dataset_pickles_a_memmap_as_its_path(tmp_path):
    path = tmp_path / "mel.npy"
    np.save(path, np.ones((64, N_MELS, N_FRAMES), np.float16))
    mel = np.load(path, mmap_mode="r")
    dataset = _BatchDataset(mel, np.zeros((64, N_TAGS), np.uint8))
    blob = pickle.dumps(dataset)
    assert len(blob) < mel.nbytes / 10  # the path travels, not the array
    clone = pickle.loads(blob)
    assert isinstance(clone.mel, np.memmap)
    assert torch.equal(clone[np.arange(4)][0], dataset[np.arange(4)][0])


def test_streaming_leaves_the_global_rng_alone(tmp_path):
    """The DataLoader must not draw from the RNG dropout uses, or the two data paths would differ."""
    mel = np.zeros((8, N_MELS, N_FRAMES), np.float16)
    source = StreamSource(mel, np.zeros((8, N_TAGS), np.uint8), torch.device("cpu"), num_workers=0)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    list(source.batches([np.arange(4), np.arange(4, 8)]))
    assert torch.equal(before, torch.get_rng_state())


@pytest.fixture
def open_stream():
    """``open_stream(workers)`` -> (mel, labels, a StreamSource over 16 clips); closed after the test."""
    sources = []

    def open_(workers: int) -> tuple[np.ndarray, np.ndarray, StreamSource]:
        rng = np.random.default_rng(4)
        mel = rng.normal(size=(16, N_MELS, N_FRAMES)).astype(np.float16)
        labels = (rng.random((16, N_TAGS)) < 0.4).astype(np.uint8)
        sources.append(StreamSource(mel, labels, torch.device("cpu"), num_workers=workers))
        return mel, labels, sources[-1]

    yield open_
    for source in sources:
        source.close()


def record_reader_pids(monkeypatch, tmp_path) -> Callable[[], list[int]]:
    """Make every batch read append the reading process's pid to a file; returns a reader of the pids."""
    if multiprocessing.get_start_method() != "fork":
        pytest.skip("the recording patch reaches DataLoader workers only when they are forked")
    log = tmp_path / "pids"
    log.touch()
    read = _BatchDataset.__getitem__

    def recording(self, item):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return read(self, item)

    monkeypatch.setattr(_BatchDataset, "__getitem__", recording)
    return lambda: [int(line) for line in log.read_text().split()]


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_streaming_keeps_its_worker_processes_from_epoch_to_epoch(monkeypatch, tmp_path, open_stream):
    """Starting the workers once per epoch costs seconds a run; one DataLoader serves every epoch."""
    pids = record_reader_pids(monkeypatch, tmp_path)
    _, _, source = open_stream(2)
    assert len(list(source.batches(epoch_batches(np.arange(16), 4, 1, 1)))) == 4
    first = pids()
    assert len(list(source.batches(epoch_batches(np.arange(16), 4, 1, 2)))) == 4
    second = pids()[len(first) :]
    assert len(first) == len(second) == 4  # every batch read once, in a worker
    assert os.getpid() not in first + second
    assert len(set(first)) == 2  # both workers read
    assert set(second) == set(first)  # the same two processes in the second epoch


@pytest.mark.parametrize("workers", [0, 2])
def test_every_epoch_gets_its_own_batches_after_one_left_part_way(workers, open_stream):
    """A partly iterated epoch leaves nothing behind (prefetched batches) for the next one."""
    mel, labels, source = open_stream(workers)

    def same(got, batches):
        assert len(got) == len(batches)
        for (mels, target), batch in zip(got, batches, strict=True):
            assert torch.equal(mels, torch.from_numpy(mel[batch]))
            assert torch.equal(target, torch.from_numpy(labels[batch].astype(np.float32)))

    epochs = {e: epoch_batches(np.arange(16), 3, 7, e) for e in range(1, 5)}  # 5 batches of 3 (1 dropped)
    same(list(source.batches(epochs[1])), epochs[1])
    partial = source.batches(epochs[2])
    same([next(partial)], epochs[2][:1])  # and then abandoned, its generator still alive
    same(list(source.batches(epochs[3])), epochs[3])
    with pytest.raises(RuntimeError, match="took over"):
        next(partial)  # a superseded epoch must not take the next one's batches
    one = source.batches(epochs[4])
    same([next(one)], epochs[4][:1])
    del one  # abandoned and collected part-way
    same(list(source.batches(epochs[4])), epochs[4])  # the same epoch again, from its start


def test_closing_the_stream_stops_its_worker_processes(monkeypatch, tmp_path, open_stream):
    pids = record_reader_pids(monkeypatch, tmp_path)
    _, _, source = open_stream(2)
    list(source.batches(epoch_batches(np.arange(16), 4, 1, 1)))
    workers = set(pids())
    assert len(workers) == 2 and os.getpid() not in workers
    assert not any(process_gone(pid) for pid in workers)  # they outlive the epoch...
    source.close()
    deadline = time.monotonic() + 30
    while not all(process_gone(pid) for pid in workers):  # ...and not close()
        assert time.monotonic() < deadline, f"workers {workers} still running after close()"
        time.sleep(0.02)
    source.close()  # twice is harmless


def test_device_source_uploads_an_epochs_positions_once_and_slices_them(monkeypatch):
    """On CUDA a host-to-device copy from pageable memory waits for the GPU: one per epoch, not per step."""
    import mstagger.training.batches as batches_module
    from mstagger.training.batches import DeviceSource

    uploads = []
    real = batches_module.upload
    monkeypatch.setattr(batches_module, "upload", lambda a, d: uploads.append(len(a)) or real(a, d))
    mel = np.random.default_rng(0).normal(size=(20, N_MELS, N_FRAMES)).astype(np.float16)
    labels = (np.arange(20 * N_TAGS).reshape(20, N_TAGS) % 3 == 0).astype(np.uint8)
    resident = np.arange(2, 20)
    source = DeviceSource(mel, labels, resident, torch.device("cpu"))
    batches = epoch_batches(resident, 5, 1, 1)  # 5, 5, 5, 3
    got = list(source.batches(batches))
    assert uploads == [18]
    assert [len(m) for m, _ in got] == [5, 5, 5, 3]
    for batch, (mels, target) in zip(batches, got, strict=True):
        assert torch.equal(mels, torch.from_numpy(mel[batch]))
        assert torch.equal(target, torch.from_numpy(labels[batch].astype(np.float32)))


def test_inference_on_resident_features_uploads_the_positions_once(monkeypatch):
    import mstagger.inference.tagger as tagger_module
    from mstagger.inference.tagger import Tagger, predict_logits
    from mstagger.model import MultiScaleCNN

    uploads = []
    real = tagger_module.upload
    monkeypatch.setattr(tagger_module, "upload", lambda a, d: uploads.append(len(a)) or real(a, d))
    torch.manual_seed(0)
    tagger = Tagger(
        MultiScaleCNN(n_tags=N_TAGS, n_mels=N_MELS, n_frames=N_FRAMES), np.zeros(N_MELS), np.ones(N_MELS)
    )
    mel = np.random.default_rng(1).normal(size=(12, N_MELS, N_FRAMES)).astype(np.float16)
    rows = np.array([11, 0, 5, 3, 7, 2, 9])
    resident = predict_logits(tagger, torch.from_numpy(mel), rows, precision="fp32", batch_size=3)
    assert uploads == [7]  # 3 batches, one upload
    assert torch.equal(resident, predict_logits(tagger, mel, rows, precision="fp32", batch_size=3))


def test_batchnorm_recalibration_never_reads_a_number_back_from_the_device(monkeypatch):
    """BatchNorm's cumulative average (momentum None) reads its batch counter with float(): on CUDA a
    wait per layer and batch. The recalibration gives the same statistics without it."""
    from mstagger.inference.tagger import Tagger
    from mstagger.model import MultiScaleCNN
    from mstagger.training.batches import DeviceSource
    from mstagger.training.epoch import recalibrate_batchnorm

    torch.manual_seed(0)
    tagger = Tagger(
        MultiScaleCNN(n_tags=N_TAGS, n_mels=N_MELS, n_frames=N_FRAMES), np.zeros(N_MELS), np.ones(N_MELS)
    )
    mel = np.random.default_rng(2).normal(size=(23, N_MELS, N_FRAMES)).astype(np.float16)
    source = DeviceSource(mel, np.zeros((23, N_TAGS), np.uint8), np.arange(23), torch.device("cpu"))
    rows = np.arange(3, 23)  # batches of 6, 6, 6, 2
    # the reference: PyTorch's cumulative average
    reference = Tagger(
        MultiScaleCNN(n_tags=N_TAGS, n_mels=N_MELS, n_frames=N_FRAMES), np.zeros(N_MELS), np.ones(N_MELS)
    )
    reference.load_state_dict(tagger.state_dict())
    norms = [m for m in reference.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    reference.train()
    with torch.no_grad():
        for start in range(0, 20, 6):
            reference(torch.from_numpy(mel[rows[start : start + 6]]))

    def no_read(self):
        raise AssertionError("a tensor was read back as a Python number")

    monkeypatch.setattr(torch.Tensor, "__float__", no_read)
    recalibrate_batchnorm(tagger, source, rows, 6, "fp32", torch.device("cpu"))
    monkeypatch.undo()
    got, want = tagger.state_dict(), reference.state_dict()
    for key in want:
        if "running" in key or "num_batches" in key:
            assert torch.equal(got[key], want[key]), key  # the same arithmetic: bit-identical
    assert all(
        m.momentum == 0.01 for m in tagger.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    )
