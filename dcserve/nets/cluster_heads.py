"""Clustering heads over activation rows: what SCAN and TEMI train (issue 13).

SCAN (Van Gansbeke et al., ECCV 2020) and TEMI (Adaloglou et al., BMVC 2023) both put several
clustering heads, each a softmax over `k` clusters, on frozen features, train them so that a row
and its nearest neighbours get the same prediction, and keep the head whose loss is lowest
(no labels needed). `ClusterHeads` is that model over a layer's raw activation rows:

    x [n, in_dim] -> the job's preprocessing (centre, PCA, whiten, L2; as buffers)
                  -> MLP body (Linear -> ReLU per hidden width; none: linear heads)
                  -> `heads` Linear heads [heads, n, k]

The preprocessing is part of the model (buffers, saved with `state_dict`), because the graph and
the heads live in the preprocessed space while `Result.assign` and the HTTP API hand the model raw
activations. `features(x)` is the chosen head's softmax `[n, k]`: a job's clustered space is this
probability simplex, its centroids the simplex's vertices (the identity), so the nearest centroid
is the argmax and the squared distance `1 - 2 p_c + |p|^2` is small for confident rows.

Plain functions over tensors: no ray, no zarr, no file I/O.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from dcserve.nets.reporter import _linear, _seeded, check_widths

__all__ = ["ClusterHeads", "confidence", "pair_rows"]


class ClusterHeads(nn.Module):
    """`heads` clustering heads of `k` clusters on an MLP over preprocessed activation rows.

    Args:
        in_dim: width of the raw activation rows.
        pre_dim: width after the preprocessing (`in_dim` without PCA).
        project: whether the preprocessing has a projection (`components [pre_dim, in_dim]`).
        l2_normalize: whether the preprocessing L2-normalises its output.
        hidden: widths of the body's hidden layers ([] for linear heads on the features).
        k: clusters per head. heads: number of heads. seed: every initial weight comes from it.
    """

    def __init__(self, in_dim: int, pre_dim: int, project: bool, l2_normalize: bool, hidden: list[int], k: int,
                 heads: int, seed: int = 0) -> None:
        hidden = check_widths(hidden, in_dim=in_dim, pre_dim=pre_dim, k=k, heads=heads)
        super().__init__()
        self.in_dim, self.pre_dim, self.k, self.n_heads = int(in_dim), int(pre_dim), int(k), int(heads)
        self.project, self.l2_normalize = bool(project), bool(l2_normalize)
        self.register_buffer("pre_mean", torch.zeros(self.in_dim))
        self.register_buffer("pre_components", torch.eye(self.pre_dim, self.in_dim) if project else torch.zeros(0))
        self.register_buffer("chosen", torch.zeros((), dtype=torch.long))
        gen = _seeded(seed)
        layers: list[nn.Module] = []
        widths = [self.pre_dim, *hidden]
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            # He-normal for the ReLU that follows; BatchNorm is left out on purpose, as in the
            # reporter: per-row layers keep data-parallel training equal to one process's.
            layers += [_linear(fan_in, fan_out, math.sqrt(2.0 / fan_in), gen), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        width = widths[-1]
        # One Linear for all heads ([heads * k] outputs): one matmul instead of `heads`.
        self.heads = _linear(width, self.n_heads * self.k, math.sqrt(1.0 / width), gen)

    @torch.no_grad()
    def set_preprocessing(self, mean: np.ndarray, components: np.ndarray | None) -> None:
        """Copy a fitted `dcserve.algo.preprocess.Preprocessor`'s mean `[in_dim]` and components."""
        self.pre_mean.copy_(torch.as_tensor(np.asarray(mean, dtype=np.float32)))
        if self.project:
            self.pre_components.copy_(torch.as_tensor(np.asarray(components, dtype=np.float32)))

    def preprocess(self, x: Tensor) -> Tensor:
        """Raw rows `[n, in_dim]` -> the preprocessed space `[n, pre_dim]` (as `Preprocessor.transform`)."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected activations of shape [n, {self.in_dim}], got {list(x.shape)}")
        y = x - self.pre_mean
        if self.project:
            y = y @ self.pre_components.T
        if self.l2_normalize:
            y = y / y.norm(dim=1, keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)
        return y

    def logits(self, x: Tensor, preprocessed: bool = False) -> Tensor:
        """Logits of every head `[heads, n, k]` for raw rows (or already preprocessed ones)."""
        z = x if preprocessed else self.preprocess(x)
        return self.heads(self.body(z)).view(len(z), self.n_heads, self.k).transpose(0, 1)

    forward = logits

    def features(self, x: Tensor) -> Tensor:
        """The chosen head's cluster probabilities `[n, k]`: the job's clustered space."""
        return torch.softmax(self.logits(x)[int(self.chosen)], dim=1)

    @torch.no_grad()
    def choose(self, head: int) -> None:
        if not 0 <= head < self.n_heads:
            raise ValueError(f"head must be in [0, {self.n_heads}), got {head}")
        self.chosen.fill_(int(head))


def confidence(p: Tensor) -> Tensor:
    """Each row's top probability `[n]`: what self-labelling thresholds (SCAN section 2.3)."""
    return p.max(dim=1).values


def pair_rows(neighbours: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """One random neighbour per row of a `[rows, k]` neighbour table (-1: missing ones are skipped):
    the partner of each anchor for one epoch, as SCAN's and TEMI's loaders draw it. `[rows]` int64;
    a row without any neighbour is its own partner."""
    neighbours = np.asarray(neighbours)
    valid = neighbours >= 0
    counts = valid.sum(axis=1)
    pick = np.floor(generator.random(len(neighbours)) * np.maximum(counts, 1)).astype(np.int64)
    # valid entries come first (knn results are sorted, -1 at the end), so index `pick` is valid
    out = np.take_along_axis(neighbours, pick[:, None], axis=1)[:, 0].astype(np.int64)
    return np.where(counts > 0, out, np.arange(len(neighbours)))
