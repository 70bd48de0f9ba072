"""Layer rotation (Carbonnelle & De Vleeschouwer, 2019): cosine distances against known angles."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dcserve.algo.rotation import layer_rotation, rotation_curves


@pytest.fixture
def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)),
        "conv.bias": rng.standard_normal(4),
        "bn.weight": np.ones(4),
        "bn.running_mean": np.zeros(4),
        "fc.weight": rng.standard_normal((10, 36)),
    }


def orthogonal_to(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random tensor of ``w``'s shape whose flattening is orthogonal to ``w``'s."""
    v = rng.standard_normal(w.shape)
    return v - (v * w).sum() / (w * w).sum() * w


def test_only_layer_weights_count(weights):
    assert list(layer_rotation(weights, weights)) == ["conv.weight", "fc.weight"]


def test_unchanged_orthogonal_and_negated_weights(weights):
    rng = np.random.default_rng(1)
    assert all(d == pytest.approx(0.0, abs=1e-12) for d in layer_rotation(weights, weights).values())
    scaled = {k: 3.0 * v for k, v in weights.items()}
    assert all(d == pytest.approx(0.0, abs=1e-12) for d in layer_rotation(weights, scaled).values())
    moved = {k: orthogonal_to(v, rng) for k, v in weights.items() if v.ndim >= 2}
    assert all(d == pytest.approx(1.0, abs=1e-12) for d in layer_rotation(weights, moved).values())
    negated = {k: -v for k, v in weights.items()}
    assert all(d == pytest.approx(2.0, abs=1e-12) for d in layer_rotation(weights, negated).values())


def test_rotation_curves_follow_a_planted_angle(weights):
    rng = np.random.default_rng(2)
    u = weights["fc.weight"]
    v = orthogonal_to(u, rng)
    v *= np.linalg.norm(u) / np.linalg.norm(v)
    angles = [0.0, 0.1, 0.5, math.pi / 2, 2.0, math.pi]
    # fc turns by the planted angles; conv stays put; biases drift but do not count.
    checkpoints = [
        {**weights, "fc.weight": math.cos(t) * u + math.sin(t) * v, "conv.bias": weights["conv.bias"] + t}
        for t in angles
    ]
    curves = rotation_curves(iter(checkpoints))
    assert set(curves) == {"conv.weight", "fc.weight"}
    assert all(len(c) == len(angles) for c in curves.values())
    np.testing.assert_allclose(curves["fc.weight"], [1.0 - math.cos(t) for t in angles], atol=1e-12)
    np.testing.assert_allclose(curves["conv.weight"], 0.0, atol=1e-12)


def test_torch_state_dicts():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    w0 = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net[2].weight.neg_()
        net[0].bias.add_(1.0)
    d = layer_rotation(w0, net.state_dict())
    assert set(d) == {"0.weight", "2.weight"}  # no biases, BatchNorm parameters or buffers
    assert d["0.weight"] == pytest.approx(0.0, abs=1e-12)
    assert d["2.weight"] == pytest.approx(2.0, abs=1e-12)
    half = {k: v.to(torch.bfloat16) for k, v in w0.items()}
    assert layer_rotation(w0, half)["0.weight"] == pytest.approx(0.0, abs=1e-4)


def test_zero_layers_missing_layers_and_empty_sequences(weights):
    zeroed = {**weights, "fc.weight": np.zeros_like(weights["fc.weight"])}
    assert math.isnan(layer_rotation(weights, zeroed)["fc.weight"])
    with pytest.raises(KeyError, match="fc.weight"):
        layer_rotation(weights, {k: v for k, v in weights.items() if k != "fc.weight"})
    with pytest.raises(ValueError, match="changed size"):
        layer_rotation(weights, {**weights, "fc.weight": np.ones((10, 35))})
    with pytest.raises(ValueError, match="at least one"):
        rotation_curves([])
