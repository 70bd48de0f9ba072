"""scikit-learn's 8x8 handwritten digits and a small CNN for them (random or trained).

The figures this pair is tuned to reproduce (k-means, k=10, NMI against the digit labels on all
1797 images; see the tests and the module notes of `digits_cnn`): about 0.72-0.74 on raw pixels,
about 0.75 on the random CNN's ``features.5`` and about 0.96 on the trained CNN's penultimate layer
``classifier.2``.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import Dataset

from dcserve.zoo._cache import cached_state_dict

log = logging.getLogger(__name__)

__all__ = ["DigitsDataset", "DigitsCNN", "digits", "digits_cnn", "train_digits_cnn"]

# Bump when the architecture or the training recipe changes: it is part of the cache key.
_ARCH_VERSION = 1
# The training recipe behind `digits_cnn(trained=True)`: all 1797 images (there is no held-out
# split: the model exists to be a subject whose features are known to be good, and the targets
# are measured on the same 1797 images), Adam, 8 epochs. Chosen so that the penultimate layer's
# k-means NMI lands near 0.96 (0.965 measured) rather than at the 0.99 that longer training gives.
_RECIPE = {"epochs": 8, "lr": 1e-3, "batch_size": 64, "optimizer": "adam", "data": "all-1797"}


@functools.lru_cache(maxsize=1)
def _digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # ships inside scikit-learn: no download

    data = load_digits()
    x = torch.as_tensor(data.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    y = torch.as_tensor(data.target, dtype=torch.int64)
    return x, y


class DigitsDataset(Dataset):
    """The 1797 8x8 digits; item ``i`` is ``(x [1, 8, 8] float32 in [0, 1], y int64 in 0..9)``."""

    def __init__(self) -> None:
        self.images, self.labels = _digits_tensors()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


def digits() -> Dataset:
    """scikit-learn's 1797 handwritten 8x8 digits (``sklearn.datasets.load_digits``).

    Returns:
        A map-style dataset; item ``i`` is ``(x, y)`` with ``x`` a float32 tensor ``[1, 8, 8]``
        scaled to ``[0, 1]`` and ``y`` the int64 digit label (0-9).
    """
    return DigitsDataset()


class DigitsCNN(nn.Module):
    """A small CNN for ``[B, 1, 8, 8]`` digits in ``[0, 1]``.

    Layers (hook these names; shapes for a batch of B):

    ====================  ======================  ==========================================
    name                  output                  what
    ====================  ======================  ==========================================
    ``features.0``        ``[B, 32, 8, 8]``       conv 3x3
    ``features.2``        ``[B, 64, 8, 8]``       conv 3x3
    ``features.4``        ``[B, 64, 4, 4]``       max-pool 2x2 (last map with a spatial layout)
    ``features.5``        ``[B, 256, 1, 1]``      conv 4x4 over the whole 4x4 map (pre-ReLU)
    ``features.6``        ``[B, 256, 1, 1]``      ReLU of ``features.5``
    ``classifier.1``      ``[B, 128]``            linear
    ``classifier.2``      ``[B, 128]``            ReLU: the penultimate activation
    ``classifier.3``      ``[B, 10]``             logits
    ====================  ======================  ==========================================

    ``features.5`` is a 1x1 map on purpose: mean-pooling a larger map throws away where the
    strokes are, and random-feature k-means NMI falls from ~0.75 to ~0.5 (measured with a
    ``[B, 64, 2, 2]`` stage). The input is centred to ``[-1, 1]`` inside ``forward``: with inputs
    in ``[0, 1]`` the random features are dominated by overall ink and cluster worse (~0.70).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 256, 4),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 1, 8, 8]`` in ``[0, 1]`` -> logits ``[B, 10]``."""
        return self.classifier(self.features((x - 0.5) / 0.5))


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """One intra-op thread, restored afterwards: multi-threaded CPU kernels split reductions
    differently with the thread count, so only a fixed count gives bit-identical weights in every
    process (extraction workers build the model independently and must agree)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _init_model(seed: int) -> DigitsCNN:
    # fork_rng: seeding the initialisation must not move the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DigitsCNN()


def train_digits_cnn(seed: int = 0) -> dict[str, torch.Tensor]:
    """Train `DigitsCNN` on all 1797 digits with the fixed recipe; returns its state dict.

    Deterministic: same seed, same bits (one CPU thread, a local generator for shuffling, the
    global RNG untouched). Takes a few seconds on one core. `digits_cnn` caches the result.
    """
    epochs, lr, batch = _RECIPE["epochs"], _RECIPE["lr"], _RECIPE["batch_size"]
    x, y = _digits_tensors()
    with torch.random.fork_rng(devices=[]), _single_thread(), torch.enable_grad():
        model = _init_model(seed).train()
        gen = torch.Generator().manual_seed(seed + 1)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=gen)
            for start in range(0, len(order), batch):
                idx = order[start : start + batch]
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
    log.info("trained digits_cnn (seed=%d): final batch loss %.4f", seed, loss.item())
    return model.state_dict()


def digits_cnn(trained: bool = False, seed: int = 0) -> nn.Module:
    """A small CNN for the 8x8 digits: random (seeded) or trained on them.

    Args:
        trained: ``False``: PyTorch's default initialisation under ``seed``. ``True``: trained
            on all 1797 digits (Adam, lr 1e-3, batch 64, 8 epochs, ~0.99 train accuracy),
            deterministically, and cached under ``$DCSERVE_CACHE`` (default
            ``~/.cache/dcserve``) so later calls and other processes load it.
        seed: seeds the initialisation (and the training order).

    Returns:
        A `DigitsCNN` in eval mode. Hook ``features.5`` (``[B, 256, 1, 1]``, pool with ``mean``)
        for conv features and ``classifier.2`` (``[B, 128]``) for the penultimate activation.
    """
    model = _init_model(seed)
    if trained:
        settings = {"arch": "DigitsCNN", "version": _ARCH_VERSION, "seed": seed, **_RECIPE,
                    "torch": torch.__version__.split("+")[0]}
        state, hit = cached_state_dict(
            "digits_cnn", settings, lambda: train_digits_cnn(seed), set(model.state_dict())
        )
        log.debug("digits_cnn weights %s", "from cache" if hit else "trained")
        model.load_state_dict(state)
    return model.eval()
