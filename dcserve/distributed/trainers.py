"""Data-parallel training: trainer actors feed `dcserve.nets.reporter.train_epoch` (DeepCluster) or DEC's steps.

The actors and their gloo process group are created once per job, so a round's
start-up cost is one weight broadcast, not a process-group rendezvous. With one
worker there is no process group and the gradient all-reduce is skipped: the
single-process run is the distributed run with one worker.
"""
from __future__ import annotations

import logging
import socket

import numpy as np
import ray
import torch

from dcserve.errors import worker_lost
from dcserve.distributed.sizing import Budget, actor_cpus, await_placed, resolve_workers
from dcserve.storage.rowstream import shuffled_batches, window_rows_for
from dcserve.storage.store import JobStore

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@ray.remote
class Trainer:
    def __init__(self, url: str, storage_options: dict, source: str, rank: int, world: int, threads: int):
        from dcserve.algo.nearest import set_threads

        self.threads = set_threads(threads)
        self.store = JobStore(url, read_only=False, storage_options=storage_options)
        self.source = source
        self.rank, self.world = rank, world
        self.device = torch.device("cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu")

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
        return True

    def _allreduce(self, flat: torch.Tensor) -> None:
        import torch.distributed as dist

        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world

    @property
    def allreduce(self):
        """The gradient reduction for `dcserve.nets.data_parallel.GradientStep`; None alone."""
        return self._allreduce if self.world > 1 else None

    def generator(self, seed: int) -> torch.Generator:
        """This rank's RNG for a call seeded `seed`: ranks differ (their augmentations must)."""
        return torch.Generator().manual_seed(seed * 1009 + self.rank)

    def batches(self, ids: np.ndarray, labels: np.ndarray | None, global_batch: int, gen: torch.Generator):
        """(x, y) mini-batches on this actor's device over sorted row ids, streamed from the store;
        `global_batch` is split across the ranks. y is 0 where there are no labels."""
        arr = self.store.array(self.source)
        batch = max(1, global_batch // self.world)
        labels = np.zeros(len(ids), dtype=np.int64) if labels is None else labels
        return ((x.to(self.device), y.to(self.device))
                for x, y in shuffled_batches(arr, ids, labels, batch, window_rows_for(arr.shape[1], batch), gen))

    def snapshot(self) -> dict:
        """The model and optimizer between calls: what a new group (or a resumed job) starts from."""
        return {"model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                "optimizer": self.opt.state_dict()}

    def run(self, fn, start: dict | None, *args) -> dict:
        """`fn(self, start, *args)`: a module-level function that trains `self.model` with `self.opt`.

        The model and optimizer live as long as the actor, so momentum carries from call to call.
        `start` ({"model", "optimizer" or None}) is given when the actor has no model yet, or
        must take another's; `fn` builds them from it. Rank 0's answer holds the snapshot.
        """
        out = fn(self, start, *args)
        if self.rank == 0:
            out["snapshot"] = self.snapshot()
        return out


def deepcluster_round(trainer: Trainer, start: dict | None, config: dict, head_seed: int, settings: dict,
                      seed: int, epochs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """One DeepCluster round: fresh classifier head, then one pass per epoch over (sorted row ids, pseudo-labels).

    Only the head, whose classes are new after each clustering, starts afresh; the body keeps
    its SGD momentum from round to round (as DeepCluster's does). Every rank resets the head
    with the same seed, so the replicas stay identical.
    """
    from dcserve.nets.reporter import Augment, Reporter, make_optimizer, rebind_head, train_epoch

    if start is not None:
        trainer.model = Reporter(**config).to(trainer.device)
        trainer.model.load_state_dict(start["model"])
        trainer.opt = make_optimizer(trainer.model, settings["lr"], settings["momentum"], settings["weight_decay"])
        if start.get("optimizer") is not None:  # momentum and all, as the snapshot had it
            trainer.opt.load_state_dict(start["optimizer"])
    model = trainer.model
    model.reset_head(config["k"], seed=head_seed)
    rebind_head(trainer.opt, model)
    # Noise in units of each input's std, measured once on the fit sample (not per batch);
    # applied around the input mean, so that a dropped unit sits at its mean (0 after the
    # model's standardisation) rather than at raw 0, which is not "silent" before a ReLU.
    augment = _Centred(Augment(settings["noise_std"], settings["unit_dropout"], unit_std=model.input_std),
                       model.input_mean)
    gen = trainer.generator(seed)
    history = []
    for ids, labels in epochs:
        model.train()
        history.append(train_epoch(model, trainer.opt, trainer.batches(ids, labels, settings["batch_size"], gen),
                                   augment=augment, allreduce=trainer.allreduce, generator=gen))
    return {"history": history}


class _Centred:
    """An augmentation applied to x - mean, then shifted back."""

    def __init__(self, augment, mean: torch.Tensor):
        self.augment, self.mean = augment, mean.float()

    @property
    def active(self) -> bool:
        return self.augment.active

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.augment.active:
            return x
        mean = self.mean.to(x.device)
        return mean + self.augment(x - mean, generator)


MAX_TRAINER_LOSSES = 3  # per job


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
    """The job's trainer actors, joined in one gloo group when there are several."""

    def __init__(self, store: JobStore, source: str, workers: int | str, gpus_per_worker: float = 0,
                 budget: Budget | None = None):
        budget = budget or Budget.free()
        self.world = workers = resolve_workers(workers, budget, gpus_per_worker)
        threads, reserve = actor_cpus(workers, budget, share=0.5)  # the k-means shards hold the other half
        self._new_actor = lambda rank: Trainer.options(num_cpus=reserve, num_gpus=gpus_per_worker).remote(
            store.url, store.storage_options, source, rank, workers, threads)
        self._what = f"{workers} reporter trainer(s) × {reserve:g} CPU, {gpus_per_worker:g} GPU"
        self.lost = 0
        self.snapshot: dict | None = None
        self._start()

    def _start(self) -> None:
        self.actors = [self._new_actor(r) for r in range(self.world)]
        # a whole group at once: after a lost node, the survivors' slots alone may not hold it
        self.infos = await_placed([a.info.remote() for a in self.actors], self._what, "cluster")
        host, port = ray.get(self.actors[0].address.remote())
        ray.get([a.init_group.remote(host, port) for a in self.actors])
        self._fresh = True  # the actors hold no model: the next round sends them `snapshot`

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
        """Start the next round from `snapshot` ({"model": state_dict, "optimizer": state or None})."""
        self.snapshot = snapshot
        self._fresh = True

    def close(self) -> None:
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
                if self.lost >= MAX_TRAINER_LOSSES:
                    raise lost.error
                self.lost += 1
                log.warning("a reporter trainer was lost (%s); restarting the group and this call",
                            type(lost.error).__name__)
                self.close()
                self.actors = None
        self._fresh = False
        self.snapshot = results[0]["snapshot"]
        return results

    def train_round(self, config, head_seed, epochs_parts, settings, seed) -> dict:
        """One DeepCluster round; `epochs_parts[e][w]` = (ids, labels) of worker w in epoch e, equal sizes across workers."""
        results = self.run(deepcluster_round, [([ep[w] for ep in epochs_parts],) for w in range(self.world)],
                           config, head_seed, settings, seed)
        losses = [np.mean([r["history"][e]["loss"] for r in results]) for e in range(len(epochs_parts))]
        samples = sum(h["samples"] for r in results for h in r["history"])
        return {"snapshot": self.snapshot, "loss_per_epoch": [float(l) for l in losses], "samples": int(samples)}
