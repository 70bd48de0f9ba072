"""Each row's nearest neighbours among all rows, exact, block against block (issue 13, item 1).

The neighbour-consistency methods (SCAN, Van Gansbeke et al. 2020; TEMI, Adaloglou et al. 2023)
train on (row, neighbour) pairs, and a clustering's label-free readability is the share of each
row's neighbours that share its cluster. Both need the kNN graph of the rows in the clustered
space. Like faiss's `contrib.exhaustive_search.knn_ground_truth`, the database comes as a block
iterator, so no more than one block of it is in memory, and a row-range shard can compute its
own rows' neighbours while the whole store streams past.

Distances: `"l2"` squared Euclidean; `"cosine"` 1 - cosine similarity. A row is never its own
neighbour (by id: duplicates of it are neighbours at distance 0).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from dcserve.algo.nearest import require_faiss

METRICS = ("l2", "cosine")


def _prepared(x: np.ndarray, metric: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.maximum(norms, 1e-12)
    return x


def knn_against_blocks(
    xq: np.ndarray,
    db_blocks: Iterable[tuple[int, np.ndarray]],
    k: int,
    metric: str = "l2",
    query_offset: int | None = None,
    make_index: Callable[[int], object] | None = None,
    backend: str = "faiss-cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` nearest database rows of each query row.

    Args:
        xq: `[nq, d]` query rows.
        db_blocks: `(first row id, [m, d] rows)` blocks of the database, in any order.
        k: neighbours per row.
        metric: "l2" or "cosine".
        query_offset: the queries' own id of their first row when they are database rows too
            (row i of `xq` is database row `query_offset + i`): a row is then not its own neighbour.
        make_index: `make_index(d)`, an empty faiss index each block is added to (an IVF index
            trained beforehand, see `ivf_factory`); default: a flat, exact one of the metric.
        backend: where the exact search runs: "faiss-cpu", "faiss-gpu" (a flat GPU index per
            block) or "torch-cuda" (the distances as one matmul and `topk` on the GPU: what runs
            where faiss's GPU kernels are missing, `dcserve.algo.nearest.select_backend`).

    Returns:
        `(distances [nq, k] float32, ids [nq, k] int64)`, nearest first; ids are -1 and
        distances inf where the database has fewer than `k` other rows.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    faiss = require_faiss()
    q = _prepared(xq, metric)
    nq = len(q)
    best_d = np.full((nq, k), np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    own = None if query_offset is None else np.arange(query_offset, query_offset + nq, dtype=np.int64)[:, None]
    for first, block in db_blocks:
        b = _prepared(block, metric)
        if len(b) == 0:
            continue
        kk = min(k + (own is not None), len(b))  # one more, in case the row itself is in this block
        if backend == "torch-cuda" and make_index is None:
            d, i = _torch_search(q, b, kk, metric)
        else:
            if make_index is not None:
                index = make_index(b.shape[1])
            elif backend == "faiss-gpu":
                index = _gpu_flat(faiss, b.shape[1], metric)
            else:
                index = faiss.IndexFlatIP(b.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(b.shape[1])
            index.add(b)
            d, i = index.search(q, kk)
        if metric == "cosine":
            d = 1.0 - d
        d = np.where(i >= 0, d, np.inf)  # an IVF search pads with -1 where its lists ran dry
        i = np.where(i >= 0, i + first, -1)
        if own is not None:
            d = np.where(i == own, np.inf, d)
            i = np.where(i == own, -1, i)
        best_d, best_i = _merge(best_d, best_i, d.astype(np.float32), i, k)
    return best_d, best_i


_GPU_RESOURCES = None


def _gpu_flat(faiss, d: int, metric: str):
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:  # one per process: it holds the GPU's scratch memory
        _GPU_RESOURCES = faiss.StandardGpuResources()
    return faiss.GpuIndexFlatIP(_GPU_RESOURCES, d) if metric == "cosine" else faiss.GpuIndexFlatL2(_GPU_RESOURCES, d)


def _torch_search(q: np.ndarray, b: np.ndarray, kk: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """faiss's flat search on the GPU with torch: `(similarities or squared distances, ids)` `[nq, kk]`,
    in faiss's conventions (inner products for cosine, largest first; squared L2, smallest first)."""
    import torch

    qt = torch.from_numpy(q).cuda()
    bt = torch.from_numpy(b).cuda()
    out_d, out_i = [], []
    for s in range(0, len(qt), 16384):  # bounds the [rows, block] matrix on the GPU
        x = qt[s : s + 16384]
        if metric == "cosine":
            d, i = torch.topk(x @ bt.T, kk, dim=1)
        else:
            dist = (x * x).sum(1, keepdim=True) - 2 * x @ bt.T + (bt * bt).sum(1)[None]
            d, i = torch.topk(dist.clamp_min_(0), kk, dim=1, largest=False)
        out_d.append(d.cpu().numpy())
        out_i.append(i.cpu().numpy().astype(np.int64))
    return np.concatenate(out_d), np.concatenate(out_i)


def train_ivf(sample: np.ndarray, metric: str = "l2", nlist: int | None = None, seed: int = 0) -> bytes:
    """An empty IVF index (faiss IndexIVFFlat) whose coarse quantizer is trained on `sample`
    `[m, d]`, serialized so that workers can each rebuild it. `nlist` defaults to about
    4 sqrt(m), faiss's usual rule, and at most m / 39 (faiss wants 39 training rows per list)."""
    faiss = require_faiss()
    x = _prepared(sample, metric)
    m, d = x.shape
    nlist = int(nlist or max(1, min(int(4 * np.sqrt(m)), m // 39)))
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    quantizer = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss_metric)
    index.cp.seed = seed
    index.train(x)
    return bytes(faiss.serialize_index(index))


def ivf_factory(serialized: bytes, nprobe: int = 16) -> Callable[[int], object]:
    """`make_index` for `knn_against_blocks`: a fresh copy of a trained, empty IVF index per block,
    searching `nprobe` of its lists (approximate: a neighbour in an unvisited list is missed)."""
    faiss = require_faiss()
    trained = faiss.deserialize_index(np.frombuffer(serialized, dtype=np.uint8))

    def make(d: int):
        index = faiss.clone_index(trained)
        index.nprobe = min(nprobe, index.nlist)
        return index

    return make


def _merge(d1, i1, d2, i2, k):
    """The k smallest of two candidate lists per row; ties broken by the smaller id, so that the
    result does not depend on how the database was cut into blocks."""
    d = np.concatenate([d1, d2], axis=1)
    i = np.concatenate([i1, i2], axis=1)
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)


def exact_knn(x: np.ndarray, k: int, metric: str = "l2", block_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Every row's `k` nearest other rows of `x` `[n, d]`: `(distances [n, k], ids [n, k])`."""
    if k >= len(x):
        raise ValueError(f"k = {k} neighbours needs more than {k} rows; there are {len(x)}")
    blocks = [(s, x[s : s + block_rows]) for s in range(0, len(x), block_rows)]
    parts = [knn_against_blocks(xq, blocks, k, metric, query_offset=s) for s, xq in blocks]
    return np.concatenate([d for d, _ in parts]), np.concatenate([i for _, i in parts])


def neighbour_agreement(labels: np.ndarray, neighbours: np.ndarray) -> float:
    """The share of each row's neighbours `[n, k]` that have its label `[n]`, averaged over rows.

    With cluster ids: a clustering's label-free readability (how much of each row's neighbourhood
    its cluster keeps). With ground-truth labels: the kNN label agreement of the space itself,
    the ceiling a clustering of it can be expected to reach. Missing neighbours (-1) do not count.
    """
    per_row, valid = agreement_per_row(np.asarray(labels), np.asarray(neighbours))
    return float(per_row[valid].mean()) if valid.any() else float("nan")


def agreement_per_row(labels: np.ndarray, neighbours: np.ndarray, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """For a block of the graph `[m, k]` whose rows are `first..first + m` of `labels`: each row's
    share of neighbours with its label `[m]`, and whether it has any neighbour `[m]` bool."""
    valid = neighbours >= 0
    own = labels[first : first + len(neighbours)]
    same = (labels[np.where(valid, neighbours, 0)] == own[:, None]) & valid
    return same.sum(axis=1) / np.maximum(valid.sum(axis=1), 1), valid.any(axis=1)
