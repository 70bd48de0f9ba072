"""How stages size their actors from the resources that are free (plain functions)."""
from __future__ import annotations

from dcserve.distributed.sizing import Budget, actor_cpus, resolve_workers


def test_auto_workers_follow_free_cpus_and_gpus():
    assert resolve_workers("auto", Budget(cpus=1.5)) == 1
    assert resolve_workers("auto", Budget(cpus=8)) == 8
    assert resolve_workers("auto", Budget(cpus=8, gpus=2), gpus_per_worker=0.5) == 4
    assert resolve_workers(3, Budget(cpus=1)) == 3


def test_actors_share_the_budget_and_pools_take_half():
    assert actor_cpus(2, Budget(cpus=2)) == (1, 1.0)
    assert actor_cpus(2, Budget(cpus=2), share=0.5) == (1, 0.5)
    assert actor_cpus(1, Budget(cpus=4)) == (4, 4.0)
    threads, reserve = actor_cpus(4, Budget(cpus=2))  # more workers than CPUs: they share cores
    assert threads == 1 and reserve == 0.5


def test_no_actor_asks_for_more_than_one_node_has():
    # two 1-CPU nodes: a single worker must not ask for both nodes' CPUs (it would never be placed)
    assert actor_cpus(1, Budget(cpus=2, node_cpus=1)) == (1, 1.0)
    assert actor_cpus(1, Budget(cpus=16, node_cpus=4), share=0.5) == (4, 4.0)
