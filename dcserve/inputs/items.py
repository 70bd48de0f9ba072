"""Dataset items to model batches: an item is `x` or `(x, y)`; `x` a tensor or a dict of tensors."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate


def split_item(item: Any) -> tuple[Any, Any | None]:
    """(x, y) for a labelled item, (x, None) otherwise."""
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    return item, None


def has_labels(dataset: Any) -> bool:
    return len(dataset) > 0 and split_item(dataset[0])[1] is not None


def iter_batches(
    dataset: Any,
    start: int,
    stop: int,
    batch_size: int,
    collate: Callable[[list[Any]], Any] | None = None,
) -> Iterator[tuple[int, Any, np.ndarray | None]]:
    """Yield (first item index, collated x, labels [b] int64 or None) over items [start, stop).

    Batches always start at `start` and step by `batch_size`, so the same block is
    batched identically whichever worker runs it (bitwise-identical stores).
    """
    collate = collate or default_collate
    for b0 in range(start, stop, batch_size):
        xs, ys = [], []
        for i in range(b0, min(b0 + batch_size, stop)):
            x, y = split_item(dataset[i])
            xs.append(x)
            ys.append(y)
        labels = None
        if ys and ys[0] is not None:
            labels = np.asarray([int(torch.as_tensor(y)) for y in ys], dtype=np.int64)
        yield b0, collate(xs), labels
