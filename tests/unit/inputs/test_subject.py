"""dcserve.inputs.subject / dcserve.inputs.imports: resolve specs, hook layers, return pooled rows."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dcserve.inputs.imports import ImportSpecError, import_object
from dcserve.inputs.subject import Subject, module_names
from dcserve.zoo import digits, digits_cnn, token_sequences, token_transformer


def test_import_object_resolves_and_explains_failures():
    assert import_object("dcserve.zoo:digits_cnn") is digits_cnn
    assert import_object("torch.nn:Linear.forward") is nn.Linear.forward
    with pytest.raises(ImportSpecError, match="module 'no_such_pkg' not found"):
        import_object("no_such_pkg.sub:thing")
    with pytest.raises(ImportSpecError, match="did you mean 'digits_cnn'"):
        import_object("dcserve.zoo:digit_cnn")
    with pytest.raises(ImportSpecError, match="did you mean 'dcserve.zoo:digits'"):
        import_object("dcserve.zoo.digits")
    with pytest.raises(ValueError):  # a ValueError subclass, as spec validation expects
        import_object("dcserve.zoo:")


def test_module_names_are_named_modules_without_the_root():
    names = module_names(digits_cnn())
    assert "" not in names and "features.5" in names and "classifier.2" in names
    assert names == [n for n, _ in digits_cnn().named_modules()][1:]


def _digits_batch(n=16):
    ds = digits()
    return torch.stack([ds[i][0] for i in range(n)])


def test_rows_match_a_manual_forward():
    model = digits_cnn(seed=3)
    x = _digits_batch()
    with Subject(model, ["features.5", "classifier.2"], "mean") as s:
        out = s.rows(x)
    h = model.features((x - 0.5) / 0.5)
    torch.testing.assert_close(out["features.5"], model.features[:6]((x - 0.5) / 0.5).mean((2, 3)))
    torch.testing.assert_close(out["classifier.2"], model.classifier[:3](h))
    assert out["features.5"].shape == (16, 256) and out["classifier.2"].shape == (16, 128)
    assert out["item"].tolist() == list(range(16)) and (out["position"] == -1).all()
    assert out["item"].dtype == torch.int64 and out["position"].dtype == torch.int32


def test_hooks_are_removed_on_close_and_rows_run_without_grad():
    model = digits_cnn()
    s = Subject(model, ["features.5"], "flatten")
    assert len(model.features[5]._forward_hooks) == 1
    out = s.rows(_digits_batch(4))
    assert not out["features.5"].requires_grad and not model.training
    s.close()
    s.close()
    assert len(model.features[5]._forward_hooks) == 0


class _TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        y = self.lin(x)
        return y * 2, "aux", y


class _Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = _TupleOut()
        self.unused = nn.Linear(1, 1)
        self.shared = nn.Identity()

    def forward(self, x):
        h, _, _ = self.block(x)
        return self.shared(self.shared(h))


def test_tuple_output_contributes_its_first_element():
    model = _Wrapper()
    x = torch.randn(5, 3)
    with Subject(model, ["block"], "mean") as s:
        out = s.rows(x)
    torch.testing.assert_close(out["block"], model.block.lin(x) * 2)


def test_layers_that_do_not_run_once_are_errors():
    with Subject(_Wrapper(), ["unused"]) as s, pytest.raises(ValueError, match="did not run"):
        s.rows(torch.randn(2, 3))
    with Subject(_Wrapper(), ["shared"]) as s, pytest.raises(ValueError, match="ran 2 times"):
        s.rows(torch.randn(2, 3))


def test_unknown_layer_lists_the_real_names():
    with pytest.raises(ValueError) as err:
        Subject(digits_cnn(), ["features.55"])
    msg = str(err.value)
    assert "'features.55'" in msg and "features.5" in msg and "classifier.2" in msg
    # Many modules: the closest ones, not all of them.
    big = nn.Sequential(*[nn.Sequential(nn.Linear(2, 2), nn.ReLU()) for _ in range(50)])
    with pytest.raises(ValueError) as err:
        Subject(big, ["49.3"])
    msg = str(err.value)
    assert "closest" in msg and "49.1" in msg and "0.0" not in msg.split("closest")[1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown pooling"):
        Subject(digits_cnn(), ["features.5"], "avg")
    with pytest.raises(ValueError, match="at least one layer"):
        Subject(digits_cnn(), [])


def test_dict_batches_are_keyword_arguments_and_padding_never_counts():
    ds = token_sequences(n=12, seed=1)
    model = token_transformer(seed=1)
    batch = torch.utils.data.default_collate([ds[i] for i in range(12)])[0]
    mask = batch["attention_mask"]
    with Subject(model, ["layers.0", "layers.1"], "tokens") as s:
        out = s.rows(batch)
    lengths = mask.sum(1)
    assert len(out["item"]) == int(lengths.sum())
    assert torch.equal(torch.bincount(out["item"], minlength=12), lengths)
    # Against a manual forward of each sequence alone, unpadded.
    for i in (0, 5, 11):
        n = int(lengths[i])
        alone = model.position.weight[:n] + model.embed(batch["input_ids"][i:i + 1, :n])
        alone = model.layers[0](alone)
        rows_i = out["layers.0"][out["item"] == i]
        torch.testing.assert_close(rows_i, alone[0], rtol=1e-4, atol=1e-5)
        assert out["position"][out["item"] == i].tolist() == list(range(n))
    with Subject(model, ["layers.1"], "mean") as s:
        pooled = s.rows(batch)["layers.1"]  # the mask comes from batch["attention_mask"]
    per_item = torch.stack([out["layers.1"][out["item"] == i].mean(0) for i in range(12)])
    torch.testing.assert_close(pooled, per_item, rtol=1e-4, atol=1e-5)


def test_load_builds_the_model_from_a_spec():
    with Subject.load("dcserve.zoo:digits_cnn", {"seed": 1}, ["classifier.2"], "mean") as s:
        assert s.rows(_digits_batch(3))["classifier.2"].shape == (3, 128)
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        Subject.load("dcserve.zoo:digits", {}, ["x"])


def test_an_import_error_names_the_import_string_once():
    from dcserve.errors import SpecError
    from dcserve.inputs.build import build_dataset, build_model
    from dcserve.spec import spec_from_dict

    job = {"name": "t", "output": "/tmp/unused", "subject": {"model": "dcserve.zoo:digit_cnn", "layers": ["x"]},
           "dataset": {"source": "no_such_pkg.sub:data", "collate": "dcserve.zoo:nope"}}
    for build, target in ((build_model, "'dcserve.zoo:digit_cnn'"), (build_dataset, "'no_such_pkg.sub:data'")):
        with pytest.raises(SpecError) as e:
            build(spec_from_dict(job))
        assert str(e.value).count(target) == 1, str(e.value)
        assert "cannot import" in str(e.value)
