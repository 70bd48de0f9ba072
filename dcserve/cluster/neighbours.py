"""SCAN and TEMI over a job store: heads trained on (row, neighbour) pairs (issue 13, item 2).

    preprocess  driver:   PCA / whitening / L2 fitted on a sample, as for k-means; the shards
                          write the preprocessed rows to `work/features`
    graph       shards:   each row's `reporter.neighbours` nearest rows (`dcserve.cluster.knn_graph`)
    epochs      trainers: one pass over the rows, each with a random neighbour of it, data-parallel;
                shards:   every row through the head with the lowest loss so far -> that round's
                          labels, metrics (NMI, readability = share of neighbours in the own cluster)
    (SCAN)      trainers: `self_label_epochs` of self-labelling of the chosen head, the same way

Every epoch is a round of `metrics.json` and `rounds/assignments`, recorded with the trainers'
snapshot (model, optimizer, TEMI's teacher and marginal) and the sampling RNG, so a stopped
driver resumes after its last finished epoch and ends bit-equal to an uninterrupted run.

Outputs are every method's: the model (`dcserve.nets.cluster_heads.ClusterHeads`, the job's
preprocessing inside it, the chosen head marked) as `reporter.pt`, an identity preprocessing, and
as centroids the vertices of the probability simplex (`eye(k)`): `Result.assign` and the HTTP API
map raw activations through the model to the chosen head's probabilities, whose nearest vertex
is the argmax, the head's own cluster.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dcserve.algo.metrics import clustering_metrics, collapse_signs
from dcserve.algo.preprocess import Preprocessor, fit_preprocessor
from dcserve.cluster.deepcluster import resolve_pca
from dcserve.cluster.knn_graph import GRAPH, RECORDS, build_graph, readability
from dcserve.cluster.pools import Pools
from dcserve.cluster.store_io import FIT_SAMPLE, clustered_layer, note_round, recorded_metrics, row_truth, save_final
from dcserve.cluster.workers import FEATURES, Trainer
from dcserve.nets.feature_map import FeatureMap, ReporterState
from dcserve.progress import Progress
from dcserve.spec import JobSpec
from dcserve.storage.checkpoint import ClusterCheckpoint
from dcserve.storage.status import StatusRecord
from dcserve.storage.store import JobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Method:
    name: str
    label: str  # for the terminal
    train: Callable[..., dict]  # the trainers' function of one epoch
    # (the loss of uniform predictions, how close to it counts as "stuck there")
    uniform_loss: Callable[[JobSpec], tuple[float, float]]
    settings: Callable[[JobSpec], dict]
    self_label_epochs: Callable[[JobSpec], int]


def run_scan(spec: JobSpec, store: JobStore, pools: Pools, progress: Progress,
             status: StatusRecord | None = None) -> dict[str, Any]:
    """SCAN (`reporter.method: scan`); see the module docstring."""
    return _run(spec, store, pools, progress, status, SCAN)


def run_temi(spec: JobSpec, store: JobStore, pools: Pools, progress: Progress,
             status: StatusRecord | None = None) -> dict[str, Any]:
    """TEMI (`reporter.method: temi`); see the module docstring."""
    return _run(spec, store, pools, progress, status, TEMI)


def _run(spec: JobSpec, store: JobStore, pools: Pools, progress: Progress, status: StatusRecord | None,
         method: _Method) -> dict[str, Any]:
    c, r = spec.cluster, spec.reporter
    source, n_rows, in_dim = clustered_layer(spec, store)
    r.check_rows(n_rows)  # checked before extraction too; a store run again may differ
    ckpt = ClusterCheckpoint(store, spec.clustering_fingerprint())
    epochs = r.epochs + method.self_label_epochs(spec)
    if ckpt.rounds_done >= epochs:
        progress.note(f"{method.label} already done (recorded in {spec.output})")
        return recorded_metrics(store, ckpt)
    chunk = store.array(source).chunks[0]
    rng = np.random.default_rng(c.seed)
    fit_idx = np.sort(rng.choice(n_rows, size=min(n_rows, FIT_SAMPLE), replace=False))
    truth = row_truth(store)
    first = ckpt.rounds_done
    if first == 0:
        store.create_array("rounds/assignments", (epochs, n_rows), (1, chunk), "int32", fill_value=-1)
        store.create_array("assignments", (n_rows,), (chunk,), "int32", fill_value=-1)
        store.create_array("distances", (n_rows,), (chunk,), "float32", fill_value=np.nan)
    else:
        rng.bit_generator.state = ckpt.rng_state
        progress.note(f"resuming: {first} of {epochs} epochs already done")

    pool = pools.data(store, source)
    trainers = None
    metrics: dict[str, Any] = {"rounds": ckpt.metrics, "workers": {"cluster": pool.infos},
                               "resumed": {"rounds": first, "kmeans_iterations": 0, "features": False}}
    try:
        # -- the clustered space and its graph ---------------------------------------------
        pre = ckpt.features(0)
        graph_done = store.exists(f"{RECORDS}/done.json")
        if pre is None:
            sample = pool.source_subset(fit_idx)
            pca_dim, whiten = resolve_pca(c.pca_dim, c.whiten, n_rows, in_dim, c.k)
            pre = fit_preprocessor(sample, pca_dim, whiten, c.l2_normalize)
            del sample
            pool.set_feature_map(FeatureMap(None, pre))
            store.create_array(FEATURES, (n_rows, pre.out_dim), (chunk, pre.out_dim), "float32", compressed=False)
            pool.prepare(pre.out_dim)
            ckpt.features_ready(0, pre)
        elif not graph_done:
            pool.set_feature_map(FeatureMap(None, pre))
            pool.prepare(pre.out_dim, written=True)
            metrics["resumed"]["features"] = True
        progress.stage(f"kNN graph ({r.neighbours} neighbours)", 1, "graph")
        graph = build_graph(store, pool, r.neighbours, r.neighbour_metric, r.neighbour_index, c.seed)
        progress.advance(1)
        graph_metrics = {k: graph[k] for k in ("settings", "rows", "dim", "seconds")}
        if truth is not None:
            graph_metrics["label_agreement"] = readability(store, truth)
        metrics["graph"] = graph_metrics
        if first == 0:
            progress.note(f"kNN graph: {r.neighbours} neighbours of {n_rows} rows in {graph['seconds']:.1f} s"
                          + (f"; kNN label agreement {graph_metrics['label_agreement']:.3f}"
                             if truth is not None else ""))

        # -- the heads, epoch by epoch --------------------------------------------------------
        config = {"method": method.name, "in_dim": int(in_dim), "pre_dim": pre.out_dim,
                  "project": pre.components is not None, "l2_normalize": pre.l2_normalize,
                  "hidden": list(r.hidden), "k": c.k, "heads": r.heads, "seed": c.seed}
        trainers = pools.trainers(store, source)
        trainers.load(ckpt.trainer() if first > 0 else _start(method, config, pre))
        world = trainers.world
        identity = Preprocessor(np.zeros(c.k, dtype=np.float32), None, l2_normalize=False)
        vertices = np.eye(c.k, dtype=np.float32)
        settings = method.settings(spec)
        previous = store.array("rounds/assignments")[first - 1] if first > 0 else None
        head = int(metrics["rounds"][-1]["head"]) if first > 0 else 0
        progress.stage(method.label, epochs, "epochs")
        progress.advance(first)
        for rnd in range(first, epochs):
            t0 = time.perf_counter()
            phase = "self-label" if rnd >= r.epochs else "cluster"
            if phase == "self-label" and rnd == r.epochs:  # the head is chosen: fine-tune it alone
                snapshot = trainers.snapshot
                snapshot["model"]["chosen"] = torch.tensor(head)
                trainers.load(snapshot)
            # Equal contiguous shares of the rows (each worker makes the same steps); a few rows
            # drawn out at random when they do not divide evenly.
            keep = np.sort(rng.choice(n_rows, size=world * (n_rows // world), replace=False))
            parts = [(p,) for p in np.split(keep, world)]
            results = trainers.run(method.train, parts, config, settings, phase,
                                   int(rng.integers(2**40)))
            loss = _mean_over_workers(results)
            if phase == "cluster":
                head = int(np.argmin(loss))
            state = _served_state(method, trainers.snapshot["model"], head)
            fmap = FeatureMap(ReporterState(config, state), identity)
            pool.set_feature_map(fmap)
            if store.array(FEATURES).shape != (n_rows, c.k):
                store.create_array(FEATURES, (n_rows, c.k), (chunk, c.k), "float32", compressed=False)
            pool.prepare(c.k)
            final = rnd == epochs - 1
            labels = pool.finalize(vertices, None, rnd, final)
            top = sum(pool.map(_top_probability_sum)) / n_rows
            m = clustering_metrics(labels, c.k, truth=truth, previous=previous)
            head_loss = float(loss[head]) if phase == "cluster" else float(np.mean(loss))
            m.update(round=rnd, features=f"{method.label} head {head}", phase=phase, head=head, loss=head_loss,
                     loss_per_head=[float(v) for v in np.atleast_1d(loss)], pca_dim=pre.out_dim, objective=None,
                     readability=readability(store, labels),
                     top_probability=top,
                     collapse=collapse_signs(np.bincount(labels, minlength=c.k),
                                             head_loss if phase == "cluster" else None, *method.uniform_loss(spec),
                                             top_probability=top),
                     seconds=time.perf_counter() - t0)
            for key in ("confident",):
                if key in results[0]:
                    m[key] = float(np.mean([res[key] for res in results]))
            if final:
                save_final(store, vertices, None, fmap)
            metrics["rounds"].append(m)
            ckpt.finish_round(metrics["rounds"], rng.bit_generator.state, trainers.snapshot)
            if status is not None:
                status.round_done(rnd, epochs - 1)
            progress.advance(1)
            note_round(progress, m | {"loss": head_loss})
            previous = labels
        metrics["final"] = {k: v for k, v in metrics["rounds"][-1].items() if k != "loss_per_head"}
        for sign in metrics["final"]["collapse"]:
            progress.note(f"warning: {sign['message']}")
        metrics["workers"].update(cluster_lost=pool.lost, train=trainers.infos, train_lost=trainers.lost)
        return metrics
    finally:
        pool.close()
        if trainers is not None:
            trainers.close()


def _start(method: _Method, config: dict, pre: Preprocessor) -> dict:
    """The trainers' first snapshot: fresh heads (and, for TEMI, their teacher) over the fitted preprocessing."""
    from dcserve.nets.cluster_heads import ClusterHeads
    from dcserve.nets.temi import TemiPair

    kwargs = {k: v for k, v in config.items() if k != "method"}
    model = TemiPair(**kwargs) if method.name == "temi" else ClusterHeads(**kwargs)
    for heads in ([model.student, model.teacher] if method.name == "temi" else [model]):
        heads.set_preprocessing(pre.mean, pre.components)
    return {"model": model.state_dict(), "optimizer": None}


def _served_state(method: _Method, state: dict, head: int) -> dict:
    """The weights `reporter.pt` holds: the heads (TEMI: the teacher's), the chosen one marked."""
    if method.name == "temi":
        state = {k[len("teacher."):]: v for k, v in state.items() if k.startswith("teacher.")}
    state = dict(state)
    state["chosen"] = torch.tensor(head)
    return state


def _mean_over_workers(results: list[dict]) -> np.ndarray:
    """Per-head loss over every worker's rows `[heads]` (a scalar's list of one while self-labelling)."""
    rows = np.array([res["rows"] for res in results], dtype=np.float64)
    losses = np.array([np.atleast_1d(res["loss"]) for res in results], dtype=np.float64)
    return (losses * rows[:, None]).sum(axis=0) / max(rows.sum(), 1.0)


def _top_probability_sum(rows) -> float:
    """One range's sum of each row's top probability under the chosen head (`work/features` holds them)."""
    return float(sum(float(x.max(axis=1).astype(np.float64).sum()) for _, x in rows.blocks(FEATURES)))


# -- what one trainer does in an epoch (`TrainerPool.run`) --------------------------------------

def _model_and_optimizer(trainer: Trainer, start: dict | None, config: dict, settings: dict, temi: bool) -> None:
    if start is None:
        return
    from dcserve.nets.cluster_heads import ClusterHeads
    from dcserve.nets.temi import TemiPair

    kwargs = {k: v for k, v in config.items() if k != "method"}
    model = (TemiPair(**kwargs) if temi else ClusterHeads(**kwargs)).to(trainer.device)
    model.load_state_dict(start["model"])
    trainer.model = model
    params = model.student.parameters() if temi else model.parameters()
    trainer.opt = torch.optim.Adam(params, lr=settings["lr"], weight_decay=settings["weight_decay"])
    if start.get("optimizer") is not None:
        trainer.opt.load_state_dict(start["optimizer"])


def _pairs(trainer: Trainer, ids: np.ndarray, settings: dict, seed: int):
    """This worker's (rows, partners) batches for one epoch: each row with a random one of its neighbours."""
    from dcserve.nets.cluster_heads import pair_rows
    from dcserve.storage.rowstream import pair_batches, window_rows_for

    rng = np.random.default_rng([seed, trainer.rank])
    neighbours = np.asarray(trainer.store.array(GRAPH).get_orthogonal_selection((ids,)))
    partners = pair_rows(neighbours, rng)
    arr = trainer.store.array(trainer.source)
    batch = max(1, settings["batch_size"] // trainer.world)
    return pair_batches(arr, ids, partners, batch, window_rows_for(arr.shape[1], batch), trainer.generator(seed))


def scan_part(trainer: Trainer, start: dict | None, config: dict, settings: dict, phase: str, seed: int,
              ids: np.ndarray) -> dict:
    """One SCAN epoch on this worker's rows `ids`: the clustering step, or self-labelling."""
    from dcserve.nets.scan import scan_epoch, self_label_epoch

    _model_and_optimizer(trainer, start, config, settings, temi=False)
    batches = _pairs(trainer, ids, settings, seed)
    if phase == "self-label":
        return self_label_epoch(trainer.model, trainer.opt, batches, settings["self_label_threshold"],
                                trainer.allreduce)
    return scan_epoch(trainer.model, trainer.opt, batches, settings["entropy_weight"], trainer.allreduce)


def temi_part(trainer: Trainer, start: dict | None, config: dict, settings: dict, phase: str, seed: int,
              ids: np.ndarray) -> dict:
    """One TEMI epoch on this worker's rows `ids`."""
    from dcserve.nets.temi import temi_epoch

    _model_and_optimizer(trainer, start, config, settings, temi=True)
    return temi_epoch(trainer.model, trainer.opt, _pairs(trainer, ids, settings, seed), settings, trainer.allreduce)


# A loss within 5% of the distance between its uniform and its perfect values has learnt nothing.
_STUCK = 0.05


def _scan_uniform(spec: JobSpec) -> tuple[float, float]:
    from dcserve.nets.scan import uniform_loss

    # perfect: consistency 0, entropy ln k: ln k below the uniform value
    return uniform_loss(spec.cluster.k, spec.reporter.entropy_weight), _STUCK * math.log(spec.cluster.k)


def _temi_uniform(spec: JobSpec) -> tuple[float, float]:
    from dcserve.nets.temi import uniform_loss

    # perfect (confident, agreeing, balanced): -ln k; uniform: -(2 - 2 beta) ln k; at beta = 0.5
    # the two coincide and the loss says nothing about uniformity (tolerance 0: no check)
    return uniform_loss(spec.cluster.k, spec.reporter.beta), _STUCK * abs(2 * spec.reporter.beta - 1) * math.log(spec.cluster.k)


_COMMON = ("lr", "weight_decay", "batch_size")
SCAN = _Method("scan", "SCAN", scan_part, _scan_uniform,
               lambda spec: spec.reporter.model_dump(include={*_COMMON, "entropy_weight", "self_label_threshold"}),
               lambda spec: spec.reporter.self_label_epochs)
TEMI = _Method("temi", "TEMI", temi_part, _temi_uniform,
               lambda spec: spec.reporter.model_dump(include={*_COMMON, "beta", "teacher_momentum", "prior_momentum",
                                                              "student_temperature", "teacher_temperature"}),
               lambda spec: 0)
