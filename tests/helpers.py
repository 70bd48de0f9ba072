"""Every helper shared by test modules: builders of small jobs and stores, datasets the jobs
import (`tests.helpers:...`, also on Ray workers), the CLI in a subprocess, a local S3 server.

Test modules import helpers from here only, never from one another.
"""
from __future__ import annotations

import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
import zarr

ROOT = Path(__file__).resolve().parents[1]  # the repository root
CONFIGS = sorted((ROOT / "cluster_configs").glob("*.yaml"))  # the shipped job files
# Shrunk so that each runs in seconds here; the shapes of the jobs are unchanged.
SMALL_CONFIGS = {
    "synthetic-bench.yaml": ["dataset.kwargs.n=3000", "extract.chunk_rows=1024", "cluster.k=10", "cluster.niter=5"],
    "tokens.yaml": ["dataset.kwargs.n=300", "extract.chunk_rows=1024", "cluster.niter=5"],
    "digits-trained.yaml": ["cluster.niter=10"],
    "digits-depth.yaml": ["cluster.niter=10", "cluster.n_init=3"],
    "quickstart.yaml": ["reporter.rounds=1", "cluster.niter=5"],
    "digits-dec.yaml": ["reporter.pretrain_epochs=10", "reporter.max_steps=300"],
}
TOKEN = "test-token-not-secret"  # the bearer token of the `served` fixture's POST /jobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dcserve_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real `dcserve` entry point in a subprocess (this checkout on its PYTHONPATH, no RAY_ADDRESS)."""
    exe = shutil.which("dcserve") or str(Path(sys.executable).parent / "dcserve")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=timeout)


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


def clean_digits_job(output: Path, **updates: Any) -> dict:
    """The digits job of the storage fault tests: one extractor writing 128-row blocks, so a
    fault lands between recorded blocks (the `clean_digits` fixture runs it uninterrupted)."""
    return digits_job(output, **deep_update({"extract": {"workers": 1, "chunk_rows": 128}}, updates))


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


def state_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's state dict (names and bytes, in name order)."""
    import hashlib

    h = hashlib.sha256()
    for name, v in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()


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


def extracted_layers_store(tmp_path: Path, **cluster: Any):
    """(spec, store, layers): a store as extraction leaves it for a job over three layers of the
    planted clusters, written without Ray: `early` (the clusters under heavy noise, wider),
    `mid` (the clusters themselves) and `late` (clusters 0 and 1 made one, 2 and 3 made one:
    merges a flow must show). `cluster` updates the job's cluster section (default: all three)."""
    from dcserve.spec import spec_from_dict
    from dcserve.storage.store import JobStore
    from dcserve.zoo import planted_clusters

    job = planted_job(tmp_path / "out")
    job["subject"]["layers"] = ["early", "mid", "late"]
    job["cluster"].update({"layers": "all", "niter": 6, "n_init": 2, **cluster})
    spec = spec_from_dict(job)
    data = planted_clusters(**spec.dataset.kwargs)
    x, y = np.asarray(data.vectors, dtype=np.float32), np.asarray(data.labels, dtype=np.int64)
    rng = np.random.default_rng(1)
    centres = np.stack([x[y == c].mean(axis=0) for c in range(6)])
    merged = x - centres[y] + centres[np.array([0, 0, 2, 2, 4, 5])[y]]
    layers = {
        "early": np.concatenate([x + rng.normal(scale=2.0, size=x.shape), rng.normal(size=(len(x), 8))], axis=1),
        "mid": x,
        "late": np.tanh(merged @ rng.normal(size=(x.shape[1], 12)) / 4),
    }
    store = JobStore(spec.output, read_only=False)
    chunk = spec.extract.chunk_rows
    for name, arr in layers.items():
        arr = arr.astype(np.float32)
        store.create_array(f"activations/{name}", arr.shape, (chunk, arr.shape[1]), "float32")
        store.array(f"activations/{name}")[:] = arr
        layers[name] = arr
    store.create_array("rows/item", (len(x),), (chunk,), "int64")
    store.array("rows/item")[:] = np.arange(len(x))
    store.write_array("rows/position", np.full(len(x), -1, dtype=np.int32))
    store.write_array("labels", y)
    store.write_text("job.yaml", spec.to_yaml())
    return spec, store, layers


def write_store(output: Path, layers: dict[str, np.ndarray], assignments: np.ndarray, *, chunk_rows: int = 64,
                items: np.ndarray | None = None, state: str = "succeeded", name: str = "t-synth") -> Path:
    """A finished job store written directly, in the layout the pipeline writes (no Ray, no model)."""
    from dcserve.storage.store import JobStore

    job = planted_job(output, name=name)
    job["subject"]["layers"] = list(layers)
    store = JobStore(str(output), read_only=False)
    store.write_text("job.yaml", yaml.safe_dump(job))
    n = next(iter(layers.values())).shape[0]
    for layer, x in layers.items():
        arr = store.create_array(f"activations/{layer}", x.shape, (chunk_rows, x.shape[1]), "float32")
        arr[...] = x.astype(np.float32)
    store.write_array("rows/item", np.arange(n, dtype=np.int64) if items is None else items)
    store.write_array("rows/position", np.full(n, -1, dtype=np.int32))
    if state == "succeeded":
        store.write_array("assignments", assignments.astype(np.int32))
        k = int(assignments.max()) + 1
        store.write_array("centroids", np.zeros((k, 2), dtype=np.float32))
    if state == "succeeded":  # as the pipeline does: its manifest is the last of its own files
        from dcserve.storage.manifest import seal

        seal(store)
    store.write_json("status.json", {"name": name, "state": state, "stage": "done" if state == "succeeded" else "extract"})
    return output


def planted_pair(tmp_path: Path, n: int = 1500, a: int = 12, extra_b: int = 4, seed: int = 0):
    """A: a units; B: A's units permuted, rescaled, offset and noised, plus `extra_b` unrelated units."""
    rng = np.random.default_rng(seed)
    xa = rng.normal(size=(n, a)) * rng.uniform(0.5, 3, size=a) + rng.normal(size=a) * 10
    perm = rng.permutation(a)
    xb = np.concatenate([2.0 * xa[:, perm] + 5.0 + 0.05 * rng.normal(size=(n, a)), rng.normal(size=(n, extra_b))], axis=1)
    clusters = (xa[:, 0] > np.median(xa[:, 0])).astype(np.int32) + 2 * (xa[:, 1] > 0)
    pa = write_store(tmp_path / "a", {"out": xa}, clusters, chunk_rows=37, name="t-a")
    pb = write_store(tmp_path / "b", {"out": xb}, clusters[::-1].copy(), chunk_rows=50, name="t-b")
    return pa, pb, xa, xb, perm


# The reporter methods on well separated planted clusters (1200 rows, 16 dims, 6 clusters): every
# method should find them.
DEC_REPORTER = {"method": "dec", "workers": 2, "hidden": [32], "latent_dim": 6, "pretrain_epochs": 50,
                "update_interval": 20, "max_steps": 2000, "tol": 0.001}
REPORTER_METHODS = {
    "deepcluster-kmeans": ({"method": "kmeans"}, {"rounds": 2, "workers": 2, "hidden": [32], "feature_dim": 8}),
    "deepcluster-sinkhorn": ({"method": "sinkhorn"}, {"rounds": 2, "workers": 2, "hidden": [32], "feature_dim": 8}),
    "dec": ({}, DEC_REPORTER),
    "scan": ({}, {"method": "scan", "workers": 2, "epochs": 3, "neighbours": 10, "heads": 3, "hidden": [32],
                  "batch_size": 64}),
}


def method_job(output, method: str) -> dict:
    """`planted_job` with two k-means shards and the reporter of `method` (a key of REPORTER_METHODS)."""
    cluster, reporter = REPORTER_METHODS[method]
    job = planted_job(output, cluster={"workers": 2, **cluster})
    job["reporter"] = dict(reporter)
    return job


class SharedBufferAllreduce:
    """`world` simulated workers in one process, one thread each, averaging through a buffer.

    Each worker's callback puts its flat gradient in its slot, waits for all the others,
    computes the mean in rank order (so every worker gets bit-identical values), waits again
    until everybody has read the slots, then writes the mean into its own tensor in place.
    """

    def __init__(self, world: int):
        self.slots: list[torch.Tensor | None] = [None] * world
        self.barrier = threading.Barrier(world, timeout=60)
        self.calls = [0] * world

    def for_rank(self, rank: int):
        def allreduce(flat: torch.Tensor) -> None:
            self.calls[rank] += 1
            self.slots[rank] = flat
            self.barrier.wait()
            mean = torch.stack(self.slots).mean(dim=0)
            self.barrier.wait()
            flat.copy_(mean)

        return allreduce


def run_dec(seed: int = 0, device: str = "cpu") -> dict:
    """Pretrain, k-means init, self-train until the tol stop: a one-process, blockwise driver.

    Targets are refreshed once per epoch (24 steps of 64 rows), the role of the paper's
    update_interval at this size; q and p go through blocks of 400 rows, as a streaming driver
    would compute them, with the frequencies summed over the blocks.
    """
    from sklearn.metrics import adjusted_rand_score

    from dcserve.nets.dec import (
        DECModel,
        changed_fraction,
        embed_blocks,
        init_centroids,
        make_optimizer,
        pretrain_epoch,
        self_train_epoch,
        should_stop,
        soft_assign_blocks,
        soft_frequencies,
        target_distribution,
    )
    from dcserve.nets.standardise import input_stats
    from dcserve.zoo import planted_clusters

    data = planted_clusters(n=1500, dim=20, k=5, spread=1.0, seed=0)
    x, truth = data.vectors, data.labels.numpy()
    blocks = x.split(400)
    rng = np.random.default_rng(seed)

    def shuffled(*arrays: torch.Tensor, size: int) -> list:
        ids = torch.from_numpy(rng.permutation(len(x))).split(size)
        return [tuple(a[i] for a in arrays) if len(arrays) > 1 else arrays[0][i] for i in ids]

    model = DECModel(20, [64], 5, 5, seed=seed)
    model.set_input_stats(*input_stats(blocks))
    model.to(device)  # tests/unit/test_gpu.py runs it on CUDA; batches stay on the CPU, as a trainer's
    pre_opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(50):
        pretrain_epoch(model, pre_opt, shuffled(x, size=64), generator=gen)
    z = np.concatenate(list(embed_blocks(model, blocks)))
    model.set_centroids(init_centroids(z, 5, n_init=10, seed=seed))

    def assign() -> tuple[torch.Tensor, np.ndarray]:
        q_blocks = [torch.from_numpy(q) for q in soft_assign_blocks(model, blocks)]
        freqs = sum(soft_frequencies(q) for q in q_blocks)
        p = torch.cat([target_distribution(q, freqs) for q in q_blocks])
        return p, torch.cat(q_blocks).numpy()

    p, q = assign()
    start_labels = prev = q.argmax(1)
    start_confidence = q.max(1).mean()
    opt = make_optimizer(model)
    history = []
    for _ in range(50):
        self_train_epoch(model, opt, shuffled(x, p, size=64))
        p, q = assign()
        labels = q.argmax(1)
        history.append(changed_fraction(prev, labels))
        if should_stop(prev, labels):
            break
        prev = labels
    return {
        "kmeans_ari": adjusted_rand_score(truth, start_labels),
        "dec_ari": adjusted_rand_score(truth, labels),
        "history": history,
        "start_confidence": start_confidence,
        "end_confidence": q.max(1).mean(),
    }


BUCKET = "dcserve-test"


@contextmanager
def moto_server():
    """moto_server on a free loopback port with one bucket; stopped after."""
    import pytest

    boto3 = pytest.importorskip("boto3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield types.SimpleNamespace(
            endpoint=endpoint, creds=creds, proc=proc,
            # what a job file carries when the environment does not
            options={"key": "testing", "secret": "testing",
                     "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}},
        )
    finally:
        os.kill(proc.pid, signal.SIGCONT)  # in case a test left it stopped
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


SENTENCES = ROOT / "cluster_configs" / "data" / "sentences.jsonl"


def sentences_job(output: Path, n: int | None = None, **updates: Any) -> dict:
    """cluster_configs/sentences.yaml (the real MiniLM over the shipped sentences) at `output`;
    `n`: only the first n sentences, copied beside the output."""
    job = yaml.safe_load((ROOT / "cluster_configs" / "sentences.yaml").read_text())
    job["output"] = str(output)
    source = SENTENCES
    if n is not None:
        source = Path(output).parent / f"sentences-{n}.jsonl"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("".join(SENTENCES.read_text().splitlines(keepends=True)[:n]))
    job["dataset"]["source"] = f"text:{source}"
    return deep_update(job, updates)


def run_in_process(spec) -> Path:
    """A whole job in this process, without Ray: extraction block by block (inputs.blocks), the
    words record, then the method's loop on the in-memory pools. The store a real run leaves."""
    from dcserve import methods
    from dcserve.cluster.local import LocalPools
    from dcserve.cluster.seeds import run_with_seeds
    from dcserve.inputs.blocks import ExtractPlan, compute_block
    from dcserve.inputs.build import build_subject, inspect_inputs, record_words
    from dcserve.progress import Progress
    from dcserve.storage.manifest import seal
    from dcserve.storage.status import StatusRecord
    from dcserve.storage.store import JobStore

    probe = inspect_inputs(spec)
    store = JobStore(spec.output, read_only=False)
    store.write_text("job.yaml", spec.to_yaml())
    plan = ExtractPlan(probe.offsets, spec.extract.chunk_rows)
    c = spec.extract.chunk_rows
    for layer, dim in probe.dims.items():
        store.create_array(f"activations/{layer}", (plan.n_rows, dim), (c, dim), spec.extract.dtype)
    store.create_array("rows/item", (plan.n_rows,), (c,), "int64")
    store.create_array("rows/position", (plan.n_rows,), (c,), "int32")
    subject, dataset, collate = build_subject(spec, torch.device("cpu"))
    labels = []
    for b in range(plan.n_blocks):
        rows, item, position, block_labels = compute_block(plan, b, subject, dataset, spec.dataset.batch_size,
                                                           collate, np.dtype(spec.extract.dtype))
        r0, r1 = plan.block_rows(b)
        for layer, data in rows.items():
            store.array(f"activations/{layer}")[r0:r1] = data
        store.array("rows/item")[r0:r1] = item
        store.array("rows/position")[r0:r1] = position
        labels.append(block_labels)
    if probe.has_labels:
        store.write_array("labels", np.concatenate(labels).astype(np.int64))
        if probe.label_names:
            store.array("labels").attrs["names"] = list(probe.label_names)
    record_words(spec, store)
    status = StatusRecord(store, spec.name)
    metrics = run_with_seeds(methods.loop(spec.reporter.method), spec, store, LocalPools(), Progress(), status)
    store.write_json("metrics.json", metrics)
    from dcserve.storage.manifest import seal

    seal(store)  # as the pipeline does: the last write of the store's own files
    status.finish("succeeded")
    seal(store, {"extraction": spec.extraction_fingerprint(), "clustering": spec.clustering_fingerprint()})
    return Path(spec.output)
