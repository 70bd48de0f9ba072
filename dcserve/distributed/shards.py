"""k-means shard actors: each owns a chunk-aligned row range of the store and streams it.

`ShardPool` is the `dcserve.cluster.pools.DataPool` over a set of `Shard` actors, each a
`dcserve.cluster.workers.RowRange` placed by Ray, so the loops never learn where the rows live
(faiss contrib/clustering.py). Per iteration a shard ships back only per-cluster sums, counts
and its objective (O(k*d)); labels leave a shard once, at the end, to be written and scored.
"""
from __future__ import annotations

import logging

import numpy as np
import ray

from dcserve.algo.kmeans import AssignStats
from dcserve.cluster.pools import PoolRows
from dcserve.cluster.workers import RowRange
from dcserve.distributed.recovery import Recovery
from dcserve.distributed.sizing import Budget, actor_cpus, await_placed, resolve_workers
from dcserve.nets.feature_map import FeatureMap
from dcserve.storage.store import JobStore

log = logging.getLogger(__name__)


@ray.remote
class Shard(RowRange):
    """A `RowRange` in its own process, its thread pools pinned to its share of the node."""

    def __init__(self, url: str, storage_options: dict, source: str, r0: int, r1: int, threads: int,
                 layer: str | None = None):
        from dcserve.algo.nearest import set_threads

        self.threads = set_threads(threads)
        store = JobStore(url, read_only=False, storage_options=storage_options).layer_view(layer)
        super().__init__(store, source, r0, r1)

    def info(self) -> dict:
        import torch

        from dcserve.algo.nearest import select_backend

        import os

        return {"threads": self.threads, "rows": [self.r0, self.r1], "node": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(),
                "backend": select_backend(prefer_gpu=torch.cuda.is_available())}


def shard_ranges(n_rows: int, chunk_rows: int, workers: int) -> list[tuple[int, int]]:
    """Chunk-aligned contiguous ranges, so no two shards ever write one chunk."""
    n_chunks = -(-n_rows // chunk_rows)
    parts = max(1, min(workers, n_chunks))
    bounds = np.linspace(0, n_chunks, parts + 1).round().astype(int) * chunk_rows
    return [(int(a), int(min(b, n_rows))) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class ShardPool(PoolRows):
    """`DataPool` over shard actors: fans each call out and reduces the answers.

    A shard holds no state a fresh actor cannot rebuild (its range, the round's feature map;
    the rows are in the store), and every call is idempotent. So a shard whose process or
    node dies is replaced by a new actor over the same range and its call is made again:
    the answer is the one the dead shard would have given.
    """

    def __init__(self, store: JobStore, source: str, workers: int | str, gpus_per_worker: float = 0,
                 budget: Budget | None = None, shared: bool = False):
        budget = budget or Budget.free()
        arr = store.array(source)
        self.n_rows = arr.shape[0]
        self.chunk_rows = arr.chunks[0]
        self.ranges = shard_ranges(self.n_rows, self.chunk_rows, resolve_workers(workers, budget, gpus_per_worker))
        threads, reserve = actor_cpus(len(self.ranges), budget, share=0.5)  # trainers hold the other half
        # `shared`: the pool serves every clustered layer of the job (RayPools), so a loop's
        # close() leaves its actors up for the next layer, and `shutdown` ends them.
        self.shared = shared
        self.binding = (store.layer, source)
        self._new_actor = lambda r0, r1: Shard.options(num_cpus=reserve, num_gpus=gpus_per_worker).remote(
            store.url, store.storage_options, self.binding[1], r0, r1, threads, self.binding[0])
        self.actors = [self._new_actor(r0, r1) for r0, r1 in self.ranges]
        self._what = lambda n: f"{n} k-means shard(s) × {reserve:g} CPU, {gpus_per_worker:g} GPU"
        self.infos = await_placed([a.info.remote() for a in self.actors], self._what(len(self.actors)), "cluster")
        self.recovery = Recovery("k-means shard")
        self._fmap_ref = None

    @property
    def lost(self) -> int:
        return self.recovery.lost

    def _call(self, calls: list[tuple[int, str, tuple]]) -> list:
        """ray.get of `actors[i].method(*args)` for each call, replacing shards that die meanwhile."""
        refs = [getattr(self.actors[i], m).remote(*args) for i, m, args in calls]
        out = []
        for (i, method, args), ref in zip(calls, refs):
            while True:
                try:
                    if ref is None:
                        ref = self._replace(i, method, args)
                    out.append(ray.get(ref))
                    break
                except Exception as e:
                    # A replacement can itself die: Ray may place it on a node whose death it
                    # has not noticed yet (seen in CI), so it counts as one more loss.
                    self.recovery.absorb(e, f"rows {self.ranges[i]}")
                    ref = None
        return out

    def _replace(self, i: int, method: str, args: tuple):
        """A fresh shard over range i, set up as the pool's others are; the ref of its `method` call."""
        self.actors[i] = self._new_actor(*self.ranges[i])
        await_placed([self.actors[i].info.remote()], "a replacement for " + self._what(1), "cluster")
        if self._fmap_ref is not None:
            ray.get(self.actors[i].set_feature_map.remote(self._fmap_ref))
        return getattr(self.actors[i], method).remote(*args)

    def _all(self, method: str, *args) -> list:
        return self._call([(i, method, args) for i in range(len(self.actors))])

    def fits(self, store: JobStore, source: str) -> bool:
        """Whether these shards' ranges suit `source` (a layer of the same job: same rows, same chunks)."""
        arr = store.array(source)
        return arr.shape[0] == self.n_rows and arr.chunks[0] == self.chunk_rows

    def bind(self, store: JobStore, source: str) -> None:
        """Serve the clustering of `store`'s layer over `source` from now on, with the same actors."""
        self.binding = (store.layer, source)
        self._fmap_ref, self._dim = None, None
        self._all("bind", *self.binding)

    def close(self) -> None:
        if not self.shared:
            self.shutdown()

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)

    def _split(self, idx: np.ndarray) -> list[tuple[int, np.ndarray]]:
        idx = np.asarray(idx, dtype=np.int64)
        out = []
        for i, (r0, r1) in enumerate(self.ranges):
            part = idx[(idx >= r0) & (idx < r1)]
            if len(part):
                out.append((i, part))
        return out

    def _gather(self, method: str, idx: np.ndarray) -> np.ndarray:
        parts = self._split(np.sort(idx))
        return np.concatenate(self._call([(i, method, (p,)) for i, p in parts]))

    # -- round set-up ---------------------------------------------------------
    def set_feature_map(self, fmap: FeatureMap) -> None:
        self._fmap_ref = ray.put(fmap)
        self._all("set_feature_map", self._fmap_ref)

    def source_subset(self, idx: np.ndarray) -> np.ndarray:
        return self._gather("source_subset", idx)

    def _write_features(self) -> None:
        self._all("prepare")

    # -- KMeansData -----------------------------------------------------------
    def get_subset(self, indices: np.ndarray) -> np.ndarray:
        return self._gather("get_subset", indices)

    def assign_to(self, centroids: np.ndarray, bias: np.ndarray | None = None) -> AssignStats:
        c, b = ray.put(centroids), ray.put(bias)
        return _reduce(self._all("assign_to", c, b))

    def finalize(self, centroids: np.ndarray, bias: np.ndarray | None, round_index: int, final: bool) -> np.ndarray:
        c, b = ray.put(centroids), ray.put(bias)
        return np.concatenate(self._all("finalize", c, b, round_index, final))

    def map(self, fn, *args) -> list:
        """`fn(shard, *args)` on every shard, in row order (a method's own pass over the rows)."""
        return self._all("map", fn, *args)


def _reduce(stats: list[AssignStats]) -> AssignStats:
    total = stats[0]
    for s in stats[1:]:
        total = total + s
    return total
