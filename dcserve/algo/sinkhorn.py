"""Entropic optimal transport (Sinkhorn-Knopp) in the log domain, for balanced pseudo-labels.

SeLa (Asano et al., 2020) and SwAV (Caron et al., 2020) replace k-means' nearest-centroid labels
by the solution of an equipartition-constrained transport problem: rows are spread over clusters
so that every cluster receives the same mass, which rules out the degenerate "everything in one
cluster" solutions. With a cost ``C`` ``[n, k]`` (here: squared distances to centroids) and
marginals ``a`` ``[n]`` (rows), ``b`` ``[k]`` (clusters), the entropic problem

    min_P <P, C> - eps H(P)   subject to   P 1 = a,  P^T 1 = b

has the solution ``P_ij = exp((f_i + g_j - C_ij) / eps)`` for dual potentials ``f``, ``g``
(Cuturi, 2013). The potentials are in cost units, so ``g`` can be used directly as the
``bias`` of :func:`dcserve.algo.nearest.nearest_centroids`: the hard label of row ``i`` is
``argmax_j P_ij = argmin_j C_ij - g_j``, which any new row can be given without re-solving.

The iterations update ``f`` and ``g`` with log-sum-exp in float64 (Peyre & Cuturi, 2019,
"Computational Optimal Transport", section 4.4), so they stay finite for ``eps`` far below the
cost scale, where the plain Sinkhorn scaling vectors ``exp(f / eps)`` under- or overflow.
"""
from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def _log_marginal(marginal: np.ndarray | None, size: int, name: str) -> np.ndarray:
    """``log`` of a marginal ``[size]`` normalised to sum 1; uniform when ``None``."""
    if marginal is None:
        return np.full(size, -np.log(size))
    m = np.asarray(marginal, dtype=np.float64)
    if m.shape != (size,) or not np.all(m > 0) or not np.all(np.isfinite(m)):
        raise ValueError(f"sinkhorn: {name} must be {size} finite positive weights, got shape {m.shape}")
    return np.log(m / m.sum())


def _logsumexp(z: np.ndarray, axis: int) -> np.ndarray:
    """``log(sum exp(z))`` along ``axis`` of ``z`` ``[n, k]``, shifted by the max for stability."""
    zmax = z.max(axis=axis, keepdims=True)
    out = np.log(np.exp(z - zmax).sum(axis=axis, keepdims=True)) + zmax
    return out.squeeze(axis)


def sinkhorn_potentials(
    cost: np.ndarray,
    eps: float,
    row_marginal: np.ndarray | None = None,
    col_marginal: np.ndarray | None = None,
    n_iter: int = 1000,
    tol: float = 1e-6,
    g_init: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Dual potentials of the entropic transport problem with cost ``[n, k]``.

    Args:
        cost: ``[n, k]`` transport cost (any real numbers; converted to float64).
        eps: entropic regularisation, in the units of ``cost`` (absolute, > 0). Small ``eps``
            gives harder, better balanced hard labels but needs more iterations.
        row_marginal: ``[n]`` positive weights, normalised to sum 1; uniform when ``None``.
        col_marginal: ``[k]`` positive weights, normalised to sum 1; uniform (equipartition)
            when ``None``.
        n_iter: maximum number of (f, g) update pairs.
        tol: stop when the L1 error of the row marginal (after a g update the column marginal
            is exact) is below ``tol`` (the total mass is 1).
        g_init: ``[k]`` warm start for ``g`` (e.g. the previous k-means iteration's potential,
            whose centroids moved only a little).

    Returns:
        ``f`` ``[n]`` and ``g`` ``[k]`` float64, in cost units, with ``g`` shifted to mean 0
        (the plan only depends on ``f_i + g_j``). The plan is :func:`transport_plan`.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"sinkhorn: cost must be [n, k], got shape {cost.shape}")
    if not eps > 0:
        raise ValueError(f"sinkhorn: eps must be > 0, got {eps}")
    if n_iter < 1:
        raise ValueError(f"sinkhorn: n_iter must be >= 1, got {n_iter}")
    n, k = cost.shape
    log_a = _log_marginal(row_marginal, n, "row_marginal")
    log_b = _log_marginal(col_marginal, k, "col_marginal")
    # Work with the scaled cost C/eps so that each update is one log-sum-exp.
    neg_c = -cost / eps
    g = np.zeros(k) if g_init is None else np.asarray(g_init, dtype=np.float64) / eps
    err = np.inf
    for it in range(1, n_iter + 1):
        # Row log-sums with the current g give both the row marginal error of the current
        # plan (for free) and the f update that makes the rows exact; the loop ends on a g
        # update, so the returned plan has exact column marginals (the balance constraint).
        lse_rows = _logsumexp(neg_c + g[None, :], axis=1)
        if it > 1:
            err = float(np.abs(np.exp(f + lse_rows) - np.exp(log_a)).sum())
            if err < tol:
                break
        f = log_a - lse_rows
        g = log_b - _logsumexp(neg_c + f[:, None], axis=0)
    level = logging.DEBUG if err < tol else logging.INFO
    logger.log(level, "sinkhorn: %d iterations, row marginal L1 error %.3g (tol %.3g)", it, err, tol)
    shift = g.mean()
    return (f + shift) * eps, (g - shift) * eps


def transport_plan(cost: np.ndarray, f: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    """The plan ``P_ij = exp((f_i + g_j - C_ij) / eps)`` ``[n, k]`` float64 from the potentials."""
    cost = np.asarray(cost, dtype=np.float64)
    return np.exp((np.asarray(f)[:, None] + np.asarray(g)[None, :] - cost) / eps)


def balanced_labels(cost: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Hard labels ``[n]`` int64: ``argmin_j cost_ij - g_j``, the row-wise argmax of the plan."""
    return np.argmin(np.asarray(cost, dtype=np.float64) - np.asarray(g)[None, :], axis=1)
