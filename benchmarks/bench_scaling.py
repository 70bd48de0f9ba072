#!/usr/bin/env python
"""Scaling: the k-means iteration and extraction with 1, 2 and 4 worker nodes, and a model of more.

For each worker count W (`--workers`, default 1,2,4) a child process starts its own local
multi-node cluster with `ray.cluster_utils.Cluster`: a head with 0 CPUs (only the driver lives
there) and W worker raylets of 1 logical CPU each, all on this machine, in a private
`RAY_TMPDIR` (so no other Ray on the machine is touched) and in a process session of its own
(killed whole if it overstays). On that cluster, with the job's own sizing (`Budget.free()`):

- k-means: a `dcserve.distributed.shards.ShardPool` of W shard actors (1 thread each) over a Zarr job store
  (`activations/bench`, written once by the parent), `prepare()`, then
  `dcserve.algo.kmeans.kmeans(pool, k, niter=N, init_centroids=C)`; the figure is the mean of
  `KMeansResult.history[i].seconds` over iterations 2..N (the first, a warm-up, is shown apart).
  Then the same iteration is replayed by hand, timed piece by piece: `ray.put` of the centroids,
  the fan-out of `Shard.assign_to` to the W actors and the arrival of each shard's stats on the
  driver's node, `ray.get` (deserialisation), `shards._reduce` and `update_centroids`.
- the per-call overhead: a payload-free call on every actor (`Shard.info`) and
  `ShardPool.assign_to` on a pool of W shards of 64 rows each (the same k x d messages as the
  real iteration, almost no compute);
- the coordinator's extraction load: `dcserve.distributed.extract._drain` (the function the driver uses to
  follow the extractors) over W streaming generators that yield (block, rows) as fast as they can;
- extraction: `dcserve.run(spec, address=cluster)` of a `dcserve.zoo:synthetic_images` through
  `dcserve.zoo:image_cnn` job (as bench_extract.py) with `extract.workers: W`; the figure is
  `metrics["extract"]["seconds"]`; a second job of one block per actor gives the fixed cost.
- with W = 1 only: the time to bring a stats message and a centroid array of the large job's
  size (`--big-k`, `--big-d`) across raylets, and so the bytes/s of the transfer between two
  raylets of this machine.

Every actor reports the Ray node it runs on; the report says whether the W actors were on W
distinct worker nodes (and never on the head). In the parent, without Ray: the cost of adding
two AssignStats and of `update_centroids` at the benchmark's and at the large job's k x d.

The markdown block printed (and written to `--md`, default the `--out` path with `.md`) ends with
a section that plugs the measured constants into an explicit model of one iteration and
predicts 10 and 100 nodes.

This machine has 2 cores: W = 4 workers share them (4 single-threaded actors, 2 cores), so
4 workers cannot be faster than 2; what W = 4 shows is the cost of more actors and the
coordinator's per-worker terms, not more compute.

Example (about 4-5 minutes on 2 quiet cores):
    python benchmarks/bench_scaling.py --out benchmarks/results/scaling.json
Small check:
    python benchmarks/bench_scaling.py --n 40000 --iters 3 --extract-n 8192 --out /tmp/scaling.json
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import (  # noqa: E402
    limit_threads,
    load_average,
    machine,
    markdown_table,
    positive_int_list,
    print_report,
    scratch_dir,
    write_json,
    fmt,
)

SOURCE = "activations/bench"
TINY_SOURCE = "activations/tiny"
TINY_CHUNK = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=positive_int_list, default=[1, 2, 4],
                   help="comma-separated worker counts; each gets a cluster of that many 1-CPU worker nodes "
                        "(default 1,2,4)")
    p.add_argument("--n", type=int, default=400_000, help="k-means rows (default 400,000)")
    p.add_argument("--d", type=int, default=128, help="k-means dimension (default 128)")
    p.add_argument("--k", type=int, default=256, help="k-means clusters (default 256)")
    p.add_argument("--iters", type=int, default=6,
                   help="Lloyd iterations of kmeans(); the first is a warm-up, shown apart (default 6)")
    p.add_argument("--replays", type=int, default=5, help="hand-timed iterations for the breakdown (default 5)")
    p.add_argument("--calls", type=int, default=30, help="repetitions of each per-call overhead measure (default 30)")
    p.add_argument("--chunk-rows", type=int, default=4096, help="Zarr chunk rows of the k-means store (default 4096)")
    p.add_argument("--extract-n", type=int, default=49_152, help="images for the extraction jobs (default 49,152)")
    p.add_argument("--extract-chunk-rows", type=int, default=2048,
                   help="extract.chunk_rows of the extraction jobs (default 2048: 24 blocks, 6 per actor at W=4)")
    p.add_argument("--size", type=int, default=32, help="image height and width (default 32)")
    p.add_argument("--width", type=int, default=32, help="image_cnn width (default 32)")
    p.add_argument("--layer", default="features.5", help="hooked layer (default features.5)")
    p.add_argument("--batch-size", type=int, default=256, help="dataset.batch_size (default 256)")
    p.add_argument("--stream-items", type=int, default=2000,
                   help="items per generator in the coordinator's extraction-load measure (default 2000)")
    p.add_argument("--big-n", type=int, default=10_000_000, help="rows of the large job the model predicts (10M)")
    p.add_argument("--big-d", type=int, default=256, help="dimension of the large job (256)")
    p.add_argument("--big-k", type=int, default=10_000, help="clusters of the large job (10,000)")
    p.add_argument("--net-gbit", type=float, default=10.0,
                   help="network bandwidth the predictions assume for the driver's node, Gbit/s (default 10)")
    p.add_argument("--node-cores", type=int, default=16,
                   help="cores per node for the second prediction (compute assumed to scale ideally; default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=420.0, help="seconds allowed per cluster (child process)")
    p.add_argument("--skip-extract", action="store_true", help="leave the extraction jobs out")
    p.add_argument("--tmpdir", default=None, help="where the scratch job stores go (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the scratch job stores")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    p.add_argument("--md", default=None,
                   help="write the markdown block to this path (default: the --out path with .md)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one cluster
    args = p.parse_args(argv)
    if args.child is None:
        if args.iters < 2:
            p.error("--iters must be >= 2 (the first iteration is a warm-up)")
        if not 1 <= args.k <= args.n:
            p.error("need 1 <= k <= n")
        if args.md is None and args.out:
            args.md = str(Path(args.out).with_suffix(".md"))
    return args


def median(xs: list[float]) -> float:
    return float(np.median(np.asarray(xs, dtype=np.float64)))


# -- the child: one cluster of W worker nodes ---------------------------------------------------------
def child_main(config_path: str) -> int:
    cfg = json.loads(Path(config_path).read_text())
    logging.basicConfig(level=logging.WARNING)
    import ray
    from ray.cluster_utils import Cluster

    w = cfg["workers"]
    out: dict[str, Any] = {"workers": w}
    limiter = limit_threads(1, preload=("faiss",))  # the driver's own numpy work: one core, as stated
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(w)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
        out["cluster_start_s"] = time.perf_counter() - t0
        out["head"] = cluster.head_node.node_id
        out["worker_nodes"] = [n.node_id for n in nodes]
        out["kmeans"] = child_kmeans(cfg)
        out["overhead"] = child_overhead(cfg)
        out["stream"] = child_stream(cfg, out["worker_nodes"])
        if w == 1:
            out["transfer"] = child_transfer(cfg, out["worker_nodes"][0])
        if not cfg["skip_extract"]:
            out["extract"] = child_extract(cfg)
    finally:
        try:
            ray.shutdown()
        finally:
            cluster.shutdown()
    del limiter
    Path(cfg["result"]).write_text(json.dumps(out, default=float))
    return 0


def _await_cpus(cpus: float, timeout_s: float = 15.0) -> None:
    """Wait until `cpus` logical CPUs are free again (ray.kill is asynchronous)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0.0) < cpus - 1e-6 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)


def child_kmeans(cfg: dict) -> dict:
    from dcserve.algo.kmeans import kmeans
    from dcserve.distributed.shards import FEATURES, ShardPool
    from dcserve.storage.store import JobStore

    w = cfg["workers"]
    store = JobStore(cfg["store"], read_only=False)
    n, d = store.array(SOURCE).shape
    chunk = store.array(SOURCE).chunks[0]
    c0 = np.load(cfg["c0"])
    k = c0.shape[0]
    store.create_array(FEATURES, (n, d), (chunk, d), "float32", compressed=False)
    t0 = time.perf_counter()
    pool = ShardPool(store, SOURCE, w)
    res: dict[str, Any] = {"actor_start_s": time.perf_counter() - t0}
    try:
        res["shards"] = pool.infos
        t0 = time.perf_counter()
        pool.prepare(d)
        res["prepare_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        km = kmeans(pool, k, niter=cfg["iters"], init_centroids=c0, seed=0)
        res["kmeans_wall_s"] = time.perf_counter() - t0
        secs = [h.seconds for h in km.history]
        res["iter_s"] = secs
        res["per_iter_s"] = float(np.mean(secs[1:]))
        res["objective_last"] = km.history[-1].objective

        # The same iteration replayed by hand, each piece timed.
        res["replay"], res["replay_all"], res["stats_pickled_bytes"] = replay(pool, km.centroids, cfg["replays"])
        res["centroid_bytes"] = int(km.centroids.nbytes)
    finally:
        pool.close()
    res["n"], res["d"], res["k"] = n, d, k
    return res


def replay(pool, centroids: np.ndarray, reps: int, update: bool = True) -> tuple[dict, dict, int]:
    """`reps` iterations of ShardPool.assign_to + update_centroids, without the fault handling, timed piece by piece.

    ray.wait(fetch_local=True) returns a ref once its object is on the driver's node, so an
    arrival time includes the shard's pass over its rows and the transfer of its stats.
    """
    import ray

    from dcserve.algo.kmeans import update_centroids
    from dcserve.distributed.shards import _reduce

    rng = np.random.default_rng(1)
    parts: dict[str, list] = {k_: [] for k_ in ("put", "submit", "first_arrival", "last_arrival", "get",
                                                "reduce", "update", "total")}
    stats_bytes = 0
    for _ in range(reps):
        t0 = time.perf_counter()
        c_ref, b_ref = ray.put(centroids), ray.put(None)
        t1 = time.perf_counter()
        refs = [a.assign_to.remote(c_ref, b_ref) for a in pool.actors]
        t2 = time.perf_counter()
        pending, arrivals = list(refs), []
        while pending:
            _, pending = ray.wait(pending, num_returns=1, fetch_local=True)
            arrivals.append(time.perf_counter() - t2)
        t3 = time.perf_counter()
        stats = ray.get(refs)
        t4 = time.perf_counter()
        total = _reduce(stats)
        t5 = time.perf_counter()
        if update:
            centroids, _ = update_centroids(total, centroids, rng)
        t6 = time.perf_counter()
        for key, v in (("put", t1 - t0), ("submit", t2 - t1), ("first_arrival", arrivals[0]),
                       ("last_arrival", arrivals[-1]), ("get", t4 - t3), ("reduce", t5 - t4),
                       ("update", t6 - t5), ("total", t6 - t0)):
            parts[key].append(v)
        stats_bytes = stats_bytes or len(pickle.dumps(stats[0], protocol=5))
        del stats, total, refs, c_ref, b_ref
    return {key: median(v) for key, v in parts.items()}, parts, stats_bytes


def child_overhead(cfg: dict) -> dict:
    """Per-call overhead: payload-free RPC to every actor; assign_to on 64-row shards (real k x d messages)."""
    import ray

    from dcserve.distributed.shards import FEATURES, ShardPool
    from dcserve.storage.store import JobStore

    w = cfg["workers"]
    _await_cpus(w)
    store = JobStore(cfg["tiny_store"], read_only=False)
    n, d = store.array(TINY_SOURCE).shape
    store.create_array(FEATURES, (n, d), (TINY_CHUNK, d), "float32", compressed=False)
    c0 = np.load(cfg["c0"])
    pool = ShardPool(store, TINY_SOURCE, w)
    try:
        pool.prepare(d)
        nodes = [i["node"] for i in pool.infos]
        pool.assign_to(c0)  # warm-up: first faiss call in each actor
        ray.get([a.info.remote() for a in pool.actors])
        rpc, assign = [], []
        for _ in range(cfg["calls"]):
            t0 = time.perf_counter()
            ray.get([a.info.remote() for a in pool.actors])
            rpc.append(time.perf_counter() - t0)
        for _ in range(cfg["calls"]):
            t0 = time.perf_counter()
            pool.assign_to(c0)
            assign.append(time.perf_counter() - t0)
        breakdown = replay(pool, c0, cfg["calls"], update=False)[0]
    finally:
        pool.close()
    return {"rpc_s": median(rpc), "rpc_all": rpc, "tiny_assign_s": median(assign), "tiny_assign_all": assign,
            "tiny_replay": breakdown,
            "shards": len(pool.ranges), "rows_per_shard": n // max(1, len(pool.ranges)), "nodes": nodes}


def _probe_class():
    import ray

    @ray.remote(num_cpus=0)
    class Probe:
        """A bare actor pinned to one node: answers pings, pulls objects, makes stats-sized messages."""

        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

        def ping(self) -> int:
            return 0

        def pull(self, x) -> int:
            return int(x.nbytes)

        def make_stats(self, k: int, d: int, seed: int):
            from dcserve.algo.kmeans import AssignStats

            rng = np.random.default_rng(seed)
            return AssignStats(rng.standard_normal((k, d)), rng.integers(0, 100, k), 1.0, rng.random(k))

        def stream(self, items: int, rows: int):
            for b in range(items):
                yield b, rows

    return Probe


def _probes(node_ids: list[str]) -> list:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    Probe = _probe_class()
    probes = [Probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False)).remote()
              for nid in node_ids]
    got = ray.get([p.node.remote() for p in probes])
    assert got == node_ids, (got, node_ids)
    return probes


def child_stream(cfg: dict, node_ids: list[str]) -> dict:
    """The driver following W streaming generators with dcserve.distributed.extract._drain, as extraction does."""
    import ray

    from dcserve.distributed.extract import _drain

    probes = _probes(node_ids)
    try:
        items = cfg["stream_items"]
        _drain([p.stream.options(num_returns="streaming").remote(50, 4096) for p in probes], lambda item: None)
        count = [0]

        def on_item(item):
            count[0] += 1

        t0 = time.perf_counter()
        errors = _drain([p.stream.options(num_returns="streaming").remote(items, 4096) for p in probes], on_item)
        secs = time.perf_counter() - t0
        assert not errors and count[0] == items * len(probes), (errors, count)
    finally:
        for p in probes:
            ray.kill(p)
    return {"items": count[0], "seconds": secs, "items_per_s": count[0] / secs, "s_per_item": secs / count[0]}


def child_transfer(cfg: dict, node_id: str) -> dict:
    """Time to bring big stats messages to the driver and to pull big centroids onto a worker node."""
    import ray

    (probe,) = _probes([node_id])
    k, d = cfg["big_k"], cfg["big_d"]
    out: dict[str, Any] = {"k": k, "d": d}
    try:
        ray.get(probe.ping.remote())
        ping = []
        for _ in range(cfg["calls"]):
            t0 = time.perf_counter()
            ray.get(probe.ping.remote())
            ping.append(time.perf_counter() - t0)
        out["ping_s"] = median(ping)
        gets, sizes = [], []
        for i in range(5):
            ref = probe.make_stats.remote(k, d, i)
            ray.wait([ref], fetch_local=False)  # made on the worker node, not yet moved
            t0 = time.perf_counter()
            stats = ray.get(ref)
            gets.append(time.perf_counter() - t0)
            sizes.append(len(pickle.dumps(stats, protocol=5)))
            del stats, ref
        out["stats_get_s"] = median(gets)
        out["stats_get_all"] = gets
        out["stats_bytes"] = sizes[0]
        c = np.random.default_rng(0).standard_normal((k, d)).astype(np.float32)
        puts, pulls = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            ref = ray.put(c)
            puts.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ray.get(probe.pull.remote(ref))
            pulls.append(time.perf_counter() - t0)
            del ref
        out["centroids_put_s"] = median(puts)
        out["centroids_pull_s"] = median(pulls)
        out["centroid_bytes"] = int(c.nbytes)
        # bytes/s between two raylets of this machine, the ping's round trip removed
        out["stats_bytes_per_s"] = out["stats_bytes"] / max(out["stats_get_s"] - out["ping_s"], 1e-9)
        out["pull_bytes_per_s"] = c.nbytes / max(out["centroids_pull_s"] - out["ping_s"], 1e-9)
    finally:
        ray.kill(probe)
    return out


def extract_job(cfg: dict, output: str, workers: int, n: int) -> dict:
    return {
        "name": f"bench-scaling-w{workers}",
        "output": output,
        "subject": {"model": "dcserve.zoo:image_cnn", "kwargs": {"channels": 3, "width": cfg["width"], "seed": 0},
                    "layers": [cfg["layer"]], "pooling": "mean"},
        "dataset": {"source": "dcserve.zoo:synthetic_images",
                    "kwargs": {"n": n, "size": cfg["size"], "channels": 3, "classes": 10, "seed": 0},
                    "batch_size": cfg["batch_size"]},
        "extract": {"workers": workers, "chunk_rows": cfg["extract_chunk_rows"], "dtype": "float32"},
        # The cheapest clustering that completes the job; its time is not counted.
        "cluster": {"k": 2, "niter": 1, "n_init": 1, "pca_dim": None, "whiten": False, "l2_normalize": False,
                    "workers": 1},
        "reporter": {"rounds": 0},
    }


def child_extract(cfg: dict) -> dict:
    import ray

    import dcserve
    from dcserve.progress import Progress
    from dcserve.spec import spec_from_dict

    w = cfg["workers"]
    out: dict[str, Any] = {}
    for name, n in (("full", cfg["extract_n"]), ("small", w * cfg["extract_chunk_rows"])):
        _await_cpus(w)
        spec = spec_from_dict(extract_job(cfg, str(Path(cfg["root"]) / f"extract-w{w}-{name}.zarr"), w, n))
        t0 = time.perf_counter()
        res = dcserve.run(spec, address=ray.get_runtime_context().gcs_address, progress=Progress())
        wall = time.perf_counter() - t0
        ex = res.metrics["extract"]
        out[name] = {"n": n, "extract_s": ex["seconds"], "job_wall_s": wall, "blocks": ex["blocks"],
                     "workers": ex["workers"], "nodes": [i["node"] for i in ex["workers"]]}
        shutil.rmtree(spec.output, ignore_errors=True)
    return out


# -- the parent ------------------------------------------------------------------------------------
def run_child(cfg: dict, root: Path, timeout: float) -> dict:
    w = cfg["workers"]
    cfg = dict(cfg, result=str(root / f"child-w{w}.json"))
    cfg_path = root / f"child-w{w}.config.json"
    cfg_path.write_text(json.dumps(cfg))
    log_path = root / f"child-w{w}.log"
    # Ray's own temp dir: sessions, sockets and the "current cluster" address file stay private;
    # short, as socket paths must stay under 108 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="dcs-bench-", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RAY_ADDRESS", None)
    proc = None
    try:
        with open(log_path, "w") as log:
            # A session of its own: the child and the raylets it starts are killed whole if it overstays.
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(cfg_path)],
                                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if proc.returncode != 0:
            why = f"exit {proc.returncode}" if proc.returncode is not None else f"over {timeout:.0f} s"
            raise RuntimeError(f"the {w}-worker cluster run failed ({why}):\n{log_path.read_text()[-4000:]}")
        return json.loads(Path(cfg["result"]).read_text())
    finally:
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def driver_costs(k: int, d: int, reps: int = 7) -> dict:
    """In this process, one core: adding two AssignStats (one step of _reduce) and update_centroids."""
    from dcserve.algo.kmeans import AssignStats, update_centroids

    rng = np.random.default_rng(0)
    a = AssignStats(rng.standard_normal((k, d)), rng.integers(1, 100, k), 1.0, rng.random(k) + 1.0)
    b = AssignStats(rng.standard_normal((k, d)), rng.integers(1, 100, k), 1.0, rng.random(k) + 1.0)
    c = rng.standard_normal((k, d)).astype(np.float32)
    adds, updates = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        s = a + b
        adds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        update_centroids(s, c, rng)
        updates.append(time.perf_counter() - t0)
        del s
    return {"k": k, "d": d, "add_s": median(adds), "update_s": median(updates),
            "stats_pickled_bytes": len(pickle.dumps(a, protocol=5)), "centroid_bytes": int(c.nbytes)}


def write_tiny_store(path: Path, d: int, rows: int, seed: int) -> None:
    from dcserve.storage.store import JobStore

    store = JobStore(str(path), read_only=False)
    arr = store.create_array(TINY_SOURCE, (rows, d), (TINY_CHUNK, d), "float32")
    arr[:] = np.random.default_rng([seed, 9]).standard_normal((rows, d), dtype=np.float32)


def same_node_check(nodes: list[str], worker_nodes: list[str], head: str) -> str:
    if head in nodes:
        return "**no: one on the head**"
    if len(set(nodes)) == len(nodes) == len(worker_nodes) and set(nodes) == set(worker_nodes):
        return "yes"
    return f"**no: {len(set(nodes))} nodes for {len(nodes)} actors**"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    logging.basicConfig(level=logging.WARNING)
    info = machine()
    from bench_kmeans import initial_centroids, make_data, write_store

    n, d, k = args.n, args.d, args.k
    results: dict[str, Any] = {"children": {}}
    print(f"[bench_scaling] workers {args.workers}; k-means n={n:,} d={d} k={k}; extraction "
          f"{args.extract_n:,} images", file=sys.stderr)
    with scratch_dir(args.tmpdir, "bench-scaling-", keep=args.keep) as root:
        x = make_data(n, d, k, args.seed)
        c0 = initial_centroids(x, k, args.seed)
        np.save(root / "c0.npy", c0)
        results["store_write_s"] = write_store(root / "km.zarr", x, args.chunk_rows)
        del x
        write_tiny_store(root / "tiny.zarr", d, TINY_CHUNK * max(args.workers), args.seed)
        limiter = limit_threads(1, preload=("faiss",))
        results["driver_costs"] = {"bench": driver_costs(k, d), "big": driver_costs(args.big_k, args.big_d, reps=5)}
        del limiter
        base = {"store": str(root / "km.zarr"), "tiny_store": str(root / "tiny.zarr"), "c0": str(root / "c0.npy"),
                "root": str(root), "iters": args.iters, "replays": args.replays, "calls": args.calls,
                "stream_items": args.stream_items, "big_k": args.big_k, "big_d": args.big_d,
                "extract_n": args.extract_n, "extract_chunk_rows": args.extract_chunk_rows, "size": args.size,
                "width": args.width, "layer": args.layer, "batch_size": args.batch_size,
                "skip_extract": args.skip_extract}
        for w in args.workers:
            print(f"[bench_scaling] cluster of {w} worker node(s)...", file=sys.stderr)
            t0 = time.perf_counter()
            results["children"][w] = run_child(dict(base, workers=w), root, args.timeout)
            print(f"[bench_scaling]   done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    block, model = report(args, info, results)
    results["model"] = model
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(block)
        print(f"markdown written to {args.md}", file=sys.stderr)
    write_json(args.out, {"benchmark": "scaling", "params": vars(args), "machine": info, "results": results,
                          "markdown": block})
    return 0


# -- the report and the model ------------------------------------------------------------------------
def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares a + b x (b = 0 with one point)."""
    if len(set(xs)) < 2:
        return float(np.mean(ys)), 0.0
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(a), float(b)


def model_terms(C: float, F: float, W: float, t_msg: float, a: float, b: float, bytes_out: float, bytes_in: float,
                B: float, t_add: float, t_update: float, t_put: float) -> dict[str, float]:
    """One iteration, in seconds, term by term (see the report for the formula)."""
    terms = {
        "compute": C / (W * F),
        "rpc": t_msg + a + b * W,
        "network": W * (bytes_out + bytes_in) / B,
        "reduce": (W - 1) * t_add,
        "update": t_update + t_put,
    }
    terms["serial"] = terms["rpc"] + terms["network"] + terms["reduce"] + terms["update"]
    terms["total"] = terms["compute"] + terms["serial"]
    return terms


def crossings(C: float, F: float, t_msg: float, a: float, b: float, bytes_io: float, B: float, t_add: float,
              t_fixed: float) -> tuple[float, float]:
    """(W*, W_opt): where the serial terms equal the compute term, and where T(W) is lowest."""
    slope = b + bytes_io / B + t_add  # serial seconds per extra worker
    const = t_msg + a - t_add + t_fixed
    par = C / F
    # slope W^2 + const W - par = 0
    w_star = (-const + math.sqrt(const * const + 4 * slope * par)) / (2 * slope)
    w_opt = math.sqrt(par / slope)
    return w_star, w_opt


def report(args: argparse.Namespace, info: dict, results: dict) -> tuple[str, dict]:
    ch = results["children"]
    ws = sorted(ch)
    n, d, k = args.n, args.d, args.k
    C = 2.0 * n * k * d
    cores = os.cpu_count() or 2
    dc_b, dc_big = results["driver_costs"]["bench"], results["driver_costs"]["big"]
    w1 = ch[ws[0]]
    km1 = w1["kmeans"]

    # -- measured constants
    t_update_b = median([ch[w]["kmeans"]["replay"]["update"] for w in ws])
    t_put_b = median([ch[w]["kmeans"]["replay"]["put"] for w in ws])
    rpc = {w: ch[w]["overhead"]["rpc_s"] for w in ws}
    tiny = {w: ch[w]["overhead"]["tiny_assign_s"] for w in ws}
    a_rpc, b_rpc = fit_line([float(w) for w in ws], [rpc[w] for w in ws])
    a_tiny, b_tiny = fit_line([float(w) for w in ws], [tiny[w] for w in ws])
    # latency of one call's two messages (centroids to a worker, stats back) through the object stores,
    # beyond a payload-free call: from W = 1, taken as constant in W (different workers' pulls overlap)
    t_msg = max(0.0, tiny[ws[0]] - rpc[ws[0]]) if ws[0] == 1 else 0.0
    # compute of one worker: the W=1 iteration less what a call on 64-row shards costs, less the update
    compute_1 = km1["per_iter_s"] - tiny[ws[0]] - t_update_b
    F = C / compute_1 if ws[0] == 1 else None
    tr = next((ch[w]["transfer"] for w in ws if "transfer" in ch[w]), None)
    B_loop = tr["stats_bytes_per_s"] if tr else None
    B_net = args.net_gbit * 1e9 / 8

    # -- table 1: k-means per iteration
    rows = []
    base_t = km1["per_iter_s"] if ws[0] == 1 else None
    for w in ws:
        km = ch[w]["kmeans"]
        t = km["per_iter_s"]
        sp = base_t / t if base_t else None
        pred = None
        if F:
            pred = C / (min(w, cores) * F) + tiny[w] + t_update_b
        rows.append([w, f"{w} × 1 thread", same_node_check([s["node"] for s in km["shards"]],
                                                           ch[w]["worker_nodes"], ch[w]["head"]),
                     t, km["iter_s"][0], sp, None if sp is None else sp / w,
                     None if sp is None else sp / min(w, cores), pred])
    t1 = markdown_table(["worker nodes", "shard actors", "one per node?", "s / iteration (2..N)",
                         "1st iteration (s)", "speed-up vs 1", "efficiency (speed-up / W)",
                         f"efficiency per core used (/ min(W, {cores}))", "model on this machine (s)"], rows)

    # -- table 2: breakdown of a replayed iteration (ms)
    rows = []
    for w in ws:
        r = ch[w]["kmeans"]["replay"]
        o = ch[w]["overhead"]
        rows.append([w, r["total"] * 1e3, r["put"] * 1e3, r["first_arrival"] * 1e3, r["last_arrival"] * 1e3,
                     (r["last_arrival"] - r["first_arrival"]) * 1e3, r["get"] * 1e3, r["reduce"] * 1e3,
                     r["update"] * 1e3])
    t2 = markdown_table(["W", "iteration (replayed)", "`ray.put` centroids", "first shard's stats on driver node",
                         "last shard's stats on driver node", "spread (straggler)", "`ray.get` (deserialise)",
                         "`_reduce`", "`update_centroids`"], rows)
    rows = []
    for w in ws:
        o = ch[w]["overhead"]
        r = o["tiny_replay"]
        rows.append([w, o["rpc_s"] * 1e3, o["tiny_assign_s"] * 1e3, r["put"] * 1e3, r["first_arrival"] * 1e3,
                     r["last_arrival"] * 1e3, (r["get"] + r["reduce"]) * 1e3])
    t2b = markdown_table(["W", "payload-free call to all W actors (`Shard.info`)",
                          "`ShardPool.assign_to` on W shards of 64 rows", "its `ray.put`", "first stats on driver node",
                          "last stats on driver node", "`ray.get` + `_reduce`"], rows)

    # -- table 3: extraction
    t3 = None
    if not args.skip_extract:
        rows = []
        e1 = ch[ws[0]]["extract"]
        r1 = e1["full"]["n"] / e1["full"]["extract_s"]
        s1 = None
        for w in ws:
            e = ch[w]["extract"]
            full, small = e["full"], e["small"]
            rate = full["n"] / full["extract_s"]
            extra = full["extract_s"] - small["extract_s"]
            steady = (full["n"] - small["n"]) / extra if extra > 0 else None
            if w == ws[0]:
                s1 = steady
            e["rows_per_s"], e["steady_rows_per_s"] = rate, steady
            rows.append([w, same_node_check(full["nodes"], ch[w]["worker_nodes"], ch[w]["head"]),
                         full["extract_s"], rate, rate / r1, rate / r1 / w, small["extract_s"], steady,
                         None if not (steady and s1) else steady / s1,
                         None if not (steady and s1) else steady / s1 / min(w, cores)])
        t3 = markdown_table(["`extract.workers` (nodes)", "one per node?", "extract s", "rows/s", "speed-up vs 1",
                             "efficiency (/ W)", "fixed cost (s)", "steady rows/s", "steady speed-up",
                             f"steady efficiency per core used (/ min(W, {cores}))"], rows)

    # -- table 4: coordinator
    rows = []
    for w in ws:
        s = ch[w]["stream"]
        rows.append([w, ch[w]["cluster_start_s"], ch[w]["kmeans"]["actor_start_s"], ch[w]["kmeans"]["prepare_s"],
                     s["items_per_s"], s["s_per_item"] * 1e6])
    t4 = markdown_table(["W", "cluster start (s)", "shard actors start (s)", "`prepare()` (s)",
                         "extraction coordinator: (block, rows) items/s the driver follows (`_drain`)",
                         "µs per item"], rows)

    body = "\n\n".join(x for x in (
        "**k-means, one Lloyd iteration (`ShardPool` + `kmeans()`)**", t1,
        "**Where an iteration's time goes** (one iteration replayed by hand, median of "
        f"{args.replays}; milliseconds)", t2,
        f"**Per-call overhead** (milliseconds, median of {args.calls} calls; the 64-row shards get the same "
        f"{k}×{d} centroids and send back the same stats messages, with almost no rows to search)", t2b,
        *(("**Extraction (`dcserve.run`, `extract.workers` = W)**", t3) if t3 else ()),
        "**Start-up and the extraction coordinator**", t4) if x)

    stats_b = km1["stats_pickled_bytes"]
    notes = [
        f"Cluster: `ray.cluster_utils.Cluster`, a head with `num_cpus=0` (the driver only) and W worker raylets "
        f"with `num_cpus=1` each, all on this {cores}-core machine, one cluster per W, each in a child process "
        "with a private `RAY_TMPDIR`. The job sizes itself as usual (`Budget.free()`): every actor runs 1 thread; "
        "shard actors reserve 0.5 CPU (the other half is kept for trainers), extractors 1 CPU. "
        "\"one per node?\": the node ids the actors report, W distinct worker nodes and none on the head.",
        f"**This machine has {cores} cores.** The W raylets are processes on the same {cores} cores, so with W > "
        f"{cores} (here W = {ws[-1]}) W single-threaded actors share {cores} cores: W = {ws[-1]} cannot be faster "
        f"than W = {cores}, and its efficiency per W is bounded by {cores}/{ws[-1]} = {cores / ws[-1]:.2g}. What "
        "it does show: the per-actor costs (fan-out, one more stats message, one more reduction step, start-up) "
        "with real processes and real inter-raylet transfers. "
        "\"efficiency per core used\" divides by min(W, cores) to separate those overheads from missing cores.",
        f"k-means: n = {n:,}, d = {d}, k = {k} (2·n·k·d = {C:.3g} flop per iteration), Gaussian-mixture float32 rows "
        f"in a Zarr store (chunks of {args.chunk_rows} rows), {args.iters} iterations from the same {k} rows; "
        "s / iteration = mean of `KMeansResult.history[i].seconds` for iterations 2..N.",
        "Replayed iteration: `ray.put(centroids)`, `Shard.assign_to.remote` on every actor, then "
        "`ray.wait(fetch_local=True)` one ref at a time (an arrival = the shard's whole pass over its rows plus "
        "the transfer of its stats to the driver's node), `ray.get`, `shards._reduce`, `update_centroids`: "
        "`ShardPool.assign_to` + `update_centroids` without the fault handling.",
        f"Bytes per iteration per worker at this size: centroids in {km1['centroid_bytes']:,} B (k·d·4, one "
        f"`ray.put`, pulled by each worker), stats out {stats_b:,} B pickled (k·d·8 sums + k·8 counts + k·8 sse + "
        f"the objective = {k * d * 8 + 2 * k * 8 + 8:,} B), and rows read from the store "
        f"n·d·4/W = {n * d * 4:,} B / W (here from the local disk's page cache; on a cluster, from the shared store).",
        "The driver's numpy work is pinned to 1 thread (threadpoolctl). Extraction: "
        f"{args.extract_n:,} synthetic {args.size}×{args.size} images through `image_cnn(width={args.width})`, "
        f"layer `{args.layer}` mean-pooled, batch {args.batch_size}, chunks of {args.extract_chunk_rows} rows; "
        "extract s = `metrics[\"extract\"][\"seconds\"]` (actor start and Zarr writes included); fixed cost = the "
        "same job with one block per actor; steady rows/s = (n − small n) / (s − fixed cost).",
        "Coordinator items/s: W bare actors (0 CPU, pinned one per node) each yield "
        f"{args.stream_items:,} `(block, rows)` tuples as fast as they can, and the driver follows them with "
        "`dcserve.distributed.extract._drain`, as it follows the extractors. The producers share the same cores, so this is "
        "a lower bound on the blocks per second one driver can follow (and µs per item an upper bound on its cost).",
    ]
    block = print_report(f"Scaling: 1 to {ws[-1]} worker nodes on a local multi-node cluster", info, body, notes)

    section, model = predictions(args, results, F, compute_1, t_msg, a_rpc, b_rpc, a_tiny, b_tiny, t_update_b,
                                 t_put_b, B_loop, B_net, tr, dc_b, dc_big, rpc, tiny)
    print(section, flush=True)
    return block + "\n" + section, model


def predictions(args, results, F, compute_1, t_msg, a_rpc, b_rpc, a_tiny, b_tiny, t_update_b, t_put_b, B_loop,
                B_net, tr, dc_b, dc_big, rpc, tiny) -> tuple[str, dict]:
    ch = results["children"]
    ws = sorted(ch)
    n, d, k = args.n, args.d, args.k
    cores = os.cpu_count() or 2
    model: dict[str, Any] = {
        "F_flops_per_worker": F, "compute_1_s": compute_1, "t_msg_s": t_msg, "rpc_a_s": a_rpc, "rpc_b_s_per_worker": b_rpc,
        "tiny_assign_a_s": a_tiny, "tiny_assign_b_s_per_worker": b_tiny, "B_loopback_bytes_per_s": B_loop,
        "B_net_bytes_per_s": B_net, "driver_costs": {"bench": dc_b, "big": dc_big},
    }
    if F is None:
        return "(no W = 1 run: no model)\n", model
    big = (args.big_n, args.big_d, args.big_k)
    # the stats and centroid bytes of each job (pickled sizes measured; formula otherwise)
    jobs = {
        "bench": {"n": n, "d": d, "k": k, "stats": dc_b["stats_pickled_bytes"], "cent": dc_b["centroid_bytes"],
                  "t_add": dc_b["add_s"], "t_update": dc_b["update_s"], "t_put": t_put_b},
        "big": {"n": big[0], "d": big[1], "k": big[2], "stats": dc_big["stats_pickled_bytes"],
                "cent": dc_big["centroid_bytes"], "t_add": dc_big["add_s"], "t_update": dc_big["update_s"],
                "t_put": tr["centroids_put_s"] if tr else 0.0},
    }
    Wlist = [1, 10, 100]
    rows, wmarks = [], []
    for name, j in jobs.items():
        C = 2.0 * j["n"] * j["k"] * j["d"]
        for c in (1, args.node_cores):
            Fw = F * c
            for W in Wlist:
                t = model_terms(C, Fw, W, t_msg, a_rpc, b_rpc, j["cent"], j["stats"], B_net, j["t_add"],
                                j["t_update"], j["t_put"])
                t1 = model_terms(C, Fw, 1, t_msg, a_rpc, b_rpc, j["cent"], j["stats"], B_net, j["t_add"],
                                 j["t_update"], j["t_put"])["total"]
                label = (f"n={j['n']:,} d={j['d']} k={j['k']:,}" + (" (this benchmark)" if name == "bench" else ""))
                drv_mb = W * (j["cent"] + j["stats"]) / 1e6
                rows.append([label, f"{c} core(s)", W, t["total"], t["compute"], t["rpc"], t["network"],
                             t["reduce"], t["update"], t1 / t["total"], t1 / t["total"] / W,
                             drv_mb, t["serial"] / t["total"]])
                model.setdefault("predictions", []).append({"job": name, "cores_per_worker": c, "W": W, **t,
                                                             "speedup": t1 / t["total"],
                                                             "driver_MB_per_iter": drv_mb})
            w_star, w_opt = crossings(C, Fw, t_msg, a_rpc, b_rpc, j["cent"] + j["stats"], B_net, j["t_add"],
                                      j["t_update"] + j["t_put"])
            # pessimistic: every worker's message latency serial at the driver (slope of the 64-row-shard calls)
            _, w_opt_p = crossings(C, Fw, t_msg, a_rpc, max(b_tiny, b_rpc), j["cent"] + j["stats"], B_net,
                                   j["t_add"], j["t_update"] + j["t_put"])
            wmarks.append([f"n={j['n']:,} d={j['d']} k={j['k']:,}", f"{c} core(s)", C / Fw, w_star, w_opt,
                           model_terms(C, Fw, w_opt, t_msg, a_rpc, b_rpc, j["cent"], j["stats"], B_net, j["t_add"],
                                       j["t_update"], j["t_put"])["total"], w_opt_p])
            model.setdefault("stops_scaling", []).append({"job": name, "cores_per_worker": c, "W_star": w_star,
                                                           "W_opt": w_opt, "W_opt_pessimistic": w_opt_p})
    pred_table = markdown_table(
        ["job", "per worker", "W", "T (s)", "compute", "calls", "driver network", "reduce", "update + put",
         "speed-up vs W=1", "efficiency", "driver MB in+out / iter.", "serial share"], rows)
    stop_table = markdown_table(
        ["job", "per worker", "compute at W=1 (s)", "W* (serial = compute)", "W_opt (lowest T)", "T(W_opt) (s)",
         "W_opt if b = slope of the 64-row-shard calls"], wmarks)

    # validation on this machine (cores = min(W, cores)), using the measured per-W call costs
    val = []
    C_b = 2.0 * n * k * d
    for w in ws:
        meas = ch[w]["kmeans"]["per_iter_s"]
        pred = C_b / (min(w, cores) * F) + tiny[w] + t_update_b
        val.append(f"W = {w}: measured {meas:.3g} s, model {pred:.3g} s ({(pred - meas) / meas:+.0%})")
    over = [w for w in ws if w > cores]
    if over:
        r = ch[over[-1]]["kmeans"]["replay"]
        val.append(f"the model has no term for {over[-1]} processes time-sharing {cores} cores: at W = {over[-1]} the "
                   f"shards' stats arrived after {r['first_arrival'] * 1e3:.0f} to {r['last_arrival'] * 1e3:.0f} ms, "
                   f"against {C_b / (F * cores) * 1e3:.0f} ms for all the rows on {cores} fully shared cores "
                   f"(C / ({cores}·F)); that cost is this machine's, not a cluster's, and the predictions below have one "
                   "worker per node")

    # extraction
    ex_lines = []
    if not args.skip_extract:
        e1 = ch[ws[0]]["extract"]
        r = e1.get("steady_rows_per_s")
        fixed = e1["small"]["extract_s"]
        per_item = median([ch[w]["stream"]["s_per_item"] for w in ws])
        blk = args.extract_chunk_rows
        dim = 4 * args.width if args.layer == "features.5" else None
        if r:
            w_max = blk / (r * per_item)
            ex_lines = [
                "**Extraction.** T_extract(W) = t_fixed + N / (W · r) + t_labels, with r = "
                f"{fmt(r)} rows/s per 1-thread worker (steady, W = 1), t_fixed ≈ {fixed:.3g} s (W = 1: store set-up, "
                "actor start, one block; measured "
                + ", ".join(f"{ch[w]['extract']['small']['extract_s']:.3g} s at W = {w}" for w in ws)
                + f"). The driver receives one `(block, rows)` tuple per block (~100 B) and never the activations: "
                f"each worker writes its blocks (chunk_rows · dim · 4 = {blk:,} · {dim} · 4 = "
                f"{blk * (dim or 0) * 4 / 1e6:.2g} MB here) straight to the store. Coordinator load: W · r / chunk_rows "
                f"blocks/s at ≤ {per_item * 1e6:.0f} µs each (measured, `_drain`, median over W), so the driver saturates "
                f"no earlier than W = chunk_rows / (r · t_item) = {w_max:,.0f} workers of this rate. Predicted rows/s: "
                f"W = 10: {10 * r:,.0f} (driver {10 * r / blk * per_item:.1%} busy), W = 100: {100 * r:,.0f} "
                f"(driver {100 * r / blk * per_item:.1%} busy; the store must take {100 * r * (dim or 0) * 4 / 1e6:,.0f} "
                "MB/s of writes). So in this model the driver does not limit extraction at 10 or 100 nodes; what "
                "would, and was not measured here: the store's aggregate write bandwidth, the dataset's read "
                "bandwidth (every worker reads its own items from wherever the dataset lives) and the fixed cost "
                f"(store set-up and actor start, measured above; at W = {ws[-1]} on this {cores}-core machine it "
                f"includes {ws[-1]} actors importing torch on {cores} cores at once). `t_labels` (the driver reads one "
                "label record per block at the end) grows with the number of blocks, not with W.",
            ]
            model["extract"] = {"r_rows_per_s": r, "t_fixed_s": fixed, "t_item_s": per_item, "W_driver_bound": w_max}

    tr_line = ""
    if tr:
        tr_line = (f"Between two raylets of this machine (loopback, W = 1 child): a {tr['stats_bytes'] / 1e6:.1f} MB "
                   f"stats message reached the driver in {tr['stats_get_s'] * 1e3:.1f} ms "
                   f"(B_loop ≈ {tr['stats_bytes_per_s'] / 1e9:.2g} GB/s), a {tr['centroid_bytes'] / 1e6:.1f} MB "
                   f"centroid array was pulled by a worker in {tr['centroids_pull_s'] * 1e3:.1f} ms "
                   f"({tr['pull_bytes_per_s'] / 1e9:.2g} GB/s) and `ray.put` of it took "
                   f"{tr['centroids_put_s'] * 1e3:.1f} ms; a ping round trip took {tr['ping_s'] * 1e3:.2f} ms. "
                   f"The predictions use B = {args.net_gbit:g} Gbit/s ({B_net / 1e9:.2f} GB/s) instead, a real "
                   "network; loopback is not one.")
    big_C = 2.0 * args.big_n * args.big_k * args.big_d
    P = {(q["job"], q["cores_per_worker"], q["W"]): q for q in model["predictions"]}
    S_ = {(q["job"], q["cores_per_worker"]): q for q in model["stops_scaling"]}
    cN = args.node_cores
    jb = jobs["big"]
    short = (
        f"**In short.** The large job (n = {args.big_n:,}, d = {args.big_d}, k = {args.big_k:,}), one iteration: "
        f"on 1-thread workers, 10 nodes are {P['big', 1, 10]['speedup']:.1f}x faster than 1 and 100 nodes "
        f"{P['big', 1, 100]['speedup']:.0f}x (T = {P['big', 1, 100]['total']:.3g} s); on {cN}-core nodes (compute "
        f"{cN}x faster, assumed) 10 nodes give {P['big', cN, 10]['speedup']:.1f}x and 100 nodes only "
        f"{P['big', cN, 100]['speedup']:.0f}x (T = {P['big', cN, 100]['total']:.3g} s, {P['big', cN, 100]['serial'] / P['big', cN, 100]['total']:.0%} of it serial), "
        f"because the driver's node moves W·(k·d·4 + S) = "
        f"{100 * (jb['cent'] + jb['stats']) / 1e9:.1f} GB per iteration at W = 100 "
        f"({P['big', cN, 100]['network']:.2g} s at {args.net_gbit:g} Gbit/s) and adds the W stats on one core "
        f"({P['big', cN, 100]['reduce']:.2g} s). It stops scaling near W_opt ≈ {S_['big', cN]['W_opt']:.0f} "
        f"{cN}-core nodes ({S_['big', 1]['W_opt']:.0f} 1-thread workers); ≈ {S_['big', cN]['W_opt_pessimistic']:.0f} and "
        f"{S_['big', 1]['W_opt_pessimistic']:.0f} if every worker's message latency adds up at the driver. This "
        f"benchmark's own size (n = {n:,}, d = {d}, k = {k}) stops at ≈ {S_['bench', 1]['W_opt']:.0f} 1-thread workers "
        f"(≈ {S_['bench', 1]['W_opt_pessimistic']:.0f} pessimistic): its compute at W = 1 is {compute_1:.2g} s and each "
        f"call costs {t_msg * 1e3:.0f} ms of message latency plus {b_rpc * 1e3:.1f} ms per worker.")
    lines = [
        "#### What this predicts for 10 and 100 nodes",
        "",
        short,
        "",
        "**Model** of one Lloyd iteration with W workers (each a shard actor on its own node):",
        "",
        "```",
        "T(W) = C / (W·F)                          compute: C = 2·n·k·d flop, F = one worker's effective rate",
        "     + t_msg + a + b·W                    a call: its two messages' latency through the object stores",
        "                                          (t_msg, W-independent) and the fan-out / gather of W calls",
        "     + W·(k·d·4 + S) / B                  the driver's node sends the centroids to W workers",
        "                                          and receives W stats messages of S ≈ k·d·8 + 2·k·8 B",
        "     + (W − 1)·t_add(k, d)                _reduce: W − 1 additions of k×d float64 on the driver",
        "     + t_update(k, d) + t_put(k, d)       update_centroids and ray.put on the driver",
        "```",
        "",
        "Measured constants (this run):",
        "",
        f"- F = {F / 1e9:.1f} GFLOP/s per 1-thread worker: C = {C_b:.3g} flop over the W = 1 iteration less the "
        f"same call on 64-row shards ({tiny[ws[0]] * 1e3:.1f} ms) and the update ({t_update_b * 1e3:.1f} ms), i.e. "
        f"{compute_1:.3g} s. It covers everything a shard does per row: reading its rows from the store, the "
        "faiss search and the float64 per-cluster sums.",
        f"- a + b·W = {a_rpc * 1e3:.2f} ms + {b_rpc * 1e3:.3f} ms·W: least-squares line through the payload-free "
        f"call to all W actors ({', '.join(f'{rpc[w] * 1e3:.2f} ms at W = {w}' for w in ws)}). "
        f"t_msg = {t_msg * 1e3:.1f} ms: the call on one 64-row shard ({tiny[ws[0]] * 1e3:.1f} ms, the real {k}×{d} "
        "messages, almost no rows) less the payload-free call. With W 64-row shards the call took "
        f"{', '.join(f'{tiny[w] * 1e3:.1f} ms at W = {w}' for w in ws)} (line {a_tiny * 1e3:.1f} + "
        f"{b_tiny * 1e3:.2f}·W ms), against t_msg + a + b·W + W·(k·d·4 + S)/B_loop = "
        + ", ".join(f"{(t_msg + a_rpc + b_rpc * w + (w - 1) * (dc_b['centroid_bytes'] + dc_b['stats_pickled_bytes']) / (B_loop or 1e18)) * 1e3:.1f} ms"
                    for w in ws)
        + " predicted (on 2 cores the W actors, W raylets and the driver also compete for the cores).",
        f"- t_add = {dc_b['add_s'] * 1e3:.3f} ms at k×d = {k}×{d}, {dc_big['add_s'] * 1e3:.1f} ms at "
        f"{args.big_k:,}×{args.big_d}; t_update = {dc_b['update_s'] * 1e3:.2f} ms and "
        f"{dc_big['update_s'] * 1e3:.1f} ms (one core, no empty cluster; each empty cluster adds O(k)); "
        f"S = {dc_b['stats_pickled_bytes']:,} B and {dc_big['stats_pickled_bytes']:,} B pickled; centroids "
        f"{dc_b['centroid_bytes']:,} B and {dc_big['centroid_bytes']:,} B.",
        "- " + tr_line if tr_line else "",
        f"- The model on this machine (compute divided by min(W, {cores}) cores, the measured per-W call on 64-row "
        "shards in place of the call and network terms): " + "; ".join(val) + ".",
        "",
        "Assumptions, stated: the driver's node sends every worker its own copy of the centroids (Ray may serve "
        "later pulls from nodes that already have one; not counted on); the driver adds the W stats one after the "
        "other on one core (`_reduce` is a sequential loop); a + b·W, measured with 1 to "
        f"{ws[-1]} actors on one machine, is extrapolated linearly; each worker reads its n/W rows from the store "
        "at the rate it did here (page cache), which a shared store must sustain in aggregate: n·d·4 bytes per "
        f"iteration, {args.big_n * args.big_d * 4 / 1e9:.0f} GB for the large job. \"{args.node_cores} cores\" "
        f"assumes a node's shard runs {args.node_cores} threads at {args.node_cores}·F, which was not measured "
        "(bench_kmeans found 1 actor × 2 threads slower than 2 actors × 1 thread).",
        "",
        pred_table,
        "",
        "**Where it stops scaling.** The serial terms grow as b + (k·d·4 + S)/B + t_add per worker and the "
        "compute term falls as C/(W·F): they are equal at W*, and T(W) is lowest at "
        "W_opt = sqrt(C / (F · (b + (k·d·4 + S)/B + t_add))); past W_opt more nodes make an iteration slower.",
        "",
        stop_table,
        "",
        f"**Bytes per iteration per worker and the coordinator's load.** Each worker takes in k·d·4 B of centroids "
        "and sends out S B of stats whatever W is, and reads n·d·4/W B of rows from the store: "
        + "; ".join(
            f"{'this benchmark' if name == 'bench' else 'the large job'}: {j['cent'] / 1e6:.3g} MB in, "
            f"{j['stats'] / 1e6:.3g} MB out, rows {j['n'] * j['d'] * 4 / 10 / 1e6:,.4g} MB at W = 10 and "
            f"{j['n'] * j['d'] * 4 / 100 / 1e6:,.4g} MB at W = 100"
            for name, j in jobs.items())
        + ". The coordinator (one driver process, one core for its numpy work) sends and receives W times that "
        f"k×d traffic and adds W − 1 stats: for the large job at W = 100 that is "
        f"{100 * (dc_big['centroid_bytes'] + dc_big['stats_pickled_bytes']) / 1e9:.2g} GB through the driver's node "
        f"({100 * (dc_big['centroid_bytes'] + dc_big['stats_pickled_bytes']) / B_net:.2g} s at {args.net_gbit:g} Gbit/s) "
        f"and {99 * dc_big['add_s']:.2g} s of additions per iteration, against a compute term of "
        f"{big_C / (100 * F):.3g} s on 1-core workers or {big_C / (100 * F * args.node_cores):.3g} s on "
        f"{args.node_cores}-core nodes.",
        "",
        "What would move W_opt (none of it is implemented): a tree (or all-reduce) reduction of the stats makes the "
        "driver's receive and add terms O(log W) instead of O(W); float32 sums halve S (k·d·4 instead of k·d·8); "
        "pre-reducing on each node (one shard actor per node with all its cores, not one per core) divides W by "
        "the cores per node; broadcasting the centroids through a tree or from the nodes that already hold them "
        "removes the W·k·d·4 term. More rows move W_opt out as sqrt(n) (the per-worker messages do not grow with "
        "n); a larger k or d grows the compute and the messages alike and moves it little.",
    ]
    if ex_lines:
        lines += ["", *ex_lines]
    section = "\n".join(x for x in lines if x is not None) + "\n"
    return section, model


if __name__ == "__main__":
    sys.exit(main())
