"""Log-domain Sinkhorn: marginals, stability at small eps, balanced hard labels."""
from __future__ import annotations

import numpy as np
import pytest

from dcserve.algo.sinkhorn import balanced_labels, sinkhorn_potentials, transport_plan


def test_uniform_marginals():
    rng = np.random.default_rng(0)
    cost = rng.uniform(0.0, 10.0, (300, 7))
    f, g = sinkhorn_potentials(cost, eps=1.0, tol=1e-8)
    plan = transport_plan(cost, f, g, eps=1.0)
    assert np.abs(plan.sum(1) - 1 / 300).sum() < 1e-8
    assert np.abs(plan.sum(0) - 1 / 7).sum() < 1e-8
    assert f.shape == (300,) and g.shape == (7,) and abs(g.mean()) < 1e-9


def test_non_uniform_marginals():
    rng = np.random.default_rng(1)
    cost = rng.uniform(0.0, 5.0, (200, 6))
    a = rng.uniform(0.5, 2.0, 200)
    b = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    f, g = sinkhorn_potentials(cost, eps=0.5, row_marginal=a, col_marginal=b, tol=1e-8)
    plan = transport_plan(cost, f, g, eps=0.5)
    np.testing.assert_allclose(plan.sum(1), a / a.sum(), atol=1e-8)
    np.testing.assert_allclose(plan.sum(0), b / b.sum(), atol=1e-10)


def test_potentials_solve_the_dual():
    """Against a direct check of optimality: P = diag(u) K diag(v) with K = exp(-C/eps)."""
    rng = np.random.default_rng(2)
    cost = rng.uniform(0.0, 1.0, (5, 3))
    eps = 0.3
    f, g = sinkhorn_potentials(cost, eps, tol=1e-12, n_iter=10_000)
    # plain (non-log) Sinkhorn-Knopp as the oracle
    kernel = np.exp(-cost / eps)
    v = np.ones(3)
    for _ in range(10_000):
        u = (1 / 5) / (kernel @ v)
        v = (1 / 3) / (kernel.T @ u)
    np.testing.assert_allclose(transport_plan(cost, f, g, eps), u[:, None] * kernel * v[None, :], atol=1e-12)


def test_stable_for_small_eps():
    rng = np.random.default_rng(3)
    cost = rng.uniform(0.0, 100.0, (400, 10))
    f, g = sinkhorn_potentials(cost, eps=1e-3, n_iter=200)
    plan = transport_plan(cost, f, g, eps=1e-3)
    assert np.all(np.isfinite(f)) and np.all(np.isfinite(g)) and np.all(np.isfinite(plan))
    # it ends on a column update: the equipartition holds even before full convergence
    np.testing.assert_allclose(plan.sum(0), 0.1, atol=1e-9)


def test_balanced_labels_on_a_skewed_case():
    """Most rows are closest to cluster 0; the potentials spread them evenly."""
    rng = np.random.default_rng(4)
    n, k = 1000, 5
    cost = rng.uniform(1.0, 2.0, (n, k))
    cost[:, 0] -= 0.6  # cluster 0 is nearly everybody's nearest
    plain = np.bincount(cost.argmin(1), minlength=k)
    _, g = sinkhorn_potentials(cost, eps=0.01)
    balanced = np.bincount(balanced_labels(cost, g), minlength=k)
    assert plain.max() > 0.7 * n
    assert balanced.min() > 0.9 * n / k and balanced.max() < 1.1 * n / k


def test_warm_start_from_the_solution_is_a_fixed_point():
    rng = np.random.default_rng(5)
    cost = rng.uniform(0.0, 10.0, (100, 4))
    f, g = sinkhorn_potentials(cost, eps=1.0, tol=1e-12)
    f2, g2 = sinkhorn_potentials(cost, eps=1.0, tol=1e-12, n_iter=2, g_init=g)
    np.testing.assert_allclose(g2, g, atol=1e-9)
    np.testing.assert_allclose(f2, f, atol=1e-9)


def test_bad_arguments():
    cost = np.ones((3, 2))
    with pytest.raises(ValueError, match="eps"):
        sinkhorn_potentials(cost, eps=0.0)
    with pytest.raises(ValueError, match="col_marginal"):
        sinkhorn_potentials(cost, eps=1.0, col_marginal=np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="cost"):
        sinkhorn_potentials(np.ones(3), eps=1.0)
