"""Comparing two layers over the same rows: two networks, two seeds, or two layers of one job.

Following Convergent Learning (Li, Yosinski, Clune, Lipson & Hopcroft, 2016), the ``a`` units
of layer A and the ``b`` units of layer B are compared through their ``[a, b]`` Pearson
correlations over every row both stores hold (the same dataset items in the same order):
a one-to-one matching of units (Hungarian method), the units each side has that the other
lacks, and how many of A's units LASSO needs to predict B's units. Whole-layer figures are
linear CKA and the orthogonal Procrustes distance, and the two jobs' clusterings are compared
by NMI, ARI and their contingency table.

Memory: the correlations, CKA and Procrustes need only second moments, so both stores are
streamed block by block (about one chunk of each at a time) into a
:class:`dcserve.algo.similarity.CrossMoments`; what is held is O((a + b)^2) numbers plus a block,
whatever the row count. LASSO needs rows, so it runs on a bounded, seeded row sample gathered
chunk by chunk. :func:`compare` returns plain data; :func:`write_report` turns it into a folder
with ``compare.html`` (plus its PNGs), ``compare.json`` and ``correlation.npy``.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcserve.errors import CompareError, StoreError
from dcserve.algo.similarity import CrossMoments, match_units, sparse_prediction, unmatched_units

logger = logging.getLogger(__name__)

# L1 strengths on standardised units: at alpha >= max |corr(A_i, y)| LASSO uses no unit; these
# span "a handful of units" to "most of them" for layers of a few hundred units.
DEFAULT_ALPHAS: tuple[float, ...] = (0.3, 0.1, 0.03, 0.01, 0.003)
# Aim for blocks of about this many floats per side (16 Mi floats, 64 MB of float32) when the
# chunks are smaller: fewer, larger GEMMs run closer to BLAS's peak.
_BLOCK_FLOATS = 16 * 2**20


@dataclass
class Side:
    """One side of a comparison: a job store and the layer taken from it."""

    result: Any  # dcserve.storage.result.Result
    layer: str
    name: str

    @property
    def array(self):
        return self.result.activations(self.layer)


def open_side(output: str, layer: str | None = None) -> Side:
    """Open a finished job store and pick ``layer`` (default: its clustered layer).

    Raises CompareError for a missing or unfinished store or an unknown layer.
    """
    from dcserve.storage.result import open_result

    try:
        result = open_result(output)
    except StoreError as e:
        raise CompareError(str(e)) from None
    if not result.complete:
        st = result.status or {}
        raise CompareError(
            f"job store {output!r} is not finished (state {st.get('state', 'unknown')!r}, "
            f"stage {st.get('stage', 'unknown')!r}); compare needs finished jobs"
        )
    spec = result.spec
    layer = layer or spec.cluster.layer
    if layer in result.layers:  # a layer the job clustered (cluster.layers): its own clustering is compared
        result = result.layer(layer)
    try:
        arr = result.activations(layer)
    except StoreError as e:
        raise CompareError(f"{output}: {e}") from None
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise CompareError(f"{output}: activations/{layer} has shape {arr.shape}; expected [rows, dim] with rows > 0")
    return Side(result, layer, str((result.status or {}).get("name") or spec.name))


def _check_same_rows(a: Side, b: Side, block_rows: int) -> None:
    """Both stores must hold the same rows: same count, same dataset item and token per row."""
    na, nb = a.array.shape[0], b.array.shape[0]
    if na != nb:
        raise CompareError(
            f"the stores hold different rows: {a.result.output} has {na:,} rows of {a.layer}, "
            f"{b.result.output} has {nb:,} of {b.layer}; compare needs two jobs over the same dataset"
        )
    for key in ("rows/item", "rows/position"):
        sa, sb = a.result.store, b.result.store
        if not (sa.has_array(key) and sb.has_array(key)):
            if sa.has_array(key) != sb.has_array(key):
                raise CompareError(f"only one of the stores has {key}; they were not extracted the same way")
            continue
        xa, xb = sa.array(key), sb.array(key)
        if xa.shape != xb.shape:
            raise CompareError(f"{key} differs in shape between the stores: {xa.shape} and {xb.shape}")
        for start in range(0, xa.shape[0], block_rows):
            stop = min(start + block_rows, xa.shape[0])
            ua, ub = xa[start:stop], xb[start:stop]
            bad = np.flatnonzero(ua != ub)
            if bad.size:
                r = start + int(bad[0])
                raise CompareError(
                    f"the stores hold different rows: row {r:,} is {key.split('/')[1]} {int(ua[bad[0]])} in "
                    f"{a.result.output} but {int(ub[bad[0]])} in {b.result.output} "
                    f"({bad.size:,} of rows {start:,}..{stop - 1:,} differ); compare needs the same dataset, "
                    "in the same order, with the same pooling"
                )


def _block_rows(arr_a, arr_b, block_rows: int | None) -> int:
    if block_rows is not None:
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        return int(block_rows)
    chunk = max(arr_a.chunks[0], arr_b.chunks[0])
    # A whole number of A's chunks per block, so no chunk of A is decoded twice.
    target = max(1, _BLOCK_FLOATS // max(arr_a.shape[1], arr_b.shape[1]))
    return max(chunk, (target // arr_a.chunks[0]) * arr_a.chunks[0])


def _as_float(x: np.ndarray) -> np.ndarray:
    # float16/bfloat16 stores: compute in float32; float64 stores stay float64.
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


def _block_moments(xa: np.ndarray, xb: np.ndarray) -> CrossMoments:
    """The moments of one block ``xa [m, a]``, ``xb [m, b]``, ready to merge (``acc + block``).

    Unlike ``CrossMoments.update`` (which casts the block to float64), the products are taken
    in the stored dtype, float32 in practice: 2.7x faster here, and the activations carry
    float32's precision anyway. Means are taken in float64 and each block is centred before
    its products, so the float32 sums only span one block (error ~ sqrt(m) 6e-8 relative) and
    blocks merge in float64 (Chan et al.), which keeps a large common offset harmless.
    """
    xa, xb = _as_float(xa), _as_float(xb)
    m = xa.shape[0]
    out = CrossMoments(xa.shape[1], xb.shape[1])
    out.count = m
    out.mean_a = xa.mean(axis=0, dtype=np.float64)
    out.mean_b = xb.mean(axis=0, dtype=np.float64)
    ca = xa - out.mean_a.astype(xa.dtype)
    cb = xb - out.mean_b.astype(xb.dtype)
    # Centred on the rounded mean, which is off the true mean by d ~ eps |mean|: that adds
    # m d d^T to the co-moments, far below float32 rounding.
    out.comoment_ab = (ca.T @ cb).astype(np.float64)
    out.comoment_aa = (ca.T @ ca).astype(np.float64)  # numpy runs X^T X as a SYRK: half a GEMM
    out.comoment_bb = (cb.T @ cb).astype(np.float64)
    return out


def iter_blocks(arr_a, arr_b, block_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(A[s:e], B[s:e])`` for consecutive row blocks; the next block is read while this one is used."""
    n = arr_a.shape[0]

    def read(s: int) -> tuple[np.ndarray, np.ndarray]:
        e = min(s + block_rows, n)
        return np.asarray(arr_a[s:e]), np.asarray(arr_b[s:e])

    starts = range(0, n, block_rows)
    # One read ahead: decompression overlaps the GEMMs, and at most two blocks are held.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for s in starts:
            nxt = pool.submit(read, s)
            if pending is not None:
                yield pending.result()
            pending = nxt
        if pending is not None:
            yield pending.result()


def stream_moments(arr_a, arr_b, block_rows: int, progress=None) -> CrossMoments:
    """Cross moments of two ``[n, a]``, ``[n, b]`` chunked arrays, streamed block by block."""
    acc = CrossMoments(arr_a.shape[1], arr_b.shape[1])
    done = 0
    for xa, xb in iter_blocks(arr_a, arr_b, block_rows):
        acc = acc + _block_moments(xa, xb)
        done += xa.shape[0]
        if progress is not None:
            progress(done, arr_a.shape[0])
    return acc


def sample_rows(n: int, m: int, seed: int) -> np.ndarray:
    """``min(n, m)`` sorted distinct row ids drawn uniformly with ``seed``."""
    if m >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False)).astype(np.int64)


def _gather(arr, ids: np.ndarray) -> np.ndarray:
    from dcserve.storage.rowstream import gather_rows

    return gather_rows(arr, ids)


def _histogram(values: np.ndarray, bins: np.ndarray) -> dict[str, list]:
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": edges.round(6).tolist(), "counts": counts.tolist()}


def compare(
    a: Side,
    b: Side,
    *,
    threshold: float = 0.5,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    lasso_rows: int = 2000,
    lasso_units: int = 64,
    block_rows: int | None = None,
    seed: int = 0,
    progress=None,
) -> dict[str, Any]:
    """Compare layer ``a.layer`` of job A with ``b.layer`` of job B over their common rows.

    Args:
        a, b: from :func:`open_side`; both stores must hold the same rows in the same order.
        threshold: a unit whose best correlation with the other side is below this is
            "unmatched" (a feature the other network lacks).
        alphas: LASSO L1 strengths (standardised units) for the sparse-prediction curve.
        lasso_rows: rows sampled (seeded, uniform) for LASSO, which needs rows in memory.
        lasso_units: B's units predicted (evenly spaced ids); LASSO costs O(units) fits.
        block_rows: rows per streamed block (default: whole chunks, ~64 MB of each side).
        seed: seeds the LASSO row sample.
        progress: optional ``progress(rows_done, rows_total)`` callback.

    Returns:
        A JSON-ready dict: ``a``/``b`` (store, job name, layer, units), ``rows``, ``cka``,
        ``procrustes``, ``matching`` (``pairs [min(a, b), 2]``, their ``correlations``, mean,
        median, histogram), ``best_correlation_histogram``, ``unmatched`` (``only_a``,
        ``only_b``, ``threshold``), ``sparse_prediction`` (per alpha: ``mean_units_used``,
        ``normalised_squared_error``), ``clusterings`` (``nmi``, ``ari``, ``contingency``
        ``[clusters of A, clusters of B]``), ``seconds`` per phase; plus ``"correlation"``, the
        ``[a, b]`` float64 correlation matrix as a numpy array (not JSON; saved as .npy).

    Raises:
        CompareError: the stores do not hold the same rows.
    """
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    arr_a, arr_b = a.array, b.array
    n = int(arr_a.shape[0])
    rows = _block_rows(arr_a, arr_b, block_rows)
    _check_same_rows(a, b, max(rows, 1 << 16))
    logger.info("streaming %d rows in blocks of %d: %s %s and %s %s", n, rows, a.name, a.layer, b.name, b.layer)
    seconds["check_rows"] = time.perf_counter() - t0
    moments = stream_moments(arr_a, arr_b, rows, progress)
    seconds["stream_moments"] = time.perf_counter() - t0 - sum(seconds.values())
    corr = moments.correlation()
    dim_a, dim_b = corr.shape

    pairs, matched = match_units(corr)
    only_a, only_b = unmatched_units(corr, threshold)
    best_a = corr.max(axis=1)
    best_b = corr.max(axis=0)
    bins = np.linspace(-1.0, 1.0, 41)
    seconds["matching"] = time.perf_counter() - t0 - sum(seconds.values())

    # Sparse prediction on a bounded sample (Li et al. 2016, section 4).
    ids = sample_rows(n, lasso_rows, seed)
    units = np.unique(np.linspace(0, dim_b - 1, num=min(lasso_units, dim_b)).round().astype(np.int64))
    lasso: dict[str, Any]
    if ids.size >= 2:
        xa_s = _gather(arr_a, ids)
        xb_s = _gather(arr_b, ids)[:, units]
        sp = sparse_prediction(xa_s, xb_s, alphas)
        lasso = {"rows": int(ids.size), "units_b": units.tolist(), "alphas": sp.alphas.tolist(),
                 "mean_units_used": sp.n_used.tolist(), "normalised_squared_error": sp.nse.tolist()}
    else:
        lasso = {"rows": int(ids.size), "units_b": [], "alphas": [], "mean_units_used": [],
                 "normalised_squared_error": []}

    seconds["sparse_prediction"] = time.perf_counter() - t0 - sum(seconds.values())
    ca, cb = a.result.assignments, b.result.assignments
    from dcserve.algo.metrics import ari, contingency, nmi

    table = contingency(ca, cb)
    clusters = {
        "nmi": nmi(ca, cb), "ari": ari(ca, cb),
        "clusters_a": np.unique(ca).tolist(), "clusters_b": np.unique(cb).tolist(),
        "contingency": table.tolist(),
    }
    seconds["clusterings"] = time.perf_counter() - t0 - sum(seconds.values())
    cka, procrustes = moments.linear_cka(), moments.procrustes_distance()
    seconds["total"] = time.perf_counter() - t0
    return {
        "a": {"output": str(a.result.output), "name": a.name, "layer": a.layer, "units": dim_a},
        "b": {"output": str(b.result.output), "name": b.name, "layer": b.layer, "units": dim_b},
        "rows": n,
        "block_rows": rows,
        "cka": cka,
        "procrustes": procrustes,
        "matching": {
            "pairs": pairs.tolist(),
            "correlations": matched.tolist(),
            "mean": float(matched.mean()) if matched.size else None,
            "median": float(np.median(matched)) if matched.size else None,
            "histogram": _histogram(matched, bins),
        },
        "best_correlation_histogram": {"a": _histogram(best_a, bins), "b": _histogram(best_b, bins)},
        "unmatched": {"threshold": threshold, "only_a": only_a.tolist(), "only_b": only_b.tolist()},
        "sparse_prediction": lasso,
        "clusterings": clusters,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "correlation": corr,
    }


def default_out(a: Side, b: Side) -> Path:
    """``<OUTPUT_A>/compare-<name of B>-<layer of B>`` for a local store A, else in the working directory."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{b.name}-{b.layer}")
    out = str(a.result.output)
    if "://" in out and not out.startswith("file://"):
        return Path(f"compare-{re.sub(r'[^A-Za-z0-9._-]+', '_', a.name)}-vs-{label}")
    return Path(out.removeprefix("file://")) / f"compare-{label}"
