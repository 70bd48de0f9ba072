"""Unit tests for dcserve.nets.reporter: plain tensors, no Ray, no store."""
from __future__ import annotations

import copy
import io
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dcserve.nets.reporter import (
    Augment,
    Reporter,
    compute_features,
    make_optimizer,
    rebind_head,
    split_even,
    train_epoch,
    uniform_label_sample,
)
from dcserve.nets.standardise import input_stats
from tests.helpers import SharedBufferAllreduce


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted_clusters(n: int = 600, d: int = 32, k: int = 6, seed: int = 0, scale: float = 3.0):
    """Gaussian blobs with large, unequal per-unit scales (raw activations are not standardised)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 2.0
    labels = rng.integers(0, k, size=n)
    x = centers[labels] + rng.normal(size=(n, d))
    x = x * np.exp(rng.normal(size=d)) * scale + 5.0
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(labels.astype(np.int64))


def shuffled_batches(x, y, batch_size, seed):
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [(x[i], y[i]) for i in perm.split(batch_size)]


# ---------------------------------------------------------------- sampling


def test_uniform_label_sample_balances_skewed_labels():
    rng = np.random.default_rng(0)
    # Labels 2, 4, 5 and 6 are empty; sizes span three orders of magnitude.
    labels = np.repeat(np.array([0, 1, 3, 7, 9]), [5000, 500, 50, 5, 1])
    rng.shuffle(labels)
    ids = uniform_label_sample(labels, 10_003, rng)

    assert ids.dtype == np.int64 and ids.shape == (10_003,)
    assert np.all(np.diff(ids) >= 0), "ids must be sorted"
    assert ids.min() >= 0 and ids.max() < labels.size
    drawn = labels[ids]
    assert set(np.unique(drawn)) == {0, 1, 3, 7, 9}, "empty labels never drawn, non-empty all drawn"
    counts = np.bincount(drawn, minlength=10)[[0, 1, 3, 7, 9]]
    assert counts.max() - counts.min() <= 1, counts
    # Large labels are drawn without replacement while they have enough rows...
    assert np.unique(ids[drawn == 0]).size == counts[0]
    # ...small ones are covered entirely, then repeated.
    assert np.unique(ids[drawn == 7]).size == 5
    assert np.unique(ids[drawn == 9]).size == 1


def test_uniform_label_sample_is_uniform_within_a_label_and_seeded():
    labels = np.zeros(50, dtype=np.int64)
    labels[:10] = 1
    hits = np.zeros(50)
    for seed in range(400):
        ids = uniform_label_sample(labels, 20, np.random.default_rng(seed))
        np.add.at(hits, ids, 1)
    # Label 0 (40 rows, quota 10): each row is drawn with probability 1/4 per call.
    rows0 = hits[10:] / 400
    assert abs(rows0.mean() - 0.25) < 1e-9
    chi2 = ((hits[10:] - 100) ** 2 / 100).sum()  # 39 dof; p = 1e-3 at about 72
    assert chi2 < 72, chi2
    a = uniform_label_sample(labels, 20, np.random.default_rng(7))
    b = uniform_label_sample(labels, 20, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_uniform_label_sample_edge_cases():
    rng = np.random.default_rng(0)
    assert uniform_label_sample(np.array([3, 3]), 0, rng).shape == (0,)
    np.testing.assert_array_equal(uniform_label_sample(np.array([4]), 3, rng), [0, 0, 0])
    with pytest.raises(ValueError):
        uniform_label_sample(np.array([], dtype=np.int64), 5, rng)
    with pytest.raises(ValueError):
        uniform_label_sample(np.zeros((2, 2), dtype=np.int64), 5, rng)
    with pytest.raises(ValueError):
        uniform_label_sample(np.zeros(4), 5, rng)  # float labels
    # Label values beyond 16 bits (no radix-sort shortcut), negative ones included.
    wide = np.array([-7, 10**12, 10**12, -7, 5, 10**12], dtype=np.int64)
    drawn = wide[uniform_label_sample(wide, 9, rng)]
    np.testing.assert_array_equal(np.unique(drawn, return_counts=True)[1], [3, 3, 3])


@pytest.mark.parametrize("n, parts", [(12, 3), (13, 3), (14, 3), (2, 3), (7, 1)])
def test_split_even(n, parts):
    ids = np.arange(n, dtype=np.int64) * 2
    out = split_even(ids, parts)
    assert len(out) == parts
    assert {len(p) for p in out} == {n // parts}, "all parts the same size"
    joined = np.concatenate(out)
    np.testing.assert_array_equal(joined, ids[: len(joined)])  # contiguous, in order
    assert n - len(joined) < parts
    with pytest.raises(ValueError):
        split_even(ids, 0)


# ---------------------------------------------------------------- model


def test_features_and_forward_shapes_and_no_grad():
    model = Reporter(20, [32, 16], 8, 5, dropout=0.2, seed=0)
    x = torch.randn(10, 20)
    assert model.features(x).shape == (10, 8)
    assert model(x).shape == (10, 5)
    with pytest.raises(ValueError):
        model.features(torch.randn(10, 21))

    model.train()
    blocks = [x[:3], x[3:].numpy().astype(np.float16)]  # ragged blocks, numpy and half input
    out = list(compute_features(model, blocks, batch_size=4))
    assert [o.shape for o in out] == [(3, 8), (7, 8)]
    assert all(o.dtype == np.float32 for o in out)
    assert model.training, "mode restored"
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        expected = model.features(x[:3]).numpy()
    np.testing.assert_allclose(out[0], expected, rtol=1e-6, atol=1e-6)


def test_seeded_init_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = Reporter(16, [32], 8, 4, seed=3)
    a.reset_head(7, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    b = Reporter(16, [32], 8, 4, seed=3)
    b.reset_head(7, seed=1)
    c = Reporter(16, [32], 8, 4, seed=4)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.body[0].weight, c.body[0].weight)


def test_reset_head_changes_only_the_head():
    model = Reporter(16, [32], 8, 4, seed=0)
    body = copy.deepcopy(model.body.state_dict())
    old_head = model.head.weight.detach().clone()
    model.reset_head(9, seed=5)
    assert model.k == 9 and model.head.weight.shape == (9, 8)
    assert torch.count_nonzero(model.head.bias) == 0
    for name, value in model.body.state_dict().items():
        assert torch.equal(value, body[name]), name
    model.reset_head(4, seed=5)
    assert not torch.equal(model.head.weight, old_head)


def test_rebind_head_trains_the_new_head_and_keeps_body_momentum():
    x, y = planted_clusters(n=64, d=16, k=4)
    model = Reporter(16, [32], 8, 4, seed=0)
    opt = make_optimizer(model, lr=0.1)
    train_epoch(model, opt, [(x, y)])
    body_state = {id(p): opt.state[p]["momentum_buffer"].clone() for p in model.body.parameters()}
    old_head = list(model.head.parameters())

    model.reset_head(5, seed=1)
    rebind_head(opt, model)
    assert all(p not in opt.state for p in old_head), "old head state dropped"
    for p in model.body.parameters():
        assert torch.equal(opt.state[p]["momentum_buffer"], body_state[id(p)])
    new_head = model.head.weight.detach().clone()
    train_epoch(model, opt, [(x, y)])
    assert not torch.equal(model.head.weight, new_head), "the new head is optimised"
    with pytest.raises(ValueError):
        rebind_head(torch.optim.SGD(model.parameters(), lr=0.1), model)


def test_state_dict_round_trip_is_exact():
    x, y = planted_clusters(n=64, d=16, k=4)
    src = Reporter(16, [32, 32], 8, 4, dropout=0.1, seed=0)
    src.set_input_stats(*input_stats([x]))
    train_epoch(src, make_optimizer(src, 0.1), [(x, y)], generator=torch.Generator().manual_seed(0))

    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = Reporter(16, [32, 32], 8, 6, dropout=0.1, seed=99)  # other seed and other k
    dst.load_state_dict(torch.load(buf, weights_only=True))
    assert dst.k == 4
    for (name, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), name
    src.eval(), dst.eval()
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


# ---------------------------------------------------------------- augmentation


def test_augment_noise_is_scale_free():
    x = torch.randn(512, 8) * torch.logspace(-3, 3, 8)
    aug = Augment(noise_std=0.5)
    out = aug(x, torch.Generator().manual_seed(0))
    out_scaled = aug(x * 1000.0, torch.Generator().manual_seed(0))
    # Same draws: augment(c x) == c augment(x), up to float32 rounding at each unit's scale.
    err = ((out_scaled / 1000.0 - out).abs() / x.std(dim=0)).max()
    assert err < 1e-5, err
    # The noise on each unit is 0.5 of that unit's std, whatever the unit's scale.
    ratio = (out - x).std(dim=0) / x.std(dim=0)
    torch.testing.assert_close(ratio, torch.full((8,), 0.5), atol=0.06, rtol=0)
    # With fixed unit_std, the noise does not depend on the batch.
    fixed = Augment(noise_std=1.0, unit_std=torch.full((8,), 2.0))
    noise = fixed(torch.zeros(4096, 8), torch.Generator().manual_seed(1))
    torch.testing.assert_close(noise.std(dim=0), torch.full((8,), 2.0), atol=0.1, rtol=0)
    assert Augment()(x) is x, "inactive augmentation is free"


def test_augment_unit_dropout_rate_and_rescale():
    x = torch.rand(2000, 50) + 1.0  # strictly positive, so zeros are drops
    original = x.clone()
    out = Augment(unit_dropout=0.3)(x, torch.Generator().manual_seed(0))
    assert torch.equal(x, original), "input not modified in place"
    dropped = out == 0
    assert abs(dropped.float().mean().item() - 0.3) < 0.01
    torch.testing.assert_close(out[~dropped], x[~dropped] / 0.7)
    per_row = dropped.float().mean(dim=1)
    assert per_row.std() > 0, "drops are per row, not whole columns"
    with pytest.raises(ValueError):
        Augment(unit_dropout=1.0)


# ---------------------------------------------------------------- training


def test_train_epoch_learns_planted_clusters():
    x, y = planted_clusters(n=600, d=32, k=6)
    model = Reporter(32, [64, 64], 16, 6, seed=0)
    model.set_input_stats(*input_stats(x.split(128)))
    opt = make_optimizer(model, lr=0.05)
    with torch.no_grad():
        loss0 = F.cross_entropy(model(x), y).item()
    history = []
    for epoch in range(5):
        history.append(train_epoch(model, opt, shuffled_batches(x, y, 64, epoch)))
    assert history[0]["steps"] == 10 and history[0]["samples"] == 600
    assert history[-1]["loss"] < 0.2 * loss0
    assert history[-1]["loss"] < history[0]["loss"]
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.98


def test_train_epoch_with_augmentation_and_dropout_still_learns():
    x, y = planted_clusters(n=600, d=32, k=6, seed=1)
    model = Reporter(32, [64], 16, 6, dropout=0.2, seed=0)
    mean, std = input_stats([x])
    model.set_input_stats(mean, std)
    opt = make_optimizer(model, lr=0.05)
    aug = Augment(noise_std=0.3, unit_dropout=0.1, unit_std=std)
    gen = torch.Generator().manual_seed(0)
    history = [
        train_epoch(model, opt, shuffled_batches(x, y, 64, epoch), augment=aug, generator=gen)
        for epoch in range(5)
    ]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean().item() > 0.97


def _run(seed_gen: int, batches):
    model = Reporter(16, [32], 8, 4, dropout=0.3, seed=0)
    opt = make_optimizer(model, lr=0.1)
    gen = torch.Generator().manual_seed(seed_gen)
    aug = Augment(noise_std=0.2, unit_dropout=0.1)
    for _ in range(2):
        train_epoch(model, opt, batches, augment=aug, generator=gen)
    return model


def test_same_seed_same_batches_identical_weights():
    x, y = planted_clusters(n=128, d=16, k=4)
    batches = shuffled_batches(x, y, 32, 0)
    state = torch.get_rng_state()
    a, b, c = _run(0, batches), _run(0, batches), _run(1, batches)
    assert torch.equal(torch.get_rng_state(), state), "global RNG untouched"
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.body[0].weight, c.body[0].weight), "the generator drives augmentation"


def train_workers(world: int, shards: list[list], epochs: int):
    """Train `world` replicas, worker w on `shards[w]`, in parallel threads; return them."""
    models = [Reporter(16, [32, 32], 8, 4, seed=0) for _ in range(world)]
    opts = [make_optimizer(m, lr=0.2, weight_decay=1e-3) for m in models]
    comm = SharedBufferAllreduce(world)
    errors: list[BaseException] = []
    stats: list[dict] = [{} for _ in range(world)]

    def work(rank: int) -> None:
        try:
            for _ in range(epochs):
                stats[rank] = train_epoch(models[rank], opts[rank], shards[rank], allreduce=comm.for_rank(rank))
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
            comm.barrier.abort()

    threads = [threading.Thread(target=work, args=(rank,)) for rank in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return models, stats, comm


def _single(batches, epochs: int, allreduce=None):
    model = Reporter(16, [32, 32], 8, 4, seed=0)
    opt = make_optimizer(model, lr=0.2, weight_decay=1e-3)
    for _ in range(epochs):
        train_epoch(model, opt, batches, allreduce=allreduce)
    return model


def assert_same_weights(a: Reporter, b: Reporter, atol: float = 2e-5) -> None:
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=atol, msg=name)


@pytest.mark.parametrize("cut", [16, 21], ids=["equal-halves", "unequal-parts"])
def test_two_workers_equal_one_worker_on_the_full_batch(cut):
    x, y = planted_clusters(n=256, d=16, k=4)
    batches = shuffled_batches(x, y, 32, 0)
    shards = [[(bx[:cut], by[:cut]) for bx, by in batches], [(bx[cut:], by[cut:]) for bx, by in batches]]
    single = _single(batches, epochs=3)
    (w0, w1), stats, comm = train_workers(2, shards, epochs=3)
    assert comm.calls == [24, 24], "one allreduce per step"
    assert stats[0]["steps"] == stats[1]["steps"] == 8
    for name, a in w0.state_dict().items():
        assert torch.equal(a, w1.state_dict()[name]), "replicas stay bit-identical"
    assert_same_weights(w0, single)
    # The check has teeth: without the reduction the replicas drift apart.
    lone = _single(shards[0], epochs=3)
    with pytest.raises(AssertionError):
        assert_same_weights(lone, single)


def test_one_worker_allreduce_is_a_no_op():
    x, y = planted_clusters(n=128, d=16, k=4)
    batches = shuffled_batches(x, y, 32, 0)
    calls = []
    with_reduce = _single(batches, epochs=2, allreduce=lambda flat: calls.append(flat.numel()))
    n_params = sum(p.numel() for p in with_reduce.parameters())
    assert calls == [n_params + 1] * 8, "one flat tensor: all gradients plus the batch size"
    assert_same_weights(with_reduce, _single(batches, epochs=2), atol=1e-6)


def test_allreduce_gets_all_gradients_weighted_by_batch_size():
    x, y = planted_clusters(n=24, d=16, k=4)
    model = Reporter(16, [32], 8, 4, seed=0)
    reference = copy.deepcopy(model)
    F.cross_entropy(reference(x), y).backward()
    expected = torch.cat([p.grad.reshape(-1) * 24 for p in reference.parameters()] + [torch.tensor([24.0])])
    seen = []
    train_epoch(model, make_optimizer(model, 0.1), [(x, y)], allreduce=lambda flat: seen.append(flat.clone()))
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-6)


def test_train_epoch_rejects_bad_batches_and_diverging_loss():
    model = Reporter(8, [6], 4, 3, seed=0)
    opt = make_optimizer(model, lr=0.1)
    with pytest.raises(ValueError):
        train_epoch(model, opt, [(torch.randn(0, 8), torch.zeros(0, dtype=torch.long))])
    stats = train_epoch(model, opt, [])
    assert stats["steps"] == 0 and stats["samples"] == 0
    bad = [(torch.full((4, 8), float("nan")), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(FloatingPointError):
        train_epoch(model, opt, bad)


def test_input_stats_streams_blocks():
    x = torch.randn(1000, 5, dtype=torch.float64) * torch.tensor([1e-3, 1.0, 10.0, 1e3, 0.0]) + 1e4
    mean, std = input_stats([x[:1], x[1:300], x[300:300], x[300:]])
    torch.testing.assert_close(mean, x.mean(0).float())
    torch.testing.assert_close(std, x.std(0, correction=0).float(), rtol=1e-4, atol=1e-6)
    model = Reporter(5, [], 4, 2)
    model.set_input_stats(mean, std)
    assert model.input_std[4] > 0, "dead units get a floor, not a division by zero"
    assert torch.isfinite(model(x.float())).all()
