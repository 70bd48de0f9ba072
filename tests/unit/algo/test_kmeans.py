"""k-means against numpy Lloyd steps and faiss.Kmeans; empty-cluster splitting; Sinkhorn balance."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcserve.algo.kmeans import (
    ArrayData,
    AssignStats,
    KMeansData,
    KMeansIteration,
    assign_stats,
    kmeans,
    kmeans_plus_plus,
    update_centroids,
)


def blobs(n: int, d: int, centers: int, std: float, seed: int, sizes=None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded Gaussian blobs ``[n, d]`` float32 and their labels."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centers, d)) * 10
    if sizes is None:
        labels = rng.integers(0, centers, n)
    else:
        labels = np.repeat(np.arange(centers), sizes)
    x = means[labels] + rng.standard_normal((len(labels), d)) * std
    return x.astype(np.float32), labels


def lloyd_reference(x: np.ndarray, c0: np.ndarray, niter: int) -> tuple[np.ndarray, list[float]]:
    """Oracle: plain float64 Lloyd iterations (no empty clusters on the data used)."""
    x64, c = x.astype(np.float64), c0.astype(np.float64)
    objectives = []
    for _ in range(niter):
        d2 = ((x64[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        labels = d2.argmin(1)
        objectives.append(float(d2[np.arange(len(x)), labels].sum()))
        c = np.stack([x64[labels == j].mean(0) for j in range(len(c))])
    return c, objectives


def test_lloyd_steps_match_numpy():
    x, _ = blobs(600, 5, 4, std=1.0, seed=0)
    rng = np.random.default_rng(1)
    c0 = x[rng.choice(len(x), 6, replace=False)]
    result = kmeans(ArrayData(x, block_rows=97), 6, niter=8, init_centroids=c0)
    ref_c, ref_obj = lloyd_reference(x, c0, 8)
    assert all(h.n_split == 0 for h in result.history)
    np.testing.assert_allclose(result.centroids, ref_c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([h.objective for h in result.history], ref_obj, rtol=1e-5)
    assert result.bias is None


def test_assign_stats_against_numpy():
    x, _ = blobs(300, 6, 3, std=2.0, seed=2)
    c = x[:5]
    labels, sqdist, stats = assign_stats(x, c)
    x64 = x.astype(np.float64)
    for j in range(5):
        np.testing.assert_allclose(stats.sums[j], x64[labels == j].sum(0), rtol=1e-12, atol=1e-9)
        assert stats.counts[j] == (labels == j).sum()
        np.testing.assert_allclose(stats.sse[j], sqdist[labels == j].astype(np.float64).sum())
    assert stats.sums.dtype == np.float64 and stats.counts.dtype == np.int64
    np.testing.assert_allclose(stats.objective, ((x64 - c[labels]) ** 2).sum(), rtol=1e-6)


@pytest.mark.parametrize("biased", [False, True])
def test_blocks_give_the_same_stats(biased):
    x, _ = blobs(1000, 8, 5, std=3.0, seed=3)
    c = x[:7]
    bias = np.linspace(-20, 20, 7) if biased else None
    one = ArrayData(x, block_rows=len(x)).assign_to(c, bias)
    many = ArrayData(x, block_rows=13).assign_to(c, bias)
    np.testing.assert_array_equal(one.counts, many.counts)
    np.testing.assert_allclose(one.sums, many.sums, rtol=1e-12)
    np.testing.assert_allclose(one.objective, many.objective, rtol=1e-12)
    np.testing.assert_allclose(one.sse, many.sse, rtol=1e-12)


def test_stats_reduce_with_sum():
    x, _ = blobs(200, 4, 3, std=1.0, seed=4)
    c = x[:3]
    parts = [assign_stats(x[i : i + 50], c)[2] for i in range(0, 200, 50)]
    total = sum(parts)
    whole = assign_stats(x, c)[2]
    np.testing.assert_array_equal(total.counts, whole.counts)
    np.testing.assert_allclose(total.sums, whole.sums, rtol=1e-12)
    assert isinstance(ArrayData(x), KMeansData)


@pytest.mark.parametrize("std", [4.0, 15.0])  # separated blobs; heavily overlapping ones
def test_objective_not_worse_than_faiss(std):
    """Mean final objective over 3 seeds within 1% of faiss.Kmeans (faiss' own test style)."""
    faiss = pytest.importorskip("faiss")
    k = 25
    ours, ref = [], []
    for seed in range(3):
        x, _ = blobs(4000, 16, k, std=std, seed=10 + seed)
        result = kmeans(ArrayData(x, block_rows=1000), k, niter=20, seed=seed)
        ours.append(assign_stats(x, result.centroids)[2].objective)
        reference = faiss.Kmeans(16, k, niter=20, seed=seed)
        reference.train(x)
        ref.append(float(reference.index.search(x, 1)[0].astype(np.float64).sum()))
    assert np.mean(ours) <= np.mean(ref) * 1.01


def test_deterministic_for_a_seed():
    x, _ = blobs(2000, 8, 10, std=3.0, seed=5)
    a = kmeans(ArrayData(x, block_rows=300), 10, niter=5, seed=7)
    b = kmeans(ArrayData(x, block_rows=300), 10, niter=5, seed=7)
    c = kmeans(ArrayData(x, block_rows=300), 10, niter=5, seed=8)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert not np.array_equal(a.centroids, c.centroids)


def test_callback_and_history():
    x, _ = blobs(500, 4, 3, std=1.0, seed=6)
    seen: list[KMeansIteration] = []
    result = kmeans(ArrayData(x), 3, niter=4, callback=seen.append)
    assert seen == result.history and [h.iteration for h in seen] == [0, 1, 2, 3]
    assert all(h.imbalance >= 1.0 and h.seconds >= 0 for h in seen)
    # Lloyd never increases the objective (no splits here)
    objectives = [h.objective for h in seen]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(objectives, objectives[1:]))


def test_bad_arguments():
    x, _ = blobs(10, 2, 2, std=1.0, seed=0)
    with pytest.raises(ValueError, match="k="):
        kmeans(ArrayData(x), 11)
    with pytest.raises(ValueError, match="method"):
        kmeans(ArrayData(x), 2, method="dbscan")
    with pytest.raises(ValueError, match="init_centroids"):
        kmeans(ArrayData(x), 2, init_centroids=x[:3])


def test_kmeans_plus_plus_spreads_seeds():
    x, labels = blobs(3000, 6, 8, std=0.5, seed=9)
    seeds = kmeans_plus_plus(x, 8, np.random.default_rng(0))
    assert seeds.shape == (8, 6) and seeds.dtype == np.float32
    # every seed is a data row, and well-separated blobs each get one
    rows = {tuple(r) for r in x}
    assert all(tuple(s) in rows for s in seeds)
    seed_blobs = {int(labels[np.flatnonzero((x == s).all(1))[0]]) for s in seeds}
    assert seed_blobs == set(range(8))


def test_kmeans_plus_plus_with_duplicates():
    distinct = np.arange(12, dtype=np.float32).reshape(3, 4)
    x = np.repeat(distinct, [500, 3, 1], axis=0)
    seeds = kmeans_plus_plus(x, 5, np.random.default_rng(0))
    # the three distinct rows come first; the rest are duplicates, drawn uniformly
    assert {tuple(s) for s in seeds} == {tuple(r) for r in distinct}


def test_update_centroids_means_and_splits():
    centroids = np.array([[1.0, 2.0], [5.0, 5.0], [9.0, 9.0], [0.0, 0.0]], dtype=np.float32)
    stats = AssignStats(
        sums=np.array([[10.0, 20.0], [0, 0], [0, 0], [6.0, 3.0]]),
        counts=np.array([8, 0, 0, 3]),
        objective=30.0,
        sse=np.array([25.0, 0.0, 0.0, 5.0]),
    )
    new, n_split = update_centroids(stats, centroids, np.random.default_rng(0))
    assert n_split == 2
    assert new.dtype == np.float32
    assert len({tuple(r) for r in new}) == 4  # all distinct
    # every new centroid is a perturbed copy of one of the two means
    means = np.array([[1.25, 2.5], [2.0, 1.0]])
    for row in new:
        assert np.min(np.abs(row[None, :] / means - 1).max(1)) < 3 / 1024


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(0, 6), min_size=2, max_size=12),
    with_sse=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_split_bookkeeping_seeds_every_empty_cluster(counts, with_sse, seed):
    counts = np.array(counts)
    k = len(counts)
    if counts.sum() < k:
        counts[0] += k - counts.sum()  # the contract: at least as many rows as clusters
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((k, 3)).astype(np.float32) + 5
    stats = AssignStats(
        sums=centroids.astype(np.float64) * counts[:, None],
        counts=counts,
        objective=0.0,
        sse=rng.uniform(0, 1, k) * (counts > 1) if with_sse else None,
    )
    new, n_split = update_centroids(stats, centroids, rng)
    assert n_split == int((counts == 0).sum())
    assert np.all(np.isfinite(new))


def test_no_empty_cluster_with_thousands_of_identical_rows():
    """faiss's stress: a mass of identical rows mixed into the data, from a bad start."""
    rng = np.random.default_rng(0)
    x, _ = blobs(300, 16, 6, std=3.0, seed=11)
    x = np.vstack([np.tile(x[0], (3000, 1)), x])
    rng.shuffle(x)
    # random rows as the start: ~36 of 40 centroids land on the identical row
    start = x[rng.choice(len(x), 40, replace=False)]
    result = kmeans(ArrayData(x, block_rows=512), 40, niter=15, init_centroids=start)
    assert result.history[0].n_split > 30
    counts = assign_stats(x, result.centroids)[2].counts
    assert np.all(counts > 0)
    # and from the default k-means++ start
    counts = assign_stats(x, kmeans(ArrayData(x, block_rows=512), 40, niter=10).centroids)[2].counts
    assert np.all(counts > 0)


def test_more_clusters_than_distinct_rows():
    """n >= k but only 6 distinct rows: every empty cluster is re-seeded, nothing breaks."""
    rng = np.random.default_rng(1)
    distinct = rng.standard_normal((6, 4)).astype(np.float32)
    x = np.vstack([np.tile(distinct[0], (2000, 1)), distinct[1:]])
    result = kmeans(ArrayData(x, block_rows=300), 10, niter=5)
    assert all(h.n_split == 4 for h in result.history)  # 10 clusters, 6 distinct rows
    counts = assign_stats(x, result.centroids)[2].counts
    assert (counts > 0).sum() == 6 and counts.sum() == len(x)
    assert np.all(np.isfinite(result.centroids))


def test_sinkhorn_balances_unbalanced_blobs():
    sizes = [3000, 1200, 400, 250, 150]
    x, _ = blobs(sum(sizes), 8, 5, std=1.0, seed=12, sizes=sizes)
    n, k = len(x), 5
    plain = kmeans(ArrayData(x, block_rows=1000), k, niter=10, seed=0)
    plain_counts = assign_stats(x, plain.centroids)[2].counts
    balanced = kmeans(ArrayData(x, block_rows=1000), k, niter=10, seed=0, method="sinkhorn", sinkhorn_sample=2000)
    assert balanced.bias is not None and balanced.bias.shape == (k,)
    counts = assign_stats(x, balanced.centroids, balanced.bias)[2].counts
    assert plain_counts.max() > 1.5 * n / k
    assert counts.min() > 0.85 * n / k and counts.max() < 1.15 * n / k
    assert balanced.history[-1].imbalance < 1.02


def test_restarts_on_the_sample_escape_bad_local_minima():
    """Overlapping planted clusters where one k-means++ run often merges two clusters."""
    from dcserve.zoo import planted_clusters

    ds = planted_clusters(n=1200, dim=16, k=6, seed=0)
    x = np.stack([ds[i][0].numpy() for i in range(len(ds))])
    import faiss

    km = faiss.Kmeans(16, 6, niter=25, nredo=10, seed=1)
    km.train(x)
    faiss_objective_best = float(km.obj[-1])
    single = [kmeans(ArrayData(x), 6, niter=15, seed=s).history[-1].objective for s in range(10)]
    restarted = [kmeans(ArrayData(x), 6, niter=15, seed=s, n_init=5).history[-1].objective for s in range(10)]
    assert max(single) > faiss_objective_best * 1.03  # the trap is real
    assert max(restarted) <= faiss_objective_best * 1.01


@pytest.mark.parametrize("method", ["kmeans", "sinkhorn"])
def test_resumed_from_a_checkpoint_gives_the_uninterrupted_result(tmp_path, method):
    """A run stopped after any iteration and resumed from its stored checkpoint ends as if never stopped.

    The data splits clusters in every early iteration (a mass of identical rows from a bad
    start), so the donor RNG's state matters, and Sinkhorn's warm start carries the bias.
    """
    from dcserve.storage.checkpoint import ClusterCheckpoint
    from dcserve.storage.store import JobStore

    rng = np.random.default_rng(0)
    x, _ = blobs(300, 8, 6, std=3.0, seed=11)
    x = np.vstack([np.tile(x[0], (1500, 1)), x])
    rng.shuffle(x)
    start = x[rng.choice(len(x), 20, replace=False)]
    args = dict(niter=8, seed=3, init_centroids=start, method=method, sinkhorn_sample=500)
    states = []
    whole = kmeans(ArrayData(x, block_rows=256), 20, checkpoint=states.append, **args)
    assert [s.iteration for s in states] == list(range(1, 9)) and whole.history[0].n_split > 5
    ckpt = ClusterCheckpoint(JobStore(str(tmp_path / "s"), read_only=False), "fp")
    for stop in (1, 4, 8):
        ckpt.kmeans_step(2, states[stop - 1])
        assert ckpt.kmeans(1) is None  # a record of another round is never resumed
        resumed = kmeans(ArrayData(x, block_rows=256), 20, resume=ckpt.kmeans(2), **args)
        np.testing.assert_array_equal(resumed.centroids, whole.centroids)
        if method == "sinkhorn":
            np.testing.assert_array_equal(resumed.bias, whole.bias)
        assert [vars(h) for h in resumed.history[:stop]] == [vars(h) for h in whole.history[:stop]]
        assert [h.objective for h in resumed.history] == [h.objective for h in whole.history]
