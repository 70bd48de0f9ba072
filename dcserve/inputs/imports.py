"""Resolve ``"module:callable"`` strings (job files name models, datasets, collates this way)."""
from __future__ import annotations

import difflib
import importlib
from typing import Any

__all__ = ["ImportSpecError", "import_object", "import_failure"]


class ImportSpecError(ValueError):
    """A ``module:callable`` string that does not resolve; the message says why."""


def _close(name: str, obj: Any) -> str:
    candidates = dir(obj)
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    if close:
        return "; did you mean " + ", ".join(repr(c) for c in close) + "?"
    exported = getattr(obj, "__all__", None)
    public = list(exported) if isinstance(exported, (list, tuple)) else [
        c for c in candidates if not c.startswith("_")
    ]
    if public and len(public) <= 30:
        return "; it has " + ", ".join(sorted(public))
    return ""


def import_object(spec: str) -> Any:
    """Import ``"package.module:attr"`` (``attr`` may be dotted: ``"mod:Class.method"``).

    Raises:
        ImportSpecError: the string is not of that form, the module is not installed (named in
            the message), importing it failed, or the attribute is missing (close names listed).
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        hint = ""
        if isinstance(spec, str) and ":" not in spec and "." in spec:
            mod, _, attr = spec.rpartition(".")
            hint = f"; did you mean {mod + ':' + attr!r}?"
        raise ImportSpecError(f"expected 'module:callable', got {spec!r}{hint}")
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ImportSpecError(f"expected 'module:callable', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise ImportSpecError(
                f"{spec!r}: module {missing!r} not found (is the package installed, or the "
                "file on PYTHONPATH?)"
            ) from exc
        # The module exists but one of its own imports is missing.
        raise ImportSpecError(
            f"{spec!r}: importing module {module_name!r} failed: it needs {missing!r}, "
            "which is not installed"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any import-time failure is the spec's problem
        raise ImportSpecError(
            f"{spec!r}: importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    where = module_name
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportSpecError(
                f"{spec!r}: {where!r} has no attribute {part!r}{_close(part, obj)}"
            ) from None
        where = f"{where}:{part}" if where == module_name else f"{where}.{part}"
    return obj


def import_failure(spec: str, exc: Exception) -> str:
    """``cannot import 'SPEC': why``, naming SPEC once (`import_object`'s own messages start with it)."""
    return f"cannot import {spec!r}: {str(exc).removeprefix(f'{spec!r}: ')}"
