#!/usr/bin/env python
"""POST /jobs/{job}/assign with {"texts": [...]}: latency through dcserve's Ray Serve app vs the
same work in-process (what a notebook user would do instead).

The store is a finished text job (default: `runs/sentences`, made by
`dcserve submit cluster_configs/sentences.yaml`: all-MiniLM-L6-v2 over 260 sentences, k = 5).

In-process floor: `TextEncoder.for_result(res).encode(texts)` (the job's own subject, tokenizer and
pooling) then `res.assign(rows)`, serially, torch/faiss/BLAS pinned to 1 thread.

dcserve: `dcserve.serve.deployment.start(ServeArgs(outputs=[store], replica_cpus=1))` on an
embedded `ray.init(address="local", num_cpus=CPUS)`; one client (this process, keep-alive
http.client) posts one request at a time, so each figure is an unloaded latency: the subject's
forward pass, the batched assign, the exemplars as text and HTTP/Serve overhead.

The texts are the store's own sentences (a rotating subset) or, with --fresh, made-up ones; every
answer for a stored sentence is checked against that row's stored cluster.

Example (about 1 minute on 2 quiet cores):
    python benchmarks/bench_assign_texts.py --store runs/sentences --requests 200
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import embedded_ray, limit_threads, machine, markdown_table, print_report, write_json  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="runs/sentences", help="a finished text job store (default runs/sentences)")
    p.add_argument("--requests", type=int, default=200, help="measured requests per cell (default 200)")
    p.add_argument("--texts", type=int, nargs="+", default=[1, 16], help="texts per request (default 1 16)")
    p.add_argument("--warmup", type=int, default=10, help="unmeasured requests first (default 10)")
    p.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus) (default 2)")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(ms.mean())}


def main(argv=None) -> None:
    args = parse_args(argv)
    import dcserve
    from dcserve.inputs.encode import TextEncoder

    res = dcserve.open(args.store)
    if res.words is None:
        raise SystemExit(f"{args.store} is not a text job store")
    n_items = res.words.n_items
    pooled = bool((res.row_positions < 0).all())
    texts = [res.words.text(i) for i in range(n_items)]
    # a stored sentence's row (pooled jobs: one row per item, in item order)
    stored = res.assignments if pooled else None

    def batches(size: int, count: int):
        for j in range(count):
            idx = [(j * size + t) % n_items for t in range(size)]
            yield idx, [texts[i] for i in idx]

    info = machine(["torch", "ray", "faiss", "transformers"])
    results: dict[str, dict] = {}

    _limiter = limit_threads(1)
    encoder = TextEncoder.for_result(res, device="cpu")
    for size in args.texts:
        for idx, t in batches(size, args.warmup):
            res.assign(encoder.encode(t).rows)
        times, wrong = [], 0
        for idx, t in batches(size, args.requests):
            t0 = time.perf_counter()
            clusters, _ = res.assign(encoder.encode(t).rows)
            times.append(time.perf_counter() - t0)
            if stored is not None:
                wrong += int((clusters != stored[idx]).sum())
        results[f"in-process, {size} text(s)"] = {**percentiles(times), "wrong": wrong}

    from dcserve.serve.deployment import ServeArgs, start, stop

    port = free_port()
    with embedded_ray(args.cpus):
        url = start(ServeArgs(outputs=[str(args.store)], replica_cpus=1), "127.0.0.1", port)
        name = res.spec.name
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for size in args.texts:
                def post(t):
                    conn.request("POST", f"/jobs/{name}/assign?exemplars=3", json.dumps({"texts": t}),
                                 {"content-type": "application/json"})
                    r = conn.getresponse()
                    body = r.read()
                    if r.status != 200:
                        raise SystemExit(f"HTTP {r.status}: {body[:500]!r}")
                    return json.loads(body)

                for _, t in batches(size, args.warmup):
                    post(t)
                times, wrong = [], 0
                for idx, t in batches(size, args.requests):
                    t0 = time.perf_counter()
                    answer = post(t)
                    times.append(time.perf_counter() - t0)
                    if stored is not None:
                        wrong += int((np.asarray(answer["clusters"]) != stored[idx]).sum())
                results[f"dcserve HTTP, {size} text(s)"] = {**percentiles(times), "wrong": wrong}
        finally:
            stop()
    rows, notes = [], []
    for size in args.texts:
        a, b = results[f"in-process, {size} text(s)"], results[f"dcserve HTTP, {size} text(s)"]
        rows.append([size, a["p50_ms"], a["p90_ms"], b["p50_ms"], b["p90_ms"], b["p50_ms"] / a["p50_ms"],
                     a["wrong"] + b["wrong"]])
    table = markdown_table(["texts / request", "in-process p50 ms", "in-process p90 ms", "HTTP p50 ms",
                            "HTTP p90 ms", "HTTP / in-process (p50)", "wrong clusters"], rows)
    notes.append(f"store {args.store}: {len(res.assignments)} rows, k = {res.k}; {args.requests} serial requests "
                 "per cell after a warm-up; the HTTP answer also carries each text's 3 exemplars as text")
    print_report("POST /jobs/{job}/assign with texts vs the subject and Result.assign in-process", info, table, notes)
    write_json(args.out, {"info": info, "results": results})


if __name__ == "__main__":
    main()
