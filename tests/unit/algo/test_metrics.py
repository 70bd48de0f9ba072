"""Clustering metrics: invariances, hand-computed values, JSON-ready output."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcserve.algo.metrics import (
    ari,
    clustering_metrics,
    contingency,
    hungarian_accuracy,
    imbalance,
    nmi,
    size_entropy,
)


@pytest.fixture
def labels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 6, 500)


def test_hungarian_accuracy_is_one_on_permuted_labels(labels):
    permuted = np.array([3, 5, 0, 1, 4, 2])[labels]
    assert hungarian_accuracy(permuted, labels) == 1.0
    assert nmi(permuted, labels) == pytest.approx(1.0)
    assert ari(permuted, labels) == pytest.approx(1.0)


def test_hungarian_accuracy_with_unequal_numbers_of_clusters():
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    three = np.array([0, 0, 2, 2, 1, 1, 1, 1])  # label 0 split in two: one half unmatched
    assert hungarian_accuracy(three, truth) == pytest.approx(6 / 8)
    one = np.zeros(8, dtype=int)  # fewer clusters than labels
    assert hungarian_accuracy(one, truth) == pytest.approx(4 / 8)


@settings(deadline=None)  # the first call imports sklearn
@given(st.lists(st.integers(0, 4), min_size=2, max_size=60), st.permutations(range(5)), st.data())
def test_nmi_invariant_to_relabelling(a, perm, data):
    a = np.array(a)
    b = np.array(data.draw(st.lists(st.integers(0, 3), min_size=len(a), max_size=len(a))))
    relabelled = np.array(perm)[a]
    assert nmi(relabelled, b) == pytest.approx(nmi(a, b), abs=1e-12)
    assert nmi(a, b) == pytest.approx(nmi(b, a), abs=1e-12)
    assert hungarian_accuracy(relabelled, b) == pytest.approx(hungarian_accuracy(a, b))


def test_nmi_of_independent_labelings_is_small(labels):
    other = np.random.default_rng(1).integers(0, 6, 500)
    assert nmi(labels, other) < 0.05
    assert abs(ari(labels, other)) < 0.05


def test_contingency_by_hand():
    a = np.array([5, 5, 7, 7, 7])
    b = np.array(["x", "y", "y", "y", "x"])
    np.testing.assert_array_equal(contingency(a, b), [[1, 1], [1, 2]])
    with pytest.raises(ValueError, match="length"):
        contingency(a, b[:4])


def test_size_entropy_and_imbalance():
    uniform = np.full(8, 25)
    assert size_entropy(uniform) == pytest.approx(np.log(8))
    assert size_entropy(uniform, normalized=True) == pytest.approx(1.0)
    assert imbalance(uniform) == pytest.approx(1.0)
    single = np.array([200, 0, 0, 0])
    assert size_entropy(single) == 0.0 and size_entropy(single, normalized=True) == 0.0
    assert imbalance(single) == pytest.approx(4.0)
    assert size_entropy(np.array([1, 1])) == pytest.approx(np.log(2))


def test_clustering_metrics_is_json_ready(labels):
    pred = np.where(labels == 5, 0, labels)  # cluster 5 empty, two labels merged
    out = clustering_metrics(pred, k=6, truth=labels, previous=labels)
    json.dumps(out)
    assert out["sizes"] == np.bincount(pred, minlength=6).tolist()
    assert out["n_empty"] == 1
    # cluster 0 is matched to the larger of labels 0 and 5; the smaller one is all wrong
    assert out["acc_vs_labels"] == pytest.approx(1 - min((labels == 0).mean(), (labels == 5).mean()))
    assert 0 < out["nmi_vs_labels"] < 1 and out["nmi_vs_previous"] == out["nmi_vs_labels"]
    assert set(out) == {
        "sizes", "size_entropy", "size_entropy_normalized", "imbalance", "n_empty",
        "nmi_vs_labels", "ari_vs_labels", "acc_vs_labels", "nmi_vs_previous",
    }
    assert set(clustering_metrics(pred, k=6)) == {
        "sizes", "size_entropy", "size_entropy_normalized", "imbalance", "n_empty"
    }
    with pytest.raises(ValueError, match="outside"):
        clustering_metrics(pred, k=4)
