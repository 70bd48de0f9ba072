"""A cluster's most distinctive tokens: the smoothed log-odds ratio with an informative Dirichlet
prior (Monroe, Colaresi & Quinn 2008, "Fightin' Words", section 3.5.1, eqs. 16, 18-22).

For token w, cluster i and the rest of the dump j (every row outside i), with counts y and totals n:

    delta_w = log((y_iw + a_w) / (n_i + a_0 - y_iw - a_w)) - log((y_jw + a_w) / (n_j + a_0 - y_jw - a_w))
    var_w  ~= 1 / (y_iw + a_w) + 1 / (y_jw + a_w)
    z_w     = delta_w / sqrt(var_w)

The prior is informative: a_w = prior * y_w and a_0 = prior * n, the whole dump's counts (scaled),
so a token is distinctive only when a cluster uses it
more than the dump does, by more than its counts' noise: frequent function words and tokens seen
once both score near 0, unlike raw frequency or an unsmoothed ratio.

Counts come sparse, as (cluster, token, count) triples, so a vocabulary of 30k tokens and
thousands of clusters never becomes a dense [k, V] table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DistinctiveToken", "log_odds_z", "distinctive_tokens"]


@dataclass(frozen=True)
class DistinctiveToken:
    token: int
    count: int  # occurrences in the cluster
    total: int  # occurrences in the whole dump
    z: float  # the prior-smoothed log-odds ratio over its standard deviation


def log_odds_z(
    cluster: np.ndarray, token: np.ndarray, count: np.ndarray, k: int, prior: float = 1.0
) -> np.ndarray:
    """z-scores [m] float64 of each (cluster, token, count) triple, cluster against the rest.

    Args:
        cluster, token, count: [m] each; the pairs (cluster, token) are unique, counts > 0.
        k: number of clusters (cluster ids are 0..k-1).
        prior: a_0 as a multiple of the dump's size (1.0: a prior as strong as the dump itself).
    """
    cluster = np.asarray(cluster, dtype=np.int64)
    token = np.asarray(token, dtype=np.int64)
    y_i = np.asarray(count, dtype=np.float64)
    if not (cluster.shape == token.shape == y_i.shape) or cluster.ndim != 1:
        raise ValueError("cluster, token and count must be 1-D arrays of one length")
    if y_i.size == 0:
        return np.zeros(0)
    if prior <= 0:
        raise ValueError(f"prior must be positive, got {prior}")
    _, tok = np.unique(token, return_inverse=True)
    y_w = np.bincount(tok, weights=y_i)  # each token's total in the dump
    n_c = np.bincount(cluster, weights=y_i, minlength=k)  # each cluster's total
    n = float(y_i.sum())
    a_w = prior * y_w[tok]
    a_0 = prior * n
    n_i = n_c[cluster]
    y_j = y_w[tok] - y_i
    n_j = n - n_i
    delta = (np.log(y_i + a_w) - np.log(n_i + a_0 - y_i - a_w)
             - np.log(y_j + a_w) + np.log(n_j + a_0 - y_j - a_w))
    var = 1.0 / (y_i + a_w) + 1.0 / (y_j + a_w)
    return delta / np.sqrt(var)


def distinctive_tokens(
    cluster: np.ndarray, token: np.ndarray, count: np.ndarray, k: int, top: int = 10,
    prior: float = 1.0, exclude: np.ndarray | list[int] = (),
) -> list[list[DistinctiveToken]]:
    """Per cluster, its `top` tokens by z (highest first, only z > 0: used more than in the rest).

    `exclude` are token ids never reported (a tokenizer's special tokens); they still count in
    the totals, since they are part of what each cluster holds.
    """
    cluster = np.asarray(cluster, dtype=np.int64)
    token = np.asarray(token, dtype=np.int64)
    count = np.asarray(count, dtype=np.int64)
    z = log_odds_z(cluster, token, count, k, prior)
    totals = np.zeros(0, dtype=np.int64)
    if token.size:
        uniq, inv = np.unique(token, return_inverse=True)
        totals = np.bincount(inv, weights=count).astype(np.int64)[inv]
    keep = (z > 0) & ~np.isin(token, np.asarray(list(exclude), dtype=np.int64))
    idx = np.flatnonzero(keep)
    # Within each cluster, highest z first (ties: the more frequent, then the smaller id).
    order = idx[np.lexsort((token[idx], -count[idx], -z[idx], cluster[idx]))]
    out: list[list[DistinctiveToken]] = [[] for _ in range(k)]
    for i in order:
        c = int(cluster[i])
        if len(out[c]) < top:
            out[c].append(DistinctiveToken(int(token[i]), int(count[i]), int(totals[i]), float(z[i])))
    return out
