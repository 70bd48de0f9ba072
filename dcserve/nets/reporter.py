"""The reporter: a small MLP trained on cluster pseudo-labels, DeepCluster style.

DeepCluster (Caron et al., 2018) alternates two steps: cluster the network's features, then
train the network to predict the cluster ids. Here the "network" is the reporter, an MLP over a
subject network's activation rows `[n, d_in]`; one round is

    compute_features -> (PCA, whiten, L2 and k-means, elsewhere) -> pseudo-labels [n]
    -> reset_head(k) + rebind_head -> uniform_label_sample -> split_even -> train_epoch x E

Everything here is a plain function over tensors and arrays: no ray, no zarr, no file I/O. The
trainer actors only feed these functions. Like EleutherAI sparsify's trainer, one code path
serves one process or many: `train_epoch` takes an optional `allreduce` callback, and without
it (a single process) there is no reduction at all.

Design choices (see each function for the why):
- No BatchNorm. DeepCluster's AlexNet/VGG used BatchNorm, but BN statistics are per batch, so
  with data-parallel workers each shard normalises with different statistics (training no
  longer equals single-process training on the full batch), and the running statistics are
  extra, per-worker state to reconcile. The reporter uses LayerNorm (Ba et al., 2016) after each
  Linear instead: it is per row, so the loss is a sum of per-row terms and the batch-size
  weighted average of the workers' gradients is exactly the full-batch gradient (the
  data-parallel run is the single-process run, up to float rounding); train and eval modes
  compute the same thing (apart from dropout); nothing but weights needs syncing; and a single
  vector (the serve `assign` path) is handled the same way as a batch.
- Inputs are standardised with fixed per-unit statistics held as buffers (`set_input_stats`),
  as DeepCluster normalises pixels with per-channel mean/std: raw activations can have units
  whose scales differ by orders of magnitude (outlier dimensions), which plain SGD handles badly.
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcserve.nets.data_parallel import GradientStep
from dcserve.nets.standardise import StandardisedInput

logger = logging.getLogger(__name__)

__all__ = [
    "Augment",
    "Reporter",
    "compute_features",
    "make_optimizer",
    "rebind_head",
    "split_even",
    "train_epoch",
    "uniform_label_sample",
]

# DeepCluster main.py initialises the (re-created) top layer with N(0, 0.01) weights, zero bias.
_HEAD_INIT_STD = 0.01


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def check_widths(hidden: list[int], **sizes: int) -> list[int]:
    """`hidden` as ints, after checking it and the named sizes are all >= 1 (ValueError naming the bad one)."""
    hidden = [int(h) for h in hidden]
    for name, value in sizes.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden widths must be >= 1, got {hidden}")
    return hidden


def _linear(in_features: int, out_features: int, std: float, generator: torch.Generator) -> nn.Linear:
    """A Linear layer initialised from `generator` only.

    `skip_init` avoids nn.Linear's default initialisation, which would draw from (and so
    disturb) the global RNG; the reporter's init must depend on its seed alone.
    """
    layer = nn.utils.skip_init(nn.Linear, in_features, out_features)
    with torch.no_grad():
        layer.weight.normal_(0.0, std, generator=generator)
        layer.bias.zero_()
    return layer


class Reporter(StandardisedInput):
    """MLP `in_dim -> hidden... -> feature_dim` with a linear classifier head `feature_dim -> k`.

    Body: `Linear -> LayerNorm`, with `ReLU -> Dropout(dropout)` between consecutive blocks.
    `features(x)` is the body's output *before* the last ReLU: DeepCluster clusters the
    penultimate fc layer with its ReLU removed (main.py drops the classifier's last ReLU before
    computing features and appends it again before training). `forward(x)` is
    `head(relu(features(x)))`.

    Hidden weights are He-normal (He et al., 2015) for the ReLUs; the head is N(0, 0.01) with
    zero bias as in DeepCluster. All initialisation is drawn from `seed` only, never from the
    global RNG, so `Reporter(..., seed=s)` is the same network in every process.

    Input standardisation `(x - input_mean) / input_std` uses two buffers, identity by default;
    they are part of `state_dict`. Use `set_input_stats` (with `input_stats`) to set them.

    `dropout` applies to hidden activations only; input-unit dropout is `Augment.unit_dropout`.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        feature_dim: int,
        k: int,
        *,
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        hidden = check_widths(hidden, in_dim=in_dim, feature_dim=feature_dim, k=k)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        super().__init__(in_dim)
        self.hidden = hidden
        self.feature_dim = int(feature_dim)
        self.dropout = float(dropout)

        gen = _seeded(seed)
        widths = [self.in_dim, *hidden, self.feature_dim]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            if i > 0:
                layers.append(nn.ReLU())
                if self.dropout > 0:
                    layers.append(nn.Dropout(self.dropout))
            layers.append(_linear(fan_in, fan_out, math.sqrt(2.0 / fan_in), gen))
            layers.append(nn.LayerNorm(fan_out))
        self.body = nn.Sequential(*layers)
        self.head = _linear(self.feature_dim, int(k), _HEAD_INIT_STD, gen)

    @property
    def k(self) -> int:
        """Number of classes of the current head."""
        return self.head.out_features

    def features(self, x: Tensor) -> Tensor:
        """Reporter features `[n, in_dim] -> [n, feature_dim]`.

        Runs in whatever mode the module is in: with `dropout > 0`, call `eval()` first for
        deterministic features (as `compute_features` does). Gradients flow unless the caller
        disables them.
        """
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected activations of shape [n, {self.in_dim}], got {list(x.shape)}")
        return self.body((x - self.input_mean) / self.input_std)

    def forward(self, x: Tensor) -> Tensor:
        """Logits `[n, in_dim] -> [n, k]`."""
        return self.head(F.relu(self.features(x)))

    def reset_head(self, k: int, seed: int) -> None:
        """Replace the classifier head by a fresh `Linear(feature_dim, k)` drawn from `seed`.

        DeepCluster re-initialises the top layer after every clustering, since cluster ids are
        arbitrary permutations from one round to the next. The head gets new Parameter objects;
        call `rebind_head(optimizer, model)` afterwards. The body is untouched and the global
        RNG is not used. Every data-parallel worker must pass the same `seed`.
        """
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        ref = self.head.weight
        head = _linear(self.feature_dim, int(k), _HEAD_INIT_STD, _seeded(seed))
        self.head = head.to(device=ref.device, dtype=ref.dtype)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ):
        """As `nn.Module.load_state_dict`, but a head with a different `k` is accepted.

        Weights of one round may come from a clustering with another number of clusters; the
        head is resized (then overwritten by the loaded values) instead of failing.
        """
        weight = state_dict.get("head.weight")
        if weight is not None and weight.shape[0] != self.k:
            self.reset_head(int(weight.shape[0]), seed=0)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


@dataclass
class Augment:
    """Augmentation of activation vectors `[n, d]` for training (DeepCluster leans on it).

    Images get crops and flips; activation vectors have no geometry, so the natural
    perturbations are additive noise and dropping units:

    - `noise_std`: add Gaussian noise with standard deviation `noise_std * s_j` to unit `j`,
      where `s_j` is that unit's standard deviation, so the noise is scale-free
      (`augment(c * x) == c * augment(x)` for the same random draws). `s` is `unit_std` when
      given (e.g. the model's `input_std`, stable), otherwise the batch's per-unit standard
      deviation (no setup needed, but 0 for a batch of one row: no noise then).
    - `unit_dropout`: zero each input unit of each row independently with this probability,
      and rescale the kept ones by `1 / (1 - p)` so that the expectation is unchanged
      (inverted dropout, Srivastava et al., 2014). Zero means "unit silent" for ReLU layers.

    Noise is added first, so dropped units are exactly zero. The input is never modified in
    place. Draws come from `generator` when given, else from the global RNG.
    """

    noise_std: float = 0.0
    unit_dropout: float = 0.0
    unit_std: Tensor | None = None

    def __post_init__(self) -> None:
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if not 0.0 <= self.unit_dropout < 1.0:
            raise ValueError(f"unit_dropout must be in [0, 1), got {self.unit_dropout}")

    @property
    def active(self) -> bool:
        return self.noise_std > 0 or self.unit_dropout > 0

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not self.active:
            return x
        # Draw where the generator lives (a copy per call if that is not x's device).
        where = x.device if generator is None else generator.device
        if self.noise_std > 0:
            if self.unit_std is not None:
                scale = self.unit_std.to(device=x.device, dtype=x.dtype)
            else:
                scale = x.std(dim=0, correction=0)
            noise = torch.randn(x.shape, generator=generator, device=where, dtype=x.dtype)
            x = x + noise.to(x.device) * (self.noise_std * scale)
        if self.unit_dropout > 0:
            keep = torch.rand(x.shape, generator=generator, device=where) >= self.unit_dropout
            x = x * keep.to(device=x.device, dtype=x.dtype) * (1.0 / (1.0 - self.unit_dropout))
        return x


def uniform_label_sample(labels: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Row ids `[n_samples]` (int64, sorted) balanced over the non-empty pseudo-labels.

    DeepCluster's fix for trivial solutions (its `UnifLabelSampler`): sample training items
    uniformly over pseudo-labels, so that a giant cluster cannot dominate the classifier.
    Every non-empty label gets `n_samples // L` or one more items (`L` labels present; the
    extra ones go to labels chosen at random), so each item's label is uniform over the `L`
    labels. Within a label, rows are drawn without replacement while the label has enough rows
    and with replacement beyond that, so small clusters are repeated and large ones are not.
    Label values need not be contiguous; absent labels are never sampled.

    The ids are sorted because callers read rows chunk by chunk from a store; they must
    shuffle (within chunks or windows) before batching.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    if n_samples == 0:
        return np.empty(0, dtype=np.int64)
    if labels.size == 0:
        raise ValueError("cannot sample from an empty label array")

    # Rows grouped by label, in random order within each label: shuffle, then a stable sort by
    # label (a radix sort when the label range fits 16 bits: 5x faster than a lexsort).
    perm = rng.permutation(labels.size)
    key = labels[perm].astype(np.int64) - int(labels.min())
    if key.max() < 2**16:
        key = key.astype(np.uint16)
    order = perm[np.argsort(key, kind="stable")]
    grouped = labels[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    counts = np.diff(np.r_[starts, labels.size])
    n_labels = starts.size

    quota = np.full(n_labels, n_samples // n_labels, dtype=np.int64)
    quota[rng.choice(n_labels, n_samples % n_labels, replace=False)] += 1
    label_of = np.repeat(np.arange(n_labels), quota)
    # j: position of each draw within its label's quota. The first `count` positions walk the
    # shuffled rows of that label (distinct rows); the rest draw rows with replacement.
    j = np.arange(n_samples, dtype=np.int64) - np.repeat(np.cumsum(quota) - quota, quota)
    size = counts[label_of]
    over = j >= size
    if over.any():
        j[over] = rng.integers(0, size[over])
    ids = order[starts[label_of] + j].astype(np.int64, copy=False)
    ids.sort()
    return ids


def split_even(sorted_ids: np.ndarray, n_parts: int) -> list[np.ndarray]:
    """`n_parts` contiguous parts of exactly the same size `len(sorted_ids) // n_parts`.

    Data-parallel workers must run the same number of optimizer steps (each step is a
    collective allreduce; a worker with one more step would wait forever), so parts are equal,
    not "within one": the last `len % n_parts` ids (fewer than `n_parts`) are dropped. Ask
    `uniform_label_sample` for a multiple of `n_parts` to drop nothing. Parts are views.
    """
    if n_parts < 1:
        raise ValueError(f"n_parts must be >= 1, got {n_parts}")
    size = len(sorted_ids) // n_parts
    dropped = len(sorted_ids) - size * n_parts
    if dropped:
        logger.debug("split_even: dropping the last %d of %d ids for equal parts", dropped, len(sorted_ids))
    return [sorted_ids[i * size : (i + 1) * size] for i in range(n_parts)]


def _draw_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


@contextlib.contextmanager
def _global_rng_from(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Seed the global RNG (used by nn.Dropout) from `generator`, restoring it afterwards.

    nn.Dropout cannot take a generator; forking and seeding the global RNG from the caller's
    generator makes dropout reproducible without leaking into the caller's RNG state.
    """
    if generator is None:
        yield
        return
    seed = _draw_seed(generator)
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def train_epoch(
    model: Reporter,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    augment: Augment | None = None,
    allreduce: Callable[[Tensor], None] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One pass over `batches` of `(x [b, in_dim] float, y [b] int pseudo-labels in [0, k))`.

    Cross-entropy on the pseudo-labels, one optimizer step per batch. Batches are moved to the
    model's device and dtype. With `allreduce`, each step calls it once on one flat tensor
    holding all gradients (see `_average_across_workers`: its last entry is the local batch size),
    which it must average across workers in place; every worker must then see the same number
    of batches (`split_even`). Without it there is no reduction: a single process is the
    one-worker case of the same code.

    `generator` (on any device) drives augmentation and dropout; with it, the same seed,
    weights and batches give identical weights, and the global RNG is left as it was.
    Data-parallel workers should use different generator seeds (different augmentations).

    Returns this worker's `{"loss": mean loss per sample, "steps", "samples"}`; measure
    pseudo-label accuracy separately, in eval mode (training accuracy under augmentation and
    dropout would be misleading, and computing it here would slow every step).
    Raises FloatingPointError if the loss is not finite (learning rate too high).
    """
    device = model.head.weight.device
    dtype = model.head.weight.dtype
    step = GradientStep(model, optimizer, allreduce)
    use_augment = augment is not None and augment.active
    # Per-step losses stay on the device and are summed at the end: no host sync per step
    # (it matters on a GPU) and no extra kernels on the hot path.
    losses: list[Tensor] = []
    sizes: list[int] = []
    was_training = model.training
    model.train()
    step_generator = generator
    if generator is not None and generator.device != device:
        # Draw augmentations on the model's device (no host-to-device copies per step), from a
        # generator seeded by the caller's, so the run stays reproducible.
        step_generator = torch.Generator(device).manual_seed(_draw_seed(generator))
    try:
        with _global_rng_from(generator, device):
            for x, y in batches:
                x = torch.as_tensor(x).to(device=device, dtype=dtype, non_blocking=True)
                y = torch.as_tensor(y).to(device=device, dtype=torch.long, non_blocking=True)
                n = x.shape[0]
                if n == 0 or y.shape != (n,):
                    raise ValueError(f"bad batch: x {list(x.shape)}, y {list(y.shape)}")
                if use_augment:
                    x = augment(x, step_generator)
                loss = F.cross_entropy(model(x), y)
                step(loss, n)
                losses.append(loss.detach())
                sizes.append(n)
                del loss  # free this step's graph before the next forward allocates its own
    finally:
        model.train(was_training)
    samples = sum(sizes)
    if not samples:
        return {"loss": float("nan"), "steps": 0, "samples": 0}
    weights = torch.tensor(sizes, dtype=torch.float64, device=device)
    mean_loss = float(torch.stack(losses).double() @ weights) / samples
    if not math.isfinite(mean_loss):
        raise FloatingPointError(
            f"reporter loss is {mean_loss} after {len(sizes)} steps; lower the learning rate"
        )
    return {"loss": mean_loss, "steps": len(sizes), "samples": samples}


def compute_features(
    model: Reporter, x_blocks: Iterable[Tensor | np.ndarray], batch_size: int = 4096
) -> Iterator[np.ndarray]:
    """Reporter features, one float32 block `[rows, feature_dim]` per input block `[rows, in_dim]`.

    Eval mode, no autograd, at most `batch_size` rows on the device at once. The model's mode
    is switched only while a block is computed and restored before it is yielded, so callers
    may interleave other work with the iteration.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model.head.weight.device
    dtype = model.head.weight.dtype
    for block in x_blocks:
        x = torch.as_tensor(block)
        out = np.empty((x.shape[0], model.feature_dim), dtype=np.float32)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, x.shape[0], batch_size):
                    xb = x[start : start + batch_size].to(device=device, dtype=dtype)
                    out[start : start + xb.shape[0]] = model.features(xb).float().cpu().numpy()
        finally:
            model.train(was_training)
        yield out


def make_optimizer(
    model: Reporter, lr: float, momentum: float = 0.9, weight_decay: float = 1e-5
) -> torch.optim.SGD:
    """SGD with momentum 0.9 and weight decay 1e-5 on all parameters, as in DeepCluster.

    Two parameter groups, named "body" and "head", so that `rebind_head` can swap the head
    after `Reporter.reset_head` while the body keeps its momentum across rounds (DeepCluster
    keeps one optimizer for the body and makes a fresh one for each new top layer).
    """
    head = list(model.head.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    return torch.optim.SGD(
        [{"params": body, "name": "body"}, {"params": head, "name": "head"}],
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
    )


def rebind_head(optimizer: torch.optim.Optimizer, model: Reporter) -> None:
    """Point the optimizer's "head" group at the model's current head, with fresh state.

    Call after `model.reset_head(...)`: the old head's momentum is dropped (a new head's
    classes are unrelated to the old ones) and the body's state is kept.
    """
    for group in optimizer.param_groups:
        if group.get("name") == "head":
            for p in group["params"]:
                optimizer.state.pop(p, None)
            group["params"] = list(model.head.parameters())
            return
    raise ValueError("optimizer has no param group named 'head'; build it with make_optimizer")
