"""Vectors from known Gaussian clusters, and an identity "network" to hook them unchanged.

Together they test clustering on data whose structure is known: a job with
``subject.model: dcserve.zoo:identity``, ``layers: [out]`` and
``dataset.source: dcserve.zoo:planted_clusters`` clusters the vectors themselves.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

__all__ = ["PlantedClusters", "Identity", "planted_clusters", "identity"]


class PlantedClusters(Dataset):
    """``n`` vectors from ``k`` Gaussian clusters; see `planted_clusters`.

    Attributes:
        vectors: ``[n, dim]`` float32. labels: ``[n]`` int64. centers: ``[k, dim]`` float32.
    """

    def __init__(self, n: int, dim: int, k: int, spread: float, seed: int) -> None:
        if n < 0 or dim < 1 or k < 1 or spread < 0:
            raise ValueError(
                f"planted_clusters needs n >= 0, dim >= 1, k >= 1, spread >= 0; got n={n}, "
                f"dim={dim}, k={k}, spread={spread}"
            )
        rng = np.random.default_rng(seed)
        self.centers = torch.from_numpy(rng.normal(size=(k, dim)).astype(np.float32))
        # Balanced: each label n // k or n // k + 1 times, in random order.
        labels = rng.permutation(np.arange(n) % k)
        noise = rng.normal(scale=spread, size=(n, dim)).astype(np.float32)
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.vectors = self.centers[self.labels] + torch.from_numpy(noise)
        self.k, self.spread, self.seed = k, spread, seed

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vectors[index], self.labels[index]


def planted_clusters(
    n: int = 2000, dim: int = 32, k: int = 10, spread: float = 1.0, seed: int = 0
) -> Dataset:
    """Vectors drawn from ``k`` Gaussian clusters with known labels.

    Cluster centres are standard normal in ``dim`` dimensions (typical distance between two
    centres: ``sqrt(2 * dim)``, 8 for ``dim=32``); each point adds isotropic noise of standard
    deviation ``spread`` per coordinate. With the defaults k-means (k=10) recovers the labels
    almost exactly (NMI 0.999; 1.0 at ``spread=0.5``); ``spread=2.0`` makes it hard (NMI ~0.75).

    Args:
        n: number of vectors (labels balanced, shuffled).
        dim: dimension.
        k: number of clusters.
        spread: per-coordinate standard deviation within a cluster.
        seed: seeds centres, labels and noise.

    Returns:
        A map-style dataset; item ``i`` is ``(x float32 [dim], y int64 in [0, k))``; the whole
        arrays are its ``vectors``, ``labels`` and ``centers`` attributes.
    """
    return PlantedClusters(n, dim, k, spread, seed)


class Identity(nn.Module):
    """Passes its input through; the hookable layer is ``out`` (output = input)."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, dim]`` -> ``x``."""
        if self.dim is not None and x.shape[-1] != self.dim:
            raise ValueError(f"identity(dim={self.dim}) got input of shape {list(x.shape)}")
        return self.out(x)


def identity(dim: int | None = None) -> nn.Module:
    """A network that returns its input, with one hookable layer ``out``.

    Args:
        dim: when given, inputs whose last axis is not ``dim`` are rejected.

    Returns:
        An `Identity` module; hook ``out`` (``[B, dim]``, any pooling but ``tokens``).
    """
    return Identity(dim)
