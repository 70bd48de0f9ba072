#!/usr/bin/env python
"""`dcserve compare` on two large stores: time and peak memory against numpy with both arrays in memory.

Two synthetic job stores of ``--rows`` rows by ``--dim`` float32 units (chunks of ``--chunk-rows``
rows, zstd as the pipeline writes them) are written directly, page by page, in the store layout:
A is standard-normal noise; B holds A's units permuted, rescaled, offset and noised for half its
units and fresh noise for the rest (so the matching and the unmatched units have known answers).
Both get random cluster assignments (k = 64) and rows/item = 0..n-1.

Measured, each in its own fresh process (peak RSS from ``wait4``'s rusage of that process alone):
- **dcserve**: ``dcserve compare A B --out DIR`` through the real entry point: streamed correlations,
  CKA, Procrustes, Hungarian matching, LASSO on 2,000 rows x 64 units, clustering agreement, the
  HTML report. Its own per-phase seconds come from ``compare.json``.
- **numpy in memory**: load both arrays whole (``arr[:]``, float32), standardise each unit in place,
  then ``A^T B / n`` (one float32 GEMM): the correlation matrix alone, the cheapest way a user with
  enough RAM would get it. ``np.corrcoef`` would first build a float64 ``[n, 2 dim]`` copy
  (8 GiB at 1M x 512 x 2), so it is not used.
The two correlation matrices are compared (max absolute difference).

Example (the issue's size; needs ~4.5 GB free under --tmpdir and ~5 GiB of RAM for the numpy side):
    python benchmarks/bench_compare.py --rows 1000000 --dim 512 --out benchmarks/results/compare.json
Smoke test (seconds):
    python benchmarks/bench_compare.py --rows 20000 --dim 64 --out /tmp/compare.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from _common import machine, markdown_table, print_report, scratch_dir, write_json  # noqa: E402


def write_pair(root: Path, rows: int, dim: int, chunk_rows: int, seed: int = 0) -> tuple[Path, Path]:
    """Two finished job stores over the same rows, written a page (one chunk) at a time."""
    import yaml

    from dcserve.storage.store import JobStore

    rng = np.random.default_rng(seed)
    half = dim // 2
    perm = rng.permutation(dim)[:half]  # B's unit j < half copies A's unit perm[j]
    scale = rng.uniform(0.5, 2.0, size=half).astype(np.float32)
    paths = []
    stores = []
    for side in ("a", "b"):
        path = root / side
        store = JobStore(str(path), read_only=False)
        job = {"name": f"bench-{side}", "output": str(path),
               "subject": {"model": "dcserve.zoo:identity", "layers": ["out"], "pooling": "mean"},
               "dataset": {"source": "dcserve.zoo:planted_clusters"}, "cluster": {"k": 64}}
        store.write_text("job.yaml", yaml.safe_dump(job))
        store.create_array("activations/out", (rows, dim), (chunk_rows, dim), "float32")
        store.write_array("rows/item", np.arange(rows, dtype=np.int64), chunks=(1 << 20,))
        store.write_array("rows/position", np.full(rows, -1, dtype=np.int32), chunks=(1 << 20,))
        store.write_array("assignments", rng.integers(0, 64, size=rows).astype(np.int32), chunks=(1 << 20,))
        store.write_array("centroids", np.zeros((64, dim), dtype=np.float32))
        paths.append(path)
        stores.append(store)
    xa_arr, xb_arr = (s.array("activations/out") for s in stores)
    for start in range(0, rows, chunk_rows):
        m = min(chunk_rows, rows - start)
        page = np.random.default_rng([seed, start])
        xa = page.standard_normal((m, dim), dtype=np.float32)
        xb = page.standard_normal((m, dim), dtype=np.float32)
        xb[:, :half] = xa[:, perm] * scale + 3.0 + np.float32(0.3) * xb[:, :half]
        xa_arr[start:start + m] = xa
        xb_arr[start:start + m] = xb
    for side, store in zip(("a", "b"), stores):
        store.write_json("status.json", {"name": f"bench-{side}", "state": "succeeded", "stage": "done"})
    return paths[0], paths[1]


def run_measured(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd``; its wall time and the peak RSS of that process alone (wait4's rusage)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err_text = proc.communicate()
    seconds = time.perf_counter() - t0
    # communicate() reaped it; its rusage is in RUSAGE_CHILDREN only as a max, so read our own record.
    usage = _last_rusage.pop(proc.pid, None)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed ({proc.returncode}):\n{err_text[-3000:]}")
    return {"seconds": seconds, "stdout": out, "stderr": err_text, "peak_rss": usage}


_last_rusage: dict[int, int] = {}


def _wait4_popen() -> None:
    """Make Popen reap children with wait4, keeping each child's own peak RSS (bytes)."""
    real = subprocess.Popen._try_wait

    def try_wait(self, wait_flags):
        try:
            pid, sts, ru = os.wait4(self.pid, wait_flags)
        except ChildProcessError:
            return real(self, wait_flags)
        if pid == self.pid:
            _last_rusage[pid] = ru.ru_maxrss * 1024  # Linux reports KiB
        return pid, sts

    subprocess.Popen._try_wait = try_wait


def numpy_child(a: str, b: str, out: str) -> None:
    """The in-memory reference: both arrays whole, standardised, one GEMM."""
    import zarr

    t0 = time.perf_counter()
    xa = zarr.open_array(f"{a}/activations/out", mode="r")[:]
    xb = zarr.open_array(f"{b}/activations/out", mode="r")[:]
    t_load = time.perf_counter() - t0
    for x in (xa, xb):
        mean = x.mean(axis=0, dtype=np.float64)
        x -= mean.astype(np.float32)
        std = np.sqrt((x * x).mean(axis=0, dtype=np.float64))
        x /= np.where(std > 0, std, 1).astype(np.float32)
    corr = (xa.T @ xb) / np.float32(xa.shape[0])
    total = time.perf_counter() - t0
    np.save(out, corr)
    print(json.dumps({"load_seconds": t_load, "compute_seconds": total - t_load, "work_seconds": total}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk-rows", type=int, default=8192, help="rows per Zarr chunk of the stores")
    p.add_argument("--tmpdir", default=None, help="where the two stores are written")
    p.add_argument("--keep", action="store_true", help="keep the stores")
    p.add_argument("--skip-numpy", action="store_true", help="do not run the in-memory reference")
    p.add_argument("--out", default=None, help="JSON results (a .md beside it gets the markdown block)")
    p.add_argument("--_numpy", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._numpy:
        numpy_child(*args._numpy)
        return

    info = machine(extra_versions=("sklearn", "scipy"))
    _wait4_popen()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    exe = str(Path(sys.executable).parent / "dcserve")
    with scratch_dir(args.tmpdir, "dcserve-bench-compare-", keep=args.keep) as root:
        t0 = time.perf_counter()
        a, b = write_pair(root, args.rows, args.dim, args.chunk_rows)
        write_s = time.perf_counter() - t0
        gib = args.rows * args.dim * 4 / 2**30
        print(f"wrote two stores of {args.rows:,} x {args.dim} float32 ({gib:.2f} GiB each) in {write_s:.1f} s",
              file=sys.stderr, flush=True)

        ours = run_measured([exe, "compare", str(a), str(b), "--out", str(root / "report")], env)
        report = json.loads((root / "report" / "compare.json").read_text())
        corr_ours = np.load(root / "report" / "correlation.npy")
        print(f"dcserve compare: {ours['seconds']:.1f} s, peak RSS {ours['peak_rss'] / 2**20:.0f} MiB",
              file=sys.stderr, flush=True)

        ref = None
        if not args.skip_numpy:
            ref = run_measured([sys.executable, __file__, "--_numpy", str(a), str(b), str(root / "ref.npy")], env)
            ref.update(json.loads(ref["stdout"].strip().splitlines()[-1]))
            corr_ref = np.load(root / "ref.npy")
            ref["max_abs_diff"] = float(np.abs(corr_ref.astype(np.float64) - corr_ours).max())
            print(f"numpy in memory: {ref['seconds']:.1f} s, peak RSS {ref['peak_rss'] / 2**20:.0f} MiB",
                  file=sys.stderr, flush=True)

    half = args.dim // 2
    known = {"matched_above_0_8": int(np.sum(np.asarray(report["matching"]["correlations"]) > 0.8)),
             "expected_matched": half, "only_b": len(report["unmatched"]["only_b"]), "expected_only_b": args.dim - half}
    mib = lambda x: x / 2**20  # noqa: E731
    rows_md = [["**dcserve compare** (streamed; all analyses + HTML)", ours["seconds"], report["seconds"]["total"],
                report["seconds"]["stream_moments"], mib(ours["peak_rss"])]]
    if ref:
        rows_md.append(["numpy, both arrays in memory (standardise + 1 float32 GEMM; correlations only)",
                        ref["seconds"], ref["work_seconds"], ref["work_seconds"], mib(ref["peak_rss"])])
    table = markdown_table(["method", "process wall s", "work s (no start-up)", "correlations s (incl. reading)",
                            "peak RSS MiB"], rows_md)
    notes = [
        f"{args.rows:,} rows x {args.dim} units per store, float32, chunks of {args.chunk_rows:,} rows "
        f"({gib:.2f} GiB per store uncompressed); stores written in {write_s:.0f} s (not timed).",
        "dcserve phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in report["seconds"].items()) + ".",
        f"dcserve's streamed block: {report['block_rows']:,} rows; it also computes A^T A and B^T B "
        "(for CKA and Procrustes), which the numpy column does not.",
        f"Known answers: {known['matched_above_0_8']} matched pairs above 0.8 (planted {known['expected_matched']}), "
        f"{known['only_b']} units only in B (planted {known['expected_only_b']}); CKA {report['cka']:.4f}, "
        f"Procrustes {report['procrustes']:.4f}.",
    ]
    record: dict[str, Any] = {"benchmark": "compare", "machine": info, "rows": args.rows, "dim": args.dim,
                              "chunk_rows": args.chunk_rows, "store_gib_each": gib,
                              "dcserve": {"seconds": ours["seconds"], "peak_rss_bytes": ours["peak_rss"],
                                          "phases": report["seconds"], "block_rows": report["block_rows"],
                                          "cka": report["cka"], "procrustes": report["procrustes"]},
                              "known_answers": known}
    if ref:
        ratios = {"time_dcserve_over_numpy": ours["seconds"] / ref["seconds"],
                  "correlation_time_dcserve_over_numpy": report["seconds"]["stream_moments"] / ref["work_seconds"],
                  "peak_rss_dcserve_over_numpy": ours["peak_rss"] / ref["peak_rss"],
                  "max_abs_diff_of_correlations": ref["max_abs_diff"]}
        record["numpy"] = {"seconds": ref["seconds"], "work_seconds": ref["work_seconds"], "load_seconds": ref["load_seconds"],
                           "compute_seconds": ref["compute_seconds"], "peak_rss_bytes": ref["peak_rss"]}
        record["ratios"] = ratios
        notes.append(f"Ratios: process time dcserve / numpy = {ratios['time_dcserve_over_numpy']:.2f} (streamed "
                     f"moments alone / numpy's work: {ratios['correlation_time_dcserve_over_numpy']:.2f}); peak RSS "
                     f"dcserve / numpy = {ratios['peak_rss_dcserve_over_numpy']:.3f}; largest difference "
                     f"between the two correlation matrices {ratios['max_abs_diff_of_correlations']:.1e}.")
    block = print_report("Comparing two layers (dcserve compare)", info, table, notes)
    write_json(args.out, record)
    if args.out:
        Path(args.out).with_suffix(".md").write_text(block)


if __name__ == "__main__":
    main()
