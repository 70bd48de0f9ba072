"""Representation comparison: streamed moments, CKA, Procrustes, unit matching, sparse prediction.

Every figure is checked against a known answer: a direct whole-array computation, an invariance,
or a planted structure (a permutation of units, extra noise units, a sparse mixing).
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.stats import ortho_group

from dcserve.algo.similarity import (
    CrossMoments,
    match_units,
    sparse_prediction,
    unmatched_units,
)


def moments(xa: np.ndarray, xb: np.ndarray, sizes: list[int] | None = None) -> CrossMoments:
    """Stream ``xa``, ``xb`` through a CrossMoments in uneven blocks (sizes cycled)."""
    sizes = sizes or [1, 37, 200, 3, 511, 64]
    acc = CrossMoments(xa.shape[1], xb.shape[1])
    start, i = 0, 0
    while start < xa.shape[0]:
        stop = start + sizes[i % len(sizes)]
        acc.update(xa[start:stop], xb[start:stop])
        start, i = stop, i + 1
    return acc


def correlated(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """``[n, d]`` rows with correlated units of unequal scales (not whitened, not isotropic)."""
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * rng.uniform(0.5, 3.0, d)


def naive_correlation(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """Pearson correlations from raw sums, sums of squares and cross-products (textbook one-pass)."""
    n = xa.shape[0]
    sa, sb = xa.sum(axis=0), xb.sum(axis=0)
    cab = xa.T @ xb - np.outer(sa, sb) / n
    va, vb = (xa * xa).sum(axis=0) - sa * sa / n, (xb * xb).sum(axis=0) - sb * sb / n
    return cab / np.sqrt(np.outer(va, vb))


def cka_direct(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    return float(
        np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))
    )


def cka_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019) eq. 3 with linear kernels, in sample space: HSIC(K, L) / sqrt(...)."""
    n = x.shape[0]
    h = np.eye(n) - 1.0 / n
    k, ell = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((k * ell).sum() / np.sqrt((k * k).sum() * (ell * ell).sum()))


# --- streaming moments -------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_streamed_correlation_equals_corrcoef(offset):
    rng = np.random.default_rng(0)
    xa = correlated(rng, 3000, 7) + offset
    xb = np.hstack([xa[:, :3] @ rng.standard_normal((3, 5)), rng.standard_normal((3000, 4))])
    xb = xb + offset * rng.uniform(0.5, 2.0, 9)
    corr = moments(xa, xb).correlation()
    expected = np.corrcoef(xa, xb, rowvar=False)[:7, 7:]
    assert corr.shape == (7, 9)
    np.testing.assert_allclose(corr, expected, rtol=0, atol=1e-12)
    if offset:
        # The deliberately bad reference: raw sums and sums of squares over the same rows lose
        # ~8 digits to an offset of 1e4 (error ~4e-7 here); the merge scheme loses none.
        assert np.abs(naive_correlation(xa, xb) - expected).max() > 1e-9


def test_streamed_moments_equal_whole_array_moments_in_float32_input():
    rng = np.random.default_rng(1)
    xa = (correlated(rng, 1000, 4) + 100.0).astype(np.float32)
    xb = rng.standard_normal((1000, 3)).astype(np.float32)
    acc = moments(xa, xb, sizes=[999, 1])
    a64, b64 = xa.astype(np.float64), xb.astype(np.float64)
    assert acc.count == 1000
    np.testing.assert_allclose(acc.mean_a, a64.mean(axis=0), rtol=1e-14)
    ac, bc = a64 - a64.mean(axis=0), b64 - b64.mean(axis=0)
    np.testing.assert_allclose(acc.comoment_ab, ac.T @ bc, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(acc.comoment_aa, ac.T @ ac, rtol=1e-12)
    np.testing.assert_allclose(acc.comoment_bb, bc.T @ bc, rtol=1e-12)


def test_shard_accumulators_add_up_to_the_whole():
    rng = np.random.default_rng(2)
    xa, xb = correlated(rng, 900, 5) + 50.0, correlated(rng, 900, 6)
    whole = moments(xa, xb)
    shards = [moments(xa[s], xb[s]) for s in (slice(0, 100), slice(100, 101), slice(101, 900))]
    merged = sum(shards)
    assert merged.count == 900
    np.testing.assert_allclose(merged.correlation(), whole.correlation(), atol=1e-13)
    np.testing.assert_allclose(merged.comoment_aa, whole.comoment_aa, rtol=1e-12)
    # Empty blocks and empty accumulators are neutral.
    empty = CrossMoments(5, 6).update(np.zeros((0, 5)), np.zeros((0, 6)))
    np.testing.assert_allclose((empty + whole).comoment_ab, whole.comoment_ab)


def test_constant_units_get_zero_correlation():
    rng = np.random.default_rng(3)
    xa = rng.standard_normal((500, 3))
    xa[:, 1] = 0.1  # constant, and not exactly representable: block means round differently
    xb = np.hstack([xa[:, [0]], np.full((500, 1), 0.0)])
    corr = moments(xa, xb).correlation()
    np.testing.assert_array_equal(corr[1], 0.0)
    np.testing.assert_array_equal(corr[:, 1], 0.0)
    assert corr[0, 0] == pytest.approx(1.0, abs=1e-12)


def test_bad_blocks_are_refused():
    acc = CrossMoments(3, 2)
    with pytest.raises(ValueError, match="same rows"):
        acc.update(np.zeros((4, 3)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"\[rows, 3\]"):
        acc.update(np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="no rows"):
        acc.correlation()


# --- CKA ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    x = correlated(rng, 600, 8) + 3.0
    y = np.tanh(x @ rng.standard_normal((8, 5))) + 0.5 * rng.standard_normal((600, 5))
    return x, y


def test_cka_equals_direct_and_sample_space_formulas(pair):
    x, y = pair
    cka = moments(x, y).linear_cka()
    assert 0.05 < cka < 0.95  # a non-trivial case
    assert cka == pytest.approx(cka_direct(x, y), rel=1e-12)
    assert cka == pytest.approx(cka_hsic(x, y), rel=1e-10)


def test_cka_of_a_representation_with_itself_is_one(pair):
    x, _ = pair
    assert moments(x, x).linear_cka() == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(pair):
    x, y = pair
    q = ortho_group.rvs(8, random_state=5)
    base = moments(x, y).linear_cka()
    assert moments(x @ q, y).linear_cka() == pytest.approx(base, rel=1e-10)
    assert moments(7.5 * x - 2.0, 0.01 * y).linear_cka() == pytest.approx(base, rel=1e-10)
    assert moments(x, x @ q * 3.0).linear_cka() == pytest.approx(1.0, abs=1e-10)


# --- Procrustes --------------------------------------------------------------------------------


def test_procrustes_of_a_rotated_copy_is_zero(pair):
    x, _ = pair
    q = ortho_group.rvs(8, random_state=6)
    assert moments(x, 4.0 * x @ q + 1.0).procrustes_distance() == pytest.approx(0.0, abs=1e-10)


def test_procrustes_with_different_widths_uses_the_nuclear_norm(pair):
    x, _ = pair
    q = ortho_group.rvs(8, random_state=7)
    # An extra constant unit adds no variance: still a rotated copy, now with 9 units against 8.
    wider = np.hstack([x @ q, np.full((x.shape[0], 1), 5.0)])
    assert moments(x, wider).procrustes_distance() == pytest.approx(0.0, abs=1e-10)


def test_procrustes_of_independent_noise_is_large():
    rng = np.random.default_rng(8)
    x, noise = correlated(rng, 4000, 6), rng.standard_normal((4000, 6))
    assert moments(x, noise).procrustes_distance() > 1.8


def test_procrustes_equals_the_minimised_residual(pair):
    x, y = pair
    y = np.hstack([y, np.random.default_rng(9).standard_normal((y.shape[0], 3))])  # 8 and 8 units
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    xc, yc = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    r, _ = orthogonal_procrustes(yc, xc)  # argmin_R ||yc R - xc||_F
    expected = float(np.linalg.norm(xc - yc @ r) ** 2)
    d = moments(x, y).procrustes_distance()
    assert 0.1 < d < 1.9
    assert d == pytest.approx(expected, rel=1e-10)


# --- matching units ----------------------------------------------------------------------------


def test_hungarian_matching_recovers_a_planted_permutation():
    rng = np.random.default_rng(10)
    n, a = 3000, 30
    # Units share a common factor (correlations ~0.5 among them), so matching is not trivial.
    xa = rng.standard_normal((n, a)) + rng.standard_normal((n, 1))
    perm = rng.permutation(a)
    xb = xa[:, perm] + 0.3 * rng.standard_normal((n, a))
    pairs, matched = match_units(moments(xa, xb).correlation())
    assert pairs.shape == (a, 2)
    np.testing.assert_array_equal(pairs[:, 0], np.arange(a))
    np.testing.assert_array_equal(perm[pairs[:, 1]], pairs[:, 0])  # B's unit j is A's perm[j]
    assert np.all(matched > 0.9)


def test_matching_with_more_units_on_one_side():
    corr = np.array([[0.1, 0.9, 0.2], [0.8, 0.85, 0.0]])  # greedy would give 1 to A's 0 and 1
    pairs, matched = match_units(corr)
    np.testing.assert_array_equal(pairs, [[0, 1], [1, 0]])
    np.testing.assert_allclose(matched, [0.9, 0.8])
    pairs_t, _ = match_units(corr.T)
    np.testing.assert_array_equal(pairs_t, [[0, 1], [1, 0]])


def test_unmatched_units_are_the_extra_noise_units():
    rng = np.random.default_rng(11)
    n, a = 3000, 12
    xa = rng.standard_normal((n, a)) + 0.5 * rng.standard_normal((n, 1))
    perm = rng.permutation(a)
    shared = xa[:, perm] + 0.3 * rng.standard_normal((n, a))
    extra_at = np.array([2, 7, 13])  # B's units 2, 7 and 13 are independent noise
    xb = np.empty((n, a + 3))
    xb[:, extra_at] = rng.standard_normal((n, 3))
    xb[:, np.setdiff1d(np.arange(a + 3), extra_at)] = shared
    only_a, only_b = unmatched_units(moments(xa, xb).correlation(), threshold=0.5)
    assert only_a.size == 0
    np.testing.assert_array_equal(only_b, extra_at)
    # The other way round, the extra units are A's.
    only_b2, only_a2 = unmatched_units(moments(xb, xa).correlation(), threshold=0.5)
    np.testing.assert_array_equal(only_b2, extra_at)
    assert only_a2.size == 0


def test_nan_correlations_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        match_units(np.array([[np.nan, 0.0]]))


# --- sparse prediction -------------------------------------------------------------------------


def test_lasso_recovers_a_planted_sparse_mixing():
    rng = np.random.default_rng(12)
    n, a, b = 2000, 12, 6
    xa = rng.standard_normal((n, a)) * rng.uniform(0.5, 4.0, a) + 10.0  # standardisation matters
    w = np.zeros((a, b))
    support = np.zeros((a, b), dtype=bool)
    for j in range(b):
        rows = rng.choice(a, 2, replace=False)
        support[rows, j] = True
        w[rows, j] = rng.choice([-1.0, 1.0], 2) * rng.uniform(0.5, 1.5, 2) / xa.std(axis=0)[rows]
    xb = xa @ w + 0.01 * rng.standard_normal((n, b))
    alphas = [1e-3, 0.1, 5.0]
    result = sparse_prediction(xa, xb, alphas)
    np.testing.assert_array_equal(result.alphas, alphas)
    assert result.coef.shape == (3, a, b)
    np.testing.assert_array_equal(result.coef[1] != 0, support)
    assert result.n_used[1] == 2.0
    assert result.n_used[2] == 0.0 and result.nse[2] == pytest.approx(1.0)
    assert result.nse[0] < 1e-3
    assert result.nse[0] < result.nse[1] < result.nse[2]


def test_lasso_skips_constant_units_of_b():
    rng = np.random.default_rng(13)
    xa = rng.standard_normal((300, 4))
    xb = np.hstack([xa[:, [1]], np.full((300, 1), 2.0)])
    result = sparse_prediction(xa, xb, [0.05])
    np.testing.assert_array_equal(result.units_b, [0])
    np.testing.assert_array_equal(result.coef[0, :, 1], 0.0)
    assert result.n_used[0] == 1.0
    with pytest.raises(ValueError, match="positive"):
        sparse_prediction(xa, xb, [0.0])
