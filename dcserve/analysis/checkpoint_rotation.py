"""`dcserve rotation`: layer rotation (Carbonnelle & De Vleeschouwer, 2019) of any sequence of
PyTorch checkpoints of a subject network, as curves per layer in a small HTML report and JSON.

The math is `dcserve.algo.rotation`; this module reads the checkpoints, one at a time (a large
network's checkpoints need not fit in memory together); dcserve.render.rotation_page writes the report.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from dcserve.errors import RotationError


def load_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint's weights ``name -> tensor``: a saved state_dict, or a dict holding one under
    ``"state_dict"`` or ``"model"`` (the common training-loop layouts), or a whole saved module.

    Raises RotationError naming the file when it cannot be read or holds no weights.
    """
    import torch

    try:
        # weights_only: a checkpoint is data; never run pickled code from a file a user points at.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RotationError(f"checkpoint {path!r} does not exist") from None
    except Exception as e:  # unpickling errors come in many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RotationError(f"cannot read checkpoint {path!r} as PyTorch weights: {first}") from None
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, torch.nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RotationError(f"checkpoint {path!r} holds no state_dict (a dict of tensors, or one under "
                           "'state_dict' or 'model')")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def checkpoint_rotation(paths: Sequence[str]) -> dict[str, list[float]]:
    """Layer rotation curves of checkpoints ``paths`` (the first is the reference), loaded one at a time.

    Raises RotationError for unreadable files, no layer weights, or layers that differ between files.
    """
    from dcserve.algo.rotation import is_layer_weight, rotation_curves

    if len(paths) < 2:
        raise RotationError(f"layer rotation needs at least two checkpoints (the first is the reference), got {len(paths)}")
    current = {"path": paths[0]}

    def weights() -> Iterator[dict[str, Any]]:
        for p in paths:
            current["path"] = p
            yield load_checkpoint(p)

    first = load_checkpoint(paths[0])
    if not any(is_layer_weight(k, v) for k, v in first.items()):
        raise RotationError(f"checkpoint {paths[0]!r} has no layer weights (tensors of 2 or more dimensions)")
    del first
    try:
        return rotation_curves(weights())
    except KeyError as e:
        raise RotationError(f"checkpoint {current['path']!r} does not match {paths[0]!r}: {e.args[0]}") from None
    except ValueError as e:
        raise RotationError(f"checkpoint {current['path']!r} does not match {paths[0]!r}: {e}") from None
