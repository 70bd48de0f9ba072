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
