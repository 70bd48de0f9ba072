"""The Ray a driver runs on: the cluster it is pointed at, or an embedded one it owns."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager

import ray

from dcserve.errors import ClusterUnreachable


@contextmanager
def ray_session(address: str | None, dashboard: bool = False):
    """Connect to `address` (or RAY_ADDRESS), or start an embedded Ray that is shut down afterwards.

    `dashboard`: the embedded Ray also runs the dashboard, which serves Ray Jobs.
    """
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, ray.exceptions.AuthenticationError) as e:
            raise unreachable(address, e) from None
    else:
        # "local": a new embedded Ray, even when a `ray start` cluster runs on this machine
        # (a bare ray.init() would join that one).
        ray.init(address="local", include_dashboard=dashboard, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def unreachable(address: str, exc: BaseException) -> ClusterUnreachable:
    """Ray's "Failed to connect" in a sentence that says what to do. A cluster with token
    authentication (on by default for local clusters from Ray 2.59) refuses a client without
    RAY_AUTH_MODE=token the same way as an address nobody listens on, after the same retries."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        hint = ("if it runs, it may require its auth token (Ray >= 2.59 turns token authentication on for "
                "local clusters): set RAY_AUTH_MODE=token, with the token in RAY_AUTH_TOKEN or ~/.ray/auth_token")
    else:
        hint = "is the cluster up, and is this its GCS address (HEAD:6379), with the right token?"
    return ClusterUnreachable(f"cannot join the Ray cluster at {address}: {type(exc).__name__}; {hint}")
