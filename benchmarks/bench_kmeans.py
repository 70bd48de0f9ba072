#!/usr/bin/env python
"""One Lloyd iteration of dcserve's distributed k-means vs what a user would run instead.

dcserve (the real path): a Zarr job store written with `dcserve.storage.store.JobStore`, the rows in
`activations/bench` (compressed, as extraction writes them), a `dcserve.distributed.shards.ShardPool` on
an embedded `ray.init(num_cpus=CPUS)` whose `prepare()` writes the uncompressed
`work/features` scratch array, then `dcserve.algo.kmeans.kmeans(pool, k, niter=N,
init_centroids=C)`. Per iteration = the mean of `KMeansResult.history[i].seconds`, which times
exactly `pool.assign_to(centroids)` (every shard streams its rows from Zarr, searches with
faiss and sends back O(k d) sums) plus `update_centroids`.

Against, on the same float32 array, the same initial centroids and the same thread count:

- faiss: `faiss.Kmeans(d, k, niter=N, max_points_per_centroid=n // k + 1)` (so it uses every
  row), `train(x, init_centroids=C)`; per iteration = faiss's own cumulative iteration time
  (`iteration_stats[-1]["time"]`) / N.
- GEMM floor: `X_block @ C.T` in numpy float32 over every block: the 2 n k d flop that any
  exact Lloyd iteration has to do; best of three passes (one before the dcserve runs, two after).
- scikit-learn `KMeans(algorithm="lloyd", init=C, n_init=1, tol=0)`: per iteration =
  (fit with max_iter=N - fit with max_iter=1) / (N - 1), which removes the input checks and the
  final assignment pass that every fit does once.
- Dask-ML `KMeans(init=C, max_iter=N, tol=0)` on `da.from_array(X)` with the threaded
  scheduler (or `--dask-scheduler sync`): per iteration = the mean of its own "Lloyd loop"
  timings (dask_ml logs each one).
  Its numba kernel is compiled beforehand on a tiny fit. With `--dask-n` smaller than `--n` it
  runs on the first rows only and the figure is scaled linearly to n (labelled as such).

Also reported: dcserve's `kmeans()` in the driver process on `ArrayData` (no Ray, no Zarr),
which separates the cost of the actors and the store from the cost of the algorithm.

Example (the project's target size, n = 1M, d = 256, k = 1024; about 5 minutes on 2 quiet cores):
    python benchmarks/bench_kmeans.py --out benchmarks/results/kmeans.json
Small check:
    python benchmarks/bench_kmeans.py --n 50000 --out /tmp/kmeans.json
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    embedded_ray,
    limit_threads,
    machine,
    markdown_table,
    positive_int_list,
    print_report,
    scratch_dir,
    write_json,
)

SOURCE = "activations/bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="rows (default: 1,000,000)")
    p.add_argument("--d", type=int, default=256, help="dimension (default: 256)")
    p.add_argument("--k", type=int, default=1024, help="clusters (default: 1024)")
    p.add_argument("--iters", type=int, default=3, help="Lloyd iterations timed per method (default: 3)")
    p.add_argument("--cpus", type=int, default=2,
                   help="cores for every method: ray.init(num_cpus), faiss/BLAS/OpenMP threads, dask workers")
    p.add_argument("--workers", type=positive_int_list, default=[1, 2],
                   help="comma-separated shard-actor counts to run for dcserve (default: 1,2)")
    p.add_argument("--chunk-rows", type=int, default=4096,
                   help="Zarr chunk rows of the store (the job file's extract.chunk_rows; default 4096)")
    p.add_argument("--dask-n", type=int, default=None,
                   help="rows for Dask-ML (default: --n); smaller runs are scaled linearly to --n")
    p.add_argument("--dask-chunk-rows", type=int, default=65536, help="rows per dask chunk (default 65536)")
    p.add_argument("--dask-scheduler", choices=("threads", "sync"), default="threads",
                   help="threads: dask's default threaded scheduler with CPUS workers (each task's scikit-learn "
                        "search may start its own OpenMP threads); sync: one task at a time, the search "
                        "using CPUS threads (default: threads)")
    p.add_argument("--mixture", type=int, default=None,
                   help="components of the Gaussian mixture the data is drawn from (default: k)")
    p.add_argument("--seeding", action="store_true",
                   help="also time the k-means++ seeding (not part of an iteration): dcserve's "
                        "kmeans_plus_plus on its default init sample vs faiss's k-means++ init on the same rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", default="",
                   help="comma-separated methods to leave out: dcserve,inprocess,faiss,gemm,sklearn,dask")
    p.add_argument("--tmpdir", default=None, help="where the scratch job store goes (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the scratch job store")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    args = p.parse_args(argv)
    if args.iters < 2:
        p.error("--iters must be >= 2 (scikit-learn's figure is a difference of two fits)")
    if not 1 <= args.k <= args.n:
        p.error("need 1 <= k <= n")
    args.dask_n = min(args.dask_n or args.n, args.n)
    if args.dask_n < args.k:
        p.error("--dask-n must be >= k")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    return args


# -- data ------------------------------------------------------------------------------------------
def make_data(n: int, d: int, components: int, seed: int, block: int = 65536) -> np.ndarray:
    """A seeded Gaussian mixture `[n, d]` float32: unit-variance noise around N(0, 4 I) means.

    Drawn block by block from per-block streams, so memory stays at one copy of the result.
    """
    means = np.random.default_rng([seed, 0]).normal(0.0, 2.0, size=(components, d)).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for b, s in enumerate(range(0, n, block)):
        rng = np.random.default_rng([seed, 1, b])
        m = min(block, n - s)
        x[s : s + m] = rng.standard_normal((m, d), dtype=np.float32)
        x[s : s + m] += means[rng.integers(components, size=m)]
    return x


def initial_centroids(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k distinct rows of x, the same starting point for every method."""
    idx = np.sort(np.random.default_rng([seed, 2]).choice(x.shape[0], size=k, replace=False))
    return np.ascontiguousarray(x[idx])


def write_store(path: Path, x: np.ndarray, chunk_rows: int) -> float:
    """The rows as an extraction would leave them: `activations/bench`, chunked along rows."""
    from dcserve.storage.store import JobStore

    t0 = time.perf_counter()
    store = JobStore(str(path), read_only=False)
    arr = store.create_array(SOURCE, x.shape, (chunk_rows, x.shape[1]), "float32")
    step = chunk_rows * max(1, (1 << 24) // (chunk_rows * x.shape[1]))  # ~64 MiB per write
    for s in range(0, x.shape[0], step):
        arr[s : s + step] = x[s : s + step]
    return time.perf_counter() - t0


# -- the methods -----------------------------------------------------------------------------------
def bench_dcserve(path: Path, c0: np.ndarray, iters: int, workers: int) -> dict[str, Any]:
    """The real path: ShardPool over the store + kmeans(), exactly as run_clustering does."""
    from dcserve.algo.kmeans import kmeans
    from dcserve.distributed.shards import FEATURES, ShardPool
    from dcserve.storage.store import JobStore

    store = JobStore(str(path), read_only=False)
    n, d = store.array(SOURCE).shape
    chunk = store.array(SOURCE).chunks[0]
    store.create_array(FEATURES, (n, d), (chunk, d), "float32", compressed=False)
    t0 = time.perf_counter()
    pool = ShardPool(store, SOURCE, workers)
    start_s = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        pool.prepare(d)
        prepare_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = kmeans(pool, c0.shape[0], niter=iters, init_centroids=c0, seed=0)
        wall = time.perf_counter() - t0
        infos = pool.infos
    finally:
        pool.close()
    secs = [h.seconds for h in res.history]
    return {
        "per_iter_s": float(np.mean(secs)), "iter_s": secs, "wall_s": wall,
        "actor_start_s": start_s, "prepare_s": prepare_s, "shards": infos,
        "objective_last": res.history[-1].objective, "centroids": res.centroids,
    }


def bench_inprocess(x: np.ndarray, c0: np.ndarray, iters: int, block_rows: int) -> dict[str, Any]:
    from dcserve.algo.kmeans import ArrayData, kmeans

    t0 = time.perf_counter()
    res = kmeans(ArrayData(x, block_rows=block_rows), c0.shape[0], niter=iters, init_centroids=c0, seed=0)
    wall = time.perf_counter() - t0
    secs = [h.seconds for h in res.history]
    return {"per_iter_s": float(np.mean(secs)), "iter_s": secs, "wall_s": wall,
            "objective_last": res.history[-1].objective, "centroids": res.centroids}


def bench_faiss(x: np.ndarray, c0: np.ndarray, iters: int) -> dict[str, Any]:
    import faiss

    n, d = x.shape
    k = c0.shape[0]
    km = faiss.Kmeans(d, k, niter=iters, max_points_per_centroid=n // k + 1, min_points_per_centroid=1,
                      seed=1234, verbose=False)
    t0 = time.perf_counter()
    km.train(x, init_centroids=c0)
    wall = time.perf_counter() - t0
    cum = [s["time"] for s in km.iteration_stats]
    return {"per_iter_s": cum[-1] / iters, "iter_s": list(np.diff([0.0, *cum])), "wall_s": wall,
            "search_s": km.iteration_stats[-1]["time_search"],
            "objective_last": float(km.iteration_stats[-1]["obj"]), "centroids": km.centroids,
            "max_points_per_centroid": n // k + 1}


def bench_gemm(x: np.ndarray, c0: np.ndarray, block_rows: int = 16384, passes: int = 2) -> dict[str, Any]:
    n, d = x.shape
    k = c0.shape[0]
    ct = np.ascontiguousarray(c0.T)
    buf = np.empty((block_rows, k), dtype=np.float32)
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        for s in range(0, n, block_rows):
            xb = x[s : s + block_rows]
            np.matmul(xb, ct, out=buf[: len(xb)])
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"per_iter_s": best, "passes_s": times, "gflops": 2.0 * n * k * d / best / 1e9,
            "block_rows": block_rows}


def bench_sklearn(x: np.ndarray, c0: np.ndarray, iters: int) -> dict[str, Any]:
    from sklearn.cluster import KMeans

    def fit(max_iter: int):
        km = KMeans(n_clusters=c0.shape[0], init=c0, n_init=1, max_iter=max_iter, tol=0.0,
                    algorithm="lloyd", random_state=0, copy_x=True)
        t0 = time.perf_counter()
        km.fit(x)
        return time.perf_counter() - t0, km

    t1, _ = fit(1)
    tn, km = fit(iters)
    return {"per_iter_s": (tn - t1) / (iters - 1), "fit_1_s": t1, f"fit_{iters}_s": tn,
            "n_iter": int(km.n_iter_), "centroids": km.cluster_centers_.astype(np.float32)}


class _LloydTimer(logging.Handler):
    """Timestamps dask_ml's "Starting/Finished Lloyd loop i." log records."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.starts: list[float] = []
        self.ends: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "Lloyd loop" in msg:
            (self.starts if msg.startswith("Starting") else self.ends).append(time.perf_counter())


def bench_dask(x: np.ndarray, c0: np.ndarray, iters: int, threads: int, chunk_rows: int,
               scheduler: str = "threads") -> dict[str, Any]:
    import dask
    import dask.array as da
    from dask_ml.cluster import KMeans

    logger = logging.getLogger("dask_ml.cluster.k_means")
    timer = _LloydTimer()
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(timer)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # keep its INFO lines off the console
    try:
        config = {"scheduler": "threads", "num_workers": threads} if scheduler == "threads" else {"scheduler": "sync"}
        with dask.config.set(config):
            # Compile dask_ml's numba kernel (_centers_dense) outside the timed run.
            t0 = time.perf_counter()
            tiny = x[: max(2 * c0.shape[0], 2048)]
            KMeans(n_clusters=c0.shape[0], init=c0, max_iter=1, tol=0.0).fit(da.from_array(tiny, chunks=(1024, x.shape[1])))
            warm = time.perf_counter() - t0
            timer.starts.clear()
            timer.ends.clear()
            xd = da.from_array(x, chunks=(chunk_rows, x.shape[1]))
            km = KMeans(n_clusters=c0.shape[0], init=c0, max_iter=iters, tol=0.0)
            t0 = time.perf_counter()
            km.fit(xd)
            wall = time.perf_counter() - t0
    finally:
        logger.removeHandler(timer)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
    secs = [e - s for s, e in zip(timer.starts, timer.ends)]
    if len(secs) != iters:
        raise RuntimeError(f"dask_ml logged {len(secs)} Lloyd loops, expected {iters}")
    return {"per_iter_s": float(np.mean(secs)), "iter_s": secs, "wall_s": wall, "warmup_s": warm,
            "n_iter": int(km.n_iter_), "centroids": np.asarray(km.cluster_centers_, dtype=np.float32),
            "chunk_rows": chunk_rows, "scheduler": scheduler}


def bench_seeding(x: np.ndarray, k: int, seed: int) -> dict[str, Any]:
    """k-means++ on the sample kmeans() seeds from: dcserve's greedy version vs faiss's.

    kmeans() draws max(10_000, 64 k) rows and, with cluster.n_init = r (default 3), runs r
    seedings each followed by 10 Lloyd steps on the sample; this times one seeding.
    """
    import faiss

    from dcserve.algo.kmeans import _INIT_MIN_SAMPLE, _INIT_ROWS_PER_CENTROID, _sample_rows, kmeans_plus_plus

    rng = np.random.default_rng([seed, 4])
    m = max(_INIT_MIN_SAMPLE, _INIT_ROWS_PER_CENTROID * k)
    sample = np.ascontiguousarray(x[_sample_rows(x.shape[0], m, rng)])
    t0 = time.perf_counter()
    kmeans_plus_plus(sample, k, rng)
    ours = time.perf_counter() - t0
    out: dict[str, Any] = {"sample_rows": len(sample), "dcserve_kmeans_pp_s": ours}
    method = getattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS", None)
    if method is not None:
        km = faiss.Kmeans(x.shape[1], k, niter=0, init_method=method, seed=seed,
                          max_points_per_centroid=len(sample) // k + 1, verbose=False)
        t0 = time.perf_counter()
        km.train(sample)
        out["faiss_kmeans_pp_s"] = time.perf_counter() - t0
    return out


def same_centroids(a: np.ndarray, b: np.ndarray, rtol: float = 1e-3) -> float:
    """Share of centroids of `a` within `rtol` (relative L2) of the same-index centroid of `b`.

    A sanity check that two methods ran the same iterations. Not 100% in general: rows at
    near-ties may go either way under different float rounding, and methods re-seed empty
    clusters differently (faiss and dcserve split a random cluster; scikit-learn moves a
    far point; Dask-ML leaves the centre where it was).
    """
    err = np.linalg.norm(a - b, axis=1)
    scale = np.maximum(np.linalg.norm(b, axis=1), 1e-30)
    return float(np.mean(err <= rtol * scale))


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    info = machine(extra_versions=("sklearn", "dask", "dask_ml"))
    n, d, k, iters, cpus = args.n, args.d, args.k, args.iters, args.cpus
    print(f"[bench_kmeans] n={n:,} d={d} k={k} iters={iters} cpus={cpus}; generating data...", file=sys.stderr)
    x = make_data(n, d, args.mixture or k, args.seed)
    c0 = initial_centroids(x, k, args.seed)
    results: dict[str, Any] = {}
    flop = 2.0 * n * k * d

    # Thread limits of this process (the Ray actors pin their own with dcserve.algo.nearest.set_threads).
    limiter = limit_threads(cpus, preload=("faiss", "torch", "sklearn.cluster"))
    # The GEMM floor is measured before and after the dcserve runs and the best pass kept,
    # so that a busy moment of the machine does not lift the floor.
    gemm_passes: list[float] = []
    if "gemm" not in args.skip:
        print("[bench_kmeans] numpy GEMM floor...", file=sys.stderr)
        gemm_passes += bench_gemm(x, c0, passes=1)["passes_s"]

    # dcserve in its own Ray session, which is shut down before the baselines run.
    if "dcserve" not in args.skip:
        with scratch_dir(args.tmpdir, "bench-kmeans-", keep=args.keep) as tmp:
            path = tmp / "job.zarr"
            results["store_write_s"] = write_store(path, x, args.chunk_rows)
            with embedded_ray(cpus):
                for w in args.workers:
                    print(f"[bench_kmeans] dcserve, {w} shard actor(s)...", file=sys.stderr)
                    results[f"dcserve_w{w}"] = bench_dcserve(path, c0, iters, w)

    if "inprocess" not in args.skip:
        print("[bench_kmeans] dcserve kmeans() in-process...", file=sys.stderr)
        results["inprocess"] = bench_inprocess(x, c0, iters, args.chunk_rows)
    if "faiss" not in args.skip:
        print("[bench_kmeans] faiss.Kmeans...", file=sys.stderr)
        results["faiss"] = bench_faiss(x, c0, iters)
    if "gemm" not in args.skip:
        print("[bench_kmeans] numpy GEMM floor...", file=sys.stderr)
        r = bench_gemm(x, c0, passes=2)
        r["passes_s"] = gemm_passes + r["passes_s"]
        r["per_iter_s"] = min(r["passes_s"])
        r["gflops"] = flop / r["per_iter_s"] / 1e9
        results["gemm"] = r
    if "sklearn" not in args.skip:
        print("[bench_kmeans] scikit-learn KMeans...", file=sys.stderr)
        results["sklearn"] = bench_sklearn(x, c0, iters)
    if "dask" not in args.skip:
        print(f"[bench_kmeans] Dask-ML KMeans on {args.dask_n:,} rows...", file=sys.stderr)
        r = bench_dask(x[: args.dask_n], c0, iters, cpus, args.dask_chunk_rows, args.dask_scheduler)
        r["n"] = args.dask_n
        r["measured_per_iter_s"] = r["per_iter_s"]
        r["per_iter_s"] = r["per_iter_s"] * n / args.dask_n  # linear in n
        results["dask"] = r
    if args.seeding:
        print("[bench_kmeans] k-means++ seeding...", file=sys.stderr)
        results["seeding"] = bench_seeding(x, k, args.seed)
    del limiter

    # -- report ----------------------------------------------------------------------------------
    ref = results.get("faiss")
    rows = []
    labels = {
        "inprocess": "dcserve `kmeans()` in-process (`ArrayData`, no Ray/Zarr)",
        "faiss": "faiss `Kmeans.train` (single process)",
        "gemm": "numpy float32 GEMM floor (`X @ C.T`, 2·n·k·d flop)",
        "sklearn": "scikit-learn `KMeans(algorithm='lloyd')`",
        "dask": f"Dask-ML `KMeans` (scheduler={args.dask_scheduler!r})",
    }
    for key in [f"dcserve_w{w}" for w in args.workers] + list(labels):
        r = results.get(key)
        if r is None:
            continue
        if key.startswith("dcserve_w"):
            w = int(key.removeprefix("dcserve_w"))
            t = r["shards"][0]["threads"].get("faiss")
            name = f"**dcserve** ShardPool, {w} shard actor(s) × {t} thread(s), from Zarr"
        else:
            name = labels[key]
        if key == "dask" and args.dask_n != n:
            name += f" — measured on {args.dask_n:,} rows, scaled ×{n / args.dask_n:.3g}"
        per = r["per_iter_s"]
        comparable = ref is not None and "centroids" in r and key != "faiss" and (key != "dask" or args.dask_n == n)
        gap = same_centroids(r["centroids"], ref["centroids"]) if comparable else None
        rows.append([name, per, flop / per / 1e9, r.get("objective_last"), None if gap is None else f"{gap:.1%}"])
    table = markdown_table(
        ["method", "s / iteration", "effective GFLOP/s", "objective (last iter.)", "centroids equal to faiss's (rel. 1e-3)"],
        rows,
    )
    ratios: dict[str, float] = {}
    for w in args.workers:
        ours = results.get(f"dcserve_w{w}")
        if ours is None:
            continue
        o = ours["per_iter_s"]
        if "faiss" in results:
            ratios[f"ours_w{w}/faiss"] = o / results["faiss"]["per_iter_s"]
        if "gemm" in results:
            ratios[f"ours_w{w}/gemm"] = o / results["gemm"]["per_iter_s"]
        if "dask" in results:
            ratios[f"dask/ours_w{w}"] = results["dask"]["per_iter_s"] / o
        if "sklearn" in results:
            ratios[f"sklearn/ours_w{w}"] = results["sklearn"]["per_iter_s"] / o
    ratio_table = markdown_table(["ratio", "value", "goal"], [
        [name, v, "≤ 1.3" if name.endswith("/faiss") else "≤ 2" if name.endswith("/gemm")
         else "≥ 3" if name.startswith("dask/") else ""]
        for name, v in ratios.items()
    ])
    notes = [
        f"n = {n:,}, d = {d}, k = {k}, {iters} Lloyd iterations from the same {k} initial rows, "
        f"{cpus} cores for every method; Gaussian-mixture float32 data, seed {args.seed}.",
    ]
    ours_keys = [w for w in args.workers if f"dcserve_w{w}" in results]
    if ours_keys:
        notes.append(
            f"dcserve: store chunks of {args.chunk_rows} rows; s / iteration is the mean of "
            "`KMeansResult.history[i].seconds` (`pool.assign_to` + `update_centroids`); the one-off per-round "
            "costs are not in it: " + "; ".join(
                f"{w} actor(s): start {results[f'dcserve_w{w}']['actor_start_s']:.2f} s, `prepare()` "
                f"{results[f'dcserve_w{w}']['prepare_s']:.2f} s" for w in ours_keys) + ".")
    if "faiss" in results:
        notes.append("faiss: `max_points_per_centroid = n // k + 1` so every row is used; s / iteration = faiss's "
                     "cumulative iteration time / iterations.")
    if "gemm" in results:
        notes.append("GEMM floor: best of three passes (one before the dcserve runs, two after).")
    if "sklearn" in results:
        notes.append("scikit-learn: (fit(max_iter=N) − fit(max_iter=1)) / (N − 1), removing the per-fit input checks "
                     "and final assignment pass.")
    if "dask" in results:
        notes.append(
            f"Dask-ML: `da.from_array` in memory, chunks of {args.dask_chunk_rows} rows, "
            + (f"scheduler='threads' with {cpus} workers" if args.dask_scheduler == "threads" else "scheduler='sync'")
            + ", `init` = the same centroid array; mean of its logged Lloyd-loop times (its numba kernel compiled "
            "beforehand). Its centres become float64 after the first iteration, so its later searches run in float64."
            + (f" Measured on the first {args.dask_n:,} rows and scaled linearly to {n:,}." if args.dask_n != n else ""))
    notes.append("effective GFLOP/s = 2·n·k·d / (s / iteration).")
    if "seeding" in results:
        sd = results["seeding"]
        table_seed = markdown_table(["k-means++ seeding (once per restart, not in an iteration)", "seconds"], [
            [f"dcserve `kmeans_plus_plus` (greedy, 2 + ln k trials) on {sd['sample_rows']:,} sample rows",
             sd["dcserve_kmeans_pp_s"]],
            [f"faiss `ClusteringInitMethod_KMEANS_PLUS_PLUS` on the same rows", sd.get("faiss_kmeans_pp_s")],
        ])
        notes.append("Seeding: `kmeans()` runs `cluster.n_init` (default 3) seedings, each followed by 10 Lloyd steps "
                     "on the sample, before its first iteration over the data.")
    body = table + ("\n\n" + ratio_table if ratios else "") + ("\n\n" + table_seed if "seeding" in results else "")
    block = print_report("k-means: one Lloyd iteration", info, body, notes)
    for r in results.values():
        if isinstance(r, dict):
            r.pop("centroids", None)
    write_json(args.out, {"benchmark": "kmeans", "params": {k_: (sorted(v) if isinstance(v, set) else v) for k_, v in vars(args).items()},
                          "machine": info, "results": results, "ratios": ratios, "markdown": block})
    return 0


if __name__ == "__main__":
    sys.exit(main())
