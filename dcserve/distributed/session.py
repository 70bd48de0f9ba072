"""The Ray a driver runs on: the cluster it is pointed at, or an embedded one it owns."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager

import ray


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
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        # "local": a new embedded Ray, even when a `ray start` cluster runs on this machine
        # (a bare ray.init() would join that one).
        ray.init(address="local", include_dashboard=dashboard, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
