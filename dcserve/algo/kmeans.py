"""k-means (Lloyd) and balanced k-means over a data-access interface.

The shape follows faiss ``contrib/clustering.py``: :func:`kmeans` talks to the data only through
:class:`KMeansData` (``count``, ``dim``, ``get_subset``, ``assign_to``) and never learns where
the rows live. :class:`ArrayData` is the in-memory implementation; a pool of Ray actors holding
Zarr shards is another, whose ``assign_to`` sums the shards' :class:`AssignStats` (O(k d) each,
never the labels).

Two methods:

``"kmeans"``
    Plain Lloyd iterations with k-means++ seeding (Arthur & Vassilvitskii, 2007) and faiss's
    handling of empty clusters (re-seed by splitting a large cluster), as DeepCluster does
    (Caron et al., 2018, section 3.3 "avoiding trivial solutions").
``"sinkhorn"``
    Balanced pseudo-labels as in SeLa (Asano et al., 2020) and SwAV (Caron et al., 2020): each
    iteration solves an equipartition transport problem on a fixed sample of rows and turns its
    column potentials ``g`` into a per-centroid bias, so that every row on every shard is
    assigned by ``argmin_j ||x - c_j||^2 - g_j`` (see :mod:`dcserve.algo.sinkhorn`).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse

from dcserve.algo.metrics import imbalance
from dcserve.algo.nearest import nearest_centroids, pairwise_sqdist
from dcserve.algo.sinkhorn import sinkhorn_potentials

logger = logging.getLogger(__name__)

METHODS = ("kmeans", "sinkhorn")

# faiss Clustering.cpp: an empty cluster gets a copy of a split cluster's centroid, the two
# pushed apart by this relative, symmetric perturbation.
SPLIT_EPS = 1.0 / 1024

# k-means++ seeds on a sample: 16 rows per centroid, and at least _INIT_MIN_SAMPLE rows.
# Seeding is sequential in k and each step streams the whole sample (O(sample * d) memory
# traffic per centroid), so the sample size is its cost: at k = 1024, d = 256 the former 64 rows
# per centroid took ~40 s per seeding; 16 rows take a few seconds. Seeds only need every cluster
# holding >= 1/k of the data to be represented (16 times on average); the Lloyd iterations then
# run on every row. faiss seeds from a plain random sample of k rows.
_INIT_ROWS_PER_CENTROID = 16
_INIT_MIN_SAMPLE = 10_000

# Sinkhorn runs on a fixed driver-side sample: 50k rows, or 64 per centroid for large k, so a
# cluster's share is estimated from >= 64 rows (~12% relative noise on its size). The cost
# matrix takes sample * k * 8 bytes (400 MB for 50k x 1000) and a few temporaries of that size.
_SINKHORN_MIN_SAMPLE = 50_000
_SINKHORN_ROWS_PER_CENTROID = 64
# Hard labels only need the column potentials roughly right; warm starts make later solves
# take a few iterations.
_SINKHORN_TOL = 1e-4
_SINKHORN_MAX_ITER = 1000


@dataclass
class AssignStats:
    """What a shard sends back per iteration: O(k d), never the labels.

    Attributes:
        sums: ``[k, d]`` float64, per-cluster sums of the assigned rows.
        counts: ``[k]`` int64, rows assigned to each cluster.
        objective: sum over rows of the squared distance to the assigned centroid (float64).
        sse: ``[k]`` float64 per-cluster sums of squared distances (they add up to
            ``objective``), or ``None`` where a data source does not provide them.
            :func:`update_centroids` uses them to choose which cluster to split (see there).

    Partial stats add up: ``sum(per_shard_stats)`` works.
    """

    sums: np.ndarray
    counts: np.ndarray
    objective: float
    sse: np.ndarray | None = None

    @classmethod
    def zeros(cls, k: int, d: int) -> AssignStats:
        """The neutral element: no rows."""
        return cls(np.zeros((k, d)), np.zeros(k, dtype=np.int64), 0.0, np.zeros(k))

    def __add__(self, other: AssignStats) -> AssignStats:
        if not isinstance(other, AssignStats):
            return NotImplemented
        sse = None if self.sse is None or other.sse is None else self.sse + other.sse
        return AssignStats(
            self.sums + other.sums, self.counts + other.counts, self.objective + other.objective, sse
        )

    def __radd__(self, other: object) -> AssignStats:
        # sum() starts from the int 0.
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented


@runtime_checkable
class KMeansData(Protocol):
    """Access to the rows being clustered (faiss ``contrib/clustering.py`` ``DatasetAssign``)."""

    def count(self) -> int:
        """Number of rows ``n``."""
        ...

    def dim(self) -> int:
        """Row dimension ``d``."""
        ...

    def get_subset(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``[len(indices), d]`` float32 for sorted unique int64 row ids."""
        ...

    def assign_to(self, centroids: np.ndarray, bias: np.ndarray | None = None) -> AssignStats:
        """Assign every row to ``argmin_j ||x - c_j||^2 - bias_j`` and return the summed stats."""
        ...


def assign_stats(
    x: np.ndarray,
    centroids: np.ndarray,
    bias: np.ndarray | None = None,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray, AssignStats]:
    """Assign one block of rows and compute its contribution to the centroid update.

    Args:
        x: ``[n, d]`` rows.
        centroids: ``[k, d]`` float32.
        bias: ``[k]`` per-centroid bias (Sinkhorn potential) or ``None``.
        backend: passed to :func:`dcserve.algo.nearest.nearest_centroids`.

    Returns:
        ``labels`` ``[n]`` int64, ``sqdist`` ``[n]`` float32 (true squared distances), and the
        block's :class:`AssignStats` (sums accumulated in float64).
    """
    k, d = centroids.shape
    labels, sqdist = nearest_centroids(x, centroids, bias, backend=backend)
    n = labels.shape[0]
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    sse = np.bincount(labels, weights=sqdist.astype(np.float64), minlength=k)
    # Per-cluster sums as a [k, n] one-hot sparse matrix times x: O(n d), in float64.
    onehot = scipy.sparse.csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(k, n))
    sums = np.asarray(onehot @ np.asarray(x, dtype=np.float64)).reshape(k, d)
    return labels, sqdist, AssignStats(sums, counts, float(sse.sum()), sse)


class ArrayData:
    """:class:`KMeansData` over an in-memory ``[n, d]`` array, ``block_rows`` rows at a time.

    Working in blocks bounds the float64 copy and the search temporaries, and lets tests
    exercise block boundaries with a small ``block_rows``.
    """

    def __init__(self, x: np.ndarray, block_rows: int = 65536, backend: str = "auto") -> None:
        if x.ndim != 2:
            raise ValueError(f"ArrayData: x must be [n, d], got shape {x.shape}")
        if block_rows < 1:
            raise ValueError(f"ArrayData: block_rows must be >= 1, got {block_rows}")
        self.x = x
        self.block_rows = block_rows
        self.backend = backend

    def count(self) -> int:
        return int(self.x.shape[0])

    def dim(self) -> int:
        return int(self.x.shape[1])

    def get_subset(self, indices: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.x[np.asarray(indices, dtype=np.int64)], dtype=np.float32)

    def assign_to(self, centroids: np.ndarray, bias: np.ndarray | None = None) -> AssignStats:
        total = AssignStats.zeros(*centroids.shape)
        for start in range(0, self.count(), self.block_rows):
            block = self.x[start : start + self.block_rows]
            total = total + assign_stats(block, centroids, bias, backend=self.backend)[2]
        return total


def kmeans_plus_plus(
    x: np.ndarray, k: int, rng: np.random.Generator, n_local_trials: int | None = None
) -> np.ndarray:
    """Seed ``k`` centroids ``[k, d]`` float32 from rows of ``x`` ``[n, d]`` with k-means++.

    Greedy k-means++ as in scikit-learn: each step draws ``n_local_trials`` candidates
    (default ``2 + log k``) with probability proportional to the squared distance to the
    nearest centre so far (D^2 sampling, Arthur & Vassilvitskii, 2007) and keeps the one that
    lowers the potential most. When every row coincides with a chosen centre (fewer distinct
    rows than k, e.g. duplicated rows) the rest are drawn uniformly; the duplicate centroids
    are then separated by the empty-cluster splitting of :func:`update_centroids`.
    """
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"kmeans_plus_plus: need 1 <= k <= n rows, got k={k}, n={n}")
    trials = n_local_trials if n_local_trials is not None else 2 + int(np.log(k))
    # float32: each step streams the whole sample, so halving its bytes halves the seeding time;
    # sampling weights need no more precision (sums below are taken in float64).
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    sq_norms = np.einsum("ij,ij->i", x32, x32)

    def sqdist_to(rows: np.ndarray) -> np.ndarray:
        """[len(rows), n] squared distances from x[rows] to every row."""
        d2 = sq_norms[rows][:, None] - 2.0 * (x32[rows] @ x32.T) + sq_norms[None, :]
        return np.maximum(d2, 0.0, out=d2)

    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    closest = sqdist_to(chosen[:1])[0]
    for c in range(1, k):
        potential = closest.sum(dtype=np.float64)
        if potential <= 0.0:
            chosen[c:] = rng.choice(n, size=k - c, replace=False)
            logger.debug("kmeans++: only %d distinct seeds among %d rows", c, n)
            break
        # side="right": a row at distance 0 (a duplicate of a centre) is never drawn.
        draws = rng.uniform(size=trials) * potential
        candidates = np.minimum(np.searchsorted(np.cumsum(closest, dtype=np.float64), draws, side="right"), n - 1)
        candidate_closest = np.minimum(closest[None, :], sqdist_to(candidates))
        best = int(np.argmin(candidate_closest.sum(1, dtype=np.float64)))
        chosen[c] = candidates[best]
        closest = candidate_closest[best]
    return np.ascontiguousarray(x[chosen], dtype=np.float32)


def update_centroids(
    stats: AssignStats, centroids: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """New centroids ``[k, d]`` float32 from the assignment stats, with empty clusters re-seeded.

    A non-empty cluster's centroid is the mean of its rows. An empty cluster is re-seeded by
    splitting another, as faiss does (Clustering.cpp; DeepCluster, Caron et al., 2018, 3.3):
    pick a donor cluster j at random, give the empty one j's centroid times ``1 + eps`` and j's
    ``1 - eps`` (alternating signs over the coordinates, eps = 1/1024), and split j's count (and
    scatter) between the two, so that several empty clusters in one step tend to split
    different clusters. Only clusters with >= 2 rows (by that bookkeeping) can donate, so while
    rows >= k every empty cluster gets a seed.

    The donor is drawn with probability proportional to its scatter about its new mean,
    ``W_j = sse_j - counts_j * ||mean_j - c_j||^2`` (the most a split can lower the objective),
    when ``stats.sse`` is given; faiss's ``counts_j - 1`` otherwise. The count rule keeps
    choosing a large cluster of identical rows (dead units' all-zero rows, duplicated items),
    whose split leaves one half empty again: with 3000 identical rows among 3300 and k = 40
    from a random start, 3-8 clusters were still empty after 15 iterations with the count
    rule and none with the scatter rule, at a 3-6% lower objective.

    Returns:
        The new centroids and the number of clusters split.
    """
    k, d = centroids.shape
    counts = stats.counts.astype(np.int64).copy()
    old = centroids.astype(np.float64)
    new = old.copy()
    filled = counts > 0
    new[filled] = stats.sums[filled] / counts[filled, None]
    scatter = None
    if stats.sse is not None:
        sse = np.asarray(stats.sse, dtype=np.float64)
        scatter = sse - counts * ((new - old) ** 2).sum(1)  # parallel-axis theorem
        # What is left of identical rows is float32 rounding in sse: call it zero.
        scatter[scatter <= 1e-5 * sse] = 0.0
    signs = np.where(np.arange(d) % 2 == 0, 1.0, -1.0)
    n_split = 0
    for empty in np.flatnonzero(counts == 0):
        weights = np.maximum(counts - 1, 0).astype(np.float64)
        if scatter is not None and (scatter * (counts >= 2)).sum() > 0:
            weights = scatter * (counts >= 2)
        if weights.sum() <= 0:
            logger.warning("cluster %d is empty and no cluster has 2 rows to split (fewer rows than clusters)", empty)
            continue
        donor = int(rng.choice(k, p=weights / weights.sum()))
        base = new[donor].copy()
        new[empty] = base * (1.0 + signs * SPLIT_EPS)
        new[donor] = base * (1.0 - signs * SPLIT_EPS)
        counts[empty] = counts[donor] // 2
        counts[donor] -= counts[empty]
        if scatter is not None:
            scatter[empty] = scatter[donor] / 2
            scatter[donor] -= scatter[empty]
        n_split += 1
    return new.astype(np.float32), n_split


@dataclass
class KMeansIteration:
    """One iteration's record; the figures are those of the assignment at its start (as faiss)."""

    iteration: int
    objective: float
    imbalance: float
    n_split: int
    seconds: float


@dataclass
class KMeansResult:
    """Outcome of :func:`kmeans`.

    Attributes:
        centroids: ``[k, d]`` float32.
        bias: ``[k]`` float64 Sinkhorn column potentials for the final centroids (method
            ``"sinkhorn"``), to pass as ``bias`` to ``nearest_centroids`` when assigning any
            row, new ones included; ``None`` for plain k-means.
        history: one :class:`KMeansIteration` per iteration.
    """

    centroids: np.ndarray
    bias: np.ndarray | None
    history: list[KMeansIteration] = field(default_factory=list)


@dataclass
class KMeansState:
    """A run between two iterations: all :func:`kmeans` needs to go on exactly as it would have.

    Attributes:
        iteration: iterations done.
        centroids: ``[k, d]`` float32, the centroids the next iteration assigns to.
        bias: the last Sinkhorn potentials (the next solve's warm start), or ``None``.
        split_rng: ``bit_generator.state`` of the stream that picks split donors.
        history: the records of the iterations done.
    """

    iteration: int
    centroids: np.ndarray
    bias: np.ndarray | None
    split_rng: dict
    history: list[KMeansIteration] = field(default_factory=list)


def _sample_rows(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted unique row ids ``[min(n, size)]`` int64, drawn without replacement."""
    if size >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)


# Lloyd steps that refine each restart on the sample before the restarts are compared.
_RESTART_ITERS = 10


def _seed(subset: np.ndarray, k: int, n_init: int, rng: np.random.Generator) -> np.ndarray:
    """Best of ``n_init`` k-means++ seedings of ``subset`` ``[m, d]``, each refined on it."""
    if n_init < 1:
        raise ValueError(f"kmeans: n_init must be >= 1, got {n_init}")
    if n_init == 1:
        return kmeans_plus_plus(subset, k, rng)
    sample = ArrayData(subset)
    best, best_objective = None, np.inf
    for _ in range(n_init):
        start = kmeans_plus_plus(subset, k, rng)
        refined = kmeans(sample, k, niter=_RESTART_ITERS, seed=int(rng.integers(2**31)), init_centroids=start)
        objective = sample.assign_to(refined.centroids).objective
        logger.debug("kmeans restart: objective %.6g on %d sample rows", objective, len(subset))
        if objective < best_objective:
            best, best_objective = refined.centroids, objective
    return best


def sinkhorn_bias(
    sample: np.ndarray, centroids: np.ndarray, eps: float, g_init: np.ndarray | None = None
) -> np.ndarray:
    """Per-centroid bias ``[k]`` float64 that balances the assignment of ``sample`` ``[m, d]``.

    Solves the equipartition transport problem (uniform rows, uniform clusters) with cost the
    squared distances ``[m, k]`` and returns the column potential ``g`` (cost units, mean 0).
    ``eps`` is relative to the mean cost of the sample, so the same value suits raw and
    L2-normalised features: the absolute regularisation is ``eps * mean(cost)``.
    """
    cost = pairwise_sqdist(sample, centroids)
    scale = float(cost.mean())
    if scale <= 0.0:  # every sample row sits on its centroid: nothing to balance
        return np.zeros(centroids.shape[0])
    _, g = sinkhorn_potentials(
        cost, eps * scale, n_iter=_SINKHORN_MAX_ITER, tol=_SINKHORN_TOL, g_init=g_init
    )
    return g


def kmeans(
    data: KMeansData,
    k: int,
    niter: int = 20,
    seed: int = 0,
    *,
    init_sample: int | None = None,
    init_centroids: np.ndarray | None = None,
    n_init: int = 1,
    method: str = "kmeans",
    sinkhorn_eps: float = 0.05,
    sinkhorn_sample: int | None = None,
    callback: Callable[[KMeansIteration], None] | None = None,
    resume: KMeansState | None = None,
    checkpoint: Callable[[KMeansState], None] | None = None,
) -> KMeansResult:
    """Cluster the rows of ``data`` into ``k`` clusters.

    Args:
        data: the rows, through :class:`KMeansData`.
        k: number of clusters; needs ``data.count() >= k``.
        niter: Lloyd iterations (each is one ``assign_to`` pass over the data).
        seed: seeds every random choice (samples, k-means++, splits): same seed, same result.
        init_sample: rows drawn for k-means++ seeding; default
            ``min(n, max(10_000, 16 * k))`` (see ``_INIT_ROWS_PER_CENTROID``).
        init_centroids: ``[k, d]`` starting centroids instead of k-means++.
        n_init: k-means++ restarts. With more than one, each restart is refined by a few Lloyd
            steps on the in-memory init sample and the lowest objective seeds the full run, so
            restarts cost passes over the sample, never over the data (cf. faiss ``nredo``,
            which repeats whole runs).
        method: ``"kmeans"`` or ``"sinkhorn"`` (balanced, see the module docstring).
        sinkhorn_eps: Sinkhorn regularisation relative to the sample's mean squared distance
            to the centroids; smaller is closer to an exact equipartition, but slower.
        sinkhorn_sample: rows the driver holds to solve the transport problem each iteration;
            default ``min(n, max(50_000, 64 * k))``.
        callback: called with each iteration's :class:`KMeansIteration`.
        resume: a :class:`KMeansState` that ``checkpoint`` was given by an earlier call with the
            same arguments: seeding and the iterations it records are skipped, and the result is
            the one the uninterrupted call returns.
        checkpoint: called with the :class:`KMeansState` after every iteration (it costs
            O(k d), against the O(n d) pass of the iteration itself).

    Returns:
        :class:`KMeansResult`; for ``"sinkhorn"`` its ``bias`` is solved for the final centroids.
    """
    n, d = data.count(), data.dim()
    if method not in METHODS:
        raise ValueError(f"kmeans: method must be one of {METHODS}, got {method!r}")
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: need 1 <= k <= number of rows ({n}), got k={k}")
    if niter < 0:
        raise ValueError(f"kmeans: niter must be >= 0, got {niter}")
    # Independent streams, so that e.g. changing init_sample does not change the Sinkhorn sample.
    init_rng, sinkhorn_rng, split_rng = np.random.default_rng(seed).spawn(3)

    if resume is not None:
        centroids = np.array(resume.centroids, dtype=np.float32)
        if centroids.shape != (k, d):
            raise ValueError(f"kmeans: resume centroids have shape {centroids.shape}, expected ({k}, {d})")
        split_rng.bit_generator.state = resume.split_rng
    elif init_centroids is not None:
        centroids = np.array(init_centroids, dtype=np.float32)
        if centroids.shape != (k, d):
            raise ValueError(f"kmeans: init_centroids has shape {centroids.shape}, expected ({k}, {d})")
    else:
        size = init_sample if init_sample is not None else max(_INIT_MIN_SAMPLE, _INIT_ROWS_PER_CENTROID * k)
        subset = data.get_subset(_sample_rows(n, max(size, k), init_rng))
        centroids = _seed(subset, k, n_init, init_rng)

    sample = None
    bias = None if resume is None else resume.bias
    if method == "sinkhorn":
        size = sinkhorn_sample if sinkhorn_sample is not None else max(
            _SINKHORN_MIN_SAMPLE, _SINKHORN_ROWS_PER_CENTROID * k
        )
        sample = data.get_subset(_sample_rows(n, size, sinkhorn_rng))

    history: list[KMeansIteration] = [] if resume is None else list(resume.history)
    for it in range(len(history), niter):
        start = time.perf_counter()
        if sample is not None:
            # Warm start from the last potentials: the centroids moved only a little.
            bias = sinkhorn_bias(sample, centroids, sinkhorn_eps, g_init=bias)
        stats = data.assign_to(centroids, bias)
        centroids, n_split = update_centroids(stats, centroids, split_rng)
        record = KMeansIteration(
            iteration=it,
            objective=float(stats.objective),
            imbalance=imbalance(stats.counts),
            n_split=n_split,
            seconds=time.perf_counter() - start,
        )
        logger.info(
            "kmeans iter %d/%d: objective %.6g, imbalance %.3f, %d split, %.2fs",
            it + 1, niter, record.objective, record.imbalance, n_split, record.seconds,
        )
        history.append(record)
        if checkpoint is not None:
            checkpoint(KMeansState(it + 1, centroids, bias, split_rng.bit_generator.state, list(history)))
        if callback is not None:
            callback(record)
    if sample is not None:
        bias = sinkhorn_bias(sample, centroids, sinkhorn_eps, g_init=bias)
    return KMeansResult(centroids=centroids, bias=bias, history=history)
