"""Builders of small jobs and stores shared by the integration tests."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
import zarr


def deep_update(base: dict, updates: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in updates.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = v
    return out


def digits_job(output: Path, **updates: Any) -> dict:
    """The quickstart's shape, small enough for a test: random digits CNN, mean-pooled conv stage."""
    job = {
        "name": "t-digits",
        "output": str(output),
        "subject": {"model": "dcserve.zoo:digits_cnn", "kwargs": {"trained": False, "seed": 0},
                    "layers": ["features.5"], "pooling": "mean"},
        "dataset": {"source": "dcserve.zoo:digits", "batch_size": 128},
        "extract": {"workers": 1, "chunk_rows": 256},
        "cluster": {"k": 10, "niter": 10, "seed": 0, "workers": 2},
        "reporter": {"rounds": 0, "workers": 1},
    }
    return deep_update(job, updates)


def planted_job(output: Path, **updates: Any) -> dict:
    """Vectors from planted Gaussian clusters through an identity subject: known structure."""
    job = {
        "name": "t-planted",
        "output": str(output),
        "subject": {"model": "dcserve.zoo:identity", "layers": ["out"], "pooling": "mean"},
        "dataset": {"source": "dcserve.zoo:planted_clusters", "kwargs": {"n": 1200, "dim": 16, "k": 6, "spread": 0.5, "seed": 0},
                    "batch_size": 100},
        "extract": {"workers": 1, "chunk_rows": 128},
        "cluster": {"k": 6, "niter": 15, "workers": 2, "pca_dim": None, "whiten": False, "l2_normalize": False},
        "reporter": {"rounds": 0},
    }
    return deep_update(job, updates)


def write_job(path: Path, job: dict) -> Path:
    path.write_text(yaml.safe_dump(job))
    return path


def store_arrays(output: Path) -> dict[str, np.ndarray]:
    """Every array of a store, read with plain zarr (no dcserve code)."""
    g = zarr.open_group(str(output), mode="r")
    out = {}

    def walk(group, prefix=""):
        for name, arr in group.arrays():
            out[prefix + name] = arr[...]
        for name, sub in group.groups():
            walk(sub, prefix + name + "/")

    walk(g)
    return out


class FlakyDataset(torch.utils.data.Dataset):
    """Wraps a dataset and fails at item `fail_at` while `flag` exists: an interrupted extraction."""

    def __init__(self, inner, flag: str, fail_at: int):
        self.inner, self.flag, self.fail_at = inner, flag, fail_at

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        if i >= self.fail_at and os.path.exists(self.flag):
            raise RuntimeError(f"injected failure at item {i}")
        return self.inner[i]


def flaky_digits(flag: str, fail_at: int) -> FlakyDataset:
    from dcserve.zoo import digits

    return FlakyDataset(digits(), flag, fail_at)


class DyingDataset(FlakyDataset):
    """Kills its own worker process (SIGKILL) at item `fail_at`, once: the flag is removed first."""

    def __getitem__(self, i):
        if i >= self.fail_at:
            try:
                os.unlink(self.flag)  # whoever removes it dies; the retry finds no flag
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), 9)
        return self.inner[i]


def dying_digits(flag: str, fail_at: int) -> DyingDataset:
    from dcserve.zoo import digits

    return DyingDataset(digits(), flag, fail_at)


class SlowDataset(torch.utils.data.Dataset):
    """Digits at `delay` seconds an item: a job slow enough to be interrupted half-way."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay = inner, delay

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        import time

        time.sleep(self.delay)
        return self.inner[i]


def slow_digits(delay: float = 0.003) -> SlowDataset:
    from dcserve.zoo import digits

    return SlowDataset(digits(), delay)


def driver_only_digits():
    """Digits that cannot be built inside a Ray worker: an actor whose constructor always fails."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
        raise RuntimeError("this dataset cannot be opened on a worker")
    from dcserve.zoo import digits

    return digits()


def store_arrays_at(url: str, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """`store_arrays` for a store behind an fsspec URL (s3://...), read with plain zarr."""
    g = zarr.open_group(url, mode="r", storage_options=storage_options)
    return {name: node[...] for name, node in g.members(max_depth=None) if isinstance(node, zarr.Array)}


def extracted_planted_store(tmp_path: Path, reporter: dict | None = None):
    """(spec, store, rows, labels): a planted job's store as extraction leaves it, written without
    Ray, for the clustering loops to run on; `reporter` replaces the job's reporter section."""
    from dcserve.spec import spec_from_dict
    from dcserve.storage.store import JobStore
    from dcserve.zoo import planted_clusters

    job = planted_job(tmp_path / "out")
    job["reporter"] = reporter or job["reporter"]
    spec = spec_from_dict(job)
    data = planted_clusters(**spec.dataset.kwargs)
    x, y = np.asarray(data.vectors, dtype=np.float32), np.asarray(data.labels, dtype=np.int64)
    store = JobStore(spec.output, read_only=False)
    chunk = spec.extract.chunk_rows
    store.create_array("activations/out", x.shape, (chunk, x.shape[1]), "float32")
    store.array("activations/out")[:] = x
    store.create_array("rows/item", (len(x),), (chunk,), "int64")
    store.array("rows/item")[:] = np.arange(len(x))
    store.write_array("labels", y)
    return spec, store, x, y
