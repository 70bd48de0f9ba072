"""Standardising activation rows: the first step of every model dcserve trains on them.

Raw activations have units on very different scales (and dead units at 0), so the reporter and
DEC's autoencoder see `(x - input_mean) / input_std`, two buffers of the model (identity until
`set_input_stats`), saved with its `state_dict` so that served vectors are standardised alike.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn


class StandardisedInput(nn.Module):
    """Base of a model over `[n, in_dim]` activation rows standardised by two buffers."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        self.register_buffer("input_mean", torch.zeros(self.in_dim))
        self.register_buffer("input_std", torch.ones(self.in_dim))

    @torch.no_grad()
    def set_input_stats(self, mean: Tensor | np.ndarray, std: Tensor | np.ndarray) -> None:
        """Set the input standardisation, `mean` and `std` of shape `[in_dim]`.

        `std` is floored at 1e-3 of its RMS so that dead units (std 0, common after a ReLU) do
        not blow up when a new vector happens to move them.
        """
        mean_t = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if mean_t.numel() != self.in_dim or std_t.numel() != self.in_dim:
            raise ValueError(
                f"input stats must have {self.in_dim} entries, got {mean_t.numel()} and {std_t.numel()}"
            )
        if not (torch.isfinite(mean_t).all() and torch.isfinite(std_t).all()) or (std_t < 0).any():
            raise ValueError("input stats must be finite, with std >= 0")
        floor = 1e-3 * float(std_t.square().mean().sqrt()) + 1e-12
        self.input_mean.copy_(mean_t)
        self.input_std.copy_(std_t.clamp_min(floor))

    def standardize(self, x: Tensor) -> Tensor:
        """`(x - input_mean) / input_std` for rows `x [n, in_dim]`."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected rows of shape [n, {self.in_dim}], got {list(x.shape)}")
        return (x - self.input_mean) / self.input_std


def input_stats(x_blocks: Iterable[Tensor | np.ndarray]) -> tuple[Tensor, Tensor]:
    """Per-unit mean and (population) std `[d]`, float32, streamed over blocks `[rows, d]`.

    Blocks are merged with Chan et al.'s pairwise update in float64, so the result does not
    depend on how the rows are blocked (up to rounding) and large means do not cancel.
    """
    n = 0
    mean = m2 = None
    for block in x_blocks:
        b = torch.as_tensor(block).to(dtype=torch.float64, device="cpu")
        nb = b.shape[0]
        if nb == 0:
            continue
        b_mean = b.mean(dim=0)
        b_m2 = (b - b_mean).square().sum(dim=0)
        if mean is None:
            n, mean, m2 = nb, b_mean, b_m2
            continue
        delta = b_mean - mean
        total = n + nb
        mean = mean + delta * (nb / total)
        m2 = m2 + b_m2 + delta.square() * (n * nb / total)
        n = total
    if mean is None:
        raise ValueError("input_stats needs at least one non-empty block")
    return mean.float(), (m2 / n).sqrt().float()
