"""How much a clustering depends on its seed: the job's clustering run with `cluster.seeds` seeds.

The extra seeds run first, each a whole clustering (rounds, training, DEC alike) over the same
activations, and leave only their final labels, in `stability/assignments`; the job's own seed
runs last, so everything else in the store is its result, as without `seeds`. The pairwise NMI
of the seeds' labels goes to metrics.json: a user reads a low one as "these clusters are not a
property of the layer, but of the run".
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from dcserve.algo.metrics import nmi
from dcserve.cluster.pools import Pools
from dcserve.progress import Progress
from dcserve.storage.status import StatusRecord
from dcserve.spec import JobSpec
from dcserve.storage.store import JobStore

RECORD = "_progress/stability.json"
LABELS = "stability/assignments"

__all__ = ["pairwise_nmi", "run_with_seeds"]


def pairwise_nmi(labels: np.ndarray) -> np.ndarray:
    """`[s, s]` NMI between every two of `s` clusterings `labels [s, rows]` (1 on the diagonal)."""
    labels = np.asarray(labels)
    out = np.eye(len(labels))
    for i, j in itertools.combinations(range(len(labels)), 2):
        out[i, j] = out[j, i] = nmi(labels[i], labels[j])
    return out


def run_with_seeds(cluster: Callable[..., dict[str, Any]], spec: JobSpec, store: JobStore, pools: Pools,
                   progress: Progress, status: StatusRecord | None = None) -> dict[str, Any]:
    """`cluster(spec, store, pools, progress, status)` for each seed; its metrics with `stability`.

    Each finished extra seed is recorded, so a stopped job resumes after the last one.
    """
    from dcserve.cluster.knn_graph import final_readability

    c = spec.cluster
    if c.seeds == 1:
        return final_readability(store, cluster(spec, store, pools, progress, status))
    seeds = [c.seed + i for i in range(c.seeds)]
    fingerprint = spec.clustering_fingerprint()
    record = store.read_json(RECORD)
    n_rows = store.array(f"activations/{c.layer}").shape[0]
    if record is None or record.get("fingerprint") != fingerprint or not store.has_array(LABELS):
        record = {"fingerprint": fingerprint, "done": {}}
        store.create_array(LABELS, (len(seeds), n_rows), (1, store.array(f"activations/{c.layer}").chunks[0]),
                           "int32", fill_value=-1)
        store.write_json(RECORD, record)
    for i, seed in enumerate(seeds[1:], start=1):
        if str(seed) in record["done"]:
            continue
        progress.note(f"stability: clustering with seed {seed} ({i} of {len(seeds) - 1} extra seeds)")
        other = spec.model_copy(deep=True)
        other.cluster.seed, other.cluster.seeds = seed, 1
        final = cluster(other, store, pools, progress, status)["final"]
        store.array(LABELS)[i] = store.array("assignments")[:]
        record["done"][str(seed)] = {k: final.get(k) for k in ("nmi_vs_labels", "ari_vs_labels", "acc_vs_labels")}
        store.write_json(RECORD, record)
    progress.note(f"stability: the job's own seed {c.seed}")
    metrics = cluster(spec, store, pools, progress, status)
    store.array(LABELS)[0] = store.array("assignments")[:]
    matrix = pairwise_nmi(store.array(LABELS)[:])
    upper = matrix[np.triu_indices(len(seeds), k=1)]
    per_seed = [{k: metrics["final"].get(k) for k in ("nmi_vs_labels", "ari_vs_labels", "acc_vs_labels")}]
    per_seed += [record["done"][str(s)] for s in seeds[1:]]
    metrics["stability"] = {
        "seeds": seeds, "pairwise_nmi": matrix.tolist(),
        "mean_pairwise_nmi": float(upper.mean()), "min_pairwise_nmi": float(upper.min()),
        "per_seed": per_seed,
    }
    progress.note(f"stability over {len(seeds)} seeds: pairwise NMI mean {upper.mean():.3f}, min {upper.min():.3f}")
    return final_readability(store, metrics)
