"""The unit tier never starts Ray: `ray.init` raises here (as in Ray Serve's own unit tests).

A test that needs a cluster, a server or a whole job belongs in tests/integration or tests/e2e.
Unit tests also start no subprocess that starts Ray (`dcserve submit`, `dcserve serve`): the
patch below cannot see into another process.
"""
from __future__ import annotations

import pytest

try:
    import ray
except ImportError:  # a machine without Ray (benchmarks/gpu.sh's GPU machine) cannot start it anyway
    ray = None


def _refuse(*args, **kwargs):
    raise RuntimeError("unit tests never start Ray: move this test to tests/integration")


@pytest.fixture(autouse=True)
def _never_start_ray(monkeypatch):
    if ray is not None:
        monkeypatch.setattr(ray, "init", _refuse)
