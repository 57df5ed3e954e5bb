"""A ``.npy`` array filled row by row by several processes, then squeezed to the rows that were kept.

``extract`` creates one row per listed clip (a sparse file), its workers write each spectrogram into its
row with a positioned write (no process maps the multi-GB file, so none holds its pages), and the rows of
skipped clips are then squeezed out in place: the disk holds one copy of the array and RAM none.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COPY_CHUNK_ROWS = 256  # rows moved at a time when squeezing (~40 MB for 128 x 628 float16)


@dataclass(frozen=True)
class RowFile:
    """Where rows go: the ``.npy`` file, its header size, the bytes of one row, its dtype and row shape."""

    path: str
    offset: int
    row_bytes: int
    dtype: str
    row_shape: tuple[int, ...]


def create(path: str | Path, n_rows: int, row_shape: tuple[int, ...], dtype: np.dtype) -> RowFile:
    """Create a sparse ``.npy`` of ``n_rows`` rows of zeros (version 1.0 header, so its size is fixed)."""
    dtype = np.dtype(dtype)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n_rows, *row_shape), version=(1, 0))
    rows = RowFile(str(path), int(mm.offset), int(np.prod(row_shape)) * dtype.itemsize, dtype.str, row_shape)
    del mm
    return rows


def write_all(fd: int, data: bytes | memoryview, position: int) -> None:
    """``os.pwrite`` all of ``data`` at ``position`` (a single call may write less)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written


def write_row(fd: int, rows: RowFile, row: int, values: np.ndarray) -> None:
    """Write one row through a descriptor of ``rows.path`` opened for writing."""
    data = np.ascontiguousarray(values, dtype=np.dtype(rows.dtype))
    if data.shape != rows.row_shape:
        raise ValueError(f"row of shape {data.shape}, expected {rows.row_shape}")
    write_all(fd, data.data.cast("B"), rows.offset + row * rows.row_bytes)


def _runs(keep: list[int]) -> Iterator[tuple[int, int]]:
    """Split sorted row numbers into half-open runs of consecutive rows."""
    start = prev = None
    for row in keep:
        if start is None:
            start = prev = row
        elif row == prev + 1:
            prev = row
        else:
            yield start, prev + 1
            start = prev = row
    if start is not None:
        yield start, prev + 1


def compact(rows: RowFile, keep: list[int]) -> None:
    """Keep rows ``keep`` (sorted) in place: move rows up, rewrite the header's shape, truncate.

    Rows only ever move towards the start of the file, and each chunk is read whole before it is
    written, so a chunk never overwrites rows still to be read.
    """
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": rows.dtype, "fortran_order": False, "shape": (len(keep), *rows.row_shape)}
    )
    # numpy pads .npy headers so the row count can change without changing the header size.
    if len(header.getvalue()) != rows.offset:
        raise RuntimeError(
            f"{rows.path}: .npy header size changed ({rows.offset} -> {len(header.getvalue())})"
        )
    chunk_bytes = COPY_CHUNK_ROWS * rows.row_bytes
    fd = os.open(rows.path, os.O_RDWR)
    try:
        dst = rows.offset
        for start, stop in _runs(keep):
            src, end = rows.offset + start * rows.row_bytes, rows.offset + stop * rows.row_bytes
            if src == dst:
                dst = end
                continue
            while src < end:
                data = os.pread(fd, min(chunk_bytes, end - src), src)
                write_all(fd, data, dst)
                src, dst = src + len(data), dst + len(data)
        write_all(fd, header.getvalue(), 0)
        os.ftruncate(fd, dst)
    finally:
        os.close(fd)
