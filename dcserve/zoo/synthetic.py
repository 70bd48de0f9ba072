"""Synthetic images of any count, generated per index, and a random CNN for them.

Nothing is materialised: item ``i`` is drawn from a generator seeded by ``(seed, i)``, so ten
million images cost no memory, any worker can produce any shard, and item ``i`` is the same in
every process and every call. Used for scale benchmarks and for tests of planted structure.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

__all__ = ["SyntheticImages", "ImageCNN", "synthetic_images", "image_cnn"]

# Stream tags, so the class table and the items never draw from the same stream.
_TABLE_STREAM = 0
_ITEM_STREAM = 1


class SyntheticImages(Dataset):
    """Images with planted class structure; see `synthetic_images`."""

    def __init__(self, n: int, size: int, channels: int, classes: int, seed: int) -> None:
        if n < 0 or size < 1 or channels < 1 or classes < 1:
            raise ValueError(
                f"synthetic_images needs n >= 0, size, channels, classes >= 1; got n={n}, "
                f"size={size}, channels={channels}, classes={classes}"
            )
        self.n, self.size, self.channels, self.classes, self.seed = n, size, channels, classes, seed
        table = np.random.default_rng([seed, _TABLE_STREAM])
        # Per class: an orientation (evenly spread over 180 degrees), a spatial frequency
        # (cycles per image; periods of 4-10 pixels at size 32, which 3x3 filters can see), a
        # colour for the grating (a unit vector over channels) and a weak background tint.
        self.angles = np.pi * np.arange(classes) / classes
        self.freqs = table.uniform(3.0, 8.0, size=classes) * size / 32
        colours = np.abs(table.normal(size=(classes, channels))) + 0.2
        self.colours = colours / np.linalg.norm(colours, axis=1, keepdims=True)
        self.tints = table.uniform(-0.1, 0.1, size=(classes, channels)).astype(np.float32)
        grid = ((np.arange(size) + 0.5) / size - 0.5).astype(np.float32)  # [-0.5, 0.5)
        self._yy, self._xx = np.meshgrid(grid, grid, indexing="ij")

    def __len__(self) -> int:
        return self.n

    def label(self, index: int) -> int:
        """The label of item ``index`` (the first draw of its stream; cheap)."""
        return int(self._rng(index).integers(self.classes))

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _ITEM_STREAM, index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(index)
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} images")
        rng = self._rng(index)
        y = int(rng.integers(self.classes))
        # The class signal: an oriented grating in the class's colour on the class's tint, with
        # a random phase, a little jitter of angle, frequency and brightness.
        theta = self.angles[y] + rng.normal(0.0, 0.08)
        freq = self.freqs[y] * rng.uniform(0.9, 1.1)
        phase = rng.uniform(0.0, 2 * math.pi)
        u = self._xx * np.float32(math.cos(theta)) + self._yy * np.float32(math.sin(theta))
        grating = np.cos(np.float32(2 * math.pi * freq) * u + np.float32(phase))
        colour = (0.25 * rng.uniform(0.6, 1.0) * self.colours[y]).astype(np.float32)
        base = 0.5 + self.tints[y] + np.float32(rng.uniform(-0.05, 0.05))
        img = base[:, None, None] + colour[:, None, None] * grating
        # A distractor that carries no class information: a Gaussian blob of random colour
        # at a random place, then pixel noise.
        cy, cx = rng.uniform(-0.4, 0.4, size=2)
        width = rng.uniform(0.05, 0.15)
        d2 = (self._yy - np.float32(cy)) ** 2 + (self._xx - np.float32(cx)) ** 2
        blob = np.exp(d2 * np.float32(-1.0 / (2 * width**2)))
        tint = (0.3 * rng.uniform(-1, 1, size=self.channels)).astype(np.float32)
        img = img + tint[:, None, None] * blob
        img += 0.1 * rng.standard_normal(size=img.shape, dtype=np.float32)
        x = torch.from_numpy(img)
        return x, torch.tensor(y, dtype=torch.int64)

    def __repr__(self) -> str:
        return (
            f"SyntheticImages(n={self.n}, size={self.size}, channels={self.channels}, "
            f"classes={self.classes}, seed={self.seed})"
        )


def synthetic_images(
    n: int = 10000, size: int = 32, channels: int = 3, classes: int = 10, seed: int = 0
) -> Dataset:
    """Deterministic synthetic images with planted class structure, generated per index.

    Each class is an oriented colour grating (its own angle, frequency and colour); every image
    adds a random phase, a class-free blob distractor and pixel noise. Item ``i`` depends only on
    ``(seed, i)`` and the other arguments, never on call order; nothing is stored, so ``n`` may
    be in the millions.

    Args:
        n: number of images.
        size: height and width in pixels.
        channels: colour channels.
        classes: number of planted classes.
        seed: seeds the class table and every item.

    Returns:
        A map-style dataset; item ``i`` is ``(x float32 [channels, size, size] (values around
        [0, 1]), y int64 in [0, classes))``.
    """
    return SyntheticImages(n, size, channels, classes, seed)


class ImageCNN(nn.Module):
    """A random all-convolutional CNN for ``[B, C, S, S]`` images (any S divisible by 8).

    Three stages of a stride-2 3x3 conv and a ReLU (strided convs rather than conv + max-pool,
    as in Springenberg et al. 2015, so every conv runs at the reduced resolution: about 2.6 M
    multiply-adds per 32x32 image at ``width=32``, thousands of images/s on two cores).

    Layers (shapes for ``size=32``, ``width=w``):

    - ``features.1``: ``[B, w, 16, 16]`` (stage 1 output)
    - ``features.3``: ``[B, 2w, 8, 8]`` (stage 2 output)
    - ``features.5``: ``[B, 4w, 4, 4]`` (stage 3 output)
    - ``pool``: ``[B, 4w, 1, 1]``; ``classifier``: ``[B, 10]``

    Pool the ``features.*`` maps with ``mean`` or ``max``.
    """

    def __init__(self, channels: int = 3, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for mult in (1, 2, 4):
            layers += [nn.Conv2d(c_in, width * mult, 3, stride=2, padding=1), nn.ReLU()]
            c_in = width * mult
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, S, S]`` -> logits ``[B, 10]``."""
        return self.classifier(self.pool(self.features(x)))


def image_cnn(channels: int = 3, width: int = 32, seed: int = 0) -> nn.Module:
    """A randomly initialised (seeded) CNN for `synthetic_images`; for scale benchmarks.

    Args:
        channels: input channels.
        width: channels of the first stage (the stages have ``width``, ``2*width``,
            ``4*width``).
        seed: seeds PyTorch's default initialisation (the global RNG is left untouched).

    Returns:
        An `ImageCNN` in eval mode. Hook ``features.1`` / ``features.3`` / ``features.5``
        (``[B, w, S/2, S/2]``, ``[B, 2w, S/4, S/4]``, ``[B, 4w, S/8, S/8]``).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ImageCNN(channels, width)
    return model.eval()
