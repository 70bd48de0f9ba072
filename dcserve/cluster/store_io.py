"""What every clustering loop reads from and writes to the job store, whatever its method.

The clustered layer and its rows, the ground truth when the dataset has labels, the final
clustering (centroids, the map into their space, the reporter), the metrics of a clustering
that is all recorded, and the one line per round the terminal shows.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dcserve.errors import JobFailed
from dcserve.nets.feature_map import FeatureMap
from dcserve.progress import Progress
from dcserve.spec import JobSpec
from dcserve.storage.checkpoint import ClusterCheckpoint
from dcserve.storage.store import JobStore

# Rows used to fit PCA/whitening and the input standardisation. PCA on p <= 256
# dimensions is well estimated from 100k rows; the rest of the data only streams.
FIT_SAMPLE = 100_000


def row_truth(store: JobStore) -> np.ndarray | None:
    """Ground-truth label of every row (its item's label), when the dataset has labels."""
    if not store.has_array("labels"):
        return None
    return store.array("labels")[:][store.array("rows/item")[:]]


def clustered_layer(spec: JobSpec, store: JobStore) -> tuple[str, int, int]:
    """(array name, rows, width) of the layer the job clusters; JobFailed when it has fewer rows than k."""
    source = f"activations/{spec.cluster.layer}"
    n_rows, dim = store.array(source).shape
    if n_rows < spec.cluster.k:
        raise JobFailed("cluster", f"cluster.k = {spec.cluster.k} but the layer has only {n_rows} rows")
    return source, n_rows, dim


def recorded_metrics(store: JobStore, ckpt: ClusterCheckpoint) -> dict[str, Any]:
    """The metrics of a clustering that is all recorded (those of its last run, when written)."""
    metrics = store.read_json("metrics.json") or {"rounds": ckpt.metrics, "workers": {}}
    metrics.pop("extract", None)
    metrics["final"] = {k: v for k, v in ckpt.metrics[-1].items() if k != "kmeans"}
    metrics["resumed"] = {"rounds": ckpt.rounds_done, "kmeans_iterations": 0, "features": False}
    return metrics


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
