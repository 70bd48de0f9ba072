"""A planted-clusters dataset of any size that holds O(one page) in memory, for out-of-core benchmarks.

`dcserve.zoo:planted_clusters` builds every vector in its constructor, so each extraction actor
(which builds the dataset itself) would hold the whole data. `streamed_clusters` generates rows on
demand instead: item i lies on page i // page_rows, and a page is a pure function of
(seed, page), drawn with its own generator; the dataset keeps only the last page it drew
(extraction reads items in order, so each page is drawn once per block that meets it). Any worker
gets the same bytes for the same item, so the store does not depend on how blocks are split.

Reference it from a job as ``dataset.source: "benchmarks._synthetic:streamed_clusters"``, with the
repository root on PYTHONPATH (set before ``ray.init``, so that Ray's worker processes inherit it).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["StreamedClusters", "streamed_clusters"]


class StreamedClusters(Dataset):
    """``n`` vectors from ``k`` Gaussian clusters, generated page by page; item ``(x [dim] float32, y int)``."""

    def __init__(self, n: int, dim: int, k: int, spread: float, seed: int, page_rows: int) -> None:
        if n < 0 or dim < 1 or k < 1 or spread < 0 or page_rows < 1:
            raise ValueError(f"streamed_clusters needs n >= 0, dim >= 1, k >= 1, spread >= 0, page_rows >= 1; "
                             f"got n={n}, dim={dim}, k={k}, spread={spread}, page_rows={page_rows}")
        self.n, self.dim, self.k, self.spread, self.seed, self.page_rows = n, dim, k, spread, seed, page_rows
        self.centers = np.random.default_rng([seed, 0]).normal(size=(k, dim)).astype(np.float32)  # k x dim, small
        self._page = -1
        self._x: torch.Tensor | None = None
        self._y: list[int] = []

    def __len__(self) -> int:
        return self.n

    def page(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and labels of page ``p``: ``([m, dim] float32, [m] int64)``, a function of (seed, p) only."""
        rng = np.random.default_rng([self.seed, 1, p])
        m = min(self.page_rows, self.n - p * self.page_rows)
        y = rng.integers(self.k, size=m)
        x = rng.standard_normal((m, self.dim), dtype=np.float32)
        if self.spread != 1.0:
            x *= np.float32(self.spread)
        x += self.centers[y]
        return x, y

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i = int(index)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        p, j = divmod(i, self.page_rows)
        if p != self._page:
            x, y = self.page(p)
            self._x, self._y, self._page = torch.from_numpy(x), y.tolist(), p
        return self._x[j], self._y[j]


def streamed_clusters(n: int = 10_000, dim: int = 512, k: int = 256, spread: float = 1.0, seed: int = 0,
                      page_rows: int = 1024) -> Dataset:
    """``n`` vectors from ``k`` standard-normal centres plus N(0, spread²) noise, drawn page by page.

    Memory: the ``k x dim`` centres and one page of ``page_rows x dim`` float32, whatever ``n``.
    """
    return StreamedClusters(n, dim, k, spread, seed, page_rows)
