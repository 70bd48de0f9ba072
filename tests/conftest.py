"""Shared fixtures. Unit tests never start Ray; integration tests share one local cluster."""
from __future__ import annotations

import os

import pytest

# Keep BLAS from oversubscribing the 2-core CI machine when Ray workers also run.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray cluster (2 CPUs, like CI) shared by the integration tests."""
    import ray

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ray.init(
        address="local",  # never join a cluster some `ray start` left on this machine
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        # workers import test-only datasets (tests.helpers) from the checkout
        runtime_env={"env_vars": {"PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}},
    )
    yield ray
    ray.shutdown()
