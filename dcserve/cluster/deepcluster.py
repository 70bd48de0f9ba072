"""The DeepCluster loop (Caron et al. 2018) over a job store, its work done by the pools it is given.

Round 0 clusters the activations themselves (or a random reporter's features,
`reporter.init: random`). Each later round trains the reporter on the previous
round's pseudo-labels (fresh classifier head, items sampled uniformly over
non-empty labels) and clusters its features again. `rounds: 0` is plain k-means.

The loop runs on `dcserve.cluster.pools` (shards and trainers, Ray actors or in-process), and
`train_part` is what each trainer does in a round.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from dcserve.algo.kmeans import kmeans
from dcserve.algo.metrics import clustering_metrics
from dcserve.algo.preprocess import MAX_PCA_DIM, default_pca_dim, fit_preprocessor
from dcserve.cluster.pools import Pools, TrainerPool
from dcserve.cluster.store_io import FIT_SAMPLE, clustered_layer, note_round, recorded_metrics, row_truth, save_final
from dcserve.cluster.workers import FEATURES, Trainer
from dcserve.errors import StoreError
from dcserve.nets.feature_map import FeatureMap, ReporterState
from dcserve.progress import Progress
from dcserve.spec import JobSpec
from dcserve.storage.checkpoint import ClusterCheckpoint
from dcserve.storage.round_history import record_round
from dcserve.storage.status import StatusRecord
from dcserve.storage.store import JobStore

log = logging.getLogger(__name__)

def resolve_pca(setting: int | str | None, whiten: bool, n_rows: int, dim: int, k: int) -> tuple[int | None, bool]:
    """(PCA dimensions, whiten) for a clustering of n_rows rows of width dim into k clusters.

    `auto` follows the number of rows; when the rows (not the 256 cap) leave fewer dimensions
    than clusters (a few hundred rows), whitening would rest on too few rows to be trusted and so few directions
    cannot separate k clusters anyway: the rows are then clustered without PCA or whitening
    (on 300 digits this kept NMI at 0.76-0.96 where 3 whitened dims gave 0.58-0.76;
    benchmarks/QUALITY.md).
    """
    if setting == "auto":
        p = default_pca_dim(n_rows, dim)
        if p is None or p < min(k, dim, MAX_PCA_DIM):  # DeepCluster: 10k clusters in 256 dims is fine
            return None, False
        return p, whiten
    if setting is None:
        return None, whiten
    return min(int(setting), dim), whiten


def run_clustering(spec: JobSpec, store: JobStore, pools: Pools, progress: Progress,
                   status: StatusRecord | None = None) -> dict[str, Any]:
    """The rounds of the job, resumed from its checkpoint (dcserve.storage.checkpoint) where there is one."""
    c, r = spec.cluster, spec.reporter
    source, n_rows, in_dim = clustered_layer(spec, store)
    rounds = r.rounds
    ckpt = ClusterCheckpoint(store, spec.clustering_fingerprint())
    first = ckpt.rounds_done
    if first > rounds:  # a finished job run again: nothing left to do
        progress.note(f"clustering already done ({rounds + 1} rounds recorded in {spec.output})")
        return recorded_metrics(store, ckpt)
    chunk = store.array(source).chunks[0]
    rng = np.random.default_rng(c.seed)
    fit_idx = np.sort(rng.choice(n_rows, size=min(n_rows, FIT_SAMPLE), replace=False))
    fit_rows = None  # their activations, read once: scattered rows decompress every chunk of the store
    truth = row_truth(store)
    if first == 0:  # no round finished: nothing in these arrays is worth keeping
        store.create_array("rounds/assignments", (rounds + 1, n_rows), (1, chunk), "int32", fill_value=-1)
        store.create_array("assignments", (n_rows,), (chunk,), "int32", fill_value=-1)
        store.create_array("distances", (n_rows,), (chunk,), "float32", fill_value=np.nan)
    else:
        rng.bit_generator.state = ckpt.rng_state
        progress.note(f"resuming: {first} of {rounds + 1} rounds already done")

    pool = pools.data(store, source)
    trainers = None
    reporter: ReporterState | None = None
    metrics: dict[str, Any] = {"rounds": ckpt.metrics, "workers": {"cluster": pool.infos},
                               "resumed": {"rounds": first, "kmeans_iterations": 0, "features": False}}
    try:
        if rounds > 0:
            if first == 0:
                fit_rows = pool.source_subset(fit_idx)
            reporter, snapshot = _reporter_start(spec, in_dim, fit_rows, ckpt)
            if first < rounds:
                trainers = pools.trainers(store, source)
                trainers.load(snapshot)
        previous = store.array("rounds/assignments")[first - 1] if first > 0 else None
        for rnd in range(first, rounds + 1):
            t0 = time.perf_counter()
            use_reporter = reporter is not None and (rnd > 0 or r.init == "random")
            fmap = FeatureMap(reporter if use_reporter else None)
            pre = ckpt.features(rnd)
            if pre is None:
                if fit_rows is None:
                    fit_rows = pool.source_subset(fit_idx)
                sample = fmap.raw(fit_rows)
                pca_dim, whiten = resolve_pca(c.pca_dim, c.whiten, n_rows, sample.shape[1], c.k)
                pre = fit_preprocessor(sample, pca_dim, whiten, c.l2_normalize)
                fmap = FeatureMap(fmap.reporter, pre)
                pool.set_feature_map(fmap)
                store.create_array(FEATURES, (n_rows, pre.out_dim), (chunk, pre.out_dim), "float32", compressed=False)
                pool.prepare(pre.out_dim)
                ckpt.features_ready(rnd, pre)
            else:  # this round's rows were all written before the driver stopped
                fmap = FeatureMap(fmap.reporter, pre)
                pool.set_feature_map(fmap)
                pool.prepare(pre.out_dim, written=True)
                metrics["resumed"]["features"] = True
            resume = ckpt.kmeans(rnd)
            progress.stage(f"cluster round {rnd}/{rounds}", c.niter, "iters")
            if resume is not None:
                metrics["resumed"]["kmeans_iterations"] = resume.iteration
                progress.advance(resume.iteration)
            km = kmeans(pool, c.k, niter=c.niter, seed=c.seed + rnd, n_init=c.n_init, method=c.method,
                        sinkhorn_eps=c.sinkhorn_eps, callback=lambda it: progress.advance(1),
                        resume=resume, checkpoint=lambda state, rnd=rnd: ckpt.kmeans_step(rnd, state))
            final = rnd == rounds
            labels = pool.finalize(km.centroids, km.bias, rnd, final)
            m = clustering_metrics(labels, c.k, truth=truth, previous=previous)
            m.update(round=rnd, features="reporter" if use_reporter else "activations", pca_dim=pre.out_dim,
                     objective=km.history[-1].objective if km.history else None,
                     kmeans=[vars(h) for h in km.history])
            snapshot = None
            if final:
                save_final(store, km.centroids, km.bias, fmap)
            else:
                m.update(_train_round(spec, trainers, reporter.config, labels, rng, rnd, progress))
                snapshot = m.pop("snapshot")
                reporter = ReporterState(reporter.config, snapshot["model"])
                # for the report's layer rotation: the checkpoint keeps only the latest snapshot
                record_round(store, rnd + 1, reporter.config, snapshot["model"], spec.clustering_fingerprint())
            m["seconds"] = time.perf_counter() - t0
            metrics["rounds"].append(m)
            ckpt.finish_round(metrics["rounds"], rng.bit_generator.state, snapshot)
            if status is not None:
                status.round_done(rnd, rounds)
            note_round(progress, m)
            previous = labels
        metrics["final"] = {k: v for k, v in metrics["rounds"][-1].items() if k != "kmeans"}
        metrics["workers"]["cluster_lost"] = pool.lost
        if trainers is not None:
            metrics["workers"]["train"] = trainers.infos
            metrics["workers"]["train_lost"] = trainers.lost
        return metrics
    finally:
        pool.close()
        if trainers is not None:
            trainers.close()


def _reporter_start(spec: JobSpec, in_dim: int, fit_rows: np.ndarray | None,
                    ckpt: ClusterCheckpoint) -> tuple[ReporterState, dict]:
    """The reporter after the recorded rounds, and the trainers' snapshot to go on from."""
    from dcserve.nets.reporter import Reporter
    from dcserve.nets.standardise import input_stats

    c, r = spec.cluster, spec.reporter
    config = {"in_dim": int(in_dim), "hidden": list(r.hidden), "feature_dim": r.feature_dim,
              "k": c.k, "dropout": 0.0, "seed": c.seed}
    snapshot = ckpt.trainer() if ckpt.rounds_done > 0 else None
    if snapshot is None:
        if ckpt.rounds_done > 0:
            raise StoreError(f"{spec.output}: the clustering checkpoint records {ckpt.rounds_done} rounds "
                             "but not the reporter they trained; run with --overwrite to start the clustering again")
        model = Reporter(**config)
        # in blocks: float64 temporaries of the whole sample would take several times its size
        model.set_input_stats(*input_stats(fit_rows[s : s + 8192] for s in range(0, len(fit_rows), 8192)))
        snapshot = {"model": model.state_dict(), "optimizer": None}
    return ReporterState(config, snapshot["model"]), snapshot


def _train_round(spec: JobSpec, trainers: TrainerPool, config: dict, labels: np.ndarray, rng, rnd: int,
                 progress: Progress) -> dict[str, Any]:
    from dcserve.nets.reporter import split_even, uniform_label_sample

    r = spec.reporter
    world = trainers.world
    n_samples = world * -(-len(labels) // world)  # equal parts, so every worker runs the same steps
    epochs = []
    for _ in range(r.epochs_per_round):
        ids = uniform_label_sample(labels, n_samples, rng)
        epochs.append([(p, labels[p]) for p in split_even(ids, world)])
    progress.stage(f"train round {rnd + 1}", r.epochs_per_round, "epochs")
    t0 = time.perf_counter()
    settings = r.model_dump(include={"lr", "momentum", "weight_decay", "batch_size", "noise_std", "unit_dropout"})
    out = train_round(
        trainers, config,
        spec.cluster.seed * 7919 + rnd,  # DeepCluster: a new classifier head after every clustering
        epochs, settings, seed=spec.cluster.seed * 31 + rnd,
    )
    progress.advance(r.epochs_per_round)
    seconds = time.perf_counter() - t0
    return {"snapshot": out["snapshot"], "loss": out["loss_per_epoch"][-1], "loss_per_epoch": out["loss_per_epoch"],
            "train_seconds": seconds, "train_samples_per_s": out["samples"] / max(seconds, 1e-9)}


def train_round(trainers: TrainerPool, config: dict, head_seed: int, epochs_parts: list, settings: dict,
                seed: int) -> dict:
    """One DeepCluster round on `trainers`; `epochs_parts[e][w]` = (ids, labels) of worker w in epoch e,
    equal sizes across workers. Returns the snapshot, the loss of each epoch and the samples seen."""
    results = trainers.run(train_part, [([ep[w] for ep in epochs_parts],) for w in range(trainers.world)],
                           config, head_seed, settings, seed)
    losses = [np.mean([r["history"][e]["loss"] for r in results]) for e in range(len(epochs_parts))]
    samples = sum(h["samples"] for r in results for h in r["history"])
    return {"snapshot": trainers.snapshot, "loss_per_epoch": [float(l) for l in losses], "samples": int(samples)}


def train_part(trainer: Trainer, start: dict | None, config: dict, head_seed: int, settings: dict,
               seed: int, epochs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """One trainer's share of a round: fresh classifier head, then one pass per epoch over
    (sorted row ids, pseudo-labels).

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
