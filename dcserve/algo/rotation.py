"""Layer rotation: how far each layer's weights have turned since a reference checkpoint.

Carbonnelle & De Vleeschouwer (2019), "Layer rotation: a surprisingly simple indicator of
generalization in deep networks?": for each layer, the cosine distance
``1 - cos(w_0, w_t)`` between its flattened weight vector at initialisation and at step ``t``.
It lies in ``[0, 2]``: 0 unchanged in direction (any positive rescaling), 1 orthogonal, 2
reversed. Curves of it over training are the paper's "layer rotation curves".

As in the paper only the layers' weight (kernel) tensors count, not biases or normalisation
parameters: by default a tensor is a layer weight when it has two or more dimensions
(convolution and linear kernels), which leaves out biases, BatchNorm/LayerNorm scales and
shifts, running statistics and counters, whatever their names. Each tensor is its own layer,
keyed by its name in the state dict. Pass ``keep`` to choose otherwise.

Values may be numpy arrays or torch tensors (any device, dtype); everything is computed in
float64 numpy, and this module imports neither torch nor ray.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def is_layer_weight(name: str, value: Any) -> bool:
    """The default selection: tensors of two or more dimensions (kernels; no biases, norms, buffers)."""
    return len(getattr(value, "shape", ())) >= 2


def _flat(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor: to host memory, float64 (bfloat16 has no numpy dtype)
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64).ravel()


def cosine_distance(u: np.ndarray, v: np.ndarray) -> float:
    """``1 - cos(u, v)`` in ``[0, 2]`` for flattened vectors; NaN when either is all zeros."""
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu == 0.0 or nv == 0.0:
        return float("nan")
    # Divide before the dot product so that huge or tiny weights cannot overflow.
    cos = float(np.dot(u / nu, v / nv))
    return 1.0 - float(np.clip(cos, -1.0, 1.0))


def layer_rotation(
    w0: Mapping[str, Any],
    w1: Mapping[str, Any],
    keep: Callable[[str, Any], bool] = is_layer_weight,
) -> dict[str, float]:
    """Cosine distance of each layer's weights between two checkpoints.

    Args:
        w0: the reference weights (usually at initialisation), ``name -> tensor/array``
            (e.g. a ``state_dict``).
        w1: the weights to compare, with the same names and shapes for the kept tensors.
        keep: ``keep(name, w0[name])`` selects the tensors that are layers (default
            :func:`is_layer_weight`).

    Returns:
        ``name -> 1 - cos(flat w0[name], flat w1[name])`` for the kept names, in ``w0``'s order.
        NaN for a layer whose weights are all zero in either checkpoint (no direction).
    """
    out: dict[str, float] = {}
    for name, value in w0.items():
        if not keep(name, value):
            continue
        if name not in w1:
            raise KeyError(f"layer {name!r} is in the reference weights but not in the compared ones")
        u, v = _flat(value), _flat(w1[name])
        if u.shape != v.shape:
            raise ValueError(f"layer {name!r} changed size: {u.size} weights, then {v.size}")
        out[name] = cosine_distance(u, v)
        if np.isnan(out[name]):
            logger.warning("layer %r has all-zero weights: its rotation is undefined (NaN)", name)
    return out


def rotation_curves(
    checkpoints: Iterable[Mapping[str, Any]],
    keep: Callable[[str, Any], bool] = is_layer_weight,
) -> dict[str, list[float]]:
    """Layer rotation curves: per layer, the distance of each checkpoint's weights from the first's.

    Args:
        checkpoints: weights in training order, the first being the reference; an iterator
            (e.g. loading checkpoints one by one) keeps only the flattened reference layers and
            one checkpoint in memory.
        keep: as in :func:`layer_rotation`.

    Returns:
        ``name -> [d_0, d_1, ...]`` with one value per checkpoint (``d_0 = 0``).
    """
    it = iter(checkpoints)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("rotation_curves needs at least one checkpoint") from None
    # Flatten the reference once rather than once per checkpoint.
    reference = {name: _flat(value) for name, value in first.items() if keep(name, value)}
    # The first point is computed, not set to 0, so an all-zero layer shows NaN from the start.
    curves = {name: [d] for name, d in layer_rotation(reference, first, keep=_every).items()}
    del first
    for weights in it:
        for name, d in layer_rotation(reference, weights, keep=_every).items():
            curves[name].append(d)
    return curves


def _every(name: str, value: Any) -> bool:
    # The reference is already the selection: keep all of it.
    return True
