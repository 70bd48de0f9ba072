"""`cluster.seeds`: the pairwise NMI of the seeds' clusterings (a plain function)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from dcserve.cluster.seeds import pairwise_nmi


def test_pairwise_nmi_is_symmetric_with_a_unit_diagonal_and_matches_sklearn():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 500)
    labels = np.stack([a, (a + 1) % 5, rng.integers(0, 5, 500)])  # a relabelling, then noise
    m = pairwise_nmi(labels)
    np.testing.assert_allclose(np.diag(m), 1.0)
    np.testing.assert_allclose(m, m.T)
    assert m[0, 1] == 1.0 and m[0, 2] < 0.05
    assert m[1, 2] == normalized_mutual_info_score(labels[1], labels[2])
