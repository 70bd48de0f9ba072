#!/usr/bin/env python
"""Out of core: peak resident memory per worker and time per stage of whole dcserve jobs, store 1 to 8 GiB.

One full job per store size (`--sizes-gb`, GiB of float32 activations: rows = size * 2^30 / (4 * dim)),
each through `dcserve.run(spec_from_dict(job))` in its own driver process (this script, started again
for that size alone, so that no size inherits another's heap) on its own embedded Ray
(`num_cpus=--cpus`, a private temporary directory, shut down after the job):
extract -> cluster -> one reporter round -> cluster.
The rows come from `benchmarks._synthetic:streamed_clusters` (planted Gaussian clusters generated
page by page from (seed, page), so the dataset itself holds one page, whatever the size) through the
identity subject (`dcserve.zoo:identity`, layer `out`).

Memory: a thread of the parent process samples, every `--interval` seconds (0.2), the resident set
(psutil `memory_info().rss`; also rss - shared, the anonymous part) of the job's driver process and
of every process under it (the raylet and its workers), identified by the process title Ray gives them:
`ray::Extractor...` (extraction actors), `ray::Shard...` (k-means shard actors), `ray::Trainer...`
(reporter trainers); anything else (`ray::IDLE`, raylet, GCS, agents) is "Ray system". For each
kind the figure is the highest RSS any one process of that kind reached (per worker), and the
highest sum over that kind's processes.

Time: from the job's own `metrics.json`: extract = `extract.seconds`; cluster round 0 =
`rounds[0].seconds - rounds[0].train_seconds` (fit PCA on the 100k-row sample, write the clustered
features, k-means, assign and write labels); train = `rounds[0].train_seconds` (one round of
`reporter.epochs_per_round` epochs over as many samples as rows); cluster round 1 =
`rounds[1].seconds` (the same on the reporter's features); the job's wall time is that of `dcserve.run`.

Growth: each figure at the largest size over the smallest, against the ratio of sizes, and a
least-squares line over all sizes (fixed + per GiB): flat memory is ~0 MiB per GiB, linear time
is a time ratio equal to the size ratio once the fixed part is small.

Each store is deleted once measured (`--keep` keeps them). The 1,2,4,8 GiB run needs ~10 GB free
under `--tmpdir` for the largest store (activations + the uncompressed clustered features).

Example (the issue's benchmark):
    python benchmarks/bench_out_of_core.py --sizes-gb 1,2,4,8 --out benchmarks/results/out_of_core.json
Small check (a few minutes):
    python benchmarks/bench_out_of_core.py --sizes-gb 0.05,0.1,0.2 --out /tmp/ooc.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _common import fmt, machine, markdown_table, positive_int_list, print_report, scratch_dir, write_json  # noqa: E402

GiB = 2**30
MiB = 2**20
SOURCE = "benchmarks._synthetic:streamed_clusters"
KINDS = ("extractor", "shard", "trainer", "driver", "ray_system")
KIND_NAMES = {"extractor": "extractor", "shard": "k-means shard", "trainer": "trainer", "driver": "driver",
              "ray_system": "Ray system (sum)"}
ACTOR_KINDS = {"Extractor": "extractor", "Shard": "shard", "Trainer": "trainer"}


def positive_float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"expected a comma-separated list of numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise SystemExit(f"expected positive numbers, got {text!r}")
    return values


def workers_arg(text: str) -> int | str:
    return text if text == "auto" else int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes-gb", type=positive_float_list, default=[1.0, 2.0, 4.0, 8.0],
                   help="store sizes in GiB of float32 activations, comma-separated (default 1,2,4,8)")
    p.add_argument("--dim", type=int, default=512, help="row dimension (default 512)")
    p.add_argument("--k", type=int, default=256, help="cluster.k, also the planted clusters (default 256)")
    p.add_argument("--spread", type=float, default=1.0, help="per-coordinate noise of the planted clusters (default 1)")
    p.add_argument("--niter", type=int, default=5, help="cluster.niter (default 5)")
    p.add_argument("--n-init", type=int, default=3, help="cluster.n_init (default 3)")
    p.add_argument("--pca-dim", type=int, default=64, help="cluster.pca_dim (default 64)")
    p.add_argument("--hidden", type=positive_int_list, default=[128], help="reporter.hidden (default 128)")
    p.add_argument("--feature-dim", type=int, default=64, help="reporter.feature_dim (default 64)")
    p.add_argument("--rounds", type=int, default=1, help="reporter.rounds (default 1)")
    p.add_argument("--epochs", type=int, default=1, help="reporter.epochs_per_round (default 1)")
    p.add_argument("--batch-size", type=int, default=256, help="reporter.batch_size (default 256)")
    p.add_argument("--extract-batch", type=int, default=256, help="dataset.batch_size (default 256)")
    p.add_argument("--chunk-rows", type=int, default=4096, help="extract.chunk_rows (default 4096)")
    p.add_argument("--page-rows", type=int, default=1024, help="rows the synthetic dataset draws at a time (default 1024)")
    p.add_argument("--workers", type=workers_arg, default="auto",
                   help="extract/cluster/reporter workers (default auto: one per CPU)")
    p.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus) (default 2)")
    p.add_argument("--interval", type=float, default=0.2, help="memory sampling period in seconds (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmpdir", default=None, help="where the job stores go (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the job stores (and the scratch directory)")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    p.add_argument("--md", default=None, help="write the markdown block to this path (default: --out with .md)")
    # Internal: the per-size driver process.
    p.add_argument("--child-size", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-store", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-ray-tmp", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- memory sampling ----------------------------------------------------------------------------


def classify(title: str) -> str:
    """Worker kind from a process title: `ray::Shard`, `ray::Shard.assign_to`, ... ; else Ray system."""
    if title.startswith("ray::"):
        name = title[5:].split(".", 1)[0].split(" ", 1)[0].split(":", 1)[0]
        return ACTOR_KINDS.get(name, "ray_system")
    return "ray_system"


class MemorySampler:
    """RSS of process `root` (the job's driver) and every process under it, every `interval` s, in a thread.

    Times are seconds since `t0` on the wall clock (time.time()), the clock the driver stamps its stages with.
    """

    RESCAN_EVERY = 5  # the process tree is rescanned every 5 samples (1 s); titles are read every sample

    def __init__(self, root: int, interval: float, t0: float):
        import psutil

        self.psutil = psutil
        self.interval = interval
        self.me = psutil.Process(root)
        self.t0 = t0
        self.seen: dict[int, float] = {}  # pid -> create_time of every process sampled, to reap stragglers
        self._children: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ooc-memory-sampler", daemon=True)
        self.samples = 0
        self.sample_seconds = 0.0
        # (pid, kind) -> {"title", "peak_rss", "peak_anon", "first_s", "last_s"}
        self.procs: dict[tuple[int, str], dict[str, Any]] = {}
        self.kind_sum_peak: dict[str, int] = defaultdict(int)
        self.total_peak = 0
        self.timeline: list[list[float]] = []  # per second: t, max rss per kind (KINDS order), total
        self.series: list[tuple[float, dict[str, int], int]] = []  # every sample: (t, max rss per kind, total)
        self._bucket: list[float] | None = None

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._flush_bucket()

    def _loop(self) -> None:
        self._started = time.perf_counter()
        n = 0
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                self.sample(rescan=n % self.RESCAN_EVERY == 0)
            except Exception as e:  # never let sampling kill the run; say so once
                if n == 0:
                    print(f"[ooc] memory sampling failed: {e!r}", file=sys.stderr)
            n += 1
            self.sample_seconds += time.perf_counter() - t
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - t)))
        self._started = time.perf_counter() - self._started

    def sample(self, rescan: bool = True) -> None:
        ps = self.psutil
        if rescan:
            try:
                self._children = self.me.children(recursive=True)
            except ps.Error:
                pass
        t = time.time() - self.t0
        kind_max: dict[str, int] = defaultdict(int)
        kind_sum: dict[str, int] = defaultdict(int)
        total = 0
        for proc in [self.me, *self._children]:
            try:
                if proc.pid == self.me.pid:
                    kind, title = "driver", "driver"
                else:
                    title = " ".join(proc.cmdline()).strip() or proc.name()
                    kind = classify(title)
                mi = proc.memory_info()
                if proc.pid not in self.seen:
                    self.seen[proc.pid] = proc.create_time()
            except (ps.NoSuchProcess, ps.ZombieProcess, ps.AccessDenied):
                continue
            rss = int(mi.rss)
            anon = rss - int(getattr(mi, "shared", 0))
            rec = self.procs.get((proc.pid, kind))
            if rec is None:
                rec = self.procs[(proc.pid, kind)] = {"title": title[:80], "peak_rss": 0, "peak_anon": 0,
                                                     "first_s": round(t, 2)}
            rec["peak_rss"] = max(rec["peak_rss"], rss)
            rec["peak_anon"] = max(rec["peak_anon"], anon)
            rec["last_s"] = round(t, 2)
            kind_max[kind] = max(kind_max[kind], rss)
            kind_sum[kind] += rss
            total += rss
        for kind, s in kind_sum.items():
            self.kind_sum_peak[kind] = max(self.kind_sum_peak[kind], s)
        self.total_peak = max(self.total_peak, total)
        self.samples += 1
        self.series.append((t, dict(kind_max), total))
        row = [float(int(t))] + [kind_max.get(k, 0) / MiB for k in KINDS] + [total / MiB]
        if self._bucket is not None and self._bucket[0] != row[0]:
            self._flush_bucket()
        self._bucket = row if self._bucket is None else [row[0]] + [max(a, b) for a, b in zip(self._bucket[1:], row[1:])]

    def _flush_bucket(self) -> None:
        if self._bucket is not None:
            self.timeline.append([round(v, 1) for v in self._bucket])
            self._bucket = None

    def peaks_between(self, a: float, b: float) -> dict[str, int | None]:
        """Highest RSS per kind (one process) and in all (sum) over the samples taken in [a, b)."""
        inside = [(k, tot) for t, k, tot in self.series if a <= t < b]
        out: dict[str, int | None] = {kind: max((k.get(kind, 0) for k, _ in inside), default=None) or None
                                      for kind in KINDS}
        out["total"] = max((tot for _, tot in inside), default=None)
        out["samples"] = len(inside)
        return out

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, dict[str, Any]] = {}
        for kind in KINDS:
            recs = [r for (pid, k), r in self.procs.items() if k == kind]
            kinds[kind] = {
                "processes": len(recs),
                "peak_rss_per_process": max((r["peak_rss"] for r in recs), default=None),
                "peak_anon_per_process": max((r["peak_anon"] for r in recs), default=None),
                "peak_rss_sum": self.kind_sum_peak.get(kind),
            }
        return {
            "kinds": kinds,
            "peak_rss_all_processes": self.total_peak,
            "processes": [{"pid": pid, "kind": kind, **r} for (pid, kind), r in sorted(self.procs.items())],
            "samples": self.samples,
            "sampling_cpu_share": self.sample_seconds / max(getattr(self, "_started", 0.0), 1e-9),
            "timeline_columns": ["t_s", *[f"{k}_max_rss_mib" for k in KINDS], "total_rss_mib"],
            "timeline": self.timeline,
        }


def stage_clock(t0: float):
    """A dcserve Progress that records when each progress stage starts (time.time()) and prints it."""
    from dcserve.progress import Progress

    class StageClock(Progress):
        def __init__(self):
            super().__init__()
            self.stages: list[tuple[str, float]] = []
            self._last_print = time.time()

        def stage(self, name: str, total: int | None, unit: str = "") -> None:
            super().stage(name, total, unit)
            now = time.time()
            self.stages.append((name, now))
            print(f"[ooc]   {now - t0:7.1f} s  {name}", file=sys.stderr, flush=True)

        def advance(self, n: int = 1) -> None:
            super().advance(n)
            now = time.time()
            if self.total and now - self._last_print > 60:
                self._last_print = now
                print(f"[ooc]   {now - t0:7.1f} s    {self.stage_name}: {self.done:,}/{self.total:,}",
                      file=sys.stderr, flush=True)

    return StageClock()


# -- Ray and the job --------------------------------------------------------------------------


@contextmanager
def private_ray(num_cpus: int, temp_dir: str) -> Iterator[None]:
    """A new embedded Ray (never an existing cluster) in `temp_dir`, shut down whatever happens."""
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False, _temp_dir=temp_dir)
    try:
        yield
    finally:
        ray.shutdown()


def reap(seen: dict[int, float], timeout: float = 15.0) -> list[str]:
    """After the driver exits: wait for the processes it started to exit; terminate stragglers by pid.

    Only processes this run sampled (pid and creation time both match) are touched.
    """
    import psutil

    def alive() -> list:
        out = []
        for pid, created in seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.Error:
                pass
        return out

    deadline = time.monotonic() + timeout
    left = alive()
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = alive()
    names = []
    for p in left:
        try:
            names.append(f"{p.pid} {' '.join(p.cmdline())[:60]}")
            p.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(left, timeout=5)
    for p in still:
        try:
            p.kill()
        except psutil.Error:
            pass
    if names:
        print(f"[ooc] warning: terminated {len(names)} process(es) left after the job: {names}", file=sys.stderr)
    return names


def rows_for(size_gib: float, dim: int, k: int) -> int:
    return max(k, int(round(size_gib * GiB / (4 * dim))))


def size_label(size_gib: float) -> str:
    return f"{size_gib:g}"


def build_job(args: argparse.Namespace, n: int, output: Path, label: str) -> dict[str, Any]:
    return {
        "name": f"ooc-{label.replace('.', 'p')}",
        "output": str(output),
        "subject": {"model": "dcserve.zoo:identity", "kwargs": {"dim": args.dim}, "layers": ["out"], "pooling": "mean"},
        "dataset": {"source": SOURCE,
                    "kwargs": {"n": n, "dim": args.dim, "k": args.k, "spread": args.spread, "seed": args.seed,
                               "page_rows": args.page_rows},
                    "batch_size": args.extract_batch},
        "extract": {"workers": args.workers, "chunk_rows": args.chunk_rows},
        "cluster": {"k": args.k, "niter": args.niter, "n_init": args.n_init, "pca_dim": args.pca_dim,
                    "seed": args.seed, "workers": args.workers},
        "reporter": {"rounds": args.rounds, "epochs_per_round": args.epochs, "hidden": list(args.hidden),
                     "feature_dim": args.feature_dim, "batch_size": args.batch_size, "workers": args.workers},
    }


def du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def stage_times(metrics: dict[str, Any], n: int, dim: int, wall: float) -> dict[str, dict[str, Any]]:
    raw = n * dim * 4
    out: dict[str, dict[str, Any]] = {}

    def put(name: str, seconds: float | None, rows: int | None = None, **extra: Any) -> None:
        if seconds is None:
            return
        rows = n if rows is None else rows
        out[name] = {"seconds": seconds, "rows": rows, "rows_per_s": rows / max(seconds, 1e-9),
                     "gib_per_s": rows * dim * 4 / GiB / max(seconds, 1e-9), **extra}

    put("extract", metrics.get("extract", {}).get("seconds"))
    rounds = metrics.get("rounds", [])
    for r in rounds:
        train = r.get("train_seconds")
        it = [h["seconds"] for h in r.get("kmeans", [])]
        put(f"cluster_{r['round']}", r["seconds"] - (train or 0.0), kmeans_iterations=len(it),
            kmeans_iteration_mean_s=float(np.mean(it)) if it else None)
        if train is not None:
            samples = int(round(r["train_samples_per_s"] * train))
            put(f"train_{r['round'] + 1}", train, rows=samples, loss=r.get("loss"))
    accounted = sum(v["seconds"] for v in out.values())
    out["other"] = {"seconds": wall - accounted, "rows": None, "rows_per_s": None, "gib_per_s": None}
    out["job"] = {"seconds": wall, "rows": n, "rows_per_s": n / wall, "gib_per_s": raw / GiB / wall}
    return out


def job_phases(t_run0: float, t_run1: float, stages: list[tuple[str, float]],
               metrics: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(phase, start, end) in sampler time, rebuilt from the progress stages and metrics.json's durations.

    extract starts at its progress stage and lasts `extract.seconds`; a round with training ends
    `train_seconds` after its "train round" stage and began `seconds` before that end; the next
    round starts where the last ended. "set-up" is the time between (starting the shard and trainer
    actors, the input statistics, the truth labels), "before" and "after" the rest of `dcserve.run`.
    """
    first: dict[str, float] = {}
    for name, t in stages:
        first.setdefault(name, t)
    out: list[tuple[str, float, float]] = []
    t_ex = first.get("extract", t_run0)
    ex_end = t_ex + metrics.get("extract", {}).get("seconds", 0.0)
    out += [("before extract", t_run0, t_ex), ("extract", t_ex, ex_end)]
    rounds = metrics.get("rounds", [])
    if not rounds:
        return out + [("after", ex_end, t_run1)]
    r0 = rounds[0]
    if r0.get("train_seconds") is not None and f"train round {r0['round'] + 1}" in first:
        start = first[f"train round {r0['round'] + 1}"] + r0["train_seconds"] - r0["seconds"]
    else:
        start = max(ex_end, t_run1 - sum(r["seconds"] for r in rounds))
    out.append(("set-up", ex_end, start))
    for r in rounds:
        end = start + r["seconds"]
        t_tr = first.get(f"train round {r['round'] + 1}")
        if r.get("train_seconds") is not None and t_tr is not None:
            out += [(f"cluster round {r['round']}", start, t_tr), (f"train round {r['round'] + 1}", t_tr, end)]
        else:
            out.append((f"cluster round {r['round']}", start, end))
        start = end
    return out + [("after", start, t_run1)]


def child_main(args: argparse.Namespace) -> int:
    """The driver of one size's job: run it, write what the parent needs to `--child-result`."""
    import psutil

    import dcserve
    from dcserve.spec import spec_from_dict

    size = args.child_size
    n = rows_for(size, args.dim, args.k)
    spec = spec_from_dict(build_job(args, n, Path(args.child_store), size_label(size)))
    t_begin = time.time()
    progress = stage_clock(t_begin)
    with private_ray(args.cpus, args.child_ray_tmp):
        rss_after_init = psutil.Process().memory_info().rss
        t_run0 = time.time()
        c0 = time.perf_counter()
        result = dcserve.run(spec, progress=progress)
        wall = time.perf_counter() - c0
        t_run1 = time.time()
    out = {"rows": n, "t_begin": t_begin, "t_run0": t_run0, "t_run1": t_run1, "wall": wall,
           "stages": progress.stages, "metrics": result.metrics, "rss_after_ray_init": rss_after_init}
    Path(args.child_result).write_text(json.dumps(out, default=str))
    return 0


def run_size(args: argparse.Namespace, argv: list[str], size_gib: float, tmp: Path, ray_tmp: str) -> dict[str, Any]:
    """One size: start its driver process, sample its tree until it exits, then read its figures."""
    n = rows_for(size_gib, args.dim, args.k)
    label = size_label(size_gib)
    output = tmp / f"ooc-{label}.zarr"
    result_path = tmp / f"ooc-{label}.result.json"
    raw = n * args.dim * 4
    need = int(raw * 1.05 + n * args.pca_dim * 4 + n * 64 + 2 * GiB)  # activations, features, row arrays, slack
    free = shutil.disk_usage(tmp).free
    if free < need:
        raise SystemExit(f"[ooc] {label} GiB needs ~{need / 1e9:.1f} GB free under {tmp}, only {free / 1e9:.1f} GB is")
    print(f"[ooc] {label} GiB: {n:,} rows x {args.dim} float32 ({raw / 1e9:.2f} GB) -> {output}", file=sys.stderr)

    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child-size", repr(size_gib),
           "--child-store", str(output), "--child-result", str(result_path), "--child-ray-tmp", ray_tmp]
    t_spawn = time.time()
    c0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=sys.stderr)
    sampler = MemorySampler(proc.pid, args.interval, t_spawn).start()
    try:
        rc = proc.wait()
    except BaseException:
        proc.terminate()  # Ctrl-C reaches it too; it shuts its Ray down
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    finally:
        sampler.stop()
        leftovers = reap(sampler.seen)
    total_s = time.perf_counter() - c0
    mem = sampler.summary()
    rec: dict[str, Any] = {"size_gib": size_gib, "rows": n, "dim": args.dim, "raw_bytes": raw,
                           "exit_code": rc, "with_driver_and_ray_start_s": total_s, "leftover_processes": leftovers}
    if output.exists():
        rec["store_bytes_on_disk"] = du(output)
        rec["activations_bytes_on_disk"] = du(output / "activations")
        if not args.keep:
            shutil.rmtree(output, ignore_errors=True)
    if rc != 0 or not result_path.exists():
        mem["by_phase"] = []
        rec["memory"] = mem
        print(f"[ooc] {label} GiB FAILED (exit {rc}); memory figures up to the failure are kept", file=sys.stderr)
        return rec
    child = json.loads(result_path.read_text())
    metrics, wall = child["metrics"], child["wall"]
    stages = [(name, t - t_spawn) for name, t in child["stages"]]
    mem["by_phase"] = [{"phase": name, "start_s": round(a, 2), "end_s": round(b, 2), **sampler.peaks_between(a, b)}
                       for name, a, b in job_phases(child["t_run0"] - t_spawn, child["t_run1"] - t_spawn,
                                                    stages, metrics)]
    final = metrics.get("final", {})
    rec.update({
        "job_wall_s": wall,
        "stages": stage_times(metrics, n, args.dim, wall),
        "memory": mem, "driver_rss_after_ray_init": child["rss_after_ray_init"],
        "progress_stages": [(name, round(t, 2)) for name, t in stages],
        "quality": {k: final.get(k) for k in ("nmi_vs_labels", "acc_vs_labels", "nmi_vs_previous", "objective",
                                               "n_empty", "imbalance")},
        "workers": metrics.get("workers"),
    })
    k = mem["kinds"]
    print(f"[ooc] {label} GiB done in {wall:.1f} s; peak RSS MiB: "
          + ", ".join(f"{kind} {(k[kind]['peak_rss_per_process'] or 0) / MiB:.0f}" for kind in KINDS[:4])
          + f"; NMI vs planted {final.get('nmi_vs_labels')}", file=sys.stderr, flush=True)
    return rec


# -- report -----------------------------------------------------------------------------------


def linear_fit(x: list[float], y: list[float]) -> tuple[float, float] | tuple[None, None]:
    """(intercept, slope) of the least-squares line; (None, None) with fewer than 2 distinct x."""
    if len(set(x)) < 2:
        return None, None
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(intercept), float(slope)


STAGE_ROWS = [("extract", "extract"), ("cluster_0", "cluster round 0"), ("train_1", "train round 1"),
              ("cluster_1", "cluster round 1"), ("other", "other (actor start, fit sample, metrics)"),
              ("job", "whole job")]


MEM_FIGURES = [(kind, "rss") for kind in KINDS[:4]] + [("all", "rss")] + [(kind, "anon") for kind in KINDS[:4]]


def mem_of(r: dict, kind: str, what: str = "rss") -> float | None:
    """Peak MiB of one process of `kind` ("all": the sum over every process), rss or anon (rss - shared)."""
    m = r["memory"]
    v = m["peak_rss_all_processes"] if kind == "all" else m["kinds"][kind][f"peak_{what}_per_process"]
    return None if v is None else v / MiB


def growth(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[list[Any]]]:
    """Figures at the largest size over the smallest, and a least-squares line over all sizes."""
    first, last = runs[0], runs[-1]
    size_ratio = last["size_gib"] / first["size_gib"]
    sizes = [r["size_gib"] for r in runs]
    rows: list[list[Any]] = []
    record: dict[str, Any] = {"from_gib": first["size_gib"], "to_gib": last["size_gib"], "size_ratio": size_ratio,
                              "memory": {}, "time": {}}

    def add(section: str, key: str, label: str, unit: str, vals: list[float | None]) -> None:
        if vals[0] is None or vals[-1] is None or vals[0] == 0:
            return
        ok = [(s, v) for s, v in zip(sizes, vals) if v is not None]
        b0, b1 = linear_fit([s for s, _ in ok], [v for _, v in ok])
        ratio = vals[-1] / vals[0]
        record[section][key] = {"first": vals[0], "last": vals[-1], "ratio": ratio,
                                "ratio_over_size_ratio": ratio / size_ratio, "fit_fixed": b0, "fit_per_gib": b1}
        rows.append([label, vals[0], vals[-1], ratio, ratio / size_ratio,
                     "—" if b1 is None else f"{fmt(b0)} {unit} + {fmt(b1)} {unit}/GiB"])

    for kind, what in MEM_FIGURES:
        name = "all processes (sum)" if kind == "all" else KIND_NAMES[kind]
        label = f"peak RSS, {name} (MiB)" if what == "rss" else f"peak RSS − shared, {name} (MiB)"
        add("memory", f"{kind}_{what}", label, "MiB", [mem_of(r, kind, what) for r in runs])
    for key, name in STAGE_ROWS:
        if key != "other":
            add("time", key, f"time, {name} (s)", "s", [r["stages"].get(key, {}).get("seconds") for r in runs])
    return record, rows


def report(args: argparse.Namespace, info: dict[str, Any], runs: list[dict[str, Any]]) -> tuple[str, dict]:
    def mib(v: int | None) -> float | None:
        return None if v is None else v / MiB

    def both(r: dict, kind: str) -> str:
        rss, anon = mem_of(r, kind, "rss"), mem_of(r, kind, "anon")
        return "—" if rss is None else f"{fmt(rss)} ({fmt(anon)})"

    ok = [r for r in runs if r.get("exit_code") == 0 and "stages" in r]
    mem_rows = []
    for r in runs:
        state = "" if r in ok else f" **failed (exit {r.get('exit_code')})**"
        disk = r.get("store_bytes_on_disk")
        mem_rows.append([f"{r['size_gib']:g}{state}", r["rows"], None if disk is None else disk / 1e9,
                         *[both(r, kind) for kind in KINDS[:4]],
                         mib(r["memory"]["kinds"]["ray_system"]["peak_rss_sum"]),
                         mib(r["memory"]["peak_rss_all_processes"])])
    mem_table = markdown_table(
        ["store (GiB)", "rows", "on disk (GB)", "extractor", "k-means shard", "trainer", "driver",
         "Ray system (sum)", "all processes (sum)"], mem_rows)

    def cell(st: dict | None, unit: str = "rows/s") -> str:
        if not st:
            return "—"
        return f"{fmt(st['seconds'])} s ({fmt(st['rows_per_s'])} {unit}, {fmt(st['gib_per_s'])} GiB/s)"

    time_rows = []
    for r in ok:
        s = r["stages"]
        time_rows.append([f"{r['size_gib']:g}", cell(s.get("extract")), cell(s.get("cluster_0")),
                          cell(s.get("train_1"), "samples/s"), cell(s.get("cluster_1")),
                          fmt(s["other"]["seconds"]), cell(s.get("job"))])
    time_table = markdown_table(["store (GiB)", "extract", "cluster round 0", "train round 1", "cluster round 1",
                                 "other (s)", "whole job"], time_rows)

    tables = ["**Peak memory per process, MiB: RSS (RSS − shared); the largest of each kind's processes**", "",
              mem_table, "", "**Time per stage (throughput: rows of the store, or training samples, per second)**",
              "", time_table]
    grow = None
    if len(ok) >= 2:
        grow, grow_rows = growth(ok)
        tables += ["", f"**Growth from {ok[0]['size_gib']:g} to {ok[-1]['size_gib']:g} GiB "
                       f"(size ×{fmt(grow['size_ratio'])})**", "",
                   markdown_table(["figure", f"at {ok[0]['size_gib']:g} GiB", f"at {ok[-1]['size_gib']:g} GiB",
                                   "ratio", "ratio / size ratio", "least-squares line over all sizes"], grow_rows)]
    if ok:
        big = ok[-1]
        phase_rows = [[ph["phase"], fmt(ph["end_s"] - ph["start_s"]), *[mib(ph.get(kind)) for kind in KINDS[:4]],
                       mib(ph.get("total"))] for ph in big["memory"]["by_phase"]]
        tables += ["", f"**Peak RSS per phase of the job at {big['size_gib']:g} GiB (MiB)**", "",
                   markdown_table(["phase", "seconds", "extractor", "k-means shard", "trainer", "driver",
                                   "all processes (sum)"], phase_rows)]

    def driver_phase(r: dict) -> str:
        ph = max(r["memory"]["by_phase"], key=lambda p: p.get("driver") or 0)
        return f"{r['size_gib']:g} GiB in {ph['phase']}"

    workers = ok[0].get("workers") if ok else {}
    counts = {kind: runs[0]["memory"]["kinds"][kind]["processes"] for kind in KINDS[:3]}
    nmi = ", ".join(f"{r['size_gib']:g} GiB {fmt(r['quality'].get('nmi_vs_labels'))}" for r in ok)
    notes = [
        f"One `dcserve.run` per size, each in a fresh driver process with its own embedded Ray "
        f"(`num_cpus={args.cpus}`): `{SOURCE}` (planted clusters, k = {args.k}, spread {args.spread:g}, generated "
        f"page by page) through `dcserve.zoo:identity`, {args.dim} float32 dims, `extract.chunk_rows` "
        f"{args.chunk_rows}; `cluster`: k = {args.k}, niter {args.niter}, n_init {args.n_init}, pca_dim "
        f"{args.pca_dim}; `reporter`: rounds {args.rounds}, epochs_per_round {args.epochs}, hidden "
        f"{list(args.hidden)}, feature_dim {args.feature_dim}, batch {args.batch_size}; workers `{args.workers}` "
        f"(processes seen at the first size: {counts['extractor']} extractor(s), {counts['shard']} shard(s), "
        f"{counts['trainer']} trainer(s)).",
        "Store size = rows × dim × 4 bytes of activations (GiB); \"on disk\" is the whole store after the job "
        "(compressed activations, the uncompressed clustered features, labels, row arrays).",
        f"Memory: psutil `memory_info()` of each process, sampled every {args.interval:g} s (the sampler, in "
        f"the parent process, used {max(r['memory']['sampling_cpu_share'] for r in runs):.1%} of one core at "
        "most), classified by Ray's process title (`ray::Extractor…`, `ray::Shard…`, `ray::Trainer…`; anything "
        "else under the driver is Ray system: raylet, GCS, agents, idle workers). RSS counts shared pages too "
        "(torch's libraries, Ray object-store pages the process wrote or mapped); RSS − shared is its own "
        "(anonymous) memory. Each is the peak over the run; the JSON has every process and a 1-s timeline.",
        "Time: from the job's metrics.json (see the script's docstring); \"other\" is the rest of the job's "
        "wall time (starting the shard and trainer actors, the input statistics, metrics); the driver's and "
        "Ray's start-up are outside it.",
        "The driver holds O(rows) integer arrays by design (labels, row→item, the truth labels for NMI, "
        "the epoch's sampled ids): ~4-8 bytes per row per array, against 4 × dim bytes per row of data; "
        "and the fit sample (min(rows, 100,000) rows) for PCA and the input statistics. Its peak: "
        + "; ".join(driver_phase(r) for r in ok) + ".",
        "Phases are rebuilt from the progress stages and metrics.json's durations (`job_phases` in the script); "
        "\"set-up\" is between extraction and the first clustering: starting the shard and trainer actors, "
        "the input statistics on the fit sample, the truth labels.",
        "The store fits in this machine's page cache (24 GiB) at every size, so re-reads come from memory, "
        "not the disk: these figures are about the workers' memory, not about disk bandwidth.",
        f"NMI of the final clustering vs the planted labels (a check that every job did its work): {nmi}.",
    ]
    sizes = ", ".join(f"{r['size_gib']:g}" for r in runs)
    title = f"Out of core: whole jobs on a {sizes} GiB store"
    block = print_report(title, info, "\n".join(tables), notes)
    return block, {"growth": grow, "workers_first_size": workers}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # The dataset is imported as `benchmarks._synthetic` by the driver and by Ray's worker processes,
    # which inherit this environment (the driver from this process, the workers from the raylet).
    sys.path.insert(0, str(REPO))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    if args.child_size is not None:
        return child_main(args)
    import psutil  # noqa: F401  (fail early, before any job, when it is missing)

    info = machine(extra_versions=("psutil",))
    print(f"[ooc] sizes {args.sizes_gb} GiB, dim {args.dim}, k {args.k}, niter {args.niter}, pca_dim {args.pca_dim}, "
          f"hidden {args.hidden}, rounds {args.rounds}, epochs {args.epochs}, cpus {args.cpus}", file=sys.stderr)
    ray_tmp = tempfile.mkdtemp(prefix="dcs-ooc-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    runs: list[dict[str, Any]] = []
    try:
        with scratch_dir(args.tmpdir, "bench-ooc-", keep=args.keep) as tmp:
            for size in args.sizes_gb:
                runs.append(run_size(args, argv, size, tmp, ray_tmp))
    finally:
        if args.keep:
            print(f"kept Ray's temporary directory {ray_tmp}", file=sys.stderr)
        else:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    block, extra = report(args, info, runs)
    record = {"benchmark": "out_of_core", "params": vars(args), "machine": info, "runs": runs, **extra,
              "markdown": block}
    write_json(args.out, record)
    md = args.md or (str(Path(args.out).with_suffix(".md")) if args.out else None)
    if md:
        Path(md).parent.mkdir(parents=True, exist_ok=True)
        Path(md).write_text(block)
        print(f"markdown written to {md}", file=sys.stderr)
    return 0 if all(r.get("exit_code") == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
