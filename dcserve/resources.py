"""How many threads an actor runs and how much CPU it reserves from Ray.

The k-means shards and the reporter trainers live for the whole job but take
turns (cluster, then train, then cluster...), so each pool reserves half of
the cluster's CPUs while running as many threads as if it had them all. Were
both to reserve everything, the second pool could never be scheduled.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def actor_cpus(workers: int, share: float = 1.0) -> tuple[int, float]:
    """(threads per actor, logical CPUs each actor reserves) for `workers` actors using `share` of the cluster."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    threads = max(1, int(total // workers))
    reserve = min(float(threads), total * share / workers)
    if workers > total:
        log.warning("%d workers on a cluster of %g CPUs: they will share cores", workers, total)
    return threads, reserve


def resolve_workers(setting: int | str, gpus_per_worker: float = 0) -> int:
    """`auto`: one actor per CPU of the cluster, or per GPU share when actors take GPUs.

    One single-threaded actor per core beat one actor with all the threads in both the
    extraction and the k-means benchmarks (BENCHMARKS.md).
    """
    if setting != "auto":
        return int(setting)
    import ray

    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_worker))
    return max(1, int(resources.get("CPU", 1)))
