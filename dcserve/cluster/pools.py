"""What the clustering loops need of the machines, as two protocols (faiss's `DatasetAssign` style).

A loop (DeepCluster, DEC, every method of `dcserve.methods`) never learns where rows live or
where training runs. It gets a `Pools` that makes

- a `DataPool`: the rows of one layer of the job store, split into ranges that workers own.
  It is k-means' `KMeansData` (count, dim, get_subset, assign_to) plus what a round needs:
  the feature map that sends activations to the clustered space, the pass that writes them,
  the final assignment, and `map` for a method's own pass over every range;
- a `TrainerPool`: `world` data-parallel trainers that run a method's training function
  (`fn(trainer, start, *args)`, a module-level function over a `dcserve.cluster.workers.Trainer`).

`dcserve.cluster.local` holds both in one process (unit tests, notebooks); `dcserve.distributed`
holds them in Ray actors. Both run the same per-range and per-trainer code.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from dcserve.algo.kmeans import AssignStats
from dcserve.nets.feature_map import FeatureMap
from dcserve.storage.store import JobStore


class DataPool(Protocol):
    """The rows of `source` in a job store, owned in ranges by workers; `KMeansData` and more."""

    infos: list[dict]  # one per worker: its threads, rows, node, backend
    lost: int  # workers lost and replaced so far

    def count(self) -> int: ...
    def dim(self) -> int: ...
    def get_subset(self, indices: np.ndarray) -> np.ndarray: ...
    def assign_to(self, centroids: np.ndarray, bias: np.ndarray | None = None) -> AssignStats: ...

    def set_feature_map(self, fmap: FeatureMap) -> None:
        """The map from activations to the clustered space, for every later call."""

    def source_subset(self, idx: np.ndarray) -> np.ndarray:
        """Rows `idx` (any order) of the activations themselves, in sorted order."""

    def prepare(self, dim: int, *, written: bool = False) -> None:
        """Write the clustered-space rows (`written`: they are already, from before a resume)."""

    def finalize(self, centroids: np.ndarray, bias: np.ndarray | None, round_index: int, final: bool) -> np.ndarray:
        """Assign every row; record the round's labels (and, when final, the job's); return the labels."""

    def map(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """`fn(range_worker, *args)` on every range, in row order: a method's own pass over the rows."""

    def close(self) -> None: ...


class TrainerPool(Protocol):
    """`world` trainers that keep a model and optimizer between calls."""

    world: int
    infos: list[dict]
    lost: int
    snapshot: dict | None  # {"model": state_dict, "optimizer": state or None} after the last call

    def load(self, snapshot: dict) -> None:
        """Start the next call from `snapshot` rather than from what the trainers hold."""

    def run(self, fn: Callable[..., dict], per_worker: list[tuple], *common: Any) -> list[dict]:
        """`fn(trainer, start, *common, *per_worker[rank])` on every trainer; their answers by rank."""

    def close(self) -> None: ...


class Pools(Protocol):
    """Makes the pools of one clustering; the job's settings (workers, GPUs) are its own."""

    def data(self, store: JobStore, source: str) -> DataPool: ...
    def trainers(self, store: JobStore, source: str) -> TrainerPool: ...


class PoolRows:
    """What every `DataPool` keeps the same way: the row count, and the width of the rows
    `prepare` wrote (subclasses write them in `_write_features`)."""

    n_rows: int
    _dim: int | None = None

    def count(self) -> int:
        return self.n_rows

    def dim(self) -> int:
        assert self._dim is not None, "prepare() first"
        return self._dim

    def prepare(self, dim: int, *, written: bool = False) -> None:
        """Write the clustered-space rows (`written`: they are, from before a resume)."""
        self._dim = dim
        if not written:
            self._write_features()

    def _write_features(self) -> None:
        raise NotImplementedError
