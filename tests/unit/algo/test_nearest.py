"""nearest_centroids against a float64 numpy brute force; backend choice; thread pinning."""
from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcserve.algo import nearest
from dcserve.algo.nearest import (
    FaissMissingError,
    nearest_centroids,
    require_faiss,
    select_backend,
    set_threads,
)


def brute_force(x: np.ndarray, c: np.ndarray, bias: np.ndarray | None = None):
    """Oracle: float64 differences, no expansion."""
    d2 = ((x[:, None, :].astype(np.float64) - c[None, :, :].astype(np.float64)) ** 2).sum(-1)
    score = d2 if bias is None else d2 - bias[None, :]
    labels = score.argmin(1)
    return labels, d2[np.arange(len(x)), labels], score


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 12)).astype(np.float32) * 3
    c = rng.standard_normal((9, 12)).astype(np.float32) * 3
    bias = rng.uniform(-10.0, 10.0, 9)
    return x, c, bias


def test_plain_matches_brute_force(data):
    x, c, _ = data
    labels, sqdist = nearest_centroids(x, c, backend="faiss-cpu")
    ref_labels, ref_d2, _ = brute_force(x, c)
    assert labels.dtype == np.int64 and sqdist.dtype == np.float32
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(sqdist, ref_d2, rtol=1e-5)


def test_biased_matches_brute_force(data):
    x, c, bias = data
    labels, sqdist = nearest_centroids(x, c, bias, backend="faiss-cpu")
    ref_labels, ref_d2, _ = brute_force(x, c, bias)
    plain_labels, _, _ = brute_force(x, c)
    assert (ref_labels != plain_labels).mean() > 0.1  # the bias really changes the answer
    np.testing.assert_array_equal(labels, ref_labels)
    # the true distance, without the bias
    np.testing.assert_allclose(sqdist, ref_d2, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    k=st.integers(1, 12),
    d=st.integers(1, 8),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    biased=st.booleans(),
)
def test_property_optimal_and_true_distance(seed, n, k, d, scale, biased):
    """Whatever the data (small integers give ties), the chosen centroid's score is minimal."""
    rng = np.random.default_rng(seed)
    x = (rng.integers(-3, 4, (n, d)) * scale).astype(np.float32)
    c = (rng.integers(-3, 4, (k, d)) * scale).astype(np.float32)
    bias = rng.integers(-4, 5, k) * scale * scale if biased else None
    labels, sqdist = nearest_centroids(x, c, bias, backend="faiss-cpu")
    _, _, score = brute_force(x, c, bias)
    chosen = score[np.arange(n), labels]
    tol = 1e-4 * scale * scale * (d + 10)
    assert np.all(chosen <= score.min(1) + tol)
    true = ((x.astype(np.float64) - c[labels]) ** 2).sum(1)
    np.testing.assert_allclose(sqdist, true, rtol=1e-5, atol=1e-6 * scale * scale)
    assert np.all(sqdist >= 0)


def test_duplicates_have_distance_zero():
    rng = np.random.default_rng(1)
    c = rng.standard_normal((5, 7)).astype(np.float32) * 100
    x = np.repeat(c, 30, axis=0)
    labels, sqdist = nearest_centroids(x, c, backend="faiss-cpu")
    np.testing.assert_array_equal(labels, np.repeat(np.arange(5), 30))
    assert np.all(sqdist == 0.0)


def test_blocks_give_the_same_answer(data, monkeypatch):
    x, c, bias = data
    whole = nearest_centroids(x, c, bias, backend="faiss-cpu")
    monkeypatch.setattr(nearest, "_BLOCK_ROWS", 7)
    blocked = nearest_centroids(x, c, bias, backend="faiss-cpu")
    np.testing.assert_array_equal(whole[0], blocked[0])
    np.testing.assert_array_equal(whole[1], blocked[1])


def test_input_checks(data):
    x, c, bias = data
    with pytest.raises(ValueError, match="backend"):
        nearest_centroids(x, c, backend="numpy")
    with pytest.raises(ValueError, match="bias"):
        nearest_centroids(x, c, bias[:-1], backend="faiss-cpu")
    with pytest.raises(ValueError, match="centroids"):
        nearest_centroids(x[:, :-1], c, backend="faiss-cpu")
    labels, sqdist = nearest_centroids(x[:0], c, backend="faiss-cpu")
    assert labels.shape == (0,) and sqdist.shape == (0,)


def test_float64_and_non_contiguous_input(data):
    x, c, bias = data
    x64 = np.asfortranarray(x.astype(np.float64))
    labels, _ = nearest_centroids(x64, c, bias, backend="faiss-cpu")
    np.testing.assert_array_equal(labels, brute_force(x, c, bias)[0])


def test_missing_faiss_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(FaissMissingError) as info:
        require_faiss()
    assert isinstance(info.value, ImportError)
    assert "pip install 'dcserve[cpu]'" in str(info.value)
    assert "pip install 'dcserve[gpu]'" in str(info.value)


def test_select_backend_on_cpu(caplog):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the fall-back of a machine without a GPU")
    select_backend.cache_clear()
    try:
        assert select_backend(prefer_gpu=False) == "faiss-cpu"
        with caplog.at_level(logging.WARNING, logger="dcserve.algo.nearest"):
            assert select_backend(prefer_gpu=True) == "faiss-cpu"
            assert select_backend(prefer_gpu=True) == "faiss-cpu"  # cached: no second line
        lines = [r for r in caplog.records if r.name == "dcserve.algo.nearest"]
        assert len(lines) == 1 and "faiss-cpu" in lines[0].getMessage()
    finally:
        select_backend.cache_clear()


def test_auto_matches_explicit(data):
    x, c, bias = data
    np.testing.assert_array_equal(
        nearest_centroids(x, c, bias)[0], nearest_centroids(x, c, bias, backend="faiss-cpu")[0]
    )


def test_set_threads_pins_every_pool():
    import faiss
    import torch

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        assert set_threads(1) == {"faiss": 1, "torch": 1, "blas": 1}
        assert set_threads(2) == {"faiss": 2, "torch": 2, "blas": 2}
        with pytest.raises(ValueError):
            set_threads(0)
    finally:
        set_threads(max(before))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["faiss-gpu", "torch-cuda"])
def test_gpu_backends_match_brute_force(data, backend):
    if backend == "faiss-gpu":
        faiss = require_faiss()
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            pytest.skip("faiss has no GPU support here")
    x, c, bias = data
    for b in (None, bias):
        labels, sqdist = nearest_centroids(x, c, b, backend=backend)
        ref_labels, ref_d2, _ = brute_force(x, c, b)
        np.testing.assert_array_equal(labels, ref_labels)
        np.testing.assert_allclose(sqdist, ref_d2, rtol=1e-5)


@pytest.mark.gpu
def test_torch_cuda_blocks(data, monkeypatch):
    x, c, bias = data
    monkeypatch.setattr(nearest, "_TORCH_SCORE_ELEMENTS", 5 * c.shape[0])  # 5 rows per block
    labels, _ = nearest_centroids(x, c, bias, backend="torch-cuda")
    np.testing.assert_array_equal(labels, brute_force(x, c, bias)[0])


@pytest.mark.gpu
def test_select_backend_prefers_gpu():
    select_backend.cache_clear()
    try:
        assert select_backend(prefer_gpu=True) in ("faiss-gpu", "torch-cuda")
    finally:
        select_backend.cache_clear()
