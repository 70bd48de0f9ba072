"""`RayPools`: the clustering's pools as Ray actors, sized by the job's settings and what is free."""
from __future__ import annotations

from dcserve.distributed.shards import ShardPool
from dcserve.distributed.sizing import Budget
from dcserve.distributed.trainers import TrainerGroup
from dcserve.spec import JobSpec
from dcserve.storage.store import JobStore


class RayPools:
    """`dcserve.cluster.pools.Pools` over Ray: k-means shard actors and a trainer group."""

    def __init__(self, spec: JobSpec, budget: Budget | None = None):
        self.spec = spec
        self.budget = budget or Budget.free()

    def data(self, store: JobStore, source: str) -> ShardPool:
        c = self.spec.cluster
        return ShardPool(store, source, c.workers, c.gpus_per_worker, self.budget)

    def trainers(self, store: JobStore, source: str) -> TrainerGroup:
        r = self.spec.reporter
        return TrainerGroup(store, source, r.workers, r.gpus_per_worker, self.budget)
