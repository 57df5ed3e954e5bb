"""Training batches: which clips form each step, and where their spectrograms come from.

The batches of an epoch are a pure function of the seed and the epoch (:func:`epoch_batches`). Two
sources deliver them, the same batches in the same order, so the choice never changes the result:

- :class:`DeviceSource`: the train and valid spectrograms are copied to the device once, as float16,
  and every batch is gathered there: the epoch's indices go up in one asynchronous copy and each
  step slices them on the device (no DataLoader, no host copy and no wait on the GPU per step);
- :class:`StreamSource`: batches are read from the memory-mapped ``mel.npy`` by a DataLoader (worker
  processes when ``num_workers`` > 0) into pinned memory and copied to the device asynchronously, so
  host memory stays flat however large the dataset. One DataLoader serves the whole run: its worker
  processes persist from epoch to epoch (no start-up per epoch), its sampler is handed each epoch's
  batches, and :meth:`StreamSource.close` stops the workers at the end.

Both have ``close()``, so a caller ends a run the same way whichever source it holds.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from mstagger.core.disk import human_size
from mstagger.core.log import log
from mstagger.inference.tagger import upload

# Share of the device's free memory the resident features may take under data_on_device: auto; the
# rest is for weights, optimiser state and activations (a few GB at batch 32 x 128 x 628).
DEVICE_SHARE = 0.6
COPY_CHUNK = 512  # clips copied to the device at a time


def epoch_batches(
    rows: np.ndarray, batch_size: int, seed: int, epoch: int, world_size: int = 1
) -> list[np.ndarray]:
    """The global batches of one epoch: ``rows`` shuffled by (seed, epoch), cut into ``batch_size``.

    Each batch is sorted (sequential reads of a memory map; the same order on every data path). A
    last batch too small to give every process at least two clips is dropped: BatchNorm cannot
    train on one example.

    Args:
        rows: the training rows.
        batch_size: clips per optimisation step, over all processes.
        seed, epoch: the shuffle is a pure function of these.
        world_size: data-parallel processes; each takes a share of every batch (:func:`rank_share`).
    """
    order = np.random.default_rng([seed, epoch]).permutation(rows)
    batches = [np.sort(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
    return [b for b in batches if len(b) >= 2 * world_size]


def rank_share(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The clips of a global batch that process ``rank`` of ``world_size`` trains on (disjoint shares)."""
    return batch[rank::world_size]


def choose_device_data(setting: bool | str, device: torch.device, nbytes: int) -> bool:
    """Whether the features go on the device: ``data_on_device`` true/false, or auto.

    ``auto`` puts them on a CUDA device when they take at most :data:`DEVICE_SHARE` of its free
    memory; on the CPU it streams from the memory map (the OS page cache already holds what fits).
    """
    if setting != "auto":
        return bool(setting)
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    fits = nbytes <= DEVICE_SHARE * free
    if not fits:
        log.info(
            "data_on_device auto: the features (%s) exceed %d%% of the %s free on %s; streaming from disk",
            human_size(nbytes),
            round(100 * DEVICE_SHARE),
            human_size(free),
            device,
        )
    return fits


class DeviceSource:
    """The spectrograms and labels of some rows, resident on the device as float16 / float32.

    Args:
        mel: (clips, n_mels, n_frames) raw log-mel, e.g. the memory map of ``mel.npy``.
        labels: (clips, n_tags) 0/1.
        rows: the rows to hold (train and valid).
        device: where to put them.
    """

    def __init__(self, mel: np.ndarray, labels: np.ndarray, rows: np.ndarray, device: torch.device) -> None:
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        self.slot = np.full(len(mel), -1, dtype=np.int64)  # row of mel -> row of self.mel
        self.slot[rows] = np.arange(len(rows))
        self.device = device
        self.mel = torch.empty((len(rows), *mel.shape[1:]), dtype=torch.float16, device=device)
        for start in range(0, len(rows), COPY_CHUNK):
            chunk = np.ascontiguousarray(mel[rows[start : start + COPY_CHUNK]], dtype=np.float16)
            self.mel[start : start + len(chunk)] = torch.from_numpy(chunk).to(device)
        self.labels = torch.from_numpy(np.asarray(labels[rows], dtype=np.float32)).to(device)

    @property
    def nbytes(self) -> int:
        """Device memory the features and labels take."""
        return self.mel.numel() * self.mel.element_size() + self.labels.numel() * 4

    def slots(self, rows: np.ndarray) -> np.ndarray:
        """Positions of ``rows`` (rows of ``mel.npy``) in the resident tensors."""
        slots = self.slot[rows]
        if (slots < 0).any():
            raise KeyError(f"rows {rows[slots < 0][:5].tolist()} are not on the device")
        return slots

    def batches(self, batches: list[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(mels float16 (B, M, T), targets float32 (B, n_tags)) per batch, gathered on the device.

        The positions of all the batches are uploaded once (:func:`upload`) and sliced on the device.
        """
        if not batches:
            return
        ends = np.cumsum([len(b) for b in batches]).tolist()
        idx = upload(self.slots(np.concatenate(batches)), self.device)
        for start, end in zip([0, *ends[:-1]], ends, strict=True):
            part = idx[start:end]  # a view on the device: no copy, no wait
            yield self.mel[part], self.labels[part]

    def for_inference(self, rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """What :func:`~mstagger.inference.tagger.predict_logits` takes to score ``rows``: (array, rows)."""
        return self.mel, self.slot[rows]

    def close(self) -> None:
        """Nothing to stop: no worker process, no thread (the same call as :meth:`StreamSource.close`)."""


class _BatchDataset(torch.utils.data.Dataset):
    """Item ``rows`` (an array of rows of ``mel``) is that batch: (mels float16 (B, M, T), labels
    float32 (B, n_tags))."""

    def __init__(self, mel: np.ndarray, labels: np.ndarray) -> None:
        self.mel, self.labels = mel, labels

    def __getstate__(self) -> dict:
        # Workers started by spawn/forkserver get this object pickled: send the memmap's path, not
        # the 4.2 GB it maps (pickling an np.memmap copies its data).
        state = self.__dict__.copy()
        if isinstance(self.mel, np.memmap) and self.mel.filename:
            state["mel"] = str(self.mel.filename)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["mel"], str):
            state["mel"] = np.load(state["mel"], mmap_mode="r")
        self.__dict__.update(state)

    def __getitem__(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        mels = torch.from_numpy(np.ascontiguousarray(self.mel[rows], dtype=np.float16))
        return mels, torch.from_numpy(self.labels[rows].astype(np.float32))


class _EpochSampler(torch.utils.data.Sampler):
    """The DataLoader's items: the row arrays of the current epoch's batches, set before each epoch.

    Each ``iter()`` (a DataLoader's new epoch) walks the list set last; the DataLoader passes every
    array to ``_BatchDataset[rows]`` (``batch_size=None``: no collation).
    """

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[np.ndarray] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamSource:
    """Batches read from the memory map as they are needed, through pinned memory to the device.

    One DataLoader for the whole run: with ``num_workers`` > 0 its worker processes start with the
    first epoch and persist until :meth:`close` (call it when the run ends, also on failure).

    Args:
        mel: the memory map of ``mel.npy``.
        labels: (clips, n_tags) 0/1.
        device: where batches go.
        num_workers: DataLoader worker processes (0: read in this process, no overlap with compute).
    """

    def __init__(self, mel: np.ndarray, labels: np.ndarray, device: torch.device, num_workers: int) -> None:
        self.mel, self.labels, self.device, self.num_workers = mel, labels, device, num_workers
        self._sampler = _EpochSampler()
        self._epoch = 0  # batches() iterations begun (and close() calls): a superseded one stops
        self._loader = torch.utils.data.DataLoader(
            _BatchDataset(mel, labels),
            batch_size=None,
            sampler=self._sampler,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if num_workers else None,
            # Its own generator: a DataLoader otherwise draws a seed from the global RNG, which would
            # shift the dropout masks and make this path differ from DeviceSource.
            generator=torch.Generator(),
        )

    def batches(self, batches: list[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(mels float16 (B, M, T), targets float32 (B, n_tags)) per batch, on the device.

        One epoch at a time: an iteration left part-way is abandoned when the next one begins (the
        persistent workers discard what they had prefetched for it), and resuming it then raises.
        """
        if not batches:
            return
        self._epoch += 1
        epoch = self._epoch
        self._sampler.batches = list(batches)
        items = iter(self._loader)  # with persistent workers: the same workers, reset to this list
        for _ in range(len(batches)):
            if self._epoch != epoch:
                raise RuntimeError("StreamSource.batches: a later epoch or close() took over the DataLoader")
            mels, target = next(items)
            yield mels.to(self.device, non_blocking=True), target.to(self.device, non_blocking=True)

    def for_inference(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What :func:`~mstagger.inference.tagger.predict_logits` takes to score ``rows``: (array, rows)."""
        return self.mel, rows

    def close(self) -> None:
        """Stop the worker processes and the pinning thread, now; a later :meth:`batches` starts new ones."""
        self._epoch += 1
        # The DataLoader keeps its persistent iterator (workers, queues, thread) in ``_iterator`` and
        # stops them only when it is garbage-collected; shut them down explicitly.
        iterator, self._loader._iterator = self._loader._iterator, None
        if iterator is not None:
            iterator._shutdown_workers()
