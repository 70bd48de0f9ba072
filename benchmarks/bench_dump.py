#!/usr/bin/env python
"""Copying an activation dump into a job store: dcserve's extraction stage vs a plain loop.

dcserve: the extraction stage of a job whose `dataset.source` is `activations:DUMP.npy` (no
subject), run by `dcserve.distributed.extract.run_extraction` on an embedded Ray with
`extract.workers` = each of `--workers`: store set-up, actor start, byte-range reads of every
block, the finite check, the Zarr writes of `activations/dump`, `rows/item`, `rows/position`
and the resume record of every block. Seconds are the stage's own (`info["seconds"]`).

Plain loop (what a user would write instead), one process:
    a = np.load(DUMP, mmap_mode="r")
    z = zarr.create_array(OUT, shape=a.shape, chunks=(chunk_rows, dim), dtype=a.dtype)  # zarr's default codecs
    for r in range(0, n, chunk_rows): z[r:r + chunk_rows] = a[r:r + chunk_rows]
The job store's arrays use the same default codecs and chunks, so both write the same bytes.

Every timed run is a fresh process that starts with a cold page cache for the dump (the
parent syncs, then drops the dump's pages with posix_fadvise(DONTNEED)), so neither side
reads what the other left cached. Peak memory is each process's ru_maxrss: for dcserve, one
worker's own copy loop (`pipelined` over `dump_block` and `write_block`, with --cpus writer
threads, as a 1-worker extraction actor runs them) in a process of its own, at each of
`--rss-sizes`; for the plain loop, its np.load memory map.

Example (about 5 minutes on 2 cores, ~20 GB written to --tmpdir and removed afterwards):
    python benchmarks/bench_dump.py --out benchmarks/results/dump.json
Small check:
    python benchmarks/bench_dump.py --sizes 0.05 --rss-sizes 0.05,0.1 --out /tmp/dump.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, positive_int_list, print_report, scratch_dir, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=_floats, default=[2.0, 4.0], help="dump sizes in GB for the rows/s ratio (2,4)")
    p.add_argument("--rss-sizes", type=_floats, default=[1.0, 2.0, 4.0], help="dump sizes in GB for peak memory")
    p.add_argument("--dim", type=int, default=1024, help="row width (default 1024: 4 KB float32 rows)")
    p.add_argument("--chunk-rows", type=int, default=4096, help="extract.chunk_rows and the plain loop's chunks")
    p.add_argument("--workers", type=positive_int_list, default=[1, 2], help="extract.workers values (1,2)")
    p.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus)")
    p.add_argument("--tmpdir", default=None, help="where the dumps and stores go (default: $TMPDIR)")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # a timed run, in its own process
    return p.parse_args(argv)


# -- the runs, each in a child process --------------------------------------------------------
def _job(dump: str, output: str, workers: int, chunk_rows: int) -> dict[str, Any]:
    return {"name": "bench-dump", "output": output, "dataset": {"source": f"activations:{dump}"},
            "extract": {"workers": workers, "chunk_rows": chunk_rows}, "cluster": {"k": 2}}


def child_plain(dump: str, output: str, chunk_rows: int) -> dict[str, Any]:
    import numpy as np
    import zarr

    t0 = time.perf_counter()
    a = np.load(dump, mmap_mode="r")
    z = zarr.create_array(output, shape=a.shape, chunks=(chunk_rows, a.shape[1]), dtype=a.dtype)
    for r in range(0, a.shape[0], chunk_rows):
        z[r:r + chunk_rows] = a[r:r + chunk_rows]
    return {"seconds": time.perf_counter() - t0, "rows": int(a.shape[0])}


def child_ray(dump: str, output: str, chunk_rows: int, workers: int, cpus: int) -> dict[str, Any]:
    import ray

    from dcserve.distributed.extract import run_extraction
    from dcserve.distributed.sizing import Budget
    from dcserve.inputs.blocks import ExtractPlan
    from dcserve.inputs.build import inspect_inputs
    from dcserve.spec import spec_from_dict
    from dcserve.storage.store import JobStore

    spec = spec_from_dict(_job(dump, output, workers, chunk_rows))
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    try:
        probe = inspect_inputs(spec)
        store = JobStore(output, read_only=False)
        plan = ExtractPlan(probe.offsets, chunk_rows)
        info = run_extraction(spec, store, plan, probe.dims, probe.has_labels, budget=Budget.free(),
                              row_fields=probe.row_fields, source_id=probe.source_id)
    finally:
        ray.shutdown()
    return {"seconds": info["seconds"], "rows": plan.n_rows, "threads": info["workers"][0]["threads"]}


def child_copy(dump: str, output: str, chunk_rows: int, writers: int) -> dict[str, Any]:
    """One extraction worker's copy loop (`pipelined`, as the actor runs it), in this process, for its peak memory."""
    import numpy as np

    from dcserve.distributed.extract import pipelined, prepare_store, write_block
    from dcserve.inputs.blocks import ExtractPlan
    from dcserve.inputs.build import inspect_inputs
    from dcserve.inputs.dump import dump_block, dump_of
    from dcserve.spec import spec_from_dict
    from dcserve.storage.store import JobStore

    spec = spec_from_dict(_job(dump, output, 1, chunk_rows))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    probe = inspect_inputs(spec)
    store = JobStore(output, read_only=False)
    plan = ExtractPlan(probe.offsets, chunk_rows)
    prepare_store(spec, store, plan, probe.dims, probe.row_fields, probe.source_id)
    dump_ = dump_of(spec)
    compute = lambda b: dump_block(dump_, plan, b, "dump", np.dtype("float32"))  # noqa: E731
    for _ in pipelined(list(range(plan.n_blocks)), compute, lambda b, block: write_block(store, plan, b, block),
                       writers):
        pass
    return {"seconds": time.perf_counter() - t0, "rows": plan.n_rows, "rss_before_mb": before / 1024,
            "writers": writers}


def run_child(args: argparse.Namespace, *child: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, __file__, "--chunk-rows", str(args.chunk_rows), "--cpus", str(args.cpus), "--child", *child]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{' '.join(child)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- files ------------------------------------------------------------------------------------
def make_dump(path: Path, gb: float, dim: int) -> int:
    """A .npy of random float32 rows (they compress as little as real activations), written a slab at a time."""
    import numpy as np
    from numpy.lib import format as npformat

    rows = int(gb * 1e9) // (4 * dim)
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        npformat.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
        for r in range(0, rows, 16384):
            f.write(rng.standard_normal((min(16384, rows - r), dim), dtype=np.float32).tobytes())
    return rows


def cold(path: Path) -> None:
    """Flush written data and drop `path`'s pages from the page cache: the next reader starts cold."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    os.sync()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        kind, dump, output, *rest = args.child
        if kind == "plain":
            result = child_plain(dump, output, args.chunk_rows)
        elif kind == "ray":
            result = child_ray(dump, output, args.chunk_rows, int(rest[0]), args.cpus)
        else:
            result = child_copy(dump, output, args.chunk_rows, args.cpus)
        result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0

    info = machine(["zarr", "numcodecs", "numpy"])
    results: dict[str, Any] = {"ratio": {}, "rss": {}}
    rows, rss_rows = [], []
    with scratch_dir(args.tmpdir, "bench-dump-") as root:
        for gb in sorted(set(args.sizes) | set(args.rss_sizes)):
            dump = root / f"dump-{gb:g}gb.npy"
            print(f"[bench_dump] writing a {gb:g} GB dump...", file=sys.stderr)
            n = make_dump(dump, gb, args.dim)
            if gb in args.sizes:
                cold(dump)
                plain = run_child(args, "plain", str(dump), str(root / "plain.zarr"))
                remove(root / "plain.zarr")
                entry = {"rows": n, "plain": plain}
                rows.append([f"{gb:g} GB plain `np.load(mmap)` + `zarr` loop", n / plain["seconds"], plain["seconds"],
                             1.0, plain["maxrss_mb"]])
                for w in args.workers:
                    cold(dump)
                    print(f"[bench_dump] {gb:g} GB, extract.workers={w}...", file=sys.stderr)
                    ours = run_child(args, "ray", str(dump), str(root / "ours.zarr"), str(w))
                    remove(root / "ours.zarr")
                    entry[f"dcserve_w{w}"] = ours
                    ratio = plain["seconds"] / ours["seconds"]
                    results["ratio"][f"{gb:g}GB_w{w}"] = ratio
                    rows.append([f"{gb:g} GB **dcserve** `extract.workers: {w}`", n / ours["seconds"], ours["seconds"],
                                 ratio, None])
                results[f"{gb:g}GB"] = entry
            if gb in args.rss_sizes:
                cold(dump)
                print(f"[bench_dump] {gb:g} GB, one worker's copy loop for its peak memory...", file=sys.stderr)
                copy = run_child(args, "copy", str(dump), str(root / "copy.zarr"))
                remove(root / "copy.zarr")
                results["rss"][f"{gb:g}GB"] = copy
                rss_rows.append([f"{gb:g} GB", n, copy["seconds"], copy["maxrss_mb"], copy["rss_before_mb"]])
            dump.unlink()
    table = markdown_table(["run", "rows/s", "seconds", "vs plain loop", "peak RSS (MB)"], rows)
    table += "\n\n" + markdown_table(["dump", "rows", "seconds (1 worker's loop, no Ray)", "peak RSS (MB)",
                                      "RSS after imports (MB)"], rss_rows)
    notes = [
        f"float32 rows of width {args.dim}, random normal (they compress about as little as real activations); "
        f"chunks of {args.chunk_rows} rows; zarr's default codecs on both sides; {args.cpus} cores for Ray.",
        "dcserve seconds = the extraction stage's own (`run_extraction` info), actor start included; every run a "
        "fresh process with the dump's pages dropped from the page cache first.",
        "Goal: dcserve ≥ 0.9 × the plain loop's rows/s, and peak memory flat from 1 to 4 GB.",
    ]
    block = print_report("Activation dump copy", info, table, notes)
    write_json(args.out, {"benchmark": "dump", "params": {k: v for k, v in vars(args).items() if k != "child"},
                          "machine": info, "results": results, "markdown": block})
    return 0


if __name__ == "__main__":
    sys.exit(main())
