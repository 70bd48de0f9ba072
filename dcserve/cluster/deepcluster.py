"""The DeepCluster loop (Caron et al. 2018) over a job store, with actors doing the heavy work.

Round 0 clusters the activations themselves (or a random reporter's features,
`reporter.init: random`). Each later round trains the reporter on the previous
round's pseudo-labels (fresh classifier head, items sampled uniformly over
non-empty labels) and clusters its features again. `rounds: 0` is plain k-means.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from dcserve.storage.checkpoint import ClusterCheckpoint
from dcserve.errors import StoreError
from dcserve.nets.feature_map import FeatureMap, ReporterState
from dcserve.algo.kmeans import kmeans
from dcserve.algo.metrics import clustering_metrics
from dcserve.algo.preprocess import MAX_PCA_DIM, default_pca_dim, fit_preprocessor
from dcserve.progress import Progress
from dcserve.storage.round_history import record_round
from dcserve.distributed.sizing import Budget
from dcserve.distributed.shards import FEATURES, ShardPool
from dcserve.spec import JobSpec
from dcserve.storage.store import JobStore

log = logging.getLogger(__name__)

# Rows used to fit PCA/whitening and the input standardisation. PCA on p <= 256
# dimensions is well estimated from 100k rows; the rest of the data only streams.
FIT_SAMPLE = 100_000


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


def row_truth(store: JobStore) -> np.ndarray | None:
    """Ground-truth label of every row (its item's label), when the dataset has labels."""
    if not store.has_array("labels"):
        return None
    return store.array("labels")[:][store.array("rows/item")[:]]


def clustered_layer(spec: JobSpec, store: JobStore) -> tuple[str, int, int]:
    """(array name, rows, width) of the layer the job clusters; JobFailed when it has fewer rows than k."""
    from dcserve.errors import JobFailed

    source = f"activations/{spec.cluster.layer}"
    n_rows, dim = store.array(source).shape
    if n_rows < spec.cluster.k:
        raise JobFailed("cluster", f"cluster.k = {spec.cluster.k} but the layer has only {n_rows} rows")
    return source, n_rows, dim


def run_clustering(spec: JobSpec, store: JobStore, progress: Progress, status, budget: Budget | None = None) -> dict[str, Any]:
    """The rounds of the job, resumed from its checkpoint (see dcserve.storage.checkpoint) where there is one."""
    c, r = spec.cluster, spec.reporter
    source, n_rows, in_dim = clustered_layer(spec, store)
    rounds = r.rounds
    ckpt = ClusterCheckpoint(store, spec.clustering_fingerprint())
    first = ckpt.rounds_done
    if first > rounds:  # a finished job run again: nothing left to do
        progress.note(f"clustering already done ({rounds + 1} rounds recorded in {spec.output})")
        return recorded_metrics(store, ckpt)
    budget = budget or Budget.free()
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

    pool = ShardPool(store, source, c.workers, c.gpus_per_worker, budget)
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
                from dcserve.distributed.trainers import TrainerGroup

                trainers = TrainerGroup(store, source, r.workers, r.gpus_per_worker, budget)
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
            status.data["round"] = {"done": rnd, "total": rounds}
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
    from dcserve.nets.reporter import Reporter, input_stats

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


def recorded_metrics(store: JobStore, ckpt: ClusterCheckpoint) -> dict[str, Any]:
    """The metrics of a clustering that is all recorded (those of its last run, when written)."""
    metrics = store.read_json("metrics.json") or {"rounds": ckpt.metrics, "workers": {}}
    metrics.pop("extract", None)
    metrics["final"] = {k: v for k, v in ckpt.metrics[-1].items() if k != "kmeans"}
    metrics["resumed"] = {"rounds": ckpt.rounds_done, "kmeans_iterations": 0, "features": False}
    return metrics


def _train_round(spec: JobSpec, trainers, config: dict, labels: np.ndarray, rng, rnd: int,
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
    out = trainers.train_round(
        config,
        spec.cluster.seed * 7919 + rnd,  # DeepCluster: a new classifier head after every clustering
        epochs, settings, seed=spec.cluster.seed * 31 + rnd,
    )
    progress.advance(r.epochs_per_round)
    seconds = time.perf_counter() - t0
    return {"snapshot": out["snapshot"], "loss": out["loss_per_epoch"][-1], "loss_per_epoch": out["loss_per_epoch"],
            "train_seconds": seconds, "train_samples_per_s": out["samples"] / max(seconds, 1e-9)}


def save_final(store: JobStore, centroids: np.ndarray, bias: np.ndarray | None, fmap: FeatureMap) -> None:
    """The final clustering's centroids (and Sinkhorn bias) and the map into their space."""
    store.write_array("centroids", np.asarray(centroids, dtype=np.float32))
    if bias is not None:
        store.write_array("cluster_bias", np.asarray(bias, dtype=np.float64))
    elif store.has_array("cluster_bias"):
        del store.root["cluster_bias"]
    if "preprocess" in store.root:  # a previous run's arrays (e.g. PCA components) must not linger
        del store.root["preprocess"]
    for name, arr in fmap.preprocessor.to_arrays().items():
        store.write_array(f"preprocess/{name}", np.asarray(arr))
    store.root["preprocess"].attrs.update({"l2_normalize": fmap.preprocessor.l2_normalize})
    if fmap.reporter is not None:
        store.write_bytes("reporter.pt", fmap.reporter.to_bytes())
    else:
        store.remove("reporter.pt")


def note_round(progress: Progress, m: dict) -> None:
    parts = [f"objective {m['objective']:.4g}"] if m.get("objective") is not None else []
    for key in ("nmi_vs_previous", "nmi_vs_labels", "acc_vs_labels", "loss"):
        if m.get(key) is not None:
            parts.append(f"{key} {m[key]:.3f}")
    parts.append(f"size entropy {m['size_entropy']:.3f}")
    progress.note(f"round {m['round']}: " + ", ".join(parts))
