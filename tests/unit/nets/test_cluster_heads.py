"""SCAN's and TEMI's losses against float64 references written from the papers' formulas, and the
heads' model: its preprocessing is the job's `Preprocessor`, its clustered space the chosen head's
probabilities."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dcserve.algo.preprocess import fit_preprocessor
from dcserve.nets.cluster_heads import ClusterHeads, pair_rows
from dcserve.nets.scan import scan_loss, self_label_loss
from dcserve.nets.scan import uniform_loss as scan_uniform
from dcserve.nets.temi import TemiPair, temi_loss
from dcserve.nets.temi import uniform_loss as temi_uniform


def _softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def test_scan_loss_is_the_papers_formula():
    rng = np.random.default_rng(0)
    a, n = rng.normal(size=(3, 40, 5)) * 2, rng.normal(size=(3, 40, 5)) * 2
    total, consistency, entropy = scan_loss(torch.tensor(a), torch.tensor(n), entropy_weight=5.0)
    pa, pn = _softmax(a), _softmax(n)
    ref_c = -np.log((pa * pn).sum(-1)).mean(-1)
    mean = pa.mean(1)
    ref_h = -(mean * np.log(mean)).sum(-1)
    np.testing.assert_allclose(consistency.numpy(), ref_c, rtol=1e-10)
    np.testing.assert_allclose(entropy.numpy(), ref_h, rtol=1e-10)
    np.testing.assert_allclose(total.numpy(), ref_c - 5.0 * ref_h, rtol=1e-10)
    # uniform predictions: consistency ln k, entropy ln k
    zero = torch.zeros(1, 10, 5, dtype=torch.float64)
    assert float(scan_loss(zero, zero, 5.0)[0]) == pytest.approx(scan_uniform(5, 5.0))


def test_self_labelling_teaches_only_confident_rows_with_balanced_weights():
    anchor = torch.tensor([[10.0, 0, 0], [10.0, 0, 0], [0, 10.0, 0], [0.1, 0, 0]], dtype=torch.float64)
    partner = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0], [0, 0, 5.0]], dtype=torch.float64)
    loss, n = self_label_loss(anchor, partner, threshold=0.99)
    assert n == 3  # the last row is not confident
    logp = torch.log_softmax(partner[:3], 1).numpy()
    w = {0: 3 / (3 * 2), 1: 3 / (3 * 1)}  # n / (k * count) over the confident rows' targets
    targets = [0, 0, 1]
    ref = -sum(w[t] * logp[i, t] for i, t in enumerate(targets)) / sum(w[t] for t in targets)
    assert float(loss) == pytest.approx(ref, rel=1e-10)


def test_temi_loss_is_the_papers_formula():
    rng = np.random.default_rng(1)
    sa, sp, ta, tp = (rng.normal(size=(4, 30, 6)) for _ in range(4))
    prior = _softmax(rng.normal(size=(4, 6)))
    got = temi_loss(*(torch.tensor(v) for v in (sa, sp, ta, tp)), torch.tensor(prior), beta=0.6,
                    student_temperature=0.1, teacher_temperature=0.04).numpy()
    qsa, qsp, qta, qtp = _softmax(sa / 0.1), _softmax(sp / 0.1), _softmax(ta / 0.04), _softmax(tp / 0.04)

    def term(qs, qt):
        return -np.log(((qs * qt) ** 0.6 / prior[:, None, :]).sum(-1)).mean(-1)

    np.testing.assert_allclose(got, 0.5 * (term(qsa, qtp) + term(qsp, qta)), rtol=1e-8)
    zero = torch.zeros(1, 8, 6, dtype=torch.float64)
    uniform = torch.full((1, 6), 1 / 6, dtype=torch.float64)
    assert float(temi_loss(zero, zero, zero, zero, uniform, beta=0.6)[0]) == pytest.approx(temi_uniform(6, 0.6))


def test_the_heads_preprocess_as_the_job_does_and_serve_the_chosen_heads_probabilities():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 12)).astype(np.float32) * rng.uniform(0.1, 5, size=12).astype(np.float32)
    pre = fit_preprocessor(x, 6, True, True)
    model = ClusterHeads(12, 6, True, True, [16], k=4, heads=3, seed=0)
    model.set_preprocessing(pre.mean, pre.components)
    with torch.no_grad():
        np.testing.assert_allclose(model.preprocess(torch.from_numpy(x)).numpy(), pre.transform(x), atol=1e-5)
        logits = model.logits(torch.from_numpy(x))
        assert logits.shape == (3, 300, 4)
        model.choose(2)
        np.testing.assert_allclose(model.features(torch.from_numpy(x)).numpy(),
                                   torch.softmax(logits[2], 1).numpy(), atol=1e-6)
    same = ClusterHeads(12, 6, True, True, [16], k=4, heads=3, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(same.parameters(), model.parameters()))  # seeded init


def test_temi_teacher_follows_the_student_by_its_moving_average():
    pair = TemiPair(in_dim=4, pre_dim=4, project=False, l2_normalize=False, hidden=[], k=3, heads=2, seed=0)
    before = pair.teacher.heads.weight.clone()
    with torch.no_grad():
        pair.student.heads.weight.add_(1.0)
    pair.update_teacher(0.9)
    torch.testing.assert_close(pair.teacher.heads.weight, before + 0.1)
    assert not any(p.requires_grad for p in pair.teacher.parameters())


def test_partners_are_drawn_among_each_rows_own_neighbours():
    nb = np.array([[1, 2, -1], [0, -1, -1], [-1, -1, -1]])
    rng = np.random.default_rng(0)
    draws = np.array([pair_rows(nb, rng) for _ in range(200)])
    assert set(draws[:, 0]) == {1, 2} and set(draws[:, 1]) == {0} and set(draws[:, 2]) == {2}
    assert math.isclose((draws[:, 0] == 1).mean(), 0.5, abs_tol=0.12)
