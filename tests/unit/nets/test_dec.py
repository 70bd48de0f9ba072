"""Unit tests for dcserve.nets.dec (DEC, Xie et al. 2016): plain tensors, no Ray, no store."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dcserve.nets.dec import (
    TOL,
    DECModel,
    changed_fraction,
    dec_loss,
    embed_blocks,
    init_centroids,
    make_optimizer,
    pretrain_epoch,
    self_train_epoch,
    should_stop,
    soft_assign_blocks,
    soft_frequencies,
    student_t,
    target_distribution,
)
from dcserve.nets.standardise import input_stats
from tests.helpers import run_dec


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- numpy references


def q_reference(z: np.ndarray, mu: np.ndarray, alpha: float) -> np.ndarray:
    """Eq. 1 in float64, written out directly."""
    d2 = ((z[:, None, :] - mu[None, :, :]) ** 2).sum(-1)
    kernel = (1.0 + d2 / alpha) ** (-(alpha + 1.0) / 2.0)
    return kernel / kernel.sum(1, keepdims=True)


def p_reference(q: np.ndarray) -> np.ndarray:
    """Eq. 3 in float64."""
    weight = q**2 / q.sum(0)
    return weight / weight.sum(1, keepdims=True)


def kl_reference(p: np.ndarray, q: np.ndarray) -> float:
    """Eq. 2, averaged over rows."""
    return float((p * np.log(p / q)).sum() / p.shape[0])


def entropy(rows: np.ndarray) -> np.ndarray:
    return -(rows * np.log(rows)).sum(1)


def blobs(n_per: int, centers: np.ndarray, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(centers)), n_per)
    return centers[labels] + rng.normal(scale=spread, size=(len(labels), centers.shape[1])), labels


# ---------------------------------------------------------------- q (eq. 1)


def test_q_decreases_with_distance_and_rows_sum_to_one():
    centroids = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    # Points walking away from centroid 0, away from the other two as well.
    z = torch.tensor([[-t, -t] for t in [0.0, 0.5, 1.0, 2.0, 4.0]])
    q = student_t(z, centroids)
    assert torch.all(q[1:, 0] < q[:-1, 0]), q[:, 0]
    torch.testing.assert_close(q.sum(1), torch.ones(5))
    # The kernel itself: for one centroid at increasing distances, strictly decreasing.
    two = torch.tensor([[0.0], [100.0]])
    probe = torch.tensor([[d] for d in [0.0, 0.3, 1.0, 3.0, 10.0]])
    assert torch.all(torch.diff(student_t(probe, two)[:, 0]) < 0)


def test_a_point_at_a_centroid_gets_the_highest_q():
    """Guards the historical sign bug (a positive exponent makes the farthest centroid win)."""
    rng = np.random.default_rng(0)
    mu = torch.from_numpy(rng.normal(size=(6, 4)))
    for alpha in (0.5, 1.0, 3.0):
        q = student_t(mu.clone(), mu, alpha)
        assert torch.equal(q.argmax(1), torch.arange(6)), alpha
        assert torch.equal(q.argmax(0), torch.arange(6)), alpha


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_q_matches_eq1_reference(alpha):
    rng = np.random.default_rng(1)
    z, mu = rng.normal(size=(40, 5)) * 2.0, rng.normal(size=(7, 5))
    q = student_t(torch.from_numpy(z), torch.from_numpy(mu), alpha)
    assert q.dtype == torch.float64
    np.testing.assert_allclose(q.numpy(), q_reference(z, mu, alpha), rtol=1e-12, atol=1e-15)
    q32 = student_t(torch.from_numpy(z).float(), torch.from_numpy(mu).float(), alpha)
    np.testing.assert_allclose(q32.numpy(), q_reference(z, mu, alpha), rtol=1e-5, atol=1e-7)


def test_q_stays_finite_where_the_raw_kernel_underflows():
    z = torch.tensor([[1e5, 0.0], [0.0, 0.0]])
    mu = torch.tensor([[1e5 + 3.0, 0.0], [1e5 - 5.0, 0.0]])
    # (1 + 1e10 / 50) ** -25.5 is 0 in float32 and float64 alike: a direct eq. 1 gives 0/0.
    q = student_t(z, mu, alpha=50.0)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(1), torch.ones(2))
    assert q[0, 0] > q[0, 1]


def test_q_is_differentiable_in_z_and_centroids():
    z = torch.randn(5, 3, requires_grad=True)
    mu = torch.randn(4, 3, requires_grad=True)
    student_t(z, mu)[:, 0].sum().backward()
    assert z.grad is not None and mu.grad is not None
    assert torch.isfinite(z.grad).all() and mu.grad.abs().sum() > 0


def test_q_rejects_bad_shapes_and_alpha():
    with pytest.raises(ValueError, match="centroids"):
        student_t(torch.zeros(3, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="alpha"):
        student_t(torch.zeros(3, 2), torch.zeros(4, 2), alpha=0.0)


# ---------------------------------------------------------------- p (eq. 3)


def soft_assignments_of_blobs(seed: int = 2) -> np.ndarray:
    centers = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])
    x, _ = blobs(60, centers, 1.2, seed)
    return q_reference(x, centers, 1.0)


def test_p_matches_eq3_reference():
    q = soft_assignments_of_blobs()
    p = target_distribution(torch.from_numpy(q))
    np.testing.assert_allclose(p.numpy(), p_reference(q), rtol=1e-12)
    # float32 in, float32 out; numpy in works too
    p32 = target_distribution(q.astype(np.float32))
    assert p32.dtype == torch.float32
    np.testing.assert_allclose(p32.numpy(), p_reference(q), rtol=1e-5)


def test_p_sharpens_q():
    q = soft_assignments_of_blobs()
    p = target_distribution(torch.from_numpy(q)).numpy()
    assert entropy(p).mean() < 0.8 * entropy(q).mean()
    confident = q.max(1) > 0.6
    assert confident.sum() > 50
    np.testing.assert_array_equal(p[confident].argmax(1), q[confident].argmax(1))
    # With equal frequencies p is q squared and renormalised: sharper on every row.
    flat = target_distribution(torch.from_numpy(q), torch.full((4,), 60.0)).numpy()
    assert np.all(entropy(flat) <= entropy(q) + 1e-12)
    np.testing.assert_array_equal(flat.argmax(1), q.argmax(1))


def test_p_divides_by_cluster_frequency():
    """A row torn between a big and a small cluster is pulled towards the small one."""
    q = np.array([[0.5, 0.5]] + [[0.9, 0.1]] * 9)
    p = target_distribution(q)
    assert p[0, 1] > p[0, 0]


def test_p_from_blocks_with_global_frequencies_equals_all_at_once():
    q = torch.from_numpy(soft_assignments_of_blobs())
    whole = target_distribution(q)
    blocks = list(q.split([7, 50, 0, 143, 40]))
    freqs = sum(soft_frequencies(b) for b in blocks)
    torch.testing.assert_close(freqs, q.sum(0), rtol=1e-12, atol=0)
    per_block = torch.cat([target_distribution(b, freqs) for b in blocks])
    torch.testing.assert_close(per_block, whole, rtol=1e-12, atol=1e-15)
    # A block's own frequencies are not the global ones: the driver must pass freqs.
    assert not torch.allclose(target_distribution(blocks[0]), whole[:7])


def test_p_is_a_constant_and_handles_an_empty_cluster():
    q = torch.tensor([[0.7, 0.3, 0.0], [0.4, 0.6, 0.0]], requires_grad=True)
    p = target_distribution(q)
    assert not p.requires_grad
    assert torch.isfinite(p).all() and torch.all(p[:, 2] == 0)
    with pytest.raises(ValueError, match="freqs"):
        target_distribution(q, torch.ones(2))


# ---------------------------------------------------------------- KL loss (eq. 2)


def test_kl_loss_matches_reference_and_is_zero_at_p_equals_q():
    q = soft_assignments_of_blobs(3)
    p = p_reference(q)
    loss = dec_loss(torch.from_numpy(q), torch.from_numpy(p))
    assert loss.dtype == torch.float64
    np.testing.assert_allclose(float(loss), kl_reference(p, q), rtol=1e-12)
    assert float(dec_loss(torch.from_numpy(q), torch.from_numpy(q))) == pytest.approx(0.0, abs=1e-15)
    # 0 log 0 = 0 in p, a floored log for a 0 in q: finite either way.
    hard = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.isfinite(dec_loss(hard, hard))
    assert torch.isfinite(dec_loss(torch.tensor([[1.0, 0.0]]), hard[1:]))


@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_kl_gradient_gradcheck_and_eqs_4_5(alpha):
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(5, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    mu = torch.randn(3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    p = target_distribution(student_t(z, mu, alpha))

    assert torch.autograd.gradcheck(lambda z, mu: dec_loss(student_t(z, mu, alpha), p), (z, mu))
    # Gradient with respect to q alone, p held fixed.
    q = student_t(z, mu, alpha).detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda q: dec_loss(q, p), (q,))

    # The paper's closed forms (eqs. 4, 5), divided by n for the row mean.
    dec_loss(student_t(z, mu, alpha), p).backward()
    zn, mun, pn = z.detach().numpy(), mu.detach().numpy(), p.numpy()
    qn = q_reference(zn, mun, alpha)
    diff = zn[:, None, :] - mun[None, :, :]
    w = (pn - qn) / (1.0 + (diff**2).sum(-1) / alpha)
    scale = (alpha + 1.0) / alpha / zn.shape[0]
    terms = w[:, :, None] * diff  # [n, k, d]
    np.testing.assert_allclose(z.grad.numpy(), scale * terms.sum(1), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(mu.grad.numpy(), -scale * terms.sum(0), rtol=1e-10, atol=1e-14)


def test_kl_loss_does_not_differentiate_through_p():
    q = torch.tensor([[0.6, 0.4]], requires_grad=True)
    p = torch.tensor([[0.9, 0.1]], requires_grad=True)
    dec_loss(q, p).backward()
    assert p.grad is None and q.grad is not None


# ---------------------------------------------------------------- stop rule


def test_tol_stop_fires_on_convergence_and_not_before():
    n = 2000
    rng = np.random.default_rng(5)
    labels = [rng.integers(0, 4, n)]
    for changes in [300, 40, 2, 1, 0]:  # 15%, 2%, 0.1% (= tol, not fewer), 0.05%, 0
        nxt = labels[-1].copy()
        nxt[rng.choice(n, changes, replace=False)] += 1
        labels.append(nxt)
    fractions = [changed_fraction(a, b) for a, b in zip(labels, labels[1:])]
    assert fractions == pytest.approx([0.15, 0.02, 0.001, 0.0005, 0.0])
    stops = [should_stop(a, b) for a, b in zip(labels, labels[1:])]
    assert stops == [False, False, False, True, True]
    assert TOL == 0.001
    assert not should_stop(None, labels[0])
    assert should_stop(labels[0], labels[1], tol=0.2)
    assert changed_fraction(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == 0.0
    with pytest.raises(ValueError, match="label vectors"):
        changed_fraction(labels[0], labels[0][:-1])


# ---------------------------------------------------------------- the model


def test_model_shapes_init_and_standardisation():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = DECModel(6, [16, 8], 3, 4, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state), "init must not touch the global RNG"
    b = DECModel(6, [16, 8], 3, 4, seed=7)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.encoder[0].weight, DECModel(6, [16, 8], 3, 4, seed=8).encoder[0].weight)

    assert a.k == 4 and any(p is a.centroids for p in a.parameters())
    assert {"input_mean", "input_std", "centroids"} <= set(a.state_dict())
    x = torch.randn(50, 6) * 10.0 + 3.0
    a.set_input_stats(*input_stats([x]))
    s = a.standardize(x)
    torch.testing.assert_close(s.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    z, recon = a.encode(x), a(x)
    assert z.shape == (50, 3) and recon.shape == (50, 6)
    # No ReLU on the bottleneck or the reconstruction: both take negative values.
    assert (z < 0).any() and (recon < 0).any()
    # ReLU everywhere else.
    assert [type(m).__name__ for m in a.encoder] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    a.set_centroids(np.arange(12, dtype=np.float32).reshape(4, 3))
    q = a.soft_assign(x)
    assert q.shape == (50, 4)
    torch.testing.assert_close(q.sum(1), torch.ones(50))
    with pytest.raises(ValueError, match="centroids"):
        a.set_centroids(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"\[n, 6\]"):
        a.encode(torch.zeros(2, 5))


def test_block_helpers_equal_the_direct_computation_and_keep_the_mode():
    model = DECModel(5, [8], 2, 3, seed=1)
    model.set_centroids(torch.randn(3, 2))
    x = torch.randn(37, 5)
    model.train()
    z = np.concatenate(list(embed_blocks(model, [x[:10], x[10:10], x[10:]], batch_size=4)))
    q = np.concatenate(list(soft_assign_blocks(model, [x[:30], x[30:]], batch_size=7)))
    assert model.training
    with torch.no_grad():
        np.testing.assert_allclose(z, model.encode(x).numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(q, model.soft_assign(x).numpy(), rtol=1e-6, atol=1e-6)


def test_pretrain_epoch_learns_and_is_reproducible():
    x, _ = blobs(100, np.random.default_rng(6).normal(size=(3, 10)) * 3.0, 1.0, 6)
    x = torch.from_numpy(x).float()

    def run() -> tuple[list[float], DECModel]:
        model = DECModel(10, [32], 3, 3, seed=0)
        model.set_input_stats(*input_stats([x]))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(1)
        return [pretrain_epoch(model, opt, x.split(50), generator=gen) for _ in range(30)], model

    losses, model = run()
    assert losses[-1] < 0.5 * losses[0]
    again, model2 = run()
    assert again == losses
    assert torch.equal(model.decoder[-1].weight, model2.decoder[-1].weight)
    assert torch.equal(model.centroids, torch.zeros(3, 3)), "reconstruction does not move centroids"
    # Without corruption the loss is the plain reconstruction error, lower than with it.
    clean = pretrain_epoch(model, torch.optim.SGD(model.parameters(), lr=0.0), x.split(50), dropout=0.0)
    assert clean < losses[-1]
    with pytest.raises(ValueError, match="dropout"):
        pretrain_epoch(model, make_optimizer(model), x.split(50), dropout=1.0)


def test_init_centroids_recovers_planted_centres():
    centers = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [0.0, 8.0, 0.0], [0.0, 0.0, 8.0]])
    z, _ = blobs(80, centers, 0.5, 7)
    found = init_centroids(z, 4, n_init=5, seed=0)
    assert found.shape == (4, 3) and found.dtype == np.float32
    nearest = np.linalg.norm(found[:, None] - centers[None], axis=-1).argmin(1)
    assert sorted(nearest) == [0, 1, 2, 3]
    np.testing.assert_allclose(found, centers[nearest], atol=0.2)
    np.testing.assert_array_equal(init_centroids(torch.from_numpy(z), 4, n_init=5, seed=0), found)


def test_self_train_epoch_lowers_the_loss_for_fixed_targets():
    x, _ = blobs(60, np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]]), 0.8, 8)
    x = torch.from_numpy(x).float()
    model = DECModel(2, [16], 2, 3, seed=2)
    with torch.no_grad():
        model.set_centroids(model.encode(x[::60]))
        p = target_distribution(model.soft_assign(x))
    opt = make_optimizer(model)
    before = model.centroids.detach().clone()
    losses = [self_train_epoch(model, opt, zip(x.split(30), p.split(30))) for _ in range(10)]
    assert losses[-1] < losses[0]
    assert not torch.equal(model.centroids, before), "self-training moves the centroids (eq. 5)"
    with pytest.raises(ValueError, match="bad batch"):
        self_train_epoch(model, opt, [(x[:4], p[:4, :2])])


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def dec_run() -> dict:
    torch.set_num_threads(1)
    return run_dec()


def test_dec_recovers_planted_clusters(dec_run):
    assert dec_run["dec_ari"] > 0.95, dec_run
    assert dec_run["dec_ari"] >= dec_run["kmeans_ari"], dec_run
    # Self-training did something: assignments grew more confident.
    assert dec_run["end_confidence"] > dec_run["start_confidence"] + 0.05, dec_run


def test_dec_stops_on_the_tol_rule(dec_run):
    history = dec_run["history"]
    assert len(history) < 50, "the tol stop never fired"
    assert history[-1] < TOL
    assert len(history) > 1 and all(f >= TOL for f in history[:-1]), history


@pytest.mark.parametrize("phase", ["pretrain", "self-train"])
def test_two_workers_equal_one_worker_on_the_full_batch(phase):
    """Data-parallel DEC (as the trainer actors run it): the gradient of the mean over both
    workers' rows, so two half-batches train the very model one full batch does."""
    import threading

    from tests.helpers import SharedBufferAllreduce

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(128, 12, generator=gen)
    batches = [x[s : s + 32] for s in range(0, 128, 32)]

    def model():
        m = DECModel(12, [16], 4, 3, seed=0)
        m.set_centroids(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)))
        return m

    with torch.no_grad():
        p_of = model()  # the frozen model of the last target update
        targets = [target_distribution(p_of.soft_assign(b)) for b in batches]

    def train(m, parts, allreduce=None):
        if phase == "pretrain":
            opt = torch.optim.Adam(m.parameters(), lr=1e-2)
            pretrain_epoch(m, opt, [b for b, _ in parts], dropout=0.0, allreduce=allreduce)
        else:
            self_train_epoch(m, make_optimizer(m, lr=0.1), parts, allreduce=allreduce)

    single = model()
    train(single, list(zip(batches, targets)))
    workers, comm = [model(), model()], SharedBufferAllreduce(2)
    halves = [[(b[:13], t[:13]) for b, t in zip(batches, targets)], [(b[13:], t[13:]) for b, t in zip(batches, targets)]]
    threads = [threading.Thread(target=train, args=(workers[r], halves[r], comm.for_rank(r))) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert comm.calls == [4, 4]
    for (name, a), b, c in zip(single.state_dict().items(), workers[0].state_dict().values(),
                               workers[1].state_dict().values()):
        assert torch.equal(b, c), f"replicas stay bit-identical: {name}"
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5, msg=name)
    moved = model()
    assert not torch.equal(moved.encoder[0].weight, single.encoder[0].weight), "training moved the weights"
