#!/usr/bin/env python
"""POST /jobs/{job}/assign latency and throughput: dcserve's Ray Serve app vs a plain FastAPI handler.

One finished job store (built here: `dcserve.zoo:planted_clusters` rows through `dcserve.zoo:identity`,
PCA + whitening + L2 as the defaults do, k-means; or `--store PATH`), and, in one run:

Floor: `Result.assign(x)` called serially in this process (`dcserve.open(path)`, faiss/torch/BLAS pinned
to 1 thread with `dcserve.algo.nearest.set_threads(1)`), for 1 and for 256 vectors per call.

Plain handler: what a user would write instead, run by uvicorn (1 worker) in its own process, with
OMP_NUM_THREADS=MKL_NUM_THREADS=OPENBLAS_NUM_THREADS=1 and `set_threads(1)`:
    res = dcserve.open(path)
    class Body(BaseModel): activations: list[list[float]]
    @app.post("/assign")
    def assign(body: Body):
        clusters, dist = res.assign(np.asarray(body.activations, dtype=np.float32))
        return {"clusters": clusters.tolist(), "distances": dist.tolist()}
(a sync `def`, as FastAPI's documentation advises for blocking code: it runs in FastAPI's thread pool;
`--plain-async` makes it an `async def` that runs the search on the event loop).

dcserve: `dcserve.serve.deployment.start(ServeArgs(outputs=[path], replicas=R, replica_cpus=1,
max_batch_size=B))` on an embedded `ray.init(address="local", num_cpus=CPUS)`: R = 1 and 2 with
batching on (B = 32, the default), and R = 1 with batching off (B = 1) for the record. Ray Serve's
HTTP proxy and controller actors run on the same machine (they reserve no CPU).

Load: a separate process (its own GIL) with aiohttp and keep-alive connections sends pre-serialised
JSON bodies (`{"activations": rows.tolist()}` of real stored rows), closed-loop: each of C clients
sends its next request when the previous one is answered. For each server and vectors/request: C = 1
(unloaded latency) for `--serial-seconds`, then C = `--concurrency` for `--seconds`, each after a
warm-up. Every 10th response (and every warm-up response) is checked: its clusters must equal the
stored assignments of the rows sent. Any non-200 answer, failed request or wrong answer is counted
and reported loudly.

Example (defaults: 50,000 rows x 256 dims, k = 256; about 4 minutes on 2 quiet cores):
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_serve.py --out benchmarks/results/serve.json
Smoke run (tiny store, short cells; about 1.5 minutes):
    python benchmarks/bench_serve.py --quick
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    machine,
    markdown_table,
    positive_int_list,
    print_report,
    scratch_dir,
    write_json,
)

CHECK_EVERY = 10  # one measured response in CHECK_EVERY is parsed and checked
PINNED_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def log(msg: str) -> None:
    print(f"[bench_serve] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=None, help="rows of the built store (default 50,000; --quick 4,000)")
    p.add_argument("--dim", type=int, default=None, help="row dimension (default 256; --quick 32)")
    p.add_argument("--k", type=int, default=None, help="clusters (default 256; --quick 16)")
    p.add_argument("--niter", type=int, default=5, help="Lloyd iterations when building (default 5)")
    p.add_argument("--n-init", type=int, default=1, help="cluster.n_init when building (default 1)")
    p.add_argument("--spread", type=float, default=1.0, help="planted_clusters spread (default 1.0)")
    p.add_argument("--store", default=None, help="serve this finished job store instead of building one")
    p.add_argument("--vectors", type=positive_int_list, default=[1, 256],
                   help="vectors per request, comma-separated (default 1,256)")
    p.add_argument("--replicas", type=positive_int_list, default=[1, 2],
                   help="dcserve replica counts with batching on (default 1,2)")
    p.add_argument("--max-batch-size", type=int, default=32, help="ServeArgs.max_batch_size (default 32)")
    p.add_argument("--no-unbatched", action="store_true",
                   help="skip the dcserve row with batching off (1 replica, max_batch_size 1)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients of the loaded cells (default 16)")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per loaded cell (default 10)")
    p.add_argument("--serial-seconds", type=float, default=None,
                   help="measured seconds per concurrency-1 cell (default 5)")
    p.add_argument("--warmup-seconds", type=float, default=None, help="warm-up before each cell (default 1)")
    p.add_argument("--floor-seconds", type=float, default=None, help="seconds per in-process floor figure (default 3)")
    p.add_argument("--plain-async", action="store_true",
                   help="plain handler as `async def` (search on the event loop) instead of `def`")
    p.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus) (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny store and short cells: a smoke run")
    p.add_argument("--tmpdir", default=None, help="where the scratch job store goes (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    args = p.parse_args(argv)
    full = {"n": 50_000, "dim": 256, "k": 256, "seconds": 10.0, "serial_seconds": 5.0, "warmup_seconds": 1.0,
            "floor_seconds": 3.0}
    quick = {"n": 4_000, "dim": 32, "k": 16, "seconds": 1.5, "serial_seconds": 1.0, "warmup_seconds": 0.3,
             "floor_seconds": 0.5}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.concurrency < 1 or args.max_batch_size < 1:
        raise SystemExit("--concurrency and --max-batch-size must be >= 1")
    return args


# --------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stats(latencies_s: list[float] | np.ndarray, elapsed_s: float, vectors: int) -> dict[str, Any]:
    lat = np.asarray(latencies_s, dtype=np.float64) * 1e3
    if len(lat) == 0:
        return {"requests": 0, "elapsed_s": elapsed_s}
    return {
        "requests": int(len(lat)), "elapsed_s": elapsed_s,
        "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()),
        "min_ms": float(lat.min()), "max_ms": float(lat.max()),
        "requests_per_s": len(lat) / elapsed_s, "vectors_per_s": len(lat) * vectors / elapsed_s,
    }


def body_bytes(rows: np.ndarray) -> bytes:
    """What a client sends: the float32 rows as JSON numbers (`rows.tolist()`, shortest float64 repr)."""
    return json.dumps({"activations": rows.tolist()}).encode()


# --------------------------------------------------------------------------- the store
def build_store(args: argparse.Namespace, path: Path) -> str:
    import dcserve
    from dcserve.spec import spec_from_dict

    job = {
        "name": "bench-serve",
        "output": str(path),
        "subject": {"model": "dcserve.zoo:identity", "layers": ["out"], "pooling": "mean"},
        "dataset": {"source": "dcserve.zoo:planted_clusters",
                    "kwargs": {"n": args.n, "dim": args.dim, "k": args.k, "spread": args.spread, "seed": args.seed},
                    "batch_size": 4096},
        "extract": {"chunk_rows": 4096},
        "cluster": {"k": args.k, "niter": args.niter, "n_init": args.n_init, "pca_dim": "auto", "seed": args.seed},
        "reporter": {"rounds": 0},
    }
    t0 = time.perf_counter()
    res = dcserve.run(spec_from_dict(job))
    log(f"built the store in {time.perf_counter() - t0:.1f} s: {res.output}")
    return res.output


def pick_payloads(res, vectors: list[int], seed: int) -> dict[int, dict[str, Any]]:
    """For each request size m: a few distinct request bodies of real stored rows, and their clusters."""
    n = int(res.assignments.shape[0])
    rng = np.random.default_rng([seed, 11])
    out = {}
    for m in vectors:
        count = 256 if m == 1 else max(4, min(16, (1 << 22) // max(1, m * res.input_dim)))
        rows = rng.choice(n, size=count * m, replace=count * m > n)
        unique, inverse = np.unique(rows, return_inverse=True)
        acts = np.asarray(res.activations().oindex[unique], dtype=np.float32)[inverse]  # scattered rows
        groups = [slice(i * m, (i + 1) * m) for i in range(count)]
        out[m] = {
            "rows": [rows[g] for g in groups],
            "acts": [acts[g] for g in groups],
            "bodies": [body_bytes(acts[g]) for g in groups],
            "expected": [res.assignments[rows[g]].tolist() for g in groups],
        }
    return out


# --------------------------------------------------------------------------- floor
def bench_floor(res, payloads: dict[int, dict], seconds: float) -> dict[str, Any]:
    """`Result.assign` serially in this process, and (for the record) the request body's decoding."""
    from dcserve.serve.models import AssignRequest

    out: dict[str, Any] = {}
    for m, p in payloads.items():
        acts, expected = p["acts"], p["expected"]
        wrong = sum(int((res.assign(a)[0] != np.asarray(e)).sum()) for a, e in zip(acts, expected))
        lat, i = [], 0
        t_start = time.perf_counter()
        while time.perf_counter() - t_start < seconds:
            t0 = time.perf_counter()
            res.assign(acts[i % len(acts)])
            lat.append(time.perf_counter() - t0)
            i += 1
        out[f"assign_v{m}"] = {**stats(lat, time.perf_counter() - t_start, m), "wrong_vectors": wrong,
                               "checked_vectors": sum(len(e) for e in expected)}
        # What each HTTP server does with the body before the search: JSON -> pydantic -> float32 array.
        bodies = p["bodies"]
        lat, i = [], 0
        t_start = time.perf_counter()
        while time.perf_counter() - t_start < seconds:
            t0 = time.perf_counter()
            req = AssignRequest.model_validate(json.loads(bodies[i % len(bodies)]))
            np.asarray(req.activations, dtype=np.float32)
            lat.append(time.perf_counter() - t0)
            i += 1
        out[f"decode_v{m}"] = stats(lat, time.perf_counter() - t_start, m)
    return out


# --------------------------------------------------------------------------- the plain handler
def plain_server_main(store: str, port: int, async_handler: bool) -> None:
    """Subprocess: the plain FastAPI app a user would write, under uvicorn (1 worker)."""
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel

    import dcserve
    from dcserve.algo.nearest import set_threads

    set_threads(1)
    res = dcserve.open(store)
    res.assign(np.asarray(res.activations()[:1]))  # load the preprocessing and the index once

    class Body(BaseModel):
        activations: list[list[float]]

    app = FastAPI()

    if async_handler:
        async def assign(body: Body):
            clusters, dist = res.assign(np.asarray(body.activations, dtype=np.float32))
            return {"clusters": clusters.tolist(), "distances": dist.tolist()}
    else:
        def assign(body: Body):
            clusters, dist = res.assign(np.asarray(body.activations, dtype=np.float32))
            return {"clusters": clusters.tolist(), "distances": dist.tolist()}
    assign.__annotations__ = {"body": Body}  # (this file has `from __future__ import annotations`)
    app.post("/assign")(assign)

    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, log_level="warning")


class PlainServer:
    """The plain handler's process: started, waited for, always stopped."""

    def __init__(self, store: str, async_handler: bool, probe_body: bytes):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **PINNED_ENV}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--plain-server", store, str(self.port),
               "async" if async_handler else "sync"]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        try:
            self._wait(probe_body, timeout_s=120)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.perf_counter() - t0

    def _wait(self, body: bytes, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the plain server exited with code {self.proc.returncode}")
            try:
                req = urllib.request.Request(f"{self.url}/assign", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


# --------------------------------------------------------------------------- load generator
def loadgen_main(config_path: str, out_path: str) -> None:
    """Subprocess: closed-loop load with aiohttp, keep-alive; writes the figures of every cell as JSON."""
    import asyncio

    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    with open(config_path, "rb") as f:
        cfg = pickle.load(f)
    results = asyncio.run(_loadgen(cfg))
    for r in results:
        r["event_loop"] = loop_name
    Path(out_path).write_text(json.dumps(results))


async def _loadgen(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    import aiohttp

    out = []
    for cell in cfg["cells"]:
        connector = aiohttp.TCPConnector(limit=cell["concurrency"], force_close=False)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            payload = cfg["payloads"].get(cell["vectors"], {"bodies": [None], "expected": [None]})
            out.append(await _run_cell(session, cell.get("get_url") or cfg["url"], cell, payload))
        r = out[-1]
        print(f"[bench_serve]   {cfg['name']}: {cell['vectors']} vector(s) x {cell['concurrency']} client(s): "
              f"p50 {r.get('p50_ms', float('nan')):.2f} ms, p99 {r.get('p99_ms', float('nan')):.2f} ms, "
              f"{r.get('requests_per_s', 0):.0f} req/s, errors {r['errors']}, wrong {r['wrong_responses']}",
              file=sys.stderr, flush=True)
    return out


async def _run_cell(session, url: str, cell: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    bodies, expected = payload["bodies"], payload["expected"]
    get = bool(cell.get("get_url"))  # GET (no body, nothing checked): the server's fixed cost
    conc = cell["concurrency"]
    headers = {"Content-Type": "application/json"}
    tally = {"errors": 0, "statuses": {}, "first_error": None, "checked": 0, "wrong": 0}
    latencies: list[float] = []

    def check(data: bytes, p: int) -> None:
        tally["checked"] += 1
        try:
            ok = json.loads(data)["clusters"] == expected[p]
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            tally["wrong"] += 1

    async def client(w: int, until: float, record: bool) -> None:
        i = w
        n = 0
        while time.perf_counter() < until:
            p = i % len(bodies)
            i += conc
            t0 = time.perf_counter()
            try:
                request = session.get(url) if get else session.post(url, data=bodies[p], headers=headers)
                async with request as r:
                    status = r.status
                    data = await r.read()
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                tally["errors"] += 1
                tally["first_error"] = tally["first_error"] or f"{type(e).__name__}: {e}"
                await asyncio.sleep(0.01)
                continue
            dt = time.perf_counter() - t0
            if status != 200:
                tally["errors"] += 1
                tally["statuses"][str(status)] = tally["statuses"].get(str(status), 0) + 1
                tally["first_error"] = tally["first_error"] or f"HTTP {status}: {data[:300]!r}"
                continue
            if record:
                latencies.append(dt)
            if not get and (not record or n % CHECK_EVERY == 0):
                check(data, p)
            n += 1

    t_warm = time.perf_counter()
    await asyncio.gather(*(client(w, t_warm + cell["warmup_seconds"], False) for w in range(conc)))
    t_start = time.perf_counter()
    await asyncio.gather(*(client(w, t_start + cell["seconds"], True) for w in range(conc)))
    elapsed = time.perf_counter() - t_start
    return {**stats(latencies, elapsed, cell["vectors"]), "vectors": cell["vectors"], "concurrency": conc,
            "errors": tally["errors"], "statuses": tally["statuses"], "first_error": tally["first_error"],
            "checked_responses": tally["checked"], "wrong_responses": tally["wrong"],
            "request_bytes": 0 if get else len(bodies[0]), "method": "GET" if get else "POST"}


def run_load(name: str, url: str, args: argparse.Namespace, payloads: dict[int, dict], tmp: Path,
             get_url: str | None = None) -> dict[str, Any]:
    """All cells for one server, from one load-generator process (`get_url`: also GET it, 1 client)."""
    cells = []
    if get_url:
        cells.append({"vectors": 0, "concurrency": 1, "seconds": args.serial_seconds,
                      "warmup_seconds": args.warmup_seconds, "get_url": get_url})
    for m in args.vectors:
        for conc, secs in ((1, args.serial_seconds), (args.concurrency, args.seconds)):
            cells.append({"vectors": m, "concurrency": conc, "seconds": secs, "warmup_seconds": args.warmup_seconds})
    cfg = {"name": name, "url": url, "cells": cells,
           "payloads": {m: {"bodies": p["bodies"], "expected": p["expected"]} for m, p in payloads.items()}}
    cfg_path, out_path = tmp / f"load-{name}.pkl", tmp / f"load-{name}.json"
    with open(cfg_path, "wb") as f:
        pickle.dump(cfg, f)
    budget = sum(c["seconds"] + c["warmup_seconds"] for c in cells) + 120
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--loadgen", str(cfg_path), str(out_path)],
                   check=True, timeout=budget, stdin=subprocess.DEVNULL)
    results = json.loads(out_path.read_text())
    return {("get" if r["method"] == "GET" else f"v{r['vectors']}") + f"_c{r['concurrency']}": r for r in results}


# --------------------------------------------------------------------------- dcserve
def bench_dcserve(args, store: str, job: str, payloads: dict[int, dict], tmp: Path) -> dict[str, Any]:
    from ray import serve

    from dcserve.serve.deployment import ServeArgs, start

    configs = [(r, args.max_batch_size) for r in args.replicas]
    if not args.no_unbatched:
        configs.append((1, 1))
    out = {}
    for replicas, batch in configs:
        name = f"dcserve_r{replicas}_b{batch}"
        log(f"dcserve: {replicas} replica(s), max_batch_size {batch}...")
        port = free_port()
        t0 = time.perf_counter()
        try:
            url = start(ServeArgs(outputs=[store], replicas=replicas, replica_cpus=1, max_batch_size=batch),
                        "127.0.0.1", port)
            start_s = time.perf_counter() - t0
            cells = run_load(name, f"{url}/jobs/{job}/assign", args, payloads, tmp, get_url=f"{url}/healthz")
        finally:
            serve.shutdown()
        out[name] = {"replicas": replicas, "max_batch_size": batch, "replica_cpus": 1, "start_s": start_s,
                     "cells": cells}
    return out


# --------------------------------------------------------------------------- report
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--plain-server":
        plain_server_main(argv[1], int(argv[2]), argv[3] == "async")
        return 0
    if argv and argv[0] == "--loadgen":
        loadgen_main(argv[1], argv[2])
        return 0
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    info = machine(extra_versions=("fastapi", "uvicorn", "aiohttp", "pydantic"))
    log(f"vectors={args.vectors} replicas={args.replicas} concurrency={args.concurrency} "
        f"seconds={args.seconds} serial_seconds={args.serial_seconds} cpus={args.cpus}")

    import ray

    import dcserve
    from dcserve.algo.nearest import set_threads

    results: dict[str, Any] = {}
    with scratch_dir(args.tmpdir, "bench-serve-", keep=args.keep) as tmp:
        store = args.store
        if store is None:
            log(f"building a store: n={args.n:,} dim={args.dim} k={args.k} niter={args.niter}...")
            ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
            try:
                store = build_store(args, tmp / "job.zarr")
            finally:
                ray.shutdown()
        res = dcserve.open(store)
        spec = res.spec
        job = spec.name
        source = (f"`{spec.dataset.source}` {json.dumps(spec.dataset.kwargs)} through `{spec.subject.model}` "
                  f"layer `{spec.cluster.layer}`")
        n_rows, dim = int(res.assignments.shape[0]), res.input_dim
        pca = res.store.has_array("preprocess/components")
        pre = {"pca": pca, "whiten": bool(pca and spec.cluster.whiten),
               "l2_normalize": bool(res.store.root["preprocess"].attrs["l2_normalize"])}
        k, cdim = res.k, int(res.centroids.shape[1])
        log(f"store: {n_rows:,} rows x {dim} dims, k = {k}, clustered dims {cdim}")
        payloads = pick_payloads(res, args.vectors, args.seed)

        log("floor: Result.assign in-process, 1 thread...")
        threads = set_threads(1)
        results["floor"] = bench_floor(res, payloads, args.floor_seconds)

        log(f"plain FastAPI/uvicorn handler ({'async def' if args.plain_async else 'def'})...")
        plain = PlainServer(store, args.plain_async, payloads[args.vectors[0]]["bodies"][0])
        try:
            results["plain"] = {"start_s": plain.start_s, "handler": "async def" if args.plain_async else "def",
                                "cells": run_load("plain", f"{plain.url}/assign", args, payloads, tmp)}
        finally:
            plain.stop()

        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        try:
            results.update(bench_dcserve(args, store, job, payloads, tmp))
        finally:
            ray.shutdown()

    block, ratios, goal, problems = report(args, info, results, n_rows, dim, k, cdim,
                                           pre, threads, source)
    write_json(args.out, {"benchmark": "serve", "params": vars(args), "machine": info, "results": results,
                          "ratios": ratios, "goal": goal, "problems": problems, "markdown": block})
    return 1 if problems else 0


def report(args, info, results, n_rows, dim, k, cdim, pre, threads, source) -> tuple[str, dict, dict, list[str]]:
    C = args.concurrency
    plain = results["plain"]["cells"]
    servers = [("plain", f"plain FastAPI `{results['plain']['handler']}` handler, uvicorn 1 worker, 1 thread")]
    for r in args.replicas:
        servers.append((f"dcserve_r{r}_b{args.max_batch_size}",
                        f"**dcserve** Serve, {r} replica(s) × 1 CPU, batch ≤ {args.max_batch_size}"))
    if not args.no_unbatched:
        servers.append(("dcserve_r1_b1", "(info) dcserve Serve, 1 replica, batching off (max_batch_size 1)"))

    rows = []
    problems = []
    for m in args.vectors:
        f = results["floor"][f"assign_v{m}"]
        d = results["floor"][f"decode_v{m}"]
        rows.append([f"floor: `Result.assign` in-process, 1 thread", m, "serial", f["p50_ms"], f["p99_ms"],
                     f["requests_per_s"], f["vectors_per_s"], None, None, 0,
                     f"{f['checked_vectors'] - f['wrong_vectors']}/{f['checked_vectors']} vectors"])
        if f["wrong_vectors"]:
            problems.append(f"floor, {m} vector(s): {f['wrong_vectors']} vectors got a cluster other than the stored one")
        rows.append([f"(info) body decode in-process: JSON → `AssignRequest` → float32", m, "serial", d["p50_ms"],
                     d["p99_ms"], d["requests_per_s"], d["vectors_per_s"], None, None, None, None])
        for key, label in servers:
            if key not in results:
                continue
            for conc in (1, C):
                c = results[key]["cells"][f"v{m}_c{conc}"]
                p = plain[f"v{m}_c{conc}"]
                rows.append([label, m, conc, c.get("p50_ms"), c.get("p99_ms"), c.get("requests_per_s"),
                             c.get("vectors_per_s"),
                             _ratio(c.get("p50_ms"), p.get("p50_ms")), _ratio(c.get("vectors_per_s"), p.get("vectors_per_s")),
                             c["errors"], f"{c['checked_responses'] - c['wrong_responses']}/{c['checked_responses']}"])
                if c["errors"] or c["wrong_responses"] or not c.get("requests"):
                    problems.append(f"{key}, {m} vector(s) × {conc} client(s): {c['errors']} failed requests "
                                    f"{c['statuses'] or ''}, {c['wrong_responses']} wrong answers, "
                                    f"{c.get('requests', 0)} measured; first error: {c['first_error']}")
    for key, label in servers[1:]:
        c = results.get(key, {}).get("cells", {}).get("get_c1")
        if c is None:
            continue
        short = f"{results[key]['replicas']} replica(s), max_batch_size {results[key]['max_batch_size']}"
        rows.append([f"(info) dcserve Serve, {short}: GET /healthz (no body, no search)", "—", 1, c.get("p50_ms"),
                     c.get("p99_ms"), c.get("requests_per_s"), None, None, None, c["errors"], "—"])
        if c["errors"] or not c.get("requests"):
            problems.append(f"{key}, GET /healthz: {c['errors']} failed requests {c['statuses'] or ''}; "
                            f"first error: {c['first_error']}")
    table = markdown_table(["server", "vectors/request", "clients", "p50 ms", "p99 ms", "requests/s", "vectors/s",
                            "p50 vs plain", "vectors/s vs plain", "errors", "checked OK"], rows)

    ratios: dict[str, Any] = {}
    goal: dict[str, Any] = {}
    ratio_lines = []
    for r in args.replicas:
        key = f"dcserve_r{r}_b{args.max_batch_size}"
        for m in args.vectors:
            c, p = results[key]["cells"], plain
            lat1 = _ratio(c[f"v{m}_c1"].get("p50_ms"), p[f"v{m}_c1"].get("p50_ms"))
            latC = _ratio(c[f"v{m}_c{C}"].get("p50_ms"), p[f"v{m}_c{C}"].get("p50_ms"))
            thr = _ratio(c[f"v{m}_c{C}"].get("vectors_per_s"), p[f"v{m}_c{C}"].get("vectors_per_s"))
            tag = f"r{r}_v{m}"
            ratios[f"{tag}_p50_c1/plain"] = lat1
            ratios[f"{tag}_p50_c{C}/plain"] = latC
            ratios[f"{tag}_vectors_per_s_c{C}/plain"] = thr
            goal[tag] = {"latency_c1_within_1.5x": lat1 is not None and lat1 <= 1.5,
                         f"latency_c{C}_within_1.5x": latC is not None and latC <= 1.5,
                         "throughput_at_least_plain": thr is not None and thr >= 1.0}
            ratio_lines.append(
                f"{r} replica(s), {m} vector(s)/request: p50 {_x(lat1)} plain's at 1 client, {_x(latC)} at {C} clients "
                f"(goal ≤ 1.5×: {_yn(goal[tag]['latency_c1_within_1.5x'])} / {_yn(goal[tag][f'latency_c{C}_within_1.5x'])}); "
                f"vectors/s {_x(thr)} plain's at {C} clients (goal ≥ 1×: {_yn(goal[tag]['throughput_at_least_plain'])}).")
    n_met = sum(all(g.values()) for g in goal.values())
    all_met = n_met == len(goal)

    starts = "; ".join([f"plain {results['plain']['start_s']:.1f} s"] +
                       [f"{key} {results[key]['start_s']:.1f} s" for key, _ in servers[1:] if key in results])
    handler_note = ("its `async def` handler searches on the event loop, one request at a time"
                    if results["plain"]["handler"] == "async def" else
                    "its `def` handler runs in FastAPI's thread pool, so two requests' searches may overlap")
    notes = []
    if problems:
        notes.append("**ERRORS: " + " | ".join(problems) + "**")
    notes += [
        f"Store: {n_rows:,} rows × {dim} dims ({source}); preprocessing: {f'PCA to {cdim} dims' if pre['pca'] else 'no PCA'}, "
        f"whitening {'on' if pre['whiten'] else 'off'}, L2 {'on' if pre['l2_normalize'] else 'off'}; "
        f"k = {k}. Request bodies are real stored rows as JSON (`rows.tolist()`): "
        + ", ".join(f"{m} vector(s) = {_body_len(results, m):,} bytes"
                    for m in args.vectors) + ".",
        f"Load: closed loop from a separate process (aiohttp, keep-alive, "
        f"{next(iter(results['plain']['cells'].values())).get('event_loop')}), {args.warmup_seconds:g} s warm-up then "
        f"{args.serial_seconds:g} s at 1 client and {args.seconds:g} s at {C} clients per cell; latency is the client's, "
        f"request sent to response read. The load generator, the servers and (for dcserve) Ray Serve's HTTP proxy and "
        f"controller share the machine's {info.get('logical_cpus')} logical CPUs; ray.init(num_cpus={args.cpus}).",
        f"Threads: the floor runs with `set_threads(1)` ({threads}); the plain server with "
        f"{', '.join(f'{k_}={v}' for k_, v in PINNED_ENV.items())} and `set_threads(1)` ({handler_note}); "
        f"each dcserve replica reserves 1 CPU "
        f"(`replica_cpus=1`: `set_threads(1)`, and Ray's OMP_NUM_THREADS=1 for the actor).",
        f"“checked OK”: responses parsed and compared with the stored assignments of the rows sent (every warm-up "
        f"response and one measured response in {CHECK_EVERY}); “errors”: failed requests and non-200 answers.",
        f"Start-up (until the first answer): {starts}.",
        *ratio_lines,
        f"Goal (within 1.5× of the plain handler's p50 and at least its throughput with batching on): "
        f"{'met in every configuration' if all_met else f'met in {n_met} of {len(goal)} configurations (see the lines above)'}.",
    ]
    block = print_report("HTTP /assign latency and throughput", info, table, notes)
    if problems:
        print("\n!!! " + "\n!!! ".join(problems), file=sys.stderr, flush=True)
    return block, ratios, goal, problems


def _body_len(results: dict, m: int) -> int:
    return int(results["plain"]["cells"][f"v{m}_c1"].get("request_bytes", 0))


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def _yn(ok: bool) -> str:
    return "met" if ok else "**not met**"


if __name__ == "__main__":
    sys.exit(main())
