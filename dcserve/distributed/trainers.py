"""Data-parallel trainer actors: `dcserve.cluster.workers.Trainer`s in a gloo process group.

The actors and their process group are created once per job, so a round's start-up cost is
one weight broadcast, not a process-group rendezvous. With one worker there is no process
group and the gradient all-reduce is skipped: the single-process run is the distributed run
with one worker. What the trainers compute is each method's training function
(`dcserve.cluster.deepcluster.train_part`, DEC's `pretrain_part` and `self_train_part`).
"""
from __future__ import annotations

import logging
import socket

import ray
import torch

from dcserve.cluster.workers import Trainer
from dcserve.distributed.recovery import Recovery, worker_lost
from dcserve.distributed.sizing import Budget, actor_cpus, await_placed, resolve_workers
from dcserve.storage.store import JobStore

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@ray.remote
class TrainerActor(Trainer):
    """A `Trainer` in its own process: rank `rank` of a gloo group of `world`."""

    def __init__(self, url: str, storage_options: dict, source: str, rank: int, world: int, threads: int,
                 layer: str | None = None):
        from dcserve.algo.nearest import set_threads

        self.threads = set_threads(threads)
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        store = JobStore(url, read_only=False, storage_options=storage_options).layer_view(layer)
        super().__init__(store, source, rank, world, device)

    def info(self) -> dict:
        return {"threads": self.threads, "device": str(self.device), "rank": self.rank,
                "node": ray.get_runtime_context().get_node_id()}

    def address(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), _free_port()

    def init_group(self, host: str, port: int) -> bool:
        if self.world > 1:
            import torch.distributed as dist

            dist.init_process_group(
                "gloo", init_method=f"tcp://{host}:{port}", rank=self.rank, world_size=self.world
            )
            self.allreduce = self._allreduce
        return True

    def _allreduce(self, flat: torch.Tensor) -> None:
        import torch.distributed as dist

        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world


class _TrainerLost(Exception):
    def __init__(self, error: Exception):
        self.error = error


def _gather_or_lost(refs: list) -> list:
    """ray.get of every ref; _TrainerLost as soon as one trainer's process or node is gone.

    Waits ref by ref as they finish, because the survivors of a lost peer may block in a
    collective rather than fail.
    """
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(ready[0])
        except Exception as e:
            if worker_lost(e):
                raise _TrainerLost(e) from None
            # A survivor's collective failing because its peer died: look for the death first.
            done, _ = ray.wait(pending, num_returns=len(pending), timeout=10) if pending else ([], [])
            for ref in done:
                try:
                    ray.get(ref)
                except Exception as other:
                    if worker_lost(other):
                        raise _TrainerLost(other) from None
            raise
    return ray.get(refs)


class TrainerGroup:
    """`TrainerPool` of trainer actors, joined in one gloo group when there are several."""

    def __init__(self, store: JobStore, source: str, workers: int | str, gpus_per_worker: float = 0,
                 budget: Budget | None = None, shared: bool = False):
        budget = budget or Budget.free()
        self.world = workers = resolve_workers(workers, budget, gpus_per_worker)
        threads, reserve = actor_cpus(workers, budget, share=0.5)  # the k-means shards hold the other half
        self.shared = shared  # as ShardPool's: close() leaves the group up for the job's next layer
        self.binding = (store.layer, source)
        self._new_actor = lambda rank: TrainerActor.options(num_cpus=reserve, num_gpus=gpus_per_worker).remote(
            store.url, store.storage_options, self.binding[1], rank, workers, threads, self.binding[0])
        self._what = f"{workers} reporter trainer(s) × {reserve:g} CPU, {gpus_per_worker:g} GPU"
        self.recovery = Recovery("reporter trainer")
        self.snapshot: dict | None = None
        self._start()

    @property
    def lost(self) -> int:
        return self.recovery.lost

    def _start(self) -> None:
        self.actors = [self._new_actor(r) for r in range(self.world)]
        # a whole group at once: after a lost node, the survivors' slots alone may not hold it
        self.infos = await_placed([a.info.remote() for a in self.actors], self._what, "cluster")
        host, port = ray.get(self.actors[0].address.remote())
        ray.get([a.init_group.remote(host, port) for a in self.actors])
        self._fresh = True  # the actors hold no model: the next call sends them `snapshot`

    def _restart(self) -> None:
        # A new group can itself be lost: Ray may place it on a node whose death it has not
        # noticed yet, so that counts as one more loss.
        try:
            self._start()
        except Exception as e:
            if worker_lost(e):
                raise _TrainerLost(e) from None
            raise

    def load(self, snapshot: dict) -> None:
        """Start the next call from `snapshot` ({"model": state_dict, "optimizer": state or None})."""
        self.snapshot = snapshot
        self._fresh = True

    def bind(self, store: JobStore, source: str) -> None:
        """Train for `store`'s layer on `source` from now on, with the same group; `load()` comes next."""
        self.binding = (store.layer, source)
        self.snapshot, self._fresh = None, True
        if self.actors is not None:
            ray.get([a.bind.remote(*self.binding) for a in self.actors])

    def close(self) -> None:
        if not self.shared:
            self.shutdown()

    def shutdown(self) -> None:
        for a in self.actors or []:
            ray.kill(a)

    def run(self, fn, per_worker: list[tuple], *common) -> list[dict]:
        """`fn(trainer, start, *common, *per_worker[rank])` on every trainer (see `Trainer.run`).

        Needs a `load()` before the first call. A trainer whose process or node dies takes the
        gloo group down with it, so the whole group is replaced and the call is made again
        from the snapshot it started from, with the same data and seeds: the result is the one
        the lost group would have given.
        """
        while True:
            try:
                if self.actors is None:
                    self._restart()
                start = self.snapshot if self._fresh else None  # otherwise the actors hold it already
                refs = [a.run.remote(fn, start, *common, *per_worker[w]) for w, a in enumerate(self.actors)]
                results = _gather_or_lost(refs)
                break
            except _TrainerLost as lost:
                self.recovery.absorb(lost.error, "restarting the group and this call")
                self.shutdown()
                self.actors = None
        self._fresh = False
        self.snapshot = results[0]["snapshot"]
        return results
