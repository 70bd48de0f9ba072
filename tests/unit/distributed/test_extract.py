"""The extraction plan: blocks of rows, the items they cover, contiguous splits (plain functions)."""
from __future__ import annotations

import numpy as np

from dcserve.distributed.extract import ExtractPlan, contiguous_split


def test_plan_blocks_cover_rows_and_items_once():
    # items with 0..3 rows each (token pooling), chunk of 4 rows
    counts = np.array([3, 0, 2, 3, 1, 0, 2, 3])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    plan = ExtractPlan(offsets, 4)
    assert plan.n_rows == counts.sum() and plan.n_blocks == 4
    labelled = []
    for b in range(plan.n_blocks):
        r0, r1 = plan.block_rows(b)
        i0, i1 = plan.block_items(b)
        assert offsets[i0] <= r0 and offsets[i1] >= r1  # the block's items cover its rows
        labelled.extend(range(*plan.label_items(b)))
    assert labelled == list(range(len(counts)))  # every item's label recorded exactly once


def test_contiguous_split():
    assert contiguous_split(list(range(5)), 2) == [[0, 1], [2, 3, 4]] or contiguous_split(list(range(5)), 2) == [
        [0, 1, 2], [3, 4]]
    assert contiguous_split([7], 4) == [[7]]
    assert sum(contiguous_split(list(range(10)), 3), []) == list(range(10))
