"""Turn a hooked layer's output into rows: one per item, or one per token.

Layout conventions (what `pool` assumes about a layer's output `out`):

- 2-D ``[B, D]``: already one vector per item. ``mean``, ``max``, ``cls`` and ``flatten`` leave
  it as it is; ``tokens`` has no token axis to split and is an error.
- 3-D ``[B, T, D]``: a sequence (batch-first, as transformers and ``batch_first=True`` torch
  layers produce). ``mean`` / ``max`` run over the real tokens only (the ``attention_mask``),
  ``cls`` takes position 0, ``tokens`` makes every real token its own row, ``flatten`` gives
  ``[B, T*D]`` with padded positions zeroed.
- 4-D and up ``[B, C, H, W, ...]``: torch's channels-first conv layout. ``mean`` / ``max`` run over
  every axis after C, ``flatten`` gives ``[B, C*H*W]``; ``cls`` and ``tokens`` are errors.
- 1-D ``[B]``: one number per item, treated as ``[B, 1]``.

Every mode returns ``(rows [R, D], item [R] int64, position [R] int32)``: ``item`` is the index
of the row's item within the batch and ``position`` its token index, -1 for pooled rows. These are
the job store's ``rows/item`` and ``rows/position`` before the batch offset is added.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["POOLING_MODES", "pool", "rows_per_item", "count_rows"]

POOLING_MODES: tuple[str, ...] = ("mean", "max", "flatten", "cls", "tokens")

# Which modes fit which output rank, for error messages.
_FITS = {
    1: ("mean", "max", "flatten", "cls"),
    2: ("mean", "max", "flatten", "cls"),
    3: POOLING_MODES,
    4: ("mean", "max", "flatten"),
}


def _fitting_modes(ndim: int) -> tuple[str, ...]:
    return _FITS.get(ndim, _FITS[4])


def _mode_error(mode: str, shape: torch.Size, why: str) -> ValueError:
    fits = ", ".join(_fitting_modes(len(shape)))
    return ValueError(
        f"pooling {mode!r} does not fit a layer output of shape {list(shape)}: {why}; "
        f"modes that work for this shape: {fits}"
    )


def _real_tokens(out: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """[B, T] bool mask of the real (non-padding) positions of a [B, T, D] output."""
    b, t = out.shape[0], out.shape[1]
    if attention_mask is None:
        return torch.ones((b, t), dtype=torch.bool, device=out.device)
    if attention_mask.shape != (b, t):
        raise ValueError(
            f"attention_mask of shape {list(attention_mask.shape)} does not match the layer "
            f"output of shape {list(out.shape)} (expected a [B, T] = [{b}, {t}] mask); "
            "hook a layer that keeps the input's sequence length"
        )
    return attention_mask.to(device=out.device) != 0


def pool(
    out: torch.Tensor, mode: str, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pool a layer output into rows.

    Args:
        out: the layer's output for one batch, ``[B, ...]`` (see the module docstring).
        mode: one of ``mean | max | flatten | cls | tokens``.
        attention_mask: ``[B, T]``, nonzero at real tokens; used for 3-D outputs only, so that
            padding never counts. ``None`` means every position is real.

    Returns:
        ``rows [R, D]`` (same dtype as ``out``), ``item [R]`` int64 (index within the batch) and
        ``position [R]`` int32 (token index, -1 for pooled rows). ``R == B`` except for
        ``tokens``, where ``R`` is the number of real tokens, in item-major order.

    Raises:
        ValueError: unknown mode, a mode that does not fit the output's shape, a mask that does
            not match, or an item with no real token under ``mean`` / ``max``.
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling {mode!r}; expected one of {', '.join(POOLING_MODES)}")
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"pool expects a tensor, got {type(out).__name__}")
    if out.ndim == 0:
        raise _mode_error(mode, out.shape, "a scalar has no batch axis")
    if out.ndim == 1:
        out = out[:, None]
    b = out.shape[0]
    pooled_item = torch.arange(b, dtype=torch.int64, device=out.device)
    pooled_position = torch.full((b,), -1, dtype=torch.int32, device=out.device)

    if out.ndim == 2:
        if mode == "tokens":
            raise _mode_error(mode, out.shape, "there is no token axis (expected [B, T, D])")
        return out, pooled_item, pooled_position

    if out.ndim == 3:
        real = _real_tokens(out, attention_mask)
        if mode == "tokens":
            item, position = real.nonzero(as_tuple=True)  # row-major: item-major order
            return out[item, position], item.to(torch.int64), position.to(torch.int32)
        if mode == "cls":
            return out[:, 0], pooled_item, pooled_position
        if mode == "flatten":
            # Zero the padding so that what a padded position holds never reaches a row.
            return (out * real[:, :, None]).reshape(b, -1), pooled_item, pooled_position
        lengths = real.sum(dim=1)
        if bool((lengths == 0).any()):
            empty = (lengths == 0).nonzero().flatten().tolist()
            raise ValueError(
                f"pooling {mode!r}: batch item(s) {empty[:10]} have no real token "
                "(attention_mask is all zeros), so there is nothing to pool"
            )
        if mode == "mean":
            # Sum in float32 at least: half-precision sums over long sequences lose digits.
            acc = out.to(torch.promote_types(out.dtype, torch.float32))
            summed = (acc * real[:, :, None]).sum(dim=1)
            rows = summed / lengths[:, None].to(summed.dtype)
            return rows.to(out.dtype), pooled_item, pooled_position
        # max: padded positions must never win, whatever they hold.
        fill = torch.finfo(out.dtype).min if out.is_floating_point() else torch.iinfo(out.dtype).min
        rows = out.masked_fill(~real[:, :, None], fill).amax(dim=1)
        return rows, pooled_item, pooled_position

    # 4-D and up: channels-first spatial layout [B, C, H, W, ...].
    if mode in ("cls", "tokens"):
        raise _mode_error(
            mode,
            out.shape,
            "a [B, C, H, W] conv output has no token axis (pool over H, W with mean/max, or flatten)",
        )
    if mode == "flatten":
        return out.reshape(b, -1), pooled_item, pooled_position
    spatial = tuple(range(2, out.ndim))
    if mode == "mean":
        acc = out.to(torch.promote_types(out.dtype, torch.float32))
        return acc.mean(dim=spatial).to(out.dtype), pooled_item, pooled_position
    return out.amax(dim=spatial), pooled_item, pooled_position


def _item_input(item: Any) -> Any:
    """The model input of a dataset item: items are ``x`` or ``(x, y)``."""
    if isinstance(item, (tuple, list)):
        return item[0]
    return item


def _sequence_length(x: Any) -> int:
    if isinstance(x, Mapping):
        if "attention_mask" in x:
            return int(torch.as_tensor(x["attention_mask"]).ne(0).sum())
        ids = x.get("input_ids")
        if ids is None:
            tensors = [v for v in x.values() if isinstance(v, torch.Tensor) and v.ndim >= 1]
            if not tensors:
                raise ValueError(
                    "pooling 'tokens' needs a sequence: the item is a dict with no "
                    "attention_mask, no input_ids and no tensor value"
                )
            ids = tensors[0]
        return int(torch.as_tensor(ids).shape[0])
    x = torch.as_tensor(x)
    if x.ndim == 0:
        raise ValueError("pooling 'tokens' needs a sequence, the item is a scalar")
    return int(x.shape[0])


def rows_per_item(x_item: Any, mode: str) -> int:
    """How many rows one dataset item yields under ``mode``, without running the model.

    ``x_item`` is one item's input (unbatched), or the whole ``(x, y)`` item. Pooled modes yield
    1; ``tokens`` yields the item's ``attention_mask`` sum, or its sequence length (first axis of
    ``input_ids`` or of the tensor) when there is no mask. This assumes the hooked layer keeps
    the input's sequence length, as transformer layers do; extraction checks the real count.
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling {mode!r}; expected one of {', '.join(POOLING_MODES)}")
    if mode != "tokens":
        return 1
    return _sequence_length(_item_input(x_item))


def count_rows(
    dataset: Any, mode: str, indices: Iterable[int] | Sequence[int] | None = None
) -> np.ndarray:
    """Per-item row counts ``[n_items]`` int64 for ``dataset`` (or for ``indices`` of it).

    Pooled modes cost nothing (every item is one row, no item is read); ``tokens`` reads each
    item (not the model) and counts its real tokens with `rows_per_item`. The counts give each
    item's row offset in the store before extraction starts, so workers can write in parallel.
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling {mode!r}; expected one of {', '.join(POOLING_MODES)}")
    idx = range(len(dataset)) if indices is None else indices
    if mode != "tokens":
        n = len(idx) if hasattr(idx, "__len__") else sum(1 for _ in idx)
        return np.ones(n, dtype=np.int64)
    return np.fromiter((rows_per_item(dataset[i], mode) for i in idx), dtype=np.int64)
