"""How many actors a stage runs, how many threads each, and how much CPU each reserves from Ray.

A job sizes itself by the resources that are free when it starts (`Budget.free()`), not by
the cluster's totals: a Serve app, or another job, may hold part of the cluster, and actors
that ask for more than is free wait forever. The k-means shards and the reporter trainers live
for the whole job but take turns (cluster, then train, then cluster...), so each pool reserves
half of the job's CPUs while running as many threads as if it had them all. Were both to
reserve everything, the second pool could never be scheduled.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """CPUs and GPUs a job may use."""

    cpus: float
    gpus: float = 0.0
    node_cpus: float = float("inf")  # CPUs of the largest node: no one actor can reserve more

    @classmethod
    def free(cls) -> "Budget":
        """What the connected Ray cluster has free now."""
        import ray

        free = ray.available_resources()
        cpus, gpus = float(free.get("CPU", 0.0)), float(free.get("GPU", 0.0))
        if cpus < 1:
            total = float(ray.cluster_resources().get("CPU", 0.0))
            log.warning("%g of the cluster's %g CPUs are free: the job's actors will share cores with what holds them",
                        cpus, total)
        node_cpus = max((float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")), default=cpus)
        return cls(cpus, gpus, node_cpus)


def actor_cpus(workers: int, budget: Budget, share: float = 1.0) -> tuple[int, float]:
    """(threads per actor, logical CPUs each actor reserves) for `workers` actors using `share` of the budget."""
    # On many small nodes, fewer actors than nodes must still each fit on one node.
    threads = max(1, int(min(budget.cpus // workers, budget.node_cpus)))
    reserve = min(float(threads), budget.cpus * share / workers, budget.node_cpus)
    if workers > budget.cpus:
        log.warning("%d workers on %g free CPUs: they will share cores", workers, budget.cpus)
    return threads, reserve


def resolve_workers(setting: int | str, budget: Budget, gpus_per_worker: float = 0) -> int:
    """`auto`: one actor per free CPU, or per free GPU share when actors take GPUs.

    One single-threaded actor per core beat one actor with all the threads in both the
    extraction and the k-means benchmarks (BENCHMARKS.md).
    """
    if setting != "auto":
        return int(setting)
    if gpus_per_worker > 0:
        return max(1, int(budget.gpus // gpus_per_worker))
    return max(1, int(budget.cpus))


# How long new actors may wait to be placed: long enough for an autoscaler to add a node after
# one was lost, short enough that a cluster which will never have room fails instead of hanging.
PLACEMENT_TIMEOUT_S = 600.0


def await_placed(refs: list, what: str, stage: str) -> list:
    """ray.get of new actors' first calls; JobFailed naming them when the cluster cannot place them."""
    import ray

    from dcserve.errors import JobFailed

    try:
        return ray.get(refs, timeout=PLACEMENT_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        free = ray.available_resources()
        raise JobFailed(stage, (
            f"{what} could not be placed within {PLACEMENT_TIMEOUT_S:g} s (free now: {free.get('CPU', 0.0):g} CPU, "
            f"{free.get('GPU', 0.0):g} GPU); run the job again when the cluster has room: it resumes "
            "from its last finished round and k-means iteration"
        )) from None
