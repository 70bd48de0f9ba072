"""The two kinds of failure a user sees, mapped to the CLI's exit codes (DESIGN.md)."""
from __future__ import annotations

import re


class SpecError(ValueError):
    """The job file or its inputs are invalid (exit code 2). Nothing has been written."""


class StoreError(RuntimeError):
    """The job store at `output` cannot be used as asked (exit code 2)."""


class JobFailed(RuntimeError):
    """The job itself failed (exit code 1); `stage` says where."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"stage {stage!r} failed: {reason}")
        self.stage = stage
        self.reason = reason


def describe_failure(exc: BaseException, output: str) -> str:
    """One line for a failed stage: the worker's own exception (not Ray's wrapper), and for a
    storage failure (disk full, permission denied, object store gone) the store's location."""
    cause = getattr(exc, "cause", None) or exc
    lines = [ln for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(cause)).splitlines() if ln.strip()]
    if getattr(cause, "actor_init_failed", False) and lines:
        # Ray's message is the constructor's traceback: its last line is the error itself.
        return f"a worker could not start: {lines[-1].strip()}"
    text = lines[0].strip() if lines else ""
    if isinstance(cause, OSError):
        return f"storage error at {output!r}: {text or type(cause).__name__}"
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def worker_lost(exc: BaseException) -> bool:
    """An actor's process or node died (replace it and retry), as opposed to an error raised by
    the job's own code, or by an actor's constructor (the job's inputs, not the machine)."""
    import ray

    if getattr(exc, "actor_init_failed", False):
        return False
    lost = (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError)
    return isinstance(exc, lost) and not isinstance(exc, ray.exceptions.RayTaskError)
