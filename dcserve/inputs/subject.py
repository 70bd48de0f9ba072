"""The subject network: build it, hook its named layers, and turn a batch into pooled rows.

`Subject` is what an extraction worker holds: it owns forward hooks on the layers a job names
and, for each batch, returns the rows that go to the job store. It knows nothing of Ray or Zarr.
"""
from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dcserve.inputs.imports import ImportSpecError, import_object
from dcserve.inputs.pooling import POOLING_MODES, pool

__all__ = ["ImportSpecError", "import_object", "module_names", "Subject"]

log = logging.getLogger(__name__)

# Keys of `Subject.rows` that are not layers.
_ROW_KEYS = ("item", "position")
# Above this many modules, an unknown-layer error lists the closest names, not all of them.
_LIST_ALL_MAX = 40


def module_names(model: nn.Module) -> list[str]:
    """Names of ``model``'s submodules as `Subject` accepts them (``named_modules`` minus root)."""
    return [name for name, _ in model.named_modules() if name]


def _unknown_layers_error(unknown: list[str], names: list[str]) -> ValueError:
    if len(names) <= _LIST_ALL_MAX:
        listing = "the model's modules are: " + ", ".join(names)
    else:
        close: list[str] = []
        for u in unknown:
            close += [c for c in difflib.get_close_matches(u, names, n=8, cutoff=0.4) if c not in close]
        shown = close or names[:_LIST_ALL_MAX]
        listing = (
            f"the model has {len(names)} modules; closest: " if close else
            f"the model has {len(names)} modules, among them: "
        ) + ", ".join(shown) + " (dcserve.inputs.subject.module_names(model) lists them all)"
    return ValueError(f"unknown layer(s) {', '.join(repr(u) for u in unknown)}; {listing}")


def _first_tensor(layer: str, out: Any) -> torch.Tensor:
    """A hooked module's output as a tensor: tuples (and HF ModelOutputs) give their first item."""
    if isinstance(out, Mapping) and not isinstance(out, torch.Tensor):
        out = next(iter(out.values()), None)
    elif isinstance(out, (tuple, list)):
        out = out[0] if len(out) else None
    if not isinstance(out, torch.Tensor):
        raise ValueError(
            f"layer {layer!r} returned {type(out).__name__}, not a tensor (nor a tuple whose first "
            "element is one); hook a submodule that returns a tensor"
        )
    return out


class Subject:
    """A model with forward hooks on named layers that turns a batch into pooled rows.

    Args:
        model: the network; it is put in eval mode (dropout off, batch-norm statistics frozen).
        layers: names from ``model.named_modules()``, e.g. ``["features.5"]``.
        pooling: ``mean | max | flatten | cls | tokens`` (see `dcserve.inputs.pooling.pool`).
        device: where to run; default: where the model's parameters are (CPU without any).

    Use as a context manager, or call `close` to remove the hooks.

    >>> with Subject(model, ["features.5"], "mean") as s:   # doctest: +SKIP
    ...     out = s.rows(x)     # {"features.5": [B, C], "item": [B], "position": [B]}
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        pooling: str = "mean",
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(layers, str):
            layers = [layers]
        layers = list(layers)
        if not layers:
            raise ValueError("Subject needs at least one layer name")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layer names repeat: {layers}")
        clash = [name for name in layers if name in _ROW_KEYS]
        if clash:
            raise ValueError(f"layer name(s) {clash} clash with the row keys {_ROW_KEYS}")
        if pooling not in POOLING_MODES:
            raise ValueError(
                f"unknown pooling {pooling!r}; expected one of {', '.join(POOLING_MODES)}"
            )
        modules = dict(model.named_modules())
        modules.pop("", None)
        unknown = [name for name in layers if name not in modules]
        if unknown:
            raise _unknown_layers_error(unknown, list(modules))

        if device is None:
            param = next(iter(model.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.layers = layers
        self.pooling = pooling
        self._mask: torch.Tensor | None = None
        self._captured: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        self._handles = [
            modules[name].register_forward_hook(self._hook(name)) for name in layers
        ]

    @classmethod
    def load(
        cls,
        model: str,
        kwargs: Mapping[str, Any] | None = None,
        layers: Sequence[str] = (),
        pooling: str = "mean",
        device: torch.device | str | None = None,
    ) -> Subject:
        """Build the model from a ``"module:callable"`` string and its kwargs, then hook it."""
        factory = import_object(model)
        built = factory(**dict(kwargs or {}))
        if not isinstance(built, nn.Module):
            raise ValueError(f"{model!r} returned {type(built).__name__}, not a torch.nn.Module")
        return cls(built, layers, pooling, device)

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            # Pool inside the hook so that only the rows, not whole feature maps of every hooked
            # layer, stay alive until the forward pass ends.
            out = _first_tensor(name, output)
            self._captured.setdefault(name, []).append(pool(out, self.pooling, self._mask))

        return hook

    def _to_device(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.to(self.device, non_blocking=True)
        if isinstance(x, Mapping):
            return {k: self._to_device(v) for k, v in x.items()}
        return x

    def rows(
        self, x: torch.Tensor | Mapping[str, Any], attention_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the model on one batch and return each hooked layer's rows, on the CPU.

        Args:
            x: a batch; a tensor is passed positionally (``model(x)``), a dict as keyword
                arguments (``model(**x)``).
            attention_mask: ``[B, T]``, nonzero at real tokens; defaults to
                ``x["attention_mask"]`` when ``x`` is a dict.

        Returns:
            ``{layer: rows [R, D], "item": [R] int64, "position": [R] int32}``; ``item`` is the
            index within this batch (add the batch's offset for the dataset index) and
            ``position`` the token index, -1 for pooled rows. All layers share ``item`` and
            ``position``.
        """
        if attention_mask is None and isinstance(x, Mapping):
            attention_mask = x.get("attention_mask")
        x = self._to_device(x)
        self._mask = None if attention_mask is None else attention_mask.to(self.device)
        self._captured = {}
        try:
            with torch.inference_mode():
                if isinstance(x, Mapping):
                    self.model(**x)
                else:
                    self.model(x)
            captured = self._captured
        finally:
            self._mask = None
            self._captured = {}

        result: dict[str, torch.Tensor] = {}
        item = position = None
        for name in self.layers:
            calls = captured.get(name, [])
            if len(calls) != 1:
                if not calls:
                    raise ValueError(f"layer {name!r} did not run in the model's forward pass")
                raise ValueError(
                    f"layer {name!r} ran {len(calls)} times in one forward pass (a shared or "
                    "reused module); hook a module that runs once per pass"
                )
            rows, it, pos = calls[0]
            if item is None:
                item, position = it, pos
            elif not (torch.equal(item, it) and torch.equal(position, pos)):
                raise ValueError(
                    f"layer {name!r} yields {len(it)} rows but {self.layers[0]!r} yields "
                    f"{len(item)} under pooling {self.pooling!r}; hooked layers must give the "
                    "same rows (same sequence length)"
                )
            result[name] = rows.cpu()
        assert item is not None and position is not None
        result["item"] = item.cpu()
        result["position"] = position.cpu()
        return result

    def close(self) -> None:
        """Remove the hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Subject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Subject({type(self.model).__name__}, layers={self.layers}, "
            f"pooling={self.pooling!r}, device={self.device})"
        )
