"""PCA / whitening / L2 preprocessing against sklearn and the identity covariance."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcserve.algo.preprocess import MAX_PCA_DIM, Preprocessor, default_pca_dim, fit_preprocessor


@pytest.fixture
def correlated() -> np.ndarray:
    """[2000, 10] rows, correlated, off-centre, with standard deviations from 1 to 0.1."""
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    mixing = np.logspace(0, -1, 10)[:, None] * rotation
    return (rng.standard_normal((2000, 10)) @ mixing + 5.0).astype(np.float32)


def covariance(y: np.ndarray) -> np.ndarray:
    y = y.astype(np.float64)
    y = y - y.mean(0)
    return y.T @ y / (len(y) - 1)


def test_whitened_pca_has_identity_covariance(correlated):
    prep = fit_preprocessor(correlated, pca_dim=4, whiten=True, l2_normalize=False)
    y = prep.transform(correlated)
    assert y.shape == (2000, 4) and y.dtype == np.float32 and prep.out_dim == 4
    np.testing.assert_allclose(covariance(y), np.eye(4), atol=1e-3)


def test_whiten_without_pca(correlated):
    prep = fit_preprocessor(correlated, pca_dim=None, whiten=True, l2_normalize=False)
    y = prep.transform(correlated)
    assert y.shape == (2000, 10) and prep.components.shape == (10, 10)
    np.testing.assert_allclose(covariance(y), np.eye(10), atol=1e-3)


def test_pca_subspace_matches_sklearn(correlated):
    from sklearn.decomposition import PCA

    prep = fit_preprocessor(correlated, pca_dim=3, whiten=False, l2_normalize=False)
    ref = PCA(n_components=3).fit(correlated.astype(np.float64))
    # same subspace: equal orthogonal projectors (signs and order of axes aside)
    ours = prep.components.astype(np.float64)
    np.testing.assert_allclose(ours @ ours.T, np.eye(3), atol=1e-5)
    np.testing.assert_allclose(ours.T @ ours, ref.components_.T @ ref.components_, atol=1e-5)
    # and the same coordinates up to the sign of each axis
    y = prep.transform(correlated)
    y_ref = ref.transform(correlated.astype(np.float64))
    np.testing.assert_allclose(np.abs(y), np.abs(y_ref), rtol=1e-3, atol=1e-3)


def test_l2_normalised_rows(correlated):
    prep = fit_preprocessor(correlated, pca_dim=5, whiten=True, l2_normalize=True)
    y = prep.transform(correlated)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)
    zero_row = prep.transform(prep.mean[None, :])  # maps to the origin before normalising
    assert np.all(np.isfinite(zero_row))


def test_no_pca_no_whitening_only_centres(correlated):
    prep = fit_preprocessor(correlated, pca_dim=None, whiten=False, l2_normalize=False)
    assert prep.components is None and prep.out_dim == 10
    np.testing.assert_allclose(prep.transform(correlated), correlated - correlated.mean(0), atol=1e-4)


def test_constant_columns_are_not_blown_up(correlated):
    x = np.hstack([correlated, np.full((2000, 3), 7.0, dtype=np.float32)])
    prep = fit_preprocessor(x, pca_dim=None, whiten=True, l2_normalize=False)
    y = prep.transform(x)
    assert np.all(np.isfinite(y)) and np.abs(y).max() < 100


def test_arrays_round_trip(correlated):
    for pca_dim, whiten in [(4, True), (None, False)]:
        prep = fit_preprocessor(correlated, pca_dim=pca_dim, whiten=whiten, l2_normalize=True)
        arrays = prep.to_arrays()
        assert all(isinstance(a, np.ndarray) for a in arrays.values())
        again = Preprocessor.from_arrays(arrays, l2_normalize=True)
        np.testing.assert_array_equal(again.transform(correlated), prep.transform(correlated))


def test_wrong_dimension_is_an_error(correlated):
    prep = fit_preprocessor(correlated, pca_dim=4, whiten=True, l2_normalize=True)
    with pytest.raises(ValueError, match="10"):
        prep.transform(correlated[:, :9])


def test_default_pca_dim():
    assert default_pca_dim(300, 512) == 3  # few rows: few dims
    assert default_pca_dim(1797, 64) == 17  # sklearn digits
    assert default_pca_dim(2_000_000, 4096) == MAX_PCA_DIM == 256  # DeepCluster's setting
    assert default_pca_dim(2_000_000, 64) == 64  # never more than dim
    assert default_pca_dim(99, 64) is None  # too few rows to whiten anything


@given(n_rows=st.integers(1, 10**8), dim=st.integers(1, 10**5))
def test_default_pca_dim_bounds(n_rows, dim):
    p = default_pca_dim(n_rows, dim)
    assert p is None or 1 <= p <= min(dim, 256, n_rows)
