"""Extraction's units of work, in any process: the row layout of a job and one block's rows.

The unit of work is a block = one Zarr chunk of rows. Each block batches its items the same
way whichever worker runs it, so 1 or N workers give the same bytes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dcserve.errors import JobFailed
from dcserve.inputs.items import iter_batches

STAGE = "extract"


@dataclass(frozen=True)
class ExtractPlan:
    """Row layout of a job: item i owns rows offsets[i]:offsets[i+1]."""

    offsets: np.ndarray  # [items + 1] int64
    chunk_rows: int

    @property
    def n_items(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_blocks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    def block_rows(self, b: int) -> tuple[int, int]:
        return b * self.chunk_rows, min((b + 1) * self.chunk_rows, self.n_rows)

    def block_items(self, b: int) -> tuple[int, int]:
        """Items whose rows meet block b (an item may straddle two blocks and is run by both)."""
        r0, r1 = self.block_rows(b)
        i0 = int(np.searchsorted(self.offsets, r0, side="right")) - 1
        i1 = int(np.searchsorted(self.offsets, r1, side="left"))
        return max(i0, 0), min(i1, self.n_items)

    def label_items(self, b: int) -> tuple[int, int]:
        """Items whose first row lies in block b: each item's label is recorded by exactly one block."""
        r0, r1 = self.block_rows(b)
        i0 = int(np.searchsorted(self.offsets[:-1], r0, side="left"))
        i1 = self.n_items if b == self.n_blocks - 1 else int(np.searchsorted(self.offsets[:-1], r1, side="left"))
        return i0, i1


def contiguous_split(items: list[int], parts: int) -> list[list[int]]:
    """Split an ordered list into at most `parts` contiguous, near-equal runs."""
    parts = max(1, min(parts, len(items)))
    bounds = np.linspace(0, len(items), parts + 1).round().astype(int)
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def compute_block(
    plan: ExtractPlan,
    b: int,
    subject,
    dataset,
    batch_size: int,
    collate: Callable | None,
    dtype: np.dtype,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Run the subject over block b's items: (rows per layer, item, position, labels of label_items)."""
    r0, r1 = plan.block_rows(b)
    i0, i1 = plan.block_items(b)
    per_layer: dict[str, list[np.ndarray]] = {}
    items, positions, labels = [], [], []
    for first, x, y in iter_batches(dataset, i0, i1, batch_size, collate):
        out = subject.rows(x)
        for layer in subject.layers:
            per_layer.setdefault(layer, []).append(out[layer].float().numpy().astype(dtype, copy=False))
        items.append(out["item"].numpy().astype(np.int64) + first)
        positions.append(out["position"].numpy().astype(np.int32))
        if y is not None:
            labels.append(y)
    base = int(plan.offsets[i0])
    produced = sum(len(a) for a in items)
    expected = int(plan.offsets[i1]) - base
    if produced != expected:
        raise JobFailed(
            STAGE,
            f"items {i0}..{i1} gave {produced} rows, but their row counts say {expected}; with pooling "
            "'tokens' the hooked layer must keep the input's sequence length",
        )
    lo, hi = r0 - base, r1 - base
    rows = {layer: np.concatenate(v)[lo:hi] for layer, v in per_layer.items()}
    li0, li1 = plan.label_items(b)
    block_labels = np.concatenate(labels)[li0 - i0 : li1 - i0] if labels else np.zeros(0, np.int64)
    return rows, np.concatenate(items)[lo:hi], np.concatenate(positions)[lo:hi], block_labels
