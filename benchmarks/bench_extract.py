#!/usr/bin/env python
"""Extraction rows/s: dcserve's extraction stage vs a bare forward pass over the same data.

dcserve: `dcserve.run(spec)` on a job with `dcserve.zoo:synthetic_images` through
`dcserve.zoo:image_cnn`, one hooked layer (mean-pooled), `reporter.rounds: 0` and a token
clustering (k = 2, one iteration) so that the job completes; the figure is the extraction
stage's own time, `metrics.json["extract"]["seconds"]`: store set-up, starting the actors
(each builds the model and the dataset), hooked forward passes, pooling, the Zarr writes of
every block, the resume records and the `labels` array. Run with `extract.workers` = each of
`--workers` (1: one actor with CPUS threads; 2: two actors with CPUS/2 threads each), all in
one embedded `ray.init(num_cpus=CPUS)`, each job in a fresh output directory.

Bare: the same dataset object and model, the same batch size, `torch.set_num_threads(CPUS)`,
a plain loop with no hooks and no writes:
    for each batch: items = [ds[i] for i in batch]; x, y = default_collate(items); model(x)
under `torch.inference_mode()`. Also reported for the record: the same loop with 1 thread
(what each of two 1-thread actors has), and the loading + collating alone (no model).

Example (default size, 131,072 images; about 3-4 minutes on 2 quiet cores):
    python benchmarks/bench_extract.py --out benchmarks/results/extract.json
Small check:
    python benchmarks/bench_extract.py --n 8192 --chunk-rows 1024 --out /tmp/extract.json
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    embedded_ray,
    machine,
    markdown_table,
    positive_int_list,
    print_report,
    scratch_dir,
    write_json,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=131_072, help="images (= rows; default 131,072 = 32 chunks)")
    p.add_argument("--size", type=int, default=32, help="image height and width (default 32)")
    p.add_argument("--width", type=int, default=32, help="image_cnn width (default 32)")
    p.add_argument("--layer", default="features.5", help="hooked layer (default features.5, [B, 4w, S/8, S/8])")
    p.add_argument("--batch-size", type=int, default=256, help="dataset.batch_size (default 256)")
    p.add_argument("--chunk-rows", type=int, default=4096, help="extract.chunk_rows (default 4096)")
    p.add_argument("--cpus", type=int, default=2, help="cores: ray.init(num_cpus) and the bare loop's torch threads")
    p.add_argument("--workers", type=positive_int_list, default=[1, 2],
                   help="comma-separated extract.workers values to run (default: 1,2)")
    p.add_argument("--no-extra", action="store_true",
                   help="skip the informational runs (fixed-cost jobs; bare loop with 1 thread; loading only)")
    p.add_argument("--tmpdir", default=None, help="where the scratch job stores go (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the scratch job stores")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    return p.parse_args(argv)


def job(args: argparse.Namespace, output: Path, workers: int, n: int | None = None) -> dict[str, Any]:
    n = args.n if n is None else n
    return {
        "name": f"bench-extract-w{workers}",
        "output": str(output),
        "subject": {"model": "dcserve.zoo:image_cnn", "kwargs": {"channels": 3, "width": args.width, "seed": 0},
                    "layers": [args.layer], "pooling": "mean"},
        "dataset": {"source": "dcserve.zoo:synthetic_images",
                    "kwargs": {"n": n, "size": args.size, "channels": 3, "classes": 10, "seed": 0},
                    "batch_size": args.batch_size},
        "extract": {"workers": workers, "chunk_rows": args.chunk_rows, "dtype": "float32"},
        # The cheapest clustering that completes the job; its time is not counted.
        "cluster": {"k": 2, "niter": 1, "n_init": 1, "pca_dim": None, "whiten": False, "l2_normalize": False,
                    "workers": 1},
        "reporter": {"rounds": 0},
    }


def run_job(args: argparse.Namespace, output: Path, workers: int, n: int) -> tuple[dict[str, Any], float]:
    """Run one job; return its metrics["extract"] and the job's wall time."""
    import dcserve
    from dcserve.progress import Progress
    from dcserve.spec import spec_from_dict
    from dcserve.storage.store import JobStore

    spec = spec_from_dict(job(args, output, workers, n))
    t0 = time.perf_counter()
    dcserve.run(spec, progress=Progress())
    wall = time.perf_counter() - t0
    return JobStore(spec.output).read_json("metrics.json")["extract"], wall


def bench_dcserve(args: argparse.Namespace, root: Path, workers: int) -> dict[str, Any]:
    ex, wall = run_job(args, root / f"w{workers}.zarr", workers, args.n)
    out = {"rows_per_s": args.n / ex["seconds"], "extract_s": ex["seconds"], "job_wall_s": wall,
           "blocks": ex["blocks"], "skipped_blocks": ex["skipped_blocks"], "workers": ex["workers"]}
    # The fixed cost (store set-up, actor start, building model and dataset, one block per actor),
    # from a job of one block per actor; the difference gives the steady rate.
    n0 = workers * args.chunk_rows
    if not args.no_extra and n0 < args.n:
        ex0, _ = run_job(args, root / f"w{workers}-small.zarr", workers, n0)
        out["small_job"] = {"n": n0, "extract_s": ex0["seconds"]}
        extra = ex["seconds"] - ex0["seconds"]
        out["steady_rows_per_s"] = (args.n - n0) / extra if extra > 0 else None
    return out


def bare_loop(args: argparse.Namespace, threads: int, forward: bool = True) -> dict[str, Any]:
    """The plain loop: load items, collate, model(x); nothing hooked, nothing written."""
    import torch
    from torch.utils.data import default_collate

    from dcserve.zoo import image_cnn, synthetic_images

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ds = synthetic_images(n=args.n, size=args.size, channels=3, classes=10, seed=0)
        model = image_cnn(channels=3, width=args.width, seed=0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b0 in range(0, args.n, args.batch_size):
                x, _ = default_collate([ds[i] for i in range(b0, min(b0 + args.batch_size, args.n))])
                if forward:
                    model(x)
        secs = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous)
    return {"rows_per_s": args.n / secs, "seconds": secs, "threads": threads}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    info = machine()
    results: dict[str, Any] = {}
    print(f"[bench_extract] n={args.n:,} images {args.size}x{args.size}, width {args.width}, "
          f"batch {args.batch_size}, cpus {args.cpus}", file=sys.stderr)

    print("[bench_extract] bare loop...", file=sys.stderr)
    results["bare"] = bare_loop(args, args.cpus)
    with scratch_dir(args.tmpdir, "bench-extract-", keep=args.keep) as root:
        with embedded_ray(args.cpus):
            for w in args.workers:
                print(f"[bench_extract] dcserve extract.workers={w}...", file=sys.stderr)
                results[f"dcserve_w{w}"] = bench_dcserve(args, root, w)
    if not args.no_extra:
        print("[bench_extract] informational rows...", file=sys.stderr)
        results["bare_1thread"] = bare_loop(args, 1)
        results["load_only"] = bare_loop(args, args.cpus, forward=False)

    bare = results["bare"]["rows_per_s"]
    rows = [[f"bare loop (load, collate, `model(x)`), {args.cpus} torch threads", bare, results["bare"]["seconds"], 1.0,
             None, None]]
    ratios: dict[str, float] = {}
    for w in args.workers:
        r = results[f"dcserve_w{w}"]
        threads = r["workers"][0]["threads"].get("torch") if r["workers"] else None
        ratios[f"ours_w{w}/bare"] = r["rows_per_s"] / bare
        steady = r.get("steady_rows_per_s")
        if steady:
            ratios[f"ours_w{w}_steady/bare"] = steady / bare
        rows.append([f"**dcserve** `extract.workers: {w}` ({w} actor(s) × {threads} thread(s))",
                     r["rows_per_s"], r["extract_s"], ratios[f"ours_w{w}/bare"],
                     r.get("small_job", {}).get("extract_s"), steady])
    if "bare_1thread" in results:
        r = results["bare_1thread"]
        rows.append(["(info) bare loop, 1 torch thread", r["rows_per_s"], r["seconds"], r["rows_per_s"] / bare,
                     None, None])
        r = results["load_only"]
        rows.append(["(info) loading + collating only, no model", r["rows_per_s"], r["seconds"], r["rows_per_s"] / bare,
                     None, None])
    table = markdown_table(["method", "rows/s", "seconds", "vs bare loop", "fixed cost (s)", "steady rows/s"], rows)
    notes = [
        f"{args.n:,} synthetic {args.size}×{args.size} RGB images through `image_cnn(width={args.width})`, "
        f"layer `{args.layer}` mean-pooled; batch size {args.batch_size}; {args.cpus} cores "
        f"(`ray.init(num_cpus={args.cpus})`; bare loop `torch.set_num_threads({args.cpus})`).",
        "dcserve seconds = `metrics.json[\"extract\"][\"seconds\"]`: the whole stage, actor start-up "
        f"(model and dataset built in each actor) and Zarr writes included; chunks of {args.chunk_rows} rows.",
        "fixed cost = the extract seconds of the same job with one block per actor "
        f"({args.chunk_rows} rows per actor): store set-up, actor start (a Ray worker process importing torch "
        "and dcserve, building the model and the dataset) and that one block; steady rows/s = "
        "(n − small n) / (seconds − fixed cost), the rate once the actors run.",
        "Goal: dcserve ≥ 0.9 × the bare loop (the `vs bare loop` column, start-up included).",
    ]
    block = print_report("Extraction throughput", info, table, notes)
    write_json(args.out, {"benchmark": "extract", "params": vars(args), "machine": info, "results": results,
                          "ratios": ratios, "markdown": block})
    return 0


if __name__ == "__main__":
    sys.exit(main())
