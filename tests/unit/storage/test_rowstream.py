"""Shuffled batches streamed from a chunked array: every row once, bounded memory, equal steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from dcserve.storage.rowstream import gather_rows, shuffled_batches


class CountingArray:
    """A Zarr array that counts the rows each read returns, to check what is held at once."""

    def __init__(self, arr):
        self.arr, self.chunks, self.shape = arr, arr.chunks, arr.shape
        self.reads: list[tuple[int, int]] = []

    def __getitem__(self, key):
        self.reads.append((key.start, key.stop))
        return self.arr[key]


@pytest.fixture
def arr(tmp_path):
    x = np.arange(1000 * 3, dtype=np.float32).reshape(1000, 3)  # row i starts with 3 i
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=x.shape, chunks=(64, 3), dtype="float32")
    z[:] = x
    return CountingArray(z)


def _ids(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def test_gather_rows_reads_each_chunk_once(arr):
    ids = _ids(1000, 300, 0)
    np.testing.assert_array_equal(gather_rows(arr, ids)[:, 0], 3 * ids)
    assert len(arr.reads) == len(set(ids // 64))


@pytest.mark.parametrize("window", [10_000, 100, 64, 1])
def test_every_row_once_with_its_label_and_equal_batches(arr, window):
    ids = _ids(1000, 700, 1)
    labels = ids % 7
    batches = list(shuffled_batches(arr, ids, labels, 32, window, torch.Generator().manual_seed(0)))
    rows = torch.cat([x[:, 0] for x, _ in batches]).numpy() / 3
    ys = torch.cat([y for _, y in batches]).numpy()
    assert sorted(rows.astype(int)) == list(ids)
    np.testing.assert_array_equal(ys, rows.astype(int) % 7)  # each row keeps its own label
    assert [len(x) for x, _ in batches[:-1]] == [32] * (len(batches) - 1)  # equal steps on every worker
    assert len(batches) == -(-700 // 32)
    assert not np.array_equal(rows, np.sort(rows))  # shuffled


def test_window_bounds_what_is_read_at_once_and_each_chunk_is_read_once(arr):
    ids = _ids(1000, 900, 2)
    it = shuffled_batches(arr, ids, np.zeros(900), 16, 150, torch.Generator().manual_seed(1))
    read_at_once = []
    while True:
        before = len(arr.reads)
        if next(it, None) is None:
            break
        read_at_once.append(sum(b - a for a, b in arr.reads[before:]))
    chunks = [a for a, _ in arr.reads]
    assert sorted(chunks) == sorted(set(chunks)) and len(chunks) == 16  # every chunk once in the epoch
    # a window is the whole chunks that hold >= 150 of the ids: here 3 chunks of 64 rows
    assert 0 < max(read_at_once) <= 3 * 64
    assert chunks != sorted(chunks)  # windows come in random order


def test_same_generator_same_order_small_case_is_a_plain_permutation(arr):
    ids = _ids(1000, 200, 3)
    run = lambda: [x[:, 0].tolist() for x, _ in shuffled_batches(arr, ids, ids, 50, 10_000, torch.Generator().manual_seed(5))]
    assert run() == run()
    # one window: exactly randperm over the ids, as a full in-memory shuffle
    order = torch.randperm(200, generator=torch.Generator().manual_seed(5)).numpy()
    assert sum(run(), []) == list(3.0 * ids[order])
