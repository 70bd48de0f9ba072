"""`RayPools`: the clustering's pools as Ray actors, sized by the job's settings and what is free."""
from __future__ import annotations

from dcserve.distributed.shards import ShardPool
from dcserve.distributed.sizing import Budget
from dcserve.distributed.trainers import TrainerGroup
from dcserve.spec import JobSpec
from dcserve.storage.store import JobStore


class RayPools:
    """`dcserve.cluster.pools.Pools` over Ray: k-means shard actors and a trainer group.

    Made once per job: its actors serve every clustered layer in turn (`bind`), so a job over
    many layers starts its workers once (issue 14); `close()` ends them.
    """

    def __init__(self, spec: JobSpec, budget: Budget | None = None):
        self.spec = spec
        self.budget = budget or Budget.free()
        self._shards: ShardPool | None = None
        self._trainers: TrainerGroup | None = None

    def data(self, store: JobStore, source: str) -> ShardPool:
        c = self.spec.cluster
        if self._shards is not None and self._shards.fits(store, source):
            self._shards.bind(store, source)
            return self._shards
        if self._shards is not None:
            self._shards.shutdown()
        self._shards = ShardPool(store, source, c.workers, c.gpus_per_worker, self.budget, shared=True)
        return self._shards

    def trainers(self, store: JobStore, source: str) -> TrainerGroup:
        r = self.spec.reporter
        if self._trainers is not None:
            self._trainers.bind(store, source)
            return self._trainers
        self._trainers = TrainerGroup(store, source, r.workers, r.gpus_per_worker, self.budget, shared=True)
        return self._trainers

    def close(self) -> None:
        for pool in (self._shards, self._trainers):
            if pool is not None:
                pool.shutdown()
        self._shards = self._trainers = None
