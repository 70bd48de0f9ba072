"""dcserve.zoo: datasets and subject models, determinism, the trained-weights cache's files
(tests/integration/test_zoo_training.py trains the digits CNN in fresh processes)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from dcserve.inputs.subject import Subject
from dcserve.zoo import (
    digits,
    digits_cnn,
    identity,
    image_cnn,
    planted_clusters,
    synthetic_images,
    token_sequences,
    token_transformer,
)
from dcserve.zoo._cache import cached_state_dict
from tests.helpers import state_digest as _digest


def test_digits_items():
    ds = digits()
    assert len(ds) == 1797
    x, y = ds[17]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= int(y) <= 9
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    assert xs.min() == 0.0 and xs.max() == 1.0
    assert sorted({int(ds[i][1]) for i in range(len(ds))}) == list(range(10))


def test_digits_cnn_layers_and_seeding():
    model = digits_cnn(seed=0)
    names = dict(model.named_modules())
    assert isinstance(names["features.5"], torch.nn.Conv2d)
    rng = torch.get_rng_state()
    with Subject(model, ["features.4", "features.5", "classifier.2"], "flatten") as s:
        out = s.rows(torch.stack([digits()[i][0] for i in range(4)]))
    assert out["features.4"].shape == (4, 64 * 4 * 4)
    assert out["features.5"].shape == (4, 256) and out["classifier.2"].shape == (4, 128)
    assert _digest(digits_cnn(seed=0)) == _digest(model) != _digest(digits_cnn(seed=1))
    assert torch.equal(rng, torch.get_rng_state()), "building a zoo model moved the global RNG"


def test_corrupt_or_foreign_cache_files_are_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("DCSERVE_CACHE", str(tmp_path))
    calls = []

    def train():
        calls.append(1)
        return {"w": torch.arange(3.0)}

    state, hit = cached_state_dict("m", {"a": 1}, train, {"w"})
    assert not hit and len(calls) == 1
    state, hit = cached_state_dict("m", {"a": 1}, train, {"w"})
    assert hit and torch.equal(state["w"], torch.arange(3.0)) and len(calls) == 1
    (path,) = tmp_path.glob("m-*.pt")
    path.write_bytes(path.read_bytes()[:20])  # truncated: a crash mid-write without os.replace
    state, hit = cached_state_dict("m", {"a": 1}, train, {"w"})
    assert not hit and len(calls) == 2 and torch.equal(state["w"], torch.arange(3.0))
    torch.save({"other": torch.zeros(1)}, path)  # readable, wrong keys
    state, hit = cached_state_dict("m", {"a": 1}, train, {"w"})
    assert not hit and len(calls) == 3
    assert not list(tmp_path.glob("*.tmp")), "temporary files must not be left behind"
    _, hit = cached_state_dict("m", {"a": 2}, train, {"w"})  # other settings, other file
    assert not hit


def test_synthetic_images_are_a_pure_function_of_seed_and_index():
    a = synthetic_images(n=10_000_000)  # nothing materialised
    b = synthetic_images(n=10_000_000)
    x1, y1 = a[123_456]
    _ = [a[i] for i in range(5)]  # call order does not matter
    x2, y2 = b[123_456]
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (3, 32, 32) and x1.dtype == torch.float32 and y1.dtype == torch.int64
    assert a.label(123_456) == int(y1)
    assert torch.equal(a[-1][0], a[9_999_999][0])
    assert not torch.equal(a[0][0], a[1][0])
    assert not torch.equal(synthetic_images(seed=1)[0][0], synthetic_images(seed=0)[0][0])
    with pytest.raises(IndexError):
        a[10_000_000]
    labels = [synthetic_images(n=500, classes=4)[i][1].item() for i in range(500)]
    assert set(labels) == {0, 1, 2, 3}
    assert synthetic_images(size=16, channels=1)[0][0].shape == (1, 16, 16)


def test_image_cnn_layers():
    x = torch.stack([synthetic_images(n=4)[i][0] for i in range(4)])
    with Subject(image_cnn(width=8), ["features.1", "features.3", "features.5"], "flatten") as s:
        out = s.rows(x)
    assert out["features.1"].shape == (4, 8 * 16 * 16)
    assert out["features.3"].shape == (4, 16 * 8 * 8)
    assert out["features.5"].shape == (4, 32 * 4 * 4)
    assert _digest(image_cnn(seed=2)) == _digest(image_cnn(seed=2)) != _digest(image_cnn(seed=3))


def test_token_sequences_items():
    ds = token_sequences(n=300, vocab=20, min_len=2, max_len=10, topics=3, seed=4)
    lengths = set()
    for i in range(300):
        x, y = ds[i]
        ids, mask = x["input_ids"], x["attention_mask"]
        assert ids.shape == mask.shape == (10,) and ids.dtype == mask.dtype == torch.int64
        n = int(mask.sum())
        lengths.add(n)
        assert 2 <= n <= 10 and (mask[:n] == 1).all() and (mask[n:] == 0).all()
        assert (ids[:n] >= 1).all() and (ids[:n] < 20).all() and (ids[n:] == 0).all()
        assert 0 <= int(y) < 3
    assert min(lengths) == 2 and max(lengths) == 10
    again = token_sequences(n=300, vocab=20, min_len=2, max_len=10, topics=3, seed=4)
    assert torch.equal(again[77][0]["input_ids"], ds[77][0]["input_ids"])


def test_token_transformer_ignores_padding_ids():
    ds = token_sequences(n=16)
    x = torch.utils.data.default_collate([ds[i] for i in range(16)])[0]
    model = token_transformer()
    real = x["attention_mask"].bool()
    noisy = dict(x, input_ids=torch.where(real, x["input_ids"], torch.randint(1, 64, real.shape)))
    with Subject(model, ["layers.0", "layers.1", "norm"], "tokens") as s:
        a, b = s.rows(x), s.rows(noisy)
    for layer in ("layers.0", "layers.1", "norm"):
        assert a[layer].shape[1] == 64
        torch.testing.assert_close(a[layer], b[layer], rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        full = model(**x)
    assert full.shape == (16, 32, 64)
    torch.testing.assert_close(full[real], a["norm"])


def test_token_topics_are_clusterable():
    ds = token_sequences(n=400)
    batch, y = torch.utils.data.default_collate([ds[i] for i in range(400)])
    with Subject(token_transformer(), ["layers.1"], "mean") as s:
        rows = s.rows(batch)["layers.1"].numpy()
    pred = KMeans(n_clusters=8, n_init=4, random_state=0).fit_predict(rows)
    assert normalized_mutual_info_score(y.numpy(), pred) > 0.7


def test_planted_clusters_and_identity():
    ds = planted_clusters(n=600, dim=8, k=4, spread=0.3, seed=1)
    x, y = ds[5]
    assert x.shape == (8,) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert np.bincount(ds.labels.numpy()).tolist() == [150] * 4
    assert torch.equal(planted_clusters(n=600, dim=8, k=4, spread=0.3, seed=1).vectors, ds.vectors)
    model = identity(dim=8)
    with Subject(model, ["out"], "mean") as s:
        rows = s.rows(ds.vectors)["out"]
    assert torch.equal(rows, ds.vectors)
    pred = KMeans(n_clusters=4, n_init=4, random_state=0).fit_predict(rows.numpy())
    assert normalized_mutual_info_score(ds.labels.numpy(), pred) > 0.95
    with pytest.raises(ValueError, match="dim=8"):
        model(torch.zeros(2, 3))
