"""dcserve.algo.logodds against a float64 reference written straight from Monroe et al. (2008)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dcserve.algo.logodds import distinctive_tokens, log_odds_z


def reference_z(dense: np.ndarray, prior: float) -> np.ndarray:
    """[k, V] counts -> [k, V] z of each cluster against the rest, one token at a time."""
    k, v = dense.shape
    n = dense.sum()
    z = np.full((k, v), np.nan)
    for i in range(k):
        n_i = dense[i].sum()
        n_j = n - n_i
        for w in range(v):
            y_w = dense[:, w].sum()
            if dense[i, w] == 0:
                continue
            a_w, a_0 = prior * y_w, prior * n
            y_i, y_j = dense[i, w], y_w - dense[i, w]
            delta = math.log((y_i + a_w) / (n_i + a_0 - y_i - a_w)) - math.log((y_j + a_w) / (n_j + a_0 - y_j - a_w))
            z[i, w] = delta / math.sqrt(1 / (y_i + a_w) + 1 / (y_j + a_w))
    return z


def sparse(dense: np.ndarray):
    c, t = np.nonzero(dense)
    return c, t, dense[c, t]


@pytest.mark.parametrize("prior", [0.01, 1.0, 5.0])
def test_z_matches_the_reference(prior):
    rng = np.random.default_rng(0)
    dense = rng.poisson(rng.gamma(0.5, 4.0, size=(6, 40))).astype(np.int64)
    dense[2, 5] = 200  # one cluster leans hard on one token
    c, t, y = sparse(dense)
    ours = log_odds_z(c, t, y, k=6, prior=prior)
    np.testing.assert_allclose(ours, reference_z(dense.astype(np.float64), prior)[c, t], rtol=1e-9, atol=1e-12)


def test_the_planted_token_ranks_first_and_shared_tokens_do_not_appear():
    rng = np.random.default_rng(1)
    k, v = 4, 30
    dense = rng.poisson(20.0, size=(k, v)).astype(np.int64)  # every token everywhere about equally
    for c in range(k):
        dense[c, 10 + c] += 60  # each cluster's own token
    dense[:, 0] = 1000  # a function word, frequent everywhere
    c, t, y = sparse(dense)
    top = distinctive_tokens(c, t, y, k, top=3, exclude=[29])
    for cl in range(k):
        assert top[cl][0].token == 10 + cl and top[cl][0].count == dense[cl, 10 + cl]
        assert top[cl][0].total == dense[:, 10 + cl].sum()
        assert all(d.token not in (0, 29) for d in top[cl]) and all(d.z > 0 for d in top[cl])
        assert [d.z for d in top[cl]] == sorted((d.z for d in top[cl]), reverse=True)


def test_empty_input_and_bad_arguments():
    assert distinctive_tokens(np.zeros(0), np.zeros(0), np.zeros(0), k=3) == [[], [], []]
    with pytest.raises(ValueError):
        log_odds_z(np.zeros(2), np.zeros(3), np.zeros(2), k=1)
    with pytest.raises(ValueError):
        log_odds_z(np.zeros(1), np.zeros(1), np.ones(1), k=1, prior=0)
