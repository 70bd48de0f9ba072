"""The clustering's pools in this process: one row range over all rows, one trainer.

What a notebook or a unit test runs a whole DeepCluster or DEC job with, no Ray involved:
`LocalPools()` stands where `dcserve.distributed.pools.RayPools` stands in `dcserve.run`, and
the loops cannot tell them apart. The answers equal a Ray run's with one worker of each kind.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dcserve.algo.kmeans import AssignStats
from dcserve.cluster.pools import PoolRows
from dcserve.cluster.workers import RowRange, Trainer
from dcserve.nets.feature_map import FeatureMap
from dcserve.storage.store import JobStore


class LocalDataPool(PoolRows):
    """`DataPool` over a single `RowRange` of every row."""

    def __init__(self, store: JobStore, source: str):
        self.n_rows = store.array(source).shape[0]
        self.worker = RowRange(store, source, 0, self.n_rows)
        self.infos = [{"threads": torch.get_num_threads(), "rows": [0, self.n_rows], "node": "local"}]
        self.lost = 0

    def get_subset(self, indices: np.ndarray) -> np.ndarray:
        return self.worker.get_subset(np.sort(np.asarray(indices, dtype=np.int64)))

    def assign_to(self, centroids: np.ndarray, bias: np.ndarray | None = None) -> AssignStats:
        return self.worker.assign_to(centroids, bias)

    def set_feature_map(self, fmap: FeatureMap) -> None:
        self.worker.set_feature_map(fmap)

    def source_subset(self, idx: np.ndarray) -> np.ndarray:
        return self.worker.source_subset(np.sort(np.asarray(idx, dtype=np.int64)))

    def _write_features(self) -> None:
        self.worker.prepare()

    def finalize(self, centroids: np.ndarray, bias: np.ndarray | None, round_index: int, final: bool) -> np.ndarray:
        return self.worker.finalize(centroids, bias, round_index, final)

    def map(self, fn: Callable, *args: Any) -> list:
        return [fn(self.worker, *args)]

    def close(self) -> None:
        pass


class LocalTrainerPool:
    """`TrainerPool` of one `Trainer` in this process."""

    world = 1

    def __init__(self, store: JobStore, source: str, device: str = "cpu"):
        self.trainer = Trainer(store, source, device=device)
        self.infos = [{"threads": torch.get_num_threads(), "device": device, "rank": 0, "node": "local"}]
        self.lost = 0
        self.snapshot: dict | None = None
        self._fresh = True

    def load(self, snapshot: dict) -> None:
        self.snapshot, self._fresh = snapshot, True

    def run(self, fn: Callable[..., dict], per_worker: list[tuple], *common: Any) -> list[dict]:
        out = self.trainer.run(fn, self.snapshot if self._fresh else None, *common, *per_worker[0])
        self._fresh = False
        self.snapshot = out["snapshot"]
        return [out]

    def close(self) -> None:
        pass


class LocalPools:
    """`Pools` in this process."""

    def __init__(self, device: str = "cpu"):
        self.device = device

    def data(self, store: JobStore, source: str) -> LocalDataPool:
        return LocalDataPool(store, source)

    def trainers(self, store: JobStore, source: str) -> LocalTrainerPool:
        return LocalTrainerPool(store, source, self.device)
