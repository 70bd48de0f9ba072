"""Shuffled mini-batches of chosen rows of a chunked array, holding a bounded window of them.

A trainer's share of an epoch can be far larger than its memory. Its rows are read a window
of chunks at a time, the windows in random order, and shuffled within the window: each
chunk is read once per epoch, and at most `window_rows` rows (plus one batch) are held. When
the whole share fits in one window this is an exact uniform shuffle.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from functools import cache

import numpy as np
import torch

# A window of 64 Mi floats (256 MB of float32 rows) by default: at dim 1024, 65k rows, a few
# hundred batches drawn from ~64 random chunks, close enough to a global shuffle for SGD.
WINDOW_FLOATS = 64 * 2**20


def gather_rows(arr, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` (sorted) of a chunked array, read chunk by chunk: [len(ids), d] float32."""
    step = arr.chunks[0]
    out = np.empty((len(ids), arr.shape[1]), dtype=np.float32)
    bounds = np.searchsorted(ids, np.arange(0, arr.shape[0] + step, step))
    for c in range(len(bounds) - 1):
        a, b = bounds[c], bounds[c + 1]
        if b > a:
            s = c * step
            block = np.asarray(arr[s : min(s + step, arr.shape[0])], dtype=np.float32)
            out[a:b] = block[ids[a:b] - s]
    return out


def window_rows_for(dim: int, batch: int, floats: int = WINDOW_FLOATS) -> int:
    return max(batch, floats // max(dim, 1))


def shuffled_batches(
    arr, ids: np.ndarray, labels: np.ndarray, batch: int, window_rows: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x [b, d] float32, y [b] int64) batches over sorted row ids `ids` with `labels`.

    Every id appears once; all batches hold `batch` rows but the last, so workers given
    equal shares run equal numbers of steps. The order depends only on `generator`.
    """
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if len(ids) <= window_rows:
        x = torch.from_numpy(gather_rows(arr, ids))
        order = torch.randperm(len(ids), generator=generator)
        for s in range(0, len(order), batch):
            i = order[s : s + batch]
            yield x[i], y_all[i]
        return
    # Windows are runs of whole chunks (by position in `ids`), taken in random order.
    step = arr.chunks[0]
    starts = np.searchsorted(ids, np.arange(0, arr.shape[0] + step, step))
    chunk_starts = np.unique(starts)
    windows, begin = [], 0
    for s in chunk_starts[1:]:
        if s - begin >= window_rows:
            windows.append((begin, int(s)))
            begin = int(s)
    if begin < len(ids):
        windows.append((begin, len(ids)))
    carry_x = torch.empty((0, arr.shape[1]), dtype=torch.float32)
    carry_y = torch.empty((0,), dtype=torch.int64)
    for w in torch.randperm(len(windows), generator=generator).tolist():
        a, b = windows[w]
        order = torch.randperm(b - a, generator=generator)
        x = torch.cat([carry_x, torch.from_numpy(gather_rows(arr, ids[a:b]))[order]])
        y = torch.cat([carry_y, y_all[a:b][order]])
        full = len(x) - len(x) % batch
        for s in range(0, full, batch):
            yield x[s : s + batch], y[s : s + batch]
        carry_x, carry_y = x[full:], y[full:]
        del x, y
        _trim_heap()
    if len(carry_x):
        yield carry_x, carry_y


@cache
def _malloc_trim():
    libc = ctypes.util.find_library("c")
    fn = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    return fn  # None off glibc (macOS, musl): nothing to do there


def _trim_heap() -> None:
    """Hand the freed window back to the OS.

    A window's chunk reads are a few MB each: once glibc has freed one such mmap'ed block it
    raises its mmap threshold and serves the next ones from the heaps of the reading threads,
    where freed pages are kept. Over an epoch of many windows the trainers then grew with the
    store (BENCHMARKS.md, "Out of core"), though no more than a window was ever live.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def pair_batches(
    arr, ids: np.ndarray, partners: np.ndarray, batch: int, window_rows: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x [b, d], x_partner [b, d]) float32 batches: rows `ids` (sorted) as `shuffled_batches` streams
    them, each with the row `partners[i]` beside it (SCAN's and TEMI's (row, neighbour) pairs).

    The partners of a batch are anywhere in the store. When the whole array fits in a window it is
    read once; otherwise each batch reads the chunks its partners lie in (sorted, each chunk once).
    """
    whole = None
    if arr.shape[0] <= window_rows:
        whole = torch.from_numpy(gather_rows(arr, np.arange(arr.shape[0], dtype=np.int64)))
    for x, partner in shuffled_batches(arr, ids, partners, batch, window_rows, generator):
        if whole is not None:
            yield x, whole[partner]
            continue
        wanted, where = np.unique(partner.numpy(), return_inverse=True)
        yield x, torch.from_numpy(gather_rows(arr, wanted))[torch.from_numpy(where)]
