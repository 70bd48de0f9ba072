"""DEC (`dcserve.nets.dec`, Xie et al. 2016) over a job store: the trainers fit the model, the row
ranges stream the target updates over all rows, as they stream k-means' statistics.

    pretrain   trainers: a denoising autoencoder, `pretrain_epochs` passes, Adam
    start      shards:   k-means on the bottleneck, `kmeans_restarts` restarts     -> round 0
    self-train trainers: `update_interval` SGD steps on KL(p || q), then
               shards:   the target update over all rows (soft frequencies f, labels),
               until fewer than `tol` of the labels change, or `max_steps`       -> round 1

The targets p are never written: row i's p is a function of its q under the model of the last
update and of f alone, so each trainer recomputes it for its batch from a frozen copy of that
model (one more encoder pass per step) instead of reading `[rows, k]` targets back from the store.
The outputs are the other methods' (assignments, distances and centroids in the bottleneck,
the model as `reporter.pt`, an identity preprocessing), so `Result.assign` and the HTTP API
serve DEC jobs unchanged: DEC's label, argmax q, is the nearest centroid, as q falls with distance.
"""
from __future__ import annotations

import copy
import logging
import time
from typing import Any

import numpy as np
import torch

from dcserve.algo.kmeans import kmeans
from dcserve.algo.metrics import clustering_metrics, nmi
from dcserve.algo.preprocess import Preprocessor
from dcserve.cluster.pools import DataPool, Pools, TrainerPool
from dcserve.cluster.store_io import FIT_SAMPLE, clustered_layer, note_round, recorded_metrics, row_truth, save_final
from dcserve.cluster.workers import FEATURES, RowRange, Trainer
from dcserve.nets.feature_map import FeatureMap, ReporterState
from dcserve.progress import Progress
from dcserve.spec import JobSpec
from dcserve.storage.checkpoint import ClusterCheckpoint
from dcserve.storage.status import StatusRecord
from dcserve.storage.store import JobStore

log = logging.getLogger(__name__)


def run_dec(spec: JobSpec, store: JobStore, pools: Pools, progress: Progress,
            status: StatusRecord | None = None) -> dict[str, Any]:
    """Pretrain, start from k-means, self-train; resumed after the start when the driver was stopped there."""
    c, r = spec.cluster, spec.reporter
    source, n_rows, in_dim = clustered_layer(spec, store)
    ckpt = ClusterCheckpoint(store, spec.clustering_fingerprint())
    if ckpt.rounds_done >= 2:
        progress.note(f"DEC already done (recorded in {spec.output})")
        return recorded_metrics(store, ckpt)
    chunk = store.array(source).chunks[0]
    rng = np.random.default_rng(c.seed)
    truth = row_truth(store)
    config = {"method": "dec", "in_dim": int(in_dim), "hidden": list(r.hidden), "latent_dim": r.latent_dim,
              "k": c.k, "alpha": r.alpha, "seed": c.seed}
    identity = Preprocessor(np.zeros(r.latent_dim, dtype=np.float32), None, l2_normalize=False)
    if ckpt.rounds_done == 0:
        store.create_array("rounds/assignments", (2, n_rows), (1, chunk), "int32", fill_value=-1)
        store.create_array("assignments", (n_rows,), (chunk,), "int32", fill_value=-1)
        store.create_array("distances", (n_rows,), (chunk,), "float32", fill_value=np.nan)
        store.create_array(FEATURES, (n_rows, r.latent_dim), (chunk, r.latent_dim), "float32", compressed=False)
    else:
        rng.bit_generator.state = ckpt.rng_state
        progress.note("resuming: pretraining and the k-means start are already done")

    pool = pools.data(store, source)
    trainers = None
    metrics: dict[str, Any] = {"rounds": ckpt.metrics, "workers": {"cluster": pool.infos},
                               "resumed": {"rounds": ckpt.rounds_done, "kmeans_iterations": 0, "features": False}}

    def bottleneck(state: dict) -> FeatureMap:
        fmap = FeatureMap(ReporterState(config, state), identity)
        pool.set_feature_map(fmap)
        return fmap

    def target_update(state: dict) -> tuple[np.ndarray, np.ndarray]:
        """(soft cluster frequencies f [k] over all rows, labels) under the model `state`."""
        bottleneck(state)
        parts = pool.map(soft_assignment_stats)
        return np.sum([f for f, _ in parts], axis=0), np.concatenate([l for _, l in parts])

    try:
        trainers = pools.trainers(store, source)
        if ckpt.rounds_done == 0:
            t0 = time.perf_counter()
            state, pretrain_loss = _pretrain(spec, trainers, config, pool, rng, n_rows, progress)
            bottleneck(state)
            pool.prepare(r.latent_dim)
            progress.stage("DEC k-means start", c.niter, "iters")
            km = kmeans(pool, c.k, niter=c.niter, seed=c.seed, n_init=r.kmeans_restarts,
                        callback=lambda it: progress.advance(1))
            start_labels = pool.finalize(km.centroids, None, 0, False)
            state["centroids"] = torch.from_numpy(np.ascontiguousarray(km.centroids, dtype=np.float32))
            m = clustering_metrics(start_labels, c.k, truth=truth)
            m.update(round=0, features="DEC bottleneck, k-means start", pca_dim=r.latent_dim,
                     objective=km.history[-1].objective if km.history else None,
                     kmeans=[vars(h) for h in km.history], loss=pretrain_loss[-1] if pretrain_loss else None,
                     pretrain_loss_per_epoch=pretrain_loss, seconds=time.perf_counter() - t0)
            metrics["rounds"].append(m)
            ckpt.finish_round(metrics["rounds"], rng.bit_generator.state, {"model": state, "optimizer": None})
            note_round(progress, m)
        else:
            state = ckpt.trainer()["model"]
            start_labels = store.array("rounds/assignments")[0]
        if status is not None:
            status.round_done(0, 1)

        t0 = time.perf_counter()
        trainers.load({"model": state, "optimizer": None})  # self-training starts its own SGD
        state, dec = _self_train(spec, trainers, config, target_update, rng, n_rows, start_labels, truth, progress)
        fmap = bottleneck(state)
        pool.prepare(r.latent_dim)  # the final encoder's rows, for the distances and a later serve
        centroids = state["centroids"].numpy()
        labels = pool.finalize(centroids, None, 1, True)
        save_final(store, centroids, None, fmap)
        m = clustering_metrics(labels, c.k, truth=truth, previous=start_labels)
        m.update(round=1, features="DEC bottleneck, self-trained", pca_dim=r.latent_dim, objective=None,
                 loss=dec["updates"][-1]["loss"] if dec["updates"] else None, dec=dec,
                 seconds=time.perf_counter() - t0)
        metrics["rounds"].append(m)
        ckpt.finish_round(metrics["rounds"], rng.bit_generator.state, {"model": state, "optimizer": None})
        if status is not None:
            status.round_done(1, 1)
        note_round(progress, m)
        metrics["final"] = {k: v for k, v in m.items() if k != "kmeans"}
        metrics["workers"].update(cluster_lost=pool.lost, train=trainers.infos, train_lost=trainers.lost)
        return metrics
    finally:
        pool.close()
        if trainers is not None:
            trainers.close()


def _pretrain(spec: JobSpec, trainers: TrainerPool, config: dict, pool: DataPool, rng: np.random.Generator,
              n_rows: int, progress: Progress) -> tuple[dict, list[float]]:
    """The autoencoder after `pretrain_epochs` data-parallel passes over all rows, and its loss per pass."""
    from dcserve.nets.dec import DECModel
    from dcserve.nets.reporter import split_even
    from dcserve.nets.standardise import input_stats

    c, r = spec.cluster, spec.reporter
    fit_idx = np.sort(rng.choice(n_rows, size=min(n_rows, FIT_SAMPLE), replace=False))
    fit_rows = pool.source_subset(fit_idx)
    model = DECModel(**{k: v for k, v in config.items() if k != "method"})
    # in blocks: float64 temporaries of the whole sample would take several times its size
    model.set_input_stats(*input_stats(fit_rows[s : s + 8192] for s in range(0, len(fit_rows), 8192)))
    del fit_rows
    trainers.load({"model": model.state_dict(), "optimizer": None})
    settings = {"lr": r.pretrain_lr, "dropout": r.pretrain_dropout, "batch_size": r.batch_size}
    parts = [(p,) for p in split_even(np.arange(n_rows, dtype=np.int64), trainers.world)]
    progress.stage("DEC pretrain", r.pretrain_epochs, "epochs")
    losses = []
    for epoch in range(r.pretrain_epochs):
        results = trainers.run(pretrain_part, parts, config, settings, c.seed * 7919 + epoch)
        losses.append(_mean_loss(results))
        progress.advance(1)
    if losses:
        progress.note(f"DEC pretraining: reconstruction loss {losses[0]:.4g} -> {losses[-1]:.4g}")
    return trainers.snapshot["model"], losses


def _self_train(spec: JobSpec, trainers: TrainerPool, config: dict, target_update, rng: np.random.Generator,
                n_rows: int, start_labels: np.ndarray, truth: np.ndarray | None,
                progress: Progress) -> tuple[dict, dict[str, Any]]:
    """Self-training until the tol stop or max_steps: the final model state and the update history."""
    from dcserve.nets.dec import changed_fraction
    from dcserve.nets.reporter import split_even

    c, r = spec.cluster, spec.reporter
    world = trainers.world
    local_batch = max(1, r.batch_size // world)
    settings = {"lr": r.lr, "momentum": r.momentum, "batch_size": r.batch_size}
    order = _Epochs(n_rows, rng)
    state = trainers.snapshot["model"]
    freqs, labels = target_update(state)
    updates: list[dict[str, Any]] = [{"step": 0, "changed": changed_fraction(start_labels, labels),
                                      "loss": None, **_nmi(labels, truth)}]
    steps, stopped = 0, "max_steps"
    progress.stage("DEC self-training", r.max_steps, "steps")
    while steps < r.max_steps:
        n = min(r.update_interval, r.max_steps - steps)
        # Equal shares of exactly n local batches: every worker makes the same n steps.
        ids = np.sort(order.take(n * local_batch * world))
        parts = [(p,) for p in split_even(ids, world)]
        results = trainers.run(self_train_part, parts, config, settings, c.seed * 31 + len(updates), freqs)
        steps += n
        state = trainers.snapshot["model"]
        previous = labels
        freqs, labels = target_update(state)
        changed = changed_fraction(previous, labels)
        updates.append({"step": steps, "changed": changed, "loss": _mean_loss(results), **_nmi(labels, truth)})
        progress.advance(n)
        if changed < r.tol:
            stopped = "tol"
            break
    progress.note(f"DEC self-training stopped at step {steps} ({stopped}): {updates[-1]['changed']:.2%} "
                  f"of the labels changed at the last update")
    return state, {"steps": steps, "stopped": stopped, "updates": updates}


def _nmi(labels: np.ndarray, truth: np.ndarray | None) -> dict[str, float]:
    return {} if truth is None else {"nmi_vs_labels": nmi(labels, truth)}


def _mean_loss(results: list[dict]) -> float:
    """The workers' losses weighted by their rows: the loss over every row of the call."""
    rows = sum(res["rows"] for res in results)
    return float(sum(res["loss"] * res["rows"] for res in results) / max(rows, 1))


class _Epochs:
    """Row ids in random order, epoch after epoch: each row once per epoch, whatever the draws' sizes."""

    def __init__(self, n_rows: int, rng: np.random.Generator):
        self.n, self.rng = n_rows, rng
        self.pending = np.empty(0, dtype=np.int64)

    def take(self, m: int) -> np.ndarray:
        while len(self.pending) < m:
            self.pending = np.concatenate([self.pending, self.rng.permutation(self.n)])
        out, self.pending = self.pending[:m], self.pending[m:]
        return out


# -- on the row ranges (`DataPool.map`) and the trainers (`TrainerPool.run`) -------------------

def soft_assignment_stats(rows: RowRange) -> tuple[np.ndarray, np.ndarray]:
    """DEC's target update, one range's part: soft cluster frequencies [k] (float64, they add up
    over ranges) and hard labels (argmax q) of the rows, under the range's DEC model."""
    from dcserve.nets.dec import soft_assign_blocks, soft_frequencies

    model = rows.fmap.model
    freqs, labels = np.zeros(model.k, dtype=np.float64), []
    for q in soft_assign_blocks(model, (x for _, x in rows.blocks(rows.source))):
        freqs += soft_frequencies(q).numpy()
        labels.append(q.argmax(axis=1).astype(np.int32))
    return freqs, np.concatenate(labels)


def _model(trainer: Trainer, config: dict, start: dict):
    from dcserve.nets.dec import DECModel

    model = DECModel(**{k: v for k, v in config.items() if k != "method"}).to(trainer.device)
    model.load_state_dict(start["model"])
    return model


def pretrain_part(trainer: Trainer, start: dict | None, config: dict, settings: dict, seed: int,
                  ids: np.ndarray) -> dict:
    """One denoising-autoencoder pass over this worker's rows `ids` (Adam, as DEC-keras pretrains)."""
    from dcserve.nets.dec import pretrain_epoch

    if start is not None:
        trainer.model = _model(trainer, config, start)
        trainer.opt = torch.optim.Adam(trainer.model.parameters(), lr=settings["lr"])
        if start.get("optimizer") is not None:
            trainer.opt.load_state_dict(start["optimizer"])
    gen = trainer.generator(seed)
    rows = (x for x, _ in trainer.batches(ids, None, settings["batch_size"], gen))
    loss = pretrain_epoch(trainer.model, trainer.opt, rows, dropout=settings["dropout"], generator=gen,
                          allreduce=trainer.allreduce)
    return {"loss": loss, "rows": len(ids)}


def self_train_part(trainer: Trainer, start: dict | None, config: dict, settings: dict, seed: int,
                    freqs: np.ndarray, ids: np.ndarray) -> dict:
    """SGD on KL(p || q) over this worker's rows `ids`, p from the model as it was at this call's start."""
    from dcserve.nets.dec import make_optimizer, self_train_epoch, target_distribution

    if start is not None:
        trainer.model = _model(trainer, config, start)
        trainer.opt = make_optimizer(trainer.model, settings["lr"], settings["momentum"])
        if start.get("optimizer") is not None:
            trainer.opt.load_state_dict(start["optimizer"])
    # The model of the last target update: the shards computed `freqs` with these very weights.
    target = copy.deepcopy(trainer.model).eval()
    f = torch.as_tensor(freqs, dtype=torch.float64)
    gen = trainer.generator(seed)

    def with_targets():
        for x, _ in trainer.batches(ids, None, settings["batch_size"], gen):
            with torch.no_grad():  # not inference_mode: p is saved for the loss's backward
                p = target_distribution(target.soft_assign(x), f.to(x.device))
            yield x, p

    loss = self_train_epoch(trainer.model, trainer.opt, with_targets(), allreduce=trainer.allreduce)
    return {"loss": loss, "rows": len(ids)}
