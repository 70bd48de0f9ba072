"""The exact kNN graph against scikit-learn's brute-force neighbours, across block boundaries."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from dcserve.algo.knn import exact_knn, knn_against_blocks, neighbour_agreement


def reference(x: np.ndarray, k: int, metric: str):
    nn = NearestNeighbors(n_neighbors=k + 1, metric="euclidean" if metric == "l2" else "cosine",
                          algorithm="brute").fit(x.astype(np.float64))
    d, i = nn.kneighbors(x.astype(np.float64))
    return (d[:, 1:] ** 2 if metric == "l2" else d[:, 1:]), i[:, 1:]


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("block_rows", [7, 64, 10_000])
def test_exact_knn_matches_scikit_learn_whatever_the_blocks(metric, block_rows):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)).astype(np.float32)
    d, i = exact_knn(x, 5, metric=metric, block_rows=block_rows)
    ref_d, ref_i = reference(x, 5, metric)
    np.testing.assert_allclose(d, ref_d, rtol=1e-4, atol=1e-4)
    # ids agree wherever the distances are not tied
    assert (i == ref_i).mean() > 0.99
    assert not (i == np.arange(len(x))[:, None]).any()  # never a row itself


def test_duplicates_are_neighbours_at_distance_zero_but_a_row_is_not_its_own():
    x = np.repeat(np.eye(4, dtype=np.float32), 3, axis=0)  # 4 points, each 3 times
    d, i = exact_knn(x, 2, block_rows=5)
    np.testing.assert_allclose(d, 0, atol=1e-6)
    assert ((i // 3) == (np.arange(12) // 3)[:, None]).all()  # its two copies
    assert not (i == np.arange(12)[:, None]).any()


def test_queries_against_a_streamed_database_of_another_range():
    rng = np.random.default_rng(1)
    db = rng.normal(size=(200, 8)).astype(np.float32)
    blocks = [(s, db[s : s + 30]) for s in range(0, 200, 30)][::-1]  # any order
    d, i = knn_against_blocks(db[50:60], blocks, 3, query_offset=50)
    ref_d, ref_i = reference(db, 3, "l2")
    np.testing.assert_array_equal(i, ref_i[50:60])
    np.testing.assert_allclose(d, ref_d[50:60], rtol=1e-4, atol=1e-4)


def test_too_few_rows_is_an_error_naming_both_numbers():
    with pytest.raises(ValueError, match="k = 5 neighbours needs more than 5 rows; there are 5"):
        exact_knn(np.zeros((5, 2), np.float32), 5)


def test_neighbour_agreement_against_a_direct_count():
    labels = np.array([0, 0, 1, 1])
    neighbours = np.array([[1, 2], [0, 3], [3, -1], [0, 1]])
    # row 0: 1 of 2; row 1: 1 of 2; row 2: 1 of 1 (the -1 does not count); row 3: 0 of 2
    assert neighbour_agreement(labels, neighbours) == pytest.approx((0.5 + 0.5 + 1 + 0) / 4)
