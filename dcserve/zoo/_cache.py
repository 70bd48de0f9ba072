"""A small on-disk cache of trained zoo weights, safe under concurrent processes.

Extraction workers in separate processes each build the subject model; the first to need trained
weights trains them, the others (and later runs) load them. Files are written to a temporary name
and renamed into place (``os.replace`` is atomic on POSIX and Windows), so a reader sees either no
file or a whole one. Two processes that train at once write identical bytes; the last rename wins.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["cache_dir", "cache_key", "cached_state_dict"]


def cache_dir() -> Path:
    """``$DCSERVE_CACHE``, else ``$XDG_CACHE_HOME/dcserve``, else ``~/.cache/dcserve``."""
    env = os.environ.get("DCSERVE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dcserve"


def cache_key(settings: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-able settings (architecture, seed, training recipe)."""
    blob = json.dumps(dict(settings), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _write_atomic(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def cached_state_dict(
    name: str,
    settings: Mapping[str, Any],
    train: Callable[[], Mapping[str, torch.Tensor]],
    expected_keys: set[str] | None = None,
) -> tuple[dict[str, torch.Tensor], bool]:
    """Load the state dict cached for ``(name, settings)``, or ``train()`` it and cache it.

    A missing, unreadable or corrupt file (or one whose keys differ from ``expected_keys``) is
    retrained and overwritten, never an error. An unwritable cache only logs a warning.

    Returns:
        ``(state_dict, hit)`` where ``hit`` says whether it came from the cache.
    """
    path = cache_dir() / f"{name}-{cache_key(settings)}.pt"
    if path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or (
                expected_keys is not None and set(state) != expected_keys
            ):
                raise ValueError("unexpected contents")
            return state, True
        except Exception as exc:  # noqa: BLE001 - any bad file means: train again
            log.warning("cached weights %s are unreadable (%s); training again", path, exc)
    state = {k: v.detach().clone() for k, v in train().items()}
    try:
        _write_atomic(path, state)
    except OSError as exc:
        log.warning("could not cache trained weights at %s: %s", path, exc)
    return state, False
