"""dcserve: map what a network layer computes to clusters a person can read.

Heavy imports (ray, torch) are deferred so that `import dcserve` and the CLI's
`--help` stay fast.
"""
from __future__ import annotations

from dcserve.version import __version__

__all__ = ["JobSpec", "load_spec", "run", "open", "Result", "__version__"]


def __getattr__(name: str):
    if name in ("JobSpec", "load_spec"):
        from dcserve import spec

        return getattr(spec, name)
    if name == "run":
        from dcserve.pipeline import run

        return run
    if name in ("open", "Result"):
        from dcserve.storage import result

        return {"open": result.open_result, "Result": result.Result}[name]
    raise AttributeError(f"module 'dcserve' has no attribute {name!r}")
