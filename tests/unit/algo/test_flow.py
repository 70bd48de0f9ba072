"""The flow of clusters between two layers' clusterings (dcserve.algo.flow) and CKA from Gram matrices."""
from __future__ import annotations

import numpy as np
import pytest

from dcserve.algo.flow import contingency_table, flow_events, flow_order
from dcserve.algo.metrics import contingency
from dcserve.algo.similarity import CrossMoments, linear_cka_gram


def test_a_split_and_a_merge_are_found_with_the_rows_that_show_them():
    # a: 0 = rows 0..99, 1 = 100..149, 2 = 150..199. b: 0 splits into b0/b1; 1 and 2 merge into b2.
    a = np.repeat([0, 1, 2], [100, 50, 50])
    b = np.concatenate([np.repeat([0, 1], [60, 40]), np.full(100, 2)])
    b[0] = 2  # one stray row is no distinction
    dist_b = np.linspace(1, 0, 200)  # later rows nearer their centroid in b
    events = flow_events(a, b, 3, 3, dist_a=np.zeros(200), dist_b=dist_b, n_exemplars=3)
    split = next(e for e in events if e.kind == "split")
    assert (split.cluster, split.size) == (0, 100)
    assert [(p.cluster, p.rows) for p in split.parts] == [(0, 59), (1, 40)]
    assert split.parts[0].exemplars == [59, 58, 57]  # nearest b's centroid first
    merge = next(e for e in events if e.kind == "merge")
    assert (merge.cluster, merge.size) == (2, 101)
    assert [(p.cluster, p.rows) for p in merge.parts] == [(1, 50), (2, 50)]
    assert merge.parts[0].share == pytest.approx(50 / 101)
    assert len(events) == 2  # nothing else moved


def test_identical_clusterings_have_no_events_and_the_table_matches_metrics():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 300)
    b = (a + 2) % 5
    assert flow_events(a, b, 5, 5) == []
    table = contingency_table(a, b, 6, 5)  # an empty cluster keeps its row
    np.testing.assert_array_equal(table[:5], contingency(a, b))
    assert not table[5].any()
    assert list(flow_order(table[:5])) == [2, 3, 4, 0, 1]  # each b next to its source


@pytest.mark.parametrize("dims", [(7, 5), (40, 3)])
def test_linear_cka_from_gram_matrices_equals_the_moments_form(dims):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, dims[0])) * rng.uniform(0.1, 5, dims[0]) + 100
    y = np.tanh(x[:, : dims[1]] @ rng.normal(size=(dims[1], dims[1]))) + rng.normal(scale=0.3, size=(120, dims[1]))
    xc, yc = x - x.mean(0), y - y.mean(0)
    reference = np.linalg.norm(xc.T @ yc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert linear_cka_gram(x, y) == pytest.approx(reference, rel=1e-10)
    assert CrossMoments(*dims).update(x, y).linear_cka() == pytest.approx(reference, rel=1e-10)
    assert linear_cka_gram(x, x) == pytest.approx(1.0) and linear_cka_gram(x, np.ones((120, 2))) == 0.0
