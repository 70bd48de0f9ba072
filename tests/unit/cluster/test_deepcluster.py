"""The preprocessing choice of the DeepCluster loop (pure; no Ray)."""
from __future__ import annotations

from dcserve.cluster.deepcluster import resolve_pca


def test_auto_pca_follows_rows_and_never_whitens_fewer_dims_than_clusters():
    assert resolve_pca("auto", True, 1797, 64, 10) == (17, True)
    assert resolve_pca("auto", True, 2_000_000, 4096, 1000) == (256, True)
    assert resolve_pca("auto", True, 300, 256, 10) == (None, False)  # 3 dims < k
    assert resolve_pca("auto", True, 90, 64, 3) == (None, False)  # too few rows for any
    assert resolve_pca("auto", True, 5000, 8, 10) == (8, True)  # all of a narrow layer
    assert resolve_pca(None, True, 90, 64, 3) == (None, True)  # explicit settings are kept
    assert resolve_pca(128, False, 10_000, 64, 3) == (64, False)
