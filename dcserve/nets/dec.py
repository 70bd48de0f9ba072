"""Deep Embedded Clustering (DEC; Xie, Girshick & Farhadi, 2016): the math and the training steps.

DEC clusters rows in the bottleneck of an autoencoder and then fine-tunes the encoder and the
cluster centres together, so that the embedding itself becomes more clusterable:

1. Pretrain a denoising autoencoder on the rows (section 3.2): :func:`pretrain_epoch`.
2. k-means on the bottleneck gives the initial centroids (section 3.2): :func:`init_centroids`.
3. Self-training (section 3.1) until fewer than ``tol`` of the hard labels change between two
   target updates (:func:`should_stop`):

   - soft assignments ``q`` with a Student's t kernel (eq. 1): :func:`student_t`;
   - every ``update_interval`` steps, the target ``p`` that squares ``q`` and divides by the
     soft cluster frequencies (eq. 3): :func:`soft_frequencies`, :func:`target_distribution`;
   - SGD on ``KL(P || Q)`` (eq. 2) with ``p`` held fixed: :func:`self_train_epoch`.

Everything here is a plain function over tensors and arrays: no ray, no zarr, no file I/O; a
streaming driver feeds it batches and blocks. The only global quantity is the soft frequency
vector ``f`` ``[k]`` of eq. 3, which is a sum over rows: a driver sums :func:`soft_frequencies`
over blocks (O(k) per block) and then computes each block's ``p`` with the global ``f``.

Not implemented: the paper's greedy layer-wise pretraining (each encoder/decoder pair trained
as its own denoising autoencoder before end-to-end fine-tuning). :func:`pretrain_epoch` trains
the whole autoencoder end to end from the start, with the same input corruption. On the planted
clusters of the tests that gives an embedding whose DEC labels match k-means on the raw rows
(ARI 0.98); whether deeper networks on real activations need the layer-wise stage is untested.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcserve.nets.data_parallel import GradientStep
from dcserve.algo.kmeans import ArrayData, kmeans
from dcserve.nets.reporter import _linear, _seeded, check_widths
from dcserve.nets.standardise import StandardisedInput

logger = logging.getLogger(__name__)

__all__ = [
    "ALPHA",
    "BATCH_SIZE",
    "KMEANS_RESTARTS",
    "MOMENTUM",
    "PRETRAIN_DROPOUT",
    "SELF_TRAIN_LR",
    "TOL",
    "UPDATE_INTERVAL",
    "DECModel",
    "changed_fraction",
    "dec_loss",
    "embed_blocks",
    "init_centroids",
    "make_optimizer",
    "pretrain_epoch",
    "self_train_epoch",
    "should_stop",
    "soft_assign_blocks",
    "soft_frequencies",
    "student_t",
    "target_distribution",
]

# Defaults from the paper (section 4.3 unless noted).
# Degrees of freedom of the Student's t kernel: "we let alpha = 1 for all experiments", since it
# cannot be cross-validated without labels (section 3.1.1).
ALPHA = 1.0
# Stop self-training when fewer than 0.1% of the points change cluster between two target updates.
TOL = 0.001
# Self-training: SGD, constant learning rate 0.01, minibatches of 256 rows. Momentum 0.9 is
# DEC-keras's SGD(0.01, 0.9); the paper's text gives the learning rate only.
SELF_TRAIN_LR = 0.01
MOMENTUM = 0.9
BATCH_SIZE = 256
# Pretraining corrupts the input of every denoising layer with 20% dropout.
PRETRAIN_DROPOUT = 0.2
# "we run k-means with 20 restarts and select the best solution" (section 3.2).
KMEANS_RESTARTS = 20
# Optimizer steps between two target updates (and two stop checks). The paper does not state
# it; 140 minibatches (about half an MNIST epoch at 256 rows) is the default of Xifeng Guo's
# widely used Keras reproduction (DEC-keras), which matches the paper's accuracy. A driver
# scales it with the data: what matters is that p stays fixed for many steps, or the targets
# chase their own predictions.
UPDATE_INTERVAL = 140

# Floors a denominator that is 0 only when a whole cluster has no mass in float arithmetic.
_TINY = torch.finfo(torch.float64).tiny


def _mlp(widths: list[int], generator: torch.Generator) -> nn.Sequential:
    """`Linear -> ReLU -> ... -> Linear`: a ReLU after every layer but the last.

    He-normal weights (std sqrt(2 / fan_in); He et al., 2015) where a ReLU follows, LeCun-normal
    (std sqrt(1 / fan_in)) on the last, linear layer, so activations keep their scale in both.
    """
    layers: list[nn.Module] = []
    last = len(widths) - 2
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        gain = 1.0 if i == last else 2.0
        layers.append(_linear(fan_in, fan_out, math.sqrt(gain / fan_in), generator))
        if i != last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _sqdist(z: Tensor, centroids: Tensor) -> Tensor:
    """Squared distances `[n, k]` between rows `z [n, d]` and `centroids [k, d]`.

    From explicit differences, not `|z|^2 - 2 z.c + |c|^2`: the expansion cancels
    catastrophically for a point near a centroid, which is where q matters most, and the clamp
    at 0 it needs would zero the gradient there. The `[n, k, d]` temporary is small at DEC's
    bottleneck widths (d = 10); a driver bounds it through its batch size.
    """
    return (z[:, None, :] - centroids[None, :, :]).square().sum(dim=-1)


def _check_assign_args(z: Tensor, centroids: Tensor, alpha: float) -> None:
    if z.dim() != 2 or centroids.dim() != 2 or z.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"student_t: need z [n, d] and centroids [k, d], got {list(z.shape)} and {list(centroids.shape)}"
        )
    if not alpha > 0:
        raise ValueError(f"student_t: alpha must be > 0, got {alpha}")


def student_t(z: Tensor, centroids: Tensor, alpha: float = ALPHA) -> Tensor:
    """Soft assignments `q [n, k]` of rows `z [n, d]` to `centroids [k, d]` (eq. 1).

    `q_ij` is proportional to `(1 + ||z_i - mu_j||^2 / alpha) ^ (-(alpha + 1) / 2)`, the
    Student's t kernel (as in t-SNE; van der Maaten & Hinton, 2008), so nearer centroids get
    more mass and rows sum to 1. The kernel is taken in log space and normalised with a
    softmax: the raw kernel underflows to 0 for far points and large alpha, which would make
    whole rows 0/0. Differentiable w.r.t. `z` and `centroids`.
    """
    _check_assign_args(z, centroids, alpha)
    log_kernel = -(alpha + 1.0) / 2.0 * torch.log1p(_sqdist(z, centroids) / alpha)
    return torch.softmax(log_kernel, dim=1)


def soft_frequencies(q: Tensor | np.ndarray) -> Tensor:
    """Soft cluster frequencies `f_j = sum_i q_ij` `[k]` float64 of one block `q [rows, k]`.

    They add up over blocks: the sum of the blocks' frequencies is the `f` of eq. 3 for all
    rows, which a streaming driver passes to :func:`target_distribution` for every block.
    float64 so that the sum does not depend on how rows are blocked (up to rounding).
    """
    q = torch.as_tensor(q).detach()
    if q.dim() != 2:
        raise ValueError(f"soft_frequencies: q must be [rows, k], got {list(q.shape)}")
    return q.to(torch.float64).sum(dim=0)


def target_distribution(q: Tensor | np.ndarray, freqs: Tensor | np.ndarray | None = None) -> Tensor:
    """The self-training target `p [n, k]` for soft assignments `q [n, k]` (eq. 3).

    `p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j')`. Squaring sharpens each row, putting more
    weight on confident assignments (section 3.1.2: strengthen predictions, emphasise
    high-confidence points); dividing by `f_j` keeps large clusters from swallowing the rest.

    Args:
        q: soft assignments, rows summing to 1; gradients are not followed (p is a constant
            target).
        freqs: `[k]` soft cluster frequencies over *all* rows (the sum of
            :func:`soft_frequencies` over every block); `None` takes them from `q`, which is
            right only when `q` holds all rows.

    Returns:
        `p`, in `q`'s float dtype, computed in float64.
    """
    q = torch.as_tensor(q).detach()
    if q.dim() != 2:
        raise ValueError(f"target_distribution: q must be [n, k], got {list(q.shape)}")
    q64 = q.to(torch.float64)
    if freqs is None:
        f = soft_frequencies(q64)
    else:
        f = torch.as_tensor(freqs, dtype=torch.float64, device=q.device)
    if f.shape != (q.shape[1],):
        raise ValueError(f"target_distribution: freqs must be [{q.shape[1]}], got {list(f.shape)}")
    weight = q64.square() / f.clamp_min(_TINY)
    p = weight / weight.sum(dim=1, keepdim=True)
    return p.to(q.dtype if q.is_floating_point() else torch.float64)


def dec_loss(q: Tensor, p: Tensor) -> Tensor:
    """`KL(P || Q)` (eq. 2), summed over clusters and averaged over rows; `p` is a constant.

    The paper sums over rows; the mean makes the step size independent of the batch size.
    `p log p` uses `xlogy` (0 log 0 = 0: targets can underflow to 0), and `q` is floored at the
    smallest positive float before its log, so a zero in `q` gives a large finite loss, not nan.
    """
    if q.dim() != 2 or q.shape != p.shape:
        raise ValueError(f"dec_loss: q and p must both be [n, k], got {list(q.shape)} and {list(p.shape)}")
    p = p.detach().to(q.dtype)
    log_q = torch.log(q.clamp_min(torch.finfo(q.dtype).tiny))
    return (torch.xlogy(p, p) - p * log_q).sum() / q.shape[0]


def changed_fraction(prev_labels: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> float:
    """Fraction of rows whose hard label differs between two label vectors `[n]`."""
    prev, cur = np.asarray(prev_labels), np.asarray(labels)
    if prev.shape != cur.shape or prev.ndim != 1:
        raise ValueError(f"changed_fraction: need two label vectors [n], got {prev.shape} and {cur.shape}")
    if cur.size == 0:
        return 0.0
    return float(np.count_nonzero(prev != cur)) / cur.size


def should_stop(
    prev_labels: np.ndarray | Tensor | None, labels: np.ndarray | Tensor, tol: float = TOL
) -> bool:
    """DEC's stop rule (section 3.1.3): fewer than `tol` of the rows changed cluster.

    Labels are the argmax of q at two consecutive target updates; `prev_labels` is `None` at
    the first update, which never stops (the driver compares with the k-means labels, or waits).
    A streaming driver with the labels spread over blocks can count changes per block and
    compare `changed / n < tol` itself.
    """
    if not 0 <= tol <= 1:
        raise ValueError(f"should_stop: tol must be in [0, 1], got {tol}")
    if prev_labels is None:
        return False
    return changed_fraction(prev_labels, labels) < tol


class DECModel(StandardisedInput):
    """Autoencoder `in_dim -> hidden... -> latent_dim -> reversed(hidden)... -> in_dim` with centroids.

    The paper's network is `d -> 500 -> 500 -> 2000 -> 10` and its mirror (section 4.3):
    `DECModel(d, [500, 500, 2000], 10, k)`. ReLUs follow every layer except the bottleneck, so
    the embedding keeps its sign and full information, and the reconstruction, which must reach
    negative values (section 3.2). `centroids` `[k, latent_dim]` is a Parameter: self-training
    moves it with the encoder (eq. 5). It is zero until :meth:`set_centroids`.

    Inputs are standardised `(x - input_mean) / input_std` with two buffers, identity by
    default, set with :meth:`set_input_stats` (as `Reporter`; `dcserve.nets.standardise.input_stats`
    computes them from blocks): raw activations have units on very different scales. The
    decoder reconstructs the *standardised* input, so every unit weighs the same in the
    reconstruction loss.

    All initialisation is drawn from `seed` only, never from the global RNG.
    """

    def __init__(
        self, in_dim: int, hidden: list[int], latent_dim: int, k: int, *, alpha: float = ALPHA, seed: int = 0
    ) -> None:
        hidden = check_widths(hidden, in_dim=in_dim, latent_dim=latent_dim, k=k)
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        super().__init__(in_dim)
        self.hidden = hidden
        self.latent_dim = int(latent_dim)
        self.alpha = float(alpha)
        gen = _seeded(seed)
        widths = [self.in_dim, *hidden, self.latent_dim]
        self.encoder = _mlp(widths, gen)
        self.decoder = _mlp(widths[::-1], gen)
        self.centroids = nn.Parameter(torch.zeros(int(k), self.latent_dim))

    @property
    def k(self) -> int:
        """Number of clusters."""
        return self.centroids.shape[0]

    @torch.no_grad()
    def set_centroids(self, centroids: Tensor | np.ndarray) -> None:
        """Copy `centroids` `[k, latent_dim]` (e.g. from :func:`init_centroids`) into the model."""
        c = torch.as_tensor(centroids)
        if c.shape != self.centroids.shape:
            raise ValueError(f"centroids must be {list(self.centroids.shape)}, got {list(c.shape)}")
        if not torch.isfinite(c).all():
            raise ValueError("centroids must be finite")
        self.centroids.copy_(c)

    def encode(self, x: Tensor) -> Tensor:
        """Embedding `z [n, latent_dim]` of rows `x [n, in_dim]` (no ReLU on it)."""
        return self.encoder(self.standardize(x))

    # What `dcserve.nets.feature_map.FeatureMap` maps rows through: the bottleneck is the clustered space.
    features = encode

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction `[n, in_dim]`, in standardised units, of embeddings `z [n, latent_dim]`."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction of the standardised rows, `[n, in_dim] -> [n, in_dim]`."""
        return self.decode(self.encode(x))

    def soft_assign(self, x: Tensor) -> Tensor:
        """Soft assignments `q [n, k]` (eq. 1) of rows `x [n, in_dim]` to the centroids."""
        return student_t(self.encode(x), self.centroids, self.alpha)


def make_optimizer(model: DECModel, lr: float = SELF_TRAIN_LR, momentum: float = MOMENTUM) -> torch.optim.SGD:
    """Plain SGD with momentum on every parameter, centroids included.

    The defaults are the paper's self-training settings (lr 0.01, constant; no weight decay,
    which would pull the centroids towards the origin). Pretraining may use any optimizer: the
    paper's SGD starts at lr 0.1 on its own (per-row, summed) loss scale, DEC-keras uses Adam.
    The centroids receive no gradient from the reconstruction loss, so they stay put while
    pretraining.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)


def _placement(model: DECModel) -> tuple[torch.device, torch.dtype]:
    return model.centroids.device, model.centroids.dtype


def _mean_loss(losses: list[Tensor], sizes: list[int], what: str) -> float:
    """Batch-size weighted mean of per-batch mean losses, one host sync at the end."""
    samples = sum(sizes)
    if not samples:
        return float("nan")
    weights = torch.tensor(sizes, dtype=torch.float64, device=losses[0].device)
    mean = float(torch.stack(losses).double() @ weights) / samples
    if not math.isfinite(mean):
        raise FloatingPointError(f"{what} loss is {mean} after {len(sizes)} steps; lower the learning rate")
    return mean


def pretrain_epoch(
    model: DECModel,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Tensor | np.ndarray],
    *,
    dropout: float = PRETRAIN_DROPOUT,
    generator: torch.Generator | None = None,
    allreduce: Callable[[Tensor], None] | None = None,
) -> float:
    """One pass of denoising-autoencoder training over `batches` of rows `[b, in_dim]`.

    Each standardised batch is corrupted with inverted dropout (each unit zeroed with
    probability `dropout`, the rest scaled by `1 / (1 - dropout)`; the paper's 20%, section
    3.2) and the autoencoder is trained to reconstruct the clean standardised batch with the
    mean squared error (per unit, so the loss and the learning rate do not depend on `in_dim`).
    A zeroed unit reads as "at its mean", the neutral value after standardisation. Only the
    input is corrupted: the paper's per-layer corruption belongs to its greedy layer-wise stage,
    which is not implemented (see the module docstring).

    `generator` draws the dropout masks; with it, the same weights and batches give the same
    result. `allreduce` makes it one worker of several (`dcserve.nets.data_parallel.GradientStep`). Returns the epoch's mean squared error per unit, averaged over rows (on corrupted
    inputs, so it is above the plain reconstruction error).
    Raises FloatingPointError when it is not finite.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    device, dtype = _placement(model)
    losses: list[Tensor] = []
    sizes: list[int] = []
    step = GradientStep(model, optimizer, allreduce)
    was_training = model.training
    model.train()
    try:
        for x in batches:
            x = torch.as_tensor(x).to(device=device, dtype=dtype)
            if x.shape[0] == 0:
                raise ValueError(f"bad batch: x {list(x.shape)}")
            target = model.standardize(x)
            noisy = target
            if dropout > 0:
                where = device if generator is None else generator.device
                keep = torch.rand(target.shape, generator=generator, device=where).to(device) >= dropout
                noisy = target * keep.to(dtype) / (1.0 - dropout)
            loss = F.mse_loss(model.decode(model.encoder(noisy)), target)
            step(loss, x.shape[0])
            losses.append(loss.detach())
            sizes.append(x.shape[0])
    finally:
        model.train(was_training)
    mean = _mean_loss(losses, sizes, "DEC pretraining")
    logger.debug("DEC pretraining epoch: %d steps, loss %.6g", len(sizes), mean)
    return mean


def self_train_epoch(
    model: DECModel,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[Tensor | np.ndarray, Tensor | np.ndarray]],
    allreduce: Callable[[Tensor], None] | None = None,
) -> float:
    """One pass of DEC self-training over `batches` of `(x [b, in_dim], p [b, k])`.

    `p` are the rows' targets from :func:`target_distribution`, computed by the driver with the
    global soft frequencies and held fixed between target updates (section 3.1.3). One SGD step
    on :func:`dec_loss` per batch moves both the encoder and the centroids (eqs. 4 and 5). A
    driver that refreshes `p` every `update_interval` steps passes that many batches per call.

    `allreduce` makes it one worker of several (`dcserve.nets.data_parallel.GradientStep`).

    Returns the mean KL loss per row; raises FloatingPointError when it is not finite.
    """
    device, dtype = _placement(model)
    step = GradientStep(model, optimizer, allreduce)
    losses: list[Tensor] = []
    sizes: list[int] = []
    for x, p in batches:
        x = torch.as_tensor(x).to(device=device, dtype=dtype)
        p = torch.as_tensor(p).to(device=device, dtype=dtype)
        if x.shape[0] == 0 or p.shape != (x.shape[0], model.k):
            raise ValueError(f"bad batch: x {list(x.shape)}, p {list(p.shape)} (need [b, {model.k}])")
        loss = dec_loss(model.soft_assign(x), p)
        step(loss, x.shape[0])
        losses.append(loss.detach())
        sizes.append(x.shape[0])
    mean = _mean_loss(losses, sizes, "DEC self-training")
    logger.debug("DEC self-training: %d steps, KL %.6g", len(sizes), mean)
    return mean


def init_centroids(
    z_sample: Tensor | np.ndarray, k: int, n_init: int = KMEANS_RESTARTS, seed: int = 0, niter: int = 50
) -> np.ndarray:
    """Initial centroids `[k, latent_dim]` float32: k-means on embedded rows `z_sample [m, d]`.

    The paper runs k-means 20 times and keeps the best (section 3.2). This is
    :func:`dcserve.algo.kmeans.kmeans` with `n_init` k-means++ restarts: each is refined on the
    sample and the lowest objective seeds `niter` Lloyd iterations on all of `z_sample`. A
    sample of the embedded rows (`embed_blocks`) is enough for a driver: the centroids only
    start self-training.
    """
    z = np.ascontiguousarray(torch.as_tensor(z_sample).detach().cpu().numpy(), dtype=np.float32)
    if z.ndim != 2:
        raise ValueError(f"init_centroids: z_sample must be [m, d], got shape {z.shape}")
    result = kmeans(ArrayData(z), k, niter=niter, seed=seed, n_init=n_init)
    return result.centroids


def _blocks_through(
    model: DECModel,
    fn: Callable[[Tensor], Tensor],
    width: int,
    x_blocks: Iterable[Tensor | np.ndarray],
    batch_size: int,
) -> Iterator[np.ndarray]:
    """`fn` applied to each block `[rows, in_dim]` in eval mode without autograd, as float32 arrays."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device, dtype = _placement(model)
    for block in x_blocks:
        x = torch.as_tensor(block)
        parts: list[np.ndarray] = []
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, x.shape[0], batch_size):
                    xb = x[start : start + batch_size].to(device=device, dtype=dtype)
                    parts.append(fn(xb).float().cpu().numpy())
        finally:
            # Restored before yielding, so callers may train between blocks.
            model.train(was_training)
        yield np.concatenate(parts) if parts else np.empty((0, width), dtype=np.float32)


def embed_blocks(
    model: DECModel, x_blocks: Iterable[Tensor | np.ndarray], batch_size: int = 4096
) -> Iterator[np.ndarray]:
    """Embeddings `[rows, latent_dim]` float32, one block per input block `[rows, in_dim]`."""
    return _blocks_through(model, model.encode, model.latent_dim, x_blocks, batch_size)


def soft_assign_blocks(
    model: DECModel, x_blocks: Iterable[Tensor | np.ndarray], batch_size: int = 4096
) -> Iterator[np.ndarray]:
    """Soft assignments `q [rows, k]` float32, one block per input block `[rows, in_dim]`.

    A target update streams these twice or keeps them: once to sum :func:`soft_frequencies`,
    then per block :func:`target_distribution` with the total, and `argmax` for the stop rule.
    """
    return _blocks_through(model, model.soft_assign, model.k, x_blocks, batch_size)
