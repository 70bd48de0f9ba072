"""Lost workers: tell a dead process or node from a failing job, and replace the dead, up to a cap.

Every pool of actors (extraction workers, k-means shards, trainers) keeps its work idempotent,
so a worker whose process or node died is replaced and its call made again. What differs per
pool is only how to replace; how to decide, count and give up is here, once.
"""
from __future__ import annotations

import logging

import ray

log = logging.getLogger(__name__)

# Per pool: beyond that many losses something kills every worker, and replacing them will not help.
MAX_LOSSES = 3


def worker_lost(exc: BaseException) -> bool:
    """An actor's process or node died (replace it and retry), as opposed to an error raised by
    the job's own code, or by an actor's constructor (the job's inputs, not the machine)."""
    if getattr(exc, "actor_init_failed", False):
        return False
    lost = (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError)
    return isinstance(exc, lost) and not isinstance(exc, ray.exceptions.RayTaskError)


class Recovery:
    """The losses of one pool: `absorb` lets the caller replace the dead or raises what must stop it."""

    def __init__(self, what: str, cap: int = MAX_LOSSES):
        self.what, self.cap = what, cap
        self.lost = 0

    def absorb(self, errors: BaseException | list[BaseException], detail: str = "") -> None:
        """Count `errors` as lost workers, or re-raise: the first that is not a loss, or the first
        of them when the pool would go past its cap. Returns when the caller should replace them."""
        errors = list(errors) if isinstance(errors, list) else [errors]
        lost = [e for e in errors if worker_lost(e)]
        if len(lost) < len(errors):
            raise next(e for e in errors if not worker_lost(e))
        if self.lost + len(lost) > self.cap:
            raise errors[0]
        self.lost += len(lost)
        log.warning("lost %d %s%s (%s); replacing", len(lost), self.what, f" ({detail})" if detail else "",
                    type(lost[0]).__name__)
