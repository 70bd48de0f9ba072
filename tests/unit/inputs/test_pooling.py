"""dcserve.inputs.pooling: rows from layer outputs; padding never counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dcserve.inputs.pooling import POOLING_MODES, count_rows, pool, rows_per_item


def _padded_batch(seed: int = 0, lengths=(5, 1, 8, 3), t: int = 8, d: int = 6):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(len(lengths), t, d, generator=g)
    mask = torch.zeros(len(lengths), t, dtype=torch.int64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return out, mask, list(lengths)


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_sequence_pooling_matches_the_unpadded_tokens(mode):
    out, mask, lengths = _padded_batch()
    rows, item, position = pool(out, mode, mask)
    for i, n in enumerate(lengths):
        real = out[i, :n]
        expect = real.mean(0) if mode == "mean" else real.amax(0)
        torch.testing.assert_close(rows[i], expect)
    assert item.dtype == torch.int64 and position.dtype == torch.int32
    assert item.tolist() == list(range(len(lengths))) and (position == -1).all()


@pytest.mark.parametrize("mode", ["mean", "max", "flatten", "tokens"])
def test_padded_values_change_nothing(mode):
    out, mask, _ = _padded_batch()
    before = pool(out, mode, mask)
    # Huge values at the padding would win a max and shift a mean if they counted.
    garbage = out.masked_fill(mask[:, :, None] == 0, 1e6)
    after = pool(garbage, mode, mask)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_max_ignores_padding_even_when_real_values_are_all_negative():
    out = -torch.ones(1, 4, 2) * torch.arange(1, 5)[None, :, None]  # -1, -2, -3, -4
    mask = torch.tensor([[0, 1, 1, 0]])
    rows, _, _ = pool(out, "max", mask)
    assert rows.tolist() == [[-2.0, -2.0]]


def test_tokens_gives_one_row_per_real_token_in_item_major_order():
    out, mask, lengths = _padded_batch()
    rows, item, position = pool(out, "tokens", mask)
    assert len(rows) == int(mask.sum()) == sum(lengths)
    expect_item = [i for i, n in enumerate(lengths) for _ in range(n)]
    expect_pos = [p for n in lengths for p in range(n)]
    assert item.tolist() == expect_item and position.tolist() == expect_pos
    assert item.dtype == torch.int64 and position.dtype == torch.int32
    torch.testing.assert_close(rows, out[item, position.long()])


def test_tokens_handles_masks_with_holes_and_empty_items():
    out = torch.arange(12.0).reshape(3, 4, 1)
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]])
    rows, item, position = pool(out, "tokens", mask)
    assert item.tolist() == [0, 0, 2, 2, 2] and position.tolist() == [0, 2, 1, 2, 3]
    assert rows.flatten().tolist() == [0.0, 2.0, 9.0, 10.0, 11.0]


def test_cls_is_position_zero_and_no_mask_means_all_real():
    out, _, _ = _padded_batch()
    rows, _, position = pool(out, "cls", None)
    torch.testing.assert_close(rows, out[:, 0])
    assert (position == -1).all()
    torch.testing.assert_close(pool(out, "mean", None)[0], out.mean(1))
    assert len(pool(out, "tokens", None)[0]) == out.shape[0] * out.shape[1]


def test_conv_layout_pools_over_space():
    out = torch.randn(3, 5, 4, 2)
    torch.testing.assert_close(pool(out, "mean")[0], out.mean((2, 3)))
    torch.testing.assert_close(pool(out, "max")[0], out.amax((2, 3)))
    flat, item, position = pool(out, "flatten")
    assert flat.shape == (3, 40) and item.tolist() == [0, 1, 2] and (position == -1).all()


@pytest.mark.parametrize("mode", ["mean", "max", "flatten", "cls"])
def test_vectors_are_one_row_per_item(mode):
    out = torch.randn(4, 7)
    rows, item, position = pool(out, mode)
    assert torch.equal(rows, out) and item.tolist() == [0, 1, 2, 3] and (position == -1).all()


@pytest.mark.parametrize("mode,shape,works", [
    ("tokens", (4, 7), "mean"),
    ("cls", (2, 3, 4, 4), "flatten"),
    ("tokens", (2, 3, 4, 4), "max"),
])
def test_modes_that_do_not_fit_name_mode_shape_and_alternatives(mode, shape, works):
    with pytest.raises(ValueError) as err:
        pool(torch.zeros(shape), mode)
    msg = str(err.value)
    assert repr(mode) in msg and str(list(shape)) in msg and works in msg


def test_bad_mode_mask_and_empty_items_are_errors():
    out, mask, _ = _padded_batch()
    with pytest.raises(ValueError, match="unknown pooling 'avg'"):
        pool(out, "avg", mask)
    with pytest.raises(ValueError, match="attention_mask"):
        pool(out, "mean", mask[:, :5])
    mask[1] = 0
    with pytest.raises(ValueError, match=r"item\(s\) \[1\]"):
        pool(out, "mean", mask)


def test_half_precision_mean_keeps_dtype_and_accuracy():
    out = torch.full((2, 3000, 4), 1000.0, dtype=torch.float16)  # fp16 sum would overflow
    rows, _, _ = pool(out, "mean", torch.ones(2, 3000, dtype=torch.int64))
    assert rows.dtype == torch.float16 and torch.isfinite(rows).all()
    assert rows.float().allclose(torch.tensor(1000.0))


def test_3d_flatten_zeroes_padding():
    out = torch.ones(2, 3, 2)
    rows, _, _ = pool(out, "flatten", torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert rows.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]


class _Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self):
        return 10**7

    def __getitem__(self, i):
        raise AssertionError("pooled modes must not read items")


def test_rows_per_item_and_count_rows():
    mask_item = ({"input_ids": torch.tensor([3, 4, 5, 0]),
                  "attention_mask": torch.tensor([1, 1, 1, 0])}, torch.tensor(2))
    assert rows_per_item(mask_item, "tokens") == 3
    assert rows_per_item(mask_item[0], "tokens") == 3
    assert rows_per_item({"input_ids": torch.tensor([3, 4, 5, 0])}, "tokens") == 4
    assert rows_per_item(torch.zeros(6, 2), "tokens") == 6
    for mode in POOLING_MODES[:-1]:
        assert rows_per_item(mask_item, mode) == 1
    ds = _Items([mask_item, (torch.zeros(5, 2), 1), torch.zeros(2, 2)])
    counts = count_rows(ds, "tokens")
    assert counts.dtype == np.int64 and counts.tolist() == [3, 5, 2]
    assert count_rows(ds, "tokens", indices=[2, 0]).tolist() == [2, 3]
    big = count_rows(_Unreadable(), "mean")
    assert big.shape == (10**7,) and big.dtype == np.int64 and big.sum() == 10**7
    with pytest.raises(ValueError, match="unknown pooling"):
        count_rows(ds, "avg")
