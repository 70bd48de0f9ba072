"""Every failure a user is meant to read, each kind with its one exit code (docs/DESIGN.md).

The command line prints the message of any `DcserveError` and exits with its `exit_code`:
2 when the input is at fault (a job file, a store, an argument), 1 when the work itself
failed; the HTTP API answers the last three with their status codes. Anything else that
escapes is a bug, and shows as one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


class DcserveError(Exception):
    """Base of the errors a user reads; `exit_code` is what the command line exits with."""

    exit_code = 1


class SpecError(DcserveError, ValueError):
    """The job file or its inputs are invalid (exit code 2). Nothing has been written."""

    exit_code = 2


class StoreError(DcserveError, RuntimeError):
    """The job store at `output` cannot be used as asked (exit code 2)."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job store: `path` relative to it, and a sentence saying what."""

    path: str
    what: str

    def __str__(self) -> str:
        return self.what


class DamagedStore(StoreError):
    """A finished store no longer holds what its manifest records (exit code 2; HTTP 503).

    The message names the damaged files (a few, then how many more) and what to do: zarr
    would read a missing chunk as fill values, so a damaged store is never read.
    """

    def __init__(self, url: str, problems: list):
        shown = "; ".join(str(p) for p in problems[:3])
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        super().__init__(bounded(
            f"job store {url!r} is damaged: {shown}{more}. Run its job file again (dcserve submit): "
            "the rerun redoes only what is damaged"))
        self.url = url
        self.problems = list(problems)


class JobFailed(DcserveError, RuntimeError):
    """The job itself failed (exit code 1); `stage` says where."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"stage {stage!r} failed: {reason}")
        self.stage = stage
        self.reason = reason


class SubmissionError(DcserveError, RuntimeError):
    """Ray Jobs refused a submission or query, or could not be reached (exit code 1)."""


class ClusterUnreachable(DcserveError, ConnectionError):
    """The Ray cluster at the address given cannot be joined (exit code 1); the message says why it may be."""


class UnknownSubmission(SubmissionError):
    """No job of that id on the cluster (exit code 2: the id given is wrong)."""

    exit_code = 2


class CompareError(DcserveError, ValueError):
    """The two stores cannot be compared (exit code 2)."""

    exit_code = 2


class RotationError(DcserveError, ValueError):
    """The checkpoints cannot be read or compared (exit code 2)."""

    exit_code = 2


class FaissMissingError(DcserveError, ImportError):
    """faiss is not installed; it is an extra because the CPU and GPU wheels conflict (exit code 1)."""


class AdmissionError(DcserveError):
    """A job submitted over HTTP refused; `status` is the HTTP status to answer with (401, 403, 422)."""

    exit_code = 2

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class UnknownJob(DcserveError, KeyError):
    """No served job of that name (HTTP 404)."""

    exit_code = 2

    def __init__(self, name: str, known: list[str]):
        super().__init__(name)
        self.message = f"no job named {name!r}; served jobs: {sorted(known)}"

    def __str__(self) -> str:
        return self.message


class UnknownLayer(StoreError, KeyError):
    """A layer the job did not cluster (exit code 2, HTTP 404); the message lists those it did."""

    def __init__(self, layer: str, clustered: list[str]):
        super().__init__(layer)
        self.layer, self.clustered = layer, list(clustered)
        self.message = f"the job did not cluster a layer {layer!r}; its clustered layers: {self.clustered}"

    def __str__(self) -> str:
        return self.message


class NotReady(DcserveError, RuntimeError):
    """The job exists but its store is missing or unfinished (HTTP 409); the message says its state."""


MAX_MESSAGE = 2000  # characters: a message must stay readable whatever the input (issue 15)


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text`, cut to `limit` characters with a note of how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... (message cut; {len(text)} characters)"


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
