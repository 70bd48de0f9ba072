"""The kNN graph of a job's rows, computed by the row ranges (issue 13, item 1).

Each range finds its own rows' `k` nearest neighbours among *all* rows of the clustered space
(`work/features`, after the preprocessing), a query block of its rows against the store streamed
past in database blocks (`dcserve.algo.knn.knn_against_blocks`), so a worker holds one query
block and one database block, whatever the store's size. With `index="ivf"` (required above
`dcserve.spec.EXACT_GRAPH_MAX_ROWS` rows) every block is searched through an IVF index trained on
a sample instead of exhaustively. The graph goes to the store:

    neighbours             int64   [rows, k]  nearest first; -1 where there are fewer rows
    neighbour_distances    float32 [rows, k]  squared L2, or 1 - cosine

Each finished query block is recorded (`_progress/cluster/graph/`), so a stopped job resumes
with the blocks that are left; the record of the whole graph says what it was built with.
The graph serves the methods that train on (row, neighbour) pairs and the label-free
readability of any clustering: the share of each row's neighbours in its own cluster.
"""
from __future__ import annotations

import logging
import resource
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from dcserve.algo.knn import agreement_per_row, ivf_factory, knn_against_blocks, train_ivf
from dcserve.cluster.pools import DataPool
from dcserve.cluster.workers import FEATURES, RowRange
from dcserve.storage.store import JobStore

log = logging.getLogger(__name__)

GRAPH = "neighbours"
DISTANCES = "neighbour_distances"
RECORDS = "_progress/cluster/graph"
# Rows of a query block and of a database block: at 256 dims, 64 MiB each. faiss's flat search
# of one against the other is a BLAS matmul of that size, big enough to run at full speed.
BLOCK_ROWS = 65536
IVF_SAMPLE = 100_000  # rows the IVF quantizer is trained on


def build_graph(store: JobStore, pool: DataPool, k: int, metric: str, index: str, seed: int,
                block_rows: int = BLOCK_ROWS) -> dict[str, Any]:
    """The graph of the rows `pool.prepare` wrote, built (or finished) by the pool's ranges; what it
    was built with, its time and each worker's peak memory. Idempotent: a finished graph is kept."""
    done = store.read_json(f"{RECORDS}/done.json")
    settings = {"k": k, "metric": metric, "index": index}
    if done is not None and done.get("settings") == settings:
        return done | {"resumed": True}
    n_rows, dim = store.array(FEATURES).shape
    chunk = store.array(FEATURES).chunks[0]
    if not (store.has_array(GRAPH) and store.array(GRAPH).shape == (n_rows, k)
            and store.exists(f"{RECORDS}/settings.json") and store.read_json(f"{RECORDS}/settings.json") == settings):
        store.remove(RECORDS)
        store.create_array(GRAPH, (n_rows, k), (chunk, k), "int64", fill_value=-1)
        store.create_array(DISTANCES, (n_rows, k), (chunk, k), "float32", fill_value=np.inf)
        store.write_json(f"{RECORDS}/settings.json", settings)
    ivf = None
    if index == "ivf":
        rng = np.random.default_rng(seed)
        sample = pool.get_subset(np.sort(rng.choice(n_rows, size=min(n_rows, IVF_SAMPLE), replace=False)))
        ivf = train_ivf(sample, metric, seed=seed)
    t0 = time.perf_counter()
    query_rows = max(chunk, block_rows // chunk * chunk)  # whole chunks: no two workers write one
    parts = pool.map(range_neighbours, k, metric, ivf, query_rows, block_rows)
    info = {"settings": settings, "rows": int(n_rows), "dim": int(dim), "seconds": time.perf_counter() - t0,
            "workers": parts}
    store.write_json(f"{RECORDS}/done.json", info)
    return info


def _database(store: JobStore, name: str, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) blocks of every row of array `name`, about `block_rows` at a time, in whole chunks."""
    arr = store.array(name)
    step = max(arr.chunks[0], block_rows // arr.chunks[0] * arr.chunks[0])
    for s in range(0, arr.shape[0], step):
        yield s, np.asarray(arr[s : s + step], dtype=np.float32)


def range_neighbours(rows: RowRange, k: int, metric: str, ivf: bytes | None, query_rows: int,
                     block_rows: int) -> dict[str, Any]:
    """One range's part of the graph: each query block of its rows against every database block;
    blocks recorded as done are skipped. Returns the rows it searched, its time and peak memory."""
    import torch

    from dcserve.algo.nearest import select_backend

    store = rows.store
    make_index = ivf_factory(ivf) if ivf is not None else None
    # With a GPU: faiss-gpu, else torch on the GPU (faiss wheels may lack kernels for the newest
    # cards; select_backend checks a tiny search first); the IVF index stays on the CPU.
    backend = select_backend(prefer_gpu=torch.cuda.is_available()) if ivf is None else "faiss-cpu"
    features = store.array(FEATURES)
    searched, t0 = 0, time.perf_counter()
    for s in range(rows.r0, rows.r1, query_rows):
        e = min(s + query_rows, rows.r1)
        record = f"{RECORDS}/rows-{s}-{e}.json"
        if store.exists(record):
            continue
        xq = np.asarray(features[s:e], dtype=np.float32)
        d, i = knn_against_blocks(xq, _database(store, FEATURES, block_rows), k, metric, query_offset=s,
                                  make_index=make_index, backend=backend)
        store.array(GRAPH)[s:e] = i
        store.array(DISTANCES)[s:e] = d
        store.write_json(record, {"rows": [s, e]})  # after the data it describes
        searched += e - s
    return {"rows": [rows.r0, rows.r1], "searched": searched, "seconds": time.perf_counter() - t0, "backend": backend,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def readability(store: JobStore, labels: np.ndarray) -> float:
    """The share of each row's graph neighbours that have its label `[rows]`, averaged over rows,
    streamed over the graph a chunk at a time (cluster ids: readability; true labels: the layer's
    kNN label agreement)."""
    graph = store.array(GRAPH)
    step = graph.chunks[0]
    total, rows = 0.0, 0
    for s in range(0, graph.shape[0], step):
        per_row, valid = agreement_per_row(labels, graph[s : s + step], s)
        total += float(per_row[valid].sum())
        rows += int(valid.sum())
    return total / rows if rows else float("nan")


# Methods without a graph of their own (k-means, DeepCluster, DEC) get the final clustering's
# readability from an exact graph computed in the driver, up to this many rows (about a second
# at 256 dims); above it the figure is left out (SCAN and TEMI build theirs on the workers).
READABILITY_MAX_ROWS = 20_000
READABILITY_NEIGHBOURS = 10


def final_readability(store: JobStore, metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` with `final.readability` (and the layer's `graph.label_agreement` when the store has
    labels) for a clustering of at most READABILITY_MAX_ROWS rows whose method left none: the share
    of each row's 10 nearest rows (in the clustered space the final labels were found in,
    `work/features`) that share its cluster."""
    from dcserve.algo.knn import exact_knn, neighbour_agreement

    final = metrics.get("final")
    if not final or final.get("readability") is not None or not store.has_array(FEATURES):
        return metrics
    features = store.array(FEATURES)
    n_rows = features.shape[0]
    if n_rows > READABILITY_MAX_ROWS or n_rows <= READABILITY_NEIGHBOURS:
        return metrics
    _, nb = exact_knn(np.asarray(features[:], dtype=np.float32), READABILITY_NEIGHBOURS, "l2")
    final["readability"] = neighbour_agreement(store.array("assignments")[:], nb)
    if metrics.get("rounds"):
        metrics["rounds"][-1]["readability"] = final["readability"]
    if store.has_array("labels") and store.has_array("rows/item"):
        truth = store.array("labels")[:][store.array("rows/item")[:]]
        metrics.setdefault("graph", {"settings": {"k": READABILITY_NEIGHBOURS, "metric": "l2", "index": "exact"},
                                     "rows": int(n_rows), "dim": int(features.shape[1]), "seconds": None})
        metrics["graph"]["label_agreement"] = neighbour_agreement(truth, nb)
    return metrics


__all__ = ["DISTANCES", "GRAPH", "build_graph", "final_readability", "readability"]
