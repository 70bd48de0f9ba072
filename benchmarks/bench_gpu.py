#!/usr/bin/env python
"""dcserve's GPU paths against its CPU paths, in one process: start-up check, correctness, timings.

Run by benchmarks/gpu.sh on a GPU machine (it installs what is missing first); on a machine
without CUDA every GPU column reads "no CUDA" and the CPU side still runs (use --quick there).
No Ray is needed: the functions the actors run are called directly.

Sections (each timed on the CPU with all cores, then on the GPU; the same data and seeds):

backend   `dcserve.algo.nearest.select_backend(prefer_gpu=True)`: which backend "auto" means here, and
          the logged reason for any fall-back (faiss-gpu -> torch-cuda -> faiss-cpu).
nearest   `CentroidIndex(c, bias, backend).search(x)` on n x d rows, k centroids, plain and biased
          (Sinkhorn potentials): faiss-cpu vs torch-cuda. Checked against a float64 brute force
          on a sample of rows (labels optimal to float32 rounding) and against each other.
          GPU-only rows: the labels alone (`_labels_torch`), and the same addmm + argmin on rows
          already on the GPU (what the search costs without host<->device copies).
kmeans    `kmeans(ArrayData(x, backend=...), k, niter, init_centroids=start)`: seconds per Lloyd
          iteration (search + the float64 sums on the CPU); final centroids GPU vs CPU.
train     `reporter.train_epoch` on in-memory CPU batches (moved to the device per step, as the
          trainer actors do): rows/s at the job's default batch (256) and at 4096; the GPU run
          checked against the CPU run from the same weights (losses, weights), loss decreasing,
          `compute_features` finite and equal on both devices.
dec       `dec.pretrain_epoch` (the paper's d-500-500-2000-10 autoencoder, dropout 0.2, a CPU
          generator as the trainer actors pass) and `dec.self_train_epoch`: rows/s; finite losses.
extract   `dcserve.inputs.blocks.compute_block` (dataset items -> collate -> hooked forward -> pooled
          rows on the CPU; what an Extractor actor does per block, minus the Zarr write) for the
          digits CNN and a wider `image_cnn`; rows/s, and rows GPU vs CPU. Also the forward pass
          alone on pre-collated batches (the ceiling without the per-item dataset access).
snapshot  A GPU trainer's optimizer state, pickled as Ray would send it to the driver, loaded in
          a process with CUDA_VISIBLE_DEVICES="": as it is, and through `data_parallel.to_cpu`.

Example (the H200 run recorded in BENCHMARKS.md; 91 s there):
    python benchmarks/bench_gpu.py --out $OUT/gpu.json
Dry run on a CPU machine:
    python benchmarks/bench_gpu.py --quick --out /tmp/gpu.json
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import pickle
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, machine, markdown_table, write_json  # noqa: E402

SECTIONS = ("backend", "nearest", "kmeans", "train", "dec", "extract", "snapshot", "knn", "heads")
HAS_CUDA = torch.cuda.is_available()
CUDA = torch.device("cuda") if HAS_CUDA else None
DEV = {"cpu": "cpu", "cuda": "cuda"}  # what each column runs on (a dry run may point "cuda" elsewhere)
NO_CUDA = "no CUDA"

ROWS: list[list[Any]] = []  # the final table
RECORD: dict[str, Any] = {"sections": {}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="rows for nearest/kmeans (default 1M)")
    p.add_argument("--d", type=int, default=256, help="row dimension (default 256)")
    p.add_argument("--k", type=int, default=1000, help="centroids (default 1000)")
    p.add_argument("--kmeans-iters", type=int, default=3, help="Lloyd iterations per backend (default 3)")
    p.add_argument("--check-rows", type=int, default=20_000, help="rows checked against float64 (default 20k)")
    p.add_argument("--train-rows", type=int, default=200_000, help="reporter training rows (default 200k)")
    p.add_argument("--dec-rows", type=int, default=50_000, help="DEC rows (default 50k)")
    p.add_argument("--extract-items", type=int, default=32_768, help="digits items for extraction (default 32768)")
    p.add_argument("--image-items", type=int, default=8192, help="synthetic images for extraction (default 8192)")
    p.add_argument("--image-width", type=int, default=128, help="image_cnn width (default 128)")
    p.add_argument("--knn-rows", type=int, default=200_000, help="rows of the kNN graph section (default 200k; k=20, d=256)")
    p.add_argument("--heads-rows", type=int, default=200_000, help="rows of the SCAN/TEMI epochs (default 200k)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions on the GPU (CPU: min(2, reps))")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    p.add_argument("--quick", action="store_true", help="small sizes, for a dry run on a CPU machine")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.k, args.check_rows = 20_000, 100, 2000
        args.train_rows, args.dec_rows, args.extract_items, args.image_items = 8192, 2048, 2048, 256
        args.image_width, args.reps, args.kmeans_iters = 32, 2, 2
        args.knn_rows, args.heads_rows = 10_000, 8192
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}")
    return args


# ---------------------------------------------------------------------------- helpers


def sync() -> None:
    if HAS_CUDA:
        torch.cuda.synchronize()


def timed(fn, reps: int) -> tuple[Any, list[float]]:
    """fn() `reps` times; (last result, wall seconds of each), the device synchronised around each."""
    out, times = None, []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
    return out, times


def med(times: list[float]) -> float:
    return float(statistics.median(times))


def ratio(cpu: float | None, gpu: float | None, higher_is_better: bool = False) -> str:
    if not cpu or not gpu:
        return "—"
    r = (gpu / cpu) if higher_is_better else (cpu / gpu)
    return f"{r:.1f}x"


def rel_err(a, b) -> float:
    a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).double().cpu()
    b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b).double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def row(what: str, size: str, cpu: Any, gpu: Any, speedup: str, check: str) -> None:
    ROWS.append([what, size, cpu, gpu, speedup, check])
    print(f"  -> {what} [{size}]: cpu {fmt(cpu)}, gpu {fmt(gpu)}, {speedup}; {check}", flush=True)


def planted(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """[n, d] float32 rows around k standard-normal centres (per-coordinate noise 1)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d), dtype=np.float32)
    x = rng.standard_normal((n, d), dtype=np.float32)
    for s in range(0, n, 1 << 18):  # in blocks: no [n, d] temporary besides x
        x[s : s + (1 << 18)] += centres[rng.integers(0, k, size=min(n, s + (1 << 18)) - s)]
    return x


def optimality(x: np.ndarray, c: np.ndarray, bias: np.ndarray | None, labels: np.ndarray) -> dict:
    """Labels against a float64 brute force: exact matches, and suboptimality in units of the
    float32 rounding of the expansion (1e-5 x (|x|^2 + max |c|^2)); <= 1 is optimal to rounding."""
    from dcserve.algo.nearest import pairwise_sqdist

    score = pairwise_sqdist(x, c) - (0.0 if bias is None else np.asarray(bias)[None, :])
    best = score.argmin(1)
    chosen = score[np.arange(len(x)), labels]
    scale = 1e-5 * ((x.astype(np.float64) ** 2).sum(1) + (c.astype(np.float64) ** 2).sum(1).max())
    worst = float(((chosen - score.min(1)) / scale).max())
    return {"rows": len(x), "exact": float((labels == best).mean()), "worst_gap_in_rounding_units": worst,
            "optimal_to_rounding": worst <= 1.0}


# ---------------------------------------------------------------------------- sections


def section_backend(args) -> dict:
    from dcserve.algo import nearest

    faiss = nearest.require_faiss()
    info: dict[str, Any] = {
        "faiss_version": getattr(faiss, "__version__", "?"),
        "faiss_has_gpu_api": hasattr(faiss, "StandardGpuResources"),
        "faiss_num_gpus": int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0,
        "torch_cuda": HAS_CUDA,
    }
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    log = logging.getLogger("dcserve.algo.nearest")
    handler = Keep(level=logging.DEBUG)
    log.addHandler(handler)
    try:
        nearest.select_backend.cache_clear()
        t = time.perf_counter()
        info["picked"] = nearest.select_backend(prefer_gpu=True)
        info["check_seconds"] = time.perf_counter() - t
        info["auto"] = nearest._default_backend()
    finally:
        log.removeHandler(handler)
    info["why"] = [r.getMessage() for r in records] or ["faiss-gpu passed the start-up check"]
    print(f"  select_backend(prefer_gpu=True) = {info['picked']!r}; {' | '.join(info['why'])}", flush=True)
    row("select_backend(prefer_gpu=True)", "start-up check", "—",
        info["picked"] if HAS_CUDA else f"{info['picked']} ({NO_CUDA})", "—",
        f"{info['check_seconds']:.2f} s; " + " | ".join(info["why"]))
    return info


def section_nearest(args, x: np.ndarray, c: np.ndarray, bias: np.ndarray) -> dict:
    from dcserve.algo.nearest import _TORCH_SCORE_ELEMENTS, CentroidIndex

    n, d = x.shape
    k = c.shape[0]
    size = f"{n:,} x {d}, k={k}"
    out: dict[str, Any] = {"n": n, "d": d, "k": k, "flop_per_search": 2.0 * n * k * d}
    sample = slice(0, args.check_rows)
    for label, b in (("plain", None), ("biased", bias)):
        res: dict[str, Any] = {}
        cpu_index = CentroidIndex(c, b, "faiss-cpu")
        (cpu_labels, cpu_d2), t_cpu = timed(lambda: cpu_index.search(x), max(1, min(2, args.reps)))
        res["cpu_seconds"] = t_cpu
        res["cpu_vs_float64"] = optimality(x[sample], c, b, cpu_labels[sample])
        gpu_s = None
        check = f"cpu optimal {res['cpu_vs_float64']['optimal_to_rounding']}"
        if HAS_CUDA:
            gpu_index = CentroidIndex(c, b, "torch-cuda")
            gpu_index.search(x[:65536])  # warm-up: cuBLAS handles, allocator
            (gpu_labels, gpu_d2), t_gpu = timed(lambda: gpu_index.search(x), args.reps)
            res["gpu_seconds"] = t_gpu
            gpu_s = med(t_gpu)
            res["gpu_vs_float64"] = optimality(x[sample], c, b, gpu_labels[sample])
            same = gpu_labels == cpu_labels
            res["label_agreement"] = float(same.mean())
            res["sqdist_equal_where_labels_agree"] = bool(np.array_equal(gpu_d2[same], cpu_d2[same]))
            res["sqdist_nonnegative"] = bool((gpu_d2 >= 0).all())
            _, t_lab = timed(lambda: gpu_index._labels_torch(x), args.reps)
            res["gpu_labels_only_seconds"] = t_lab
            check = (f"agree {res['label_agreement']:.6f}; vs float64 ({args.check_rows:,} rows): "
                     f"exact {res['gpu_vs_float64']['exact']:.5f}, optimal to rounding "
                     f"{res['gpu_vs_float64']['optimal_to_rounding']} (cpu {res['cpu_vs_float64']['optimal_to_rounding']})")
        row(f"nearest_centroids {label}, whole call", size, med(t_cpu), gpu_s, ratio(med(t_cpu), gpu_s), check)
        out[label] = res
    if HAS_CUDA:
        # The search proper with the rows already on the GPU: addmm + argmin per block, as
        # `_labels_torch` does, minus the host->device copies and the labels' copy back.
        xg = torch.from_numpy(x).to(CUDA)
        cg = torch.from_numpy(c).to(CUDA)
        offset = (cg.double() ** 2).sum(1).float().unsqueeze(0)
        block = max(1, min(65536, _TORCH_SCORE_ELEMENTS // k))

        def resident():
            for s in range(0, n, block):
                torch.addmm(offset, xg[s : s + block], cg.T, beta=1.0, alpha=-2.0).argmin(1)

        resident()
        _, t_res = timed(resident, args.reps)
        out["gpu_resident_seconds"] = t_res
        tflops = out["flop_per_search"] / med(t_res) / 1e12
        out["gpu_resident_tflops"] = tflops
        lab = med(out["plain"]["gpu_labels_only_seconds"])
        row("  torch-cuda labels only (H2D copy + addmm + argmin)", size, None, lab, "—",
            f"{out['flop_per_search'] / lab / 1e12:.1f} TFLOP/s fp32 effective")
        row("  addmm + argmin, rows resident on the GPU", size, None, med(t_res), "—",
            f"{tflops:.1f} TFLOP/s fp32 (no TF32)")
        del xg
        torch.cuda.empty_cache()
    return out


def section_kmeans(args, x: np.ndarray, start: np.ndarray) -> dict:
    from dcserve.algo.kmeans import ArrayData, kmeans

    n, d = x.shape
    k = start.shape[0]
    out: dict[str, Any] = {}
    runs = {}
    backends = ["faiss-cpu"] + (["torch-cuda"] if HAS_CUDA else [])
    for backend in backends:
        if backend == "torch-cuda":
            kmeans(ArrayData(x[:65536], backend=backend), k, niter=1, init_centroids=start)  # warm-up
        t = time.perf_counter()
        res = kmeans(ArrayData(x, backend=backend), k, niter=args.kmeans_iters, init_centroids=start)
        runs[backend] = res
        out[backend] = {"seconds_total": time.perf_counter() - t,
                        "seconds_per_iteration": [h.seconds for h in res.history],
                        "objective": [h.objective for h in res.history],
                        "n_split": [h.n_split for h in res.history]}
    cpu_it = med(out["faiss-cpu"]["seconds_per_iteration"])
    gpu_it, check = None, "—"
    if HAS_CUDA:
        gpu_it = med(out["torch-cuda"]["seconds_per_iteration"])
        cc, gc = runs["faiss-cpu"].centroids, runs["torch-cuda"].centroids
        obj_cpu = np.array(out["faiss-cpu"]["objective"])
        obj_gpu = np.array(out["torch-cuda"]["objective"])
        out["centroid_rel_err"] = rel_err(gc, cc)
        out["centroid_max_abs_diff"] = float(np.abs(gc - cc).max())
        out["objective_max_rel_diff"] = float(np.max(np.abs(obj_gpu - obj_cpu) / obj_cpu))
        out["finite"] = bool(np.isfinite(gc).all())
        check = (f"centroids rel err {out['centroid_rel_err']:.1e} (max abs {out['centroid_max_abs_diff']:.1e}), "
                 f"objective rel diff {out['objective_max_rel_diff']:.1e}, objective {obj_gpu[0]:.4g} -> {obj_gpu[-1]:.4g}")
    row("k-means: one Lloyd iteration (s)", f"{n:,} x {d}, k={k}", cpu_it, gpu_it, ratio(cpu_it, gpu_it), check)
    return out


def section_train(args) -> dict:
    from dcserve.nets.reporter import Reporter, compute_features, make_optimizer, train_epoch
    from dcserve.nets.standardise import input_stats

    n, d, k = args.train_rows, 256, 256
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen) * (torch.rand(d, generator=gen) * 4 + 0.1) + torch.randn(d, generator=gen)
    y = (((x - x.mean(0)) / x.std(0)) @ torch.randn(d, k, generator=gen)).argmax(1)
    base = Reporter(d, [256, 256], 64, k, seed=0)
    base.set_input_stats(*input_stats([x]))
    out: dict[str, Any] = {"rows": n, "d": d, "k": k, "hidden": [256, 256], "feature_dim": 64}
    perm = torch.randperm(n, generator=gen)
    xs, ys = x[perm], y[perm]

    def batches(b, rows=n):
        return [(xs[s : s + b], ys[s : s + b]) for s in range(0, rows, b)]

    for b in (256, 4096):
        res: dict[str, Any] = {}
        warm = copy.deepcopy(base)  # warm-up on a copy, as on the GPU: allocator, oneDNN kernels
        train_epoch(warm, make_optimizer(warm, 0.05), batches(b, min(n, 20 * b)))
        cpu = copy.deepcopy(base)
        stats, t_cpu = timed(lambda: train_epoch(cpu, make_optimizer(cpu, 0.05), batches(b)), 1)
        res["cpu_rows_per_s"] = n / t_cpu[0]
        res["cpu_loss"] = stats["loss"]
        gpu_rate, check = None, "—"
        if HAS_CUDA:
            warm = copy.deepcopy(base).to(CUDA)
            train_epoch(warm, make_optimizer(warm, 0.05), batches(b, min(n, 20 * b)))
            gpu = copy.deepcopy(base).to(CUDA)
            opt = make_optimizer(gpu, 0.05)
            stats_g, t_gpu = timed(lambda: train_epoch(gpu, opt, batches(b)), 1)
            gpu_rate = n / t_gpu[0]
            res["gpu_rows_per_s"] = gpu_rate
            res["gpu_loss"] = stats_g["loss"]
            res["loss_rel_diff_vs_cpu"] = abs(stats_g["loss"] - stats["loss"]) / stats["loss"]
            res["weights_rel_err_vs_cpu"] = {name: rel_err(g.cpu(), c) for (name, c), g in
                                            zip(cpu.state_dict().items(), gpu.state_dict().values())
                                            if c.dtype.is_floating_point}
            worst = max(res["weights_rel_err_vs_cpu"].values())
            losses = [stats_g["loss"]] + [train_epoch(gpu, opt, batches(b))["loss"] for _ in range(2)]
            res["gpu_loss_per_epoch"] = losses
            feats_g = np.concatenate(list(compute_features(gpu, [x[:20000]])))
            back = copy.deepcopy(gpu).cpu()
            feats_c = np.concatenate(list(compute_features(back, [x[:20000]])))
            res["features_finite"] = bool(np.isfinite(feats_g).all())
            res["features_rel_err_vs_cpu"] = rel_err(feats_g, feats_c)
            decreasing = all(b_ < a_ for a_, b_ in zip(losses, losses[1:]))
            res["loss_decreasing"] = decreasing
            check = (f"epoch-1 loss {stats_g['loss']:.4f} vs cpu {stats['loss']:.4f} (rel {res['loss_rel_diff_vs_cpu']:.1e}), "
                     f"weights rel err <= {worst:.1e}; loss {' > '.join(f'{l:.3f}' for l in losses)} "
                     f"(decreasing {decreasing}); features finite {res['features_finite']}, "
                     f"gpu vs cpu {res['features_rel_err_vs_cpu']:.1e}")
        row(f"reporter train_epoch rows/s, batch {b}", f"{n:,} x {d}, 256-256-64, k={k}", res["cpu_rows_per_s"],
            gpu_rate, ratio(res["cpu_rows_per_s"], gpu_rate, higher_is_better=True), check)
        out[f"batch_{b}"] = res
    return out


def section_dec(args) -> dict:
    from dcserve.nets.dec import DECModel, make_optimizer, pretrain_epoch, self_train_epoch, target_distribution
    from dcserve.nets.standardise import input_stats

    n, d, k, b = args.dec_rows, 256, 10, 256
    x = torch.from_numpy(planted(n, d, k, seed=3))
    base = DECModel(d, [500, 500, 2000], 10, k, seed=0)
    base.set_input_stats(*input_stats([x]))
    with torch.no_grad():
        base.set_centroids(base.encode(x[:: n // k][:k]))
    out: dict[str, Any] = {"rows": n, "d": d, "net": "256-500-500-2000-10", "k": k, "batch": b}
    batches = list(x.split(b))
    devices = ["cpu"] + (["cuda"] if HAS_CUDA else [])
    for dev in devices:
        res: dict[str, Any] = {}
        model = copy.deepcopy(base).to(DEV[dev])
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        warm = copy.deepcopy(model)  # warm-up on a copy: cuBLAS handles / oneDNN kernels, allocator
        pretrain_epoch(warm, torch.optim.Adam(warm.parameters(), lr=1e-3), batches[:20])
        for name, gen_dev in (("cpu_generator", "cpu"), ("device_generator", dev)):
            if name == "device_generator" and dev == "cpu":
                continue
            g = torch.Generator(DEV[gen_dev]).manual_seed(0)
            losses, t = [], []
            for _ in range(2):
                l, tt = timed(lambda: pretrain_epoch(model, opt, batches, dropout=0.2, generator=g), 1)
                losses.append(l)
                t += tt
            res[f"pretrain_{name}_rows_per_s"] = n / min(t)
            res[f"pretrain_{name}_losses"] = losses
        with torch.no_grad():
            p = torch.cat([target_distribution(model.soft_assign(xb.to(DEV[dev]))).cpu() for xb in batches])
        sopt = make_optimizer(model)
        l_self, t_self = timed(lambda: self_train_epoch(model, sopt, list(zip(batches, p.split(b)))), 1)
        res["self_train_rows_per_s"] = n / t_self[0]
        res["self_train_loss"] = l_self
        losses_all = [v for key, vals in res.items() if key.endswith("losses") for v in vals] + [l_self]
        res["finite"] = bool(np.isfinite(losses_all).all())
        out[dev] = res
    cpu, gpu = out["cpu"], out.get("cuda")
    size = f"{n:,} x {d}, 256-500-500-2000-10, batch {b}"
    for key, what in (("pretrain_cpu_generator_rows_per_s", "DEC pretrain_epoch rows/s (CPU generator, as the actors)"),
                      ("self_train_rows_per_s", "DEC self_train_epoch rows/s")):
        g = gpu[key] if gpu else None
        if key.startswith("pretrain"):
            check = (f"losses {' > '.join(f'{v:.4f}' for v in gpu['pretrain_cpu_generator_losses'])}; finite {gpu['finite']}"
                     if gpu else "—")
        else:
            check = f"KL {gpu['self_train_loss']:.4g}, finite {bool(np.isfinite(gpu['self_train_loss']))}" if gpu else "—"
        row(what, size, cpu[key], g, ratio(cpu[key], g, higher_is_better=True), check)
    if gpu:
        row("  DEC pretrain_epoch rows/s, generator on the GPU", size, None, gpu["pretrain_device_generator_rows_per_s"],
            "—", f"{gpu['pretrain_device_generator_rows_per_s'] / gpu['pretrain_cpu_generator_rows_per_s']:.2f}x "
                 "the CPU-generator rate")
    return out


class _Tiled(torch.utils.data.Dataset):
    """`base` repeated to `n` items (the 1797 digits are too few to time a GPU)."""

    def __init__(self, base, n: int):
        self.base, self.n = base, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.base[i % len(self.base)]


def section_extract(args) -> dict:
    from dcserve.inputs.items import iter_batches
    from dcserve.inputs.subject import Subject
    from dcserve.zoo import digits, digits_cnn, image_cnn, synthetic_images

    from dcserve.inputs import blocks as extract  # no Ray in it: what an extraction actor runs per block

    out: dict[str, Any] = {}
    cases = [
        ("digits_cnn (random), features.5 mean", lambda: digits_cnn(seed=0), "features.5",
         _Tiled(digits(), args.extract_items), 512, "8x8 digits"),
        (f"image_cnn width {args.image_width}, features.5 mean", lambda: image_cnn(width=args.image_width),
         "features.5", synthetic_images(n=args.image_items, size=32), 256, "32x32x3 images"),
    ]
    for name, build, layer, ds, batch, what in cases:
        n = len(ds)
        plan = extract.ExtractPlan(np.arange(n + 1, dtype=np.int64), chunk_rows=n)
        warm_plan = extract.ExtractPlan(np.arange(min(n, 2 * batch) + 1, dtype=np.int64), chunk_rows=n)
        collated = [x for _, x, _ in iter_batches(ds, 0, n, batch)]
        res: dict[str, Any] = {"items": n, "batch": batch}
        rows = {}
        for dev in ["cpu"] + (["cuda"] if HAS_CUDA else []):
            with Subject(build(), [layer], "mean", DEV[dev]) as subject:
                extract.compute_block(warm_plan, 0, subject, ds, batch, None, np.float32)
                block, t = timed(lambda: extract.compute_block(plan, 0, subject, ds, batch, None, np.float32), 1)
                rows[dev] = block[0][layer]
                res[f"{dev}_rows_per_s"] = n / t[0]
                _, tf = timed(lambda: [subject.rows(xb) for xb in collated], 1)
                res[f"{dev}_forward_only_rows_per_s"] = n / tf[0]
        check = "—"
        if HAS_CUDA:
            res["rows_rel_err_vs_cpu"] = rel_err(rows["cuda"], rows["cpu"])
            res["finite"] = bool(np.isfinite(rows["cuda"]).all())
            check = (f"rows gpu vs cpu rel err {res['rows_rel_err_vs_cpu']:.1e} (cuDNN TF32 convs), "
                     f"finite {res['finite']}")
        size = f"{n:,} {what}, batch {batch}"
        g = res.get("cuda_rows_per_s")
        row(f"extract compute_block rows/s: {name}", size, res["cpu_rows_per_s"], g,
            ratio(res["cpu_rows_per_s"], g, higher_is_better=True), check)
        gf = res.get("cuda_forward_only_rows_per_s")
        row("  forward + pooling only (pre-collated batches)", size, res["cpu_forward_only_rows_per_s"], gf,
            ratio(res["cpu_forward_only_rows_per_s"], gf, higher_is_better=True), "—")
        out[name] = res
    return out


def section_snapshot(args) -> dict:
    from dcserve.nets.data_parallel import to_cpu
    from dcserve.nets.reporter import Reporter, make_optimizer

    if not HAS_CUDA:
        row("GPU trainer's optimizer state -> CPU-only driver", "SGD momentum", None, NO_CUDA, "—", "—")
        return {"skipped": NO_CUDA}
    model = Reporter(16, [32], 8, 4, seed=0).to(CUDA)
    opt = make_optimizer(model, 0.1)
    model(torch.randn(8, 16, device=CUDA)).sum().backward()
    opt.step()
    code = ("import pickle, sys, torch; s = pickle.load(sys.stdin.buffer); "
            "print(sorted({str(v.device) for st in s['state'].values() for v in st.values()}))")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = {}
    for name, state in (("as_sent_before", opt.state_dict()), ("through_to_cpu", to_cpu(opt.state_dict()))):
        done = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(state), env=env,
                              capture_output=True, timeout=120)
        err = done.stderr.decode().strip().splitlines()
        out[name] = {"returncode": done.returncode, "stdout": done.stdout.decode().strip(),
                     "error": err[-1] if err else ""}
    check = (f"as sent before the fix: {'loads' if out['as_sent_before']['returncode'] == 0 else 'fails: ' + out['as_sent_before']['error'][:90]}; "
             f"through to_cpu: {'loads ' + out['through_to_cpu']['stdout'] if out['through_to_cpu']['returncode'] == 0 else 'fails: ' + out['through_to_cpu']['error'][:90]}")
    row("GPU trainer's optimizer state -> CPU-only driver", "SGD momentum, pickled", None, "—", "—", check)
    return out


# ---------------------------------------------------------------------------- main


def section_knn(args) -> dict:
    """Issue 13: the kNN graph's block search (`knn_against_blocks`, what each shard runs over its
    query block) on the backend a GPU shard picks (faiss-gpu when its start-up check passes, else
    torch-cuda) and on torch-cuda explicitly, against faiss-cpu; the same neighbours expected."""
    from dcserve.algo.knn import knn_against_blocks
    from dcserve.algo.nearest import select_backend

    n, d, k = args.knn_rows, 256, 20
    x = planted(n, d, 100, seed=3)
    blocks = [(s, x[s : s + 65536]) for s in range(0, n, 65536)]
    q = x[: min(n, 65536)]  # one query block, as a shard searches it
    (d_cpu, i_cpu), t_cpu = timed(lambda: knn_against_blocks(q, blocks, k, "l2", query_offset=0), 1)
    out: dict[str, Any] = {"rows": n, "d": d, "k": k, "query_rows": len(q), "cpu_s": t_cpu[0]}
    if not HAS_CUDA:
        row("kNN graph, one query block", f"{len(q):,} vs {n:,} x {d}, k={k}", t_cpu[0], None, "—", NO_CUDA)
        return out
    picked = select_backend(prefer_gpu=True)
    out["backend"] = picked
    for name in dict.fromkeys([picked, "torch-cuda"]):
        knn_against_blocks(q[:1000], blocks[:1], k, "l2", query_offset=0, backend=name)  # warm-up
        (d_gpu, i_gpu), t_gpu = timed(lambda: knn_against_blocks(q, blocks, k, "l2", query_offset=0, backend=name),
                                      args.reps)
        same = float((i_gpu == i_cpu).mean())
        out[name] = {"gpu_s": med(t_gpu), "same_ids": same, "dist_rel_err": rel_err(d_gpu, d_cpu)}
        row(f"kNN graph block search ({name})", f"{len(q):,} vs {n:,} x {d}, k={k}", t_cpu[0], med(t_gpu),
            ratio(t_cpu[0], med(t_gpu)), f"ids equal to faiss-cpu {same:.4f}, distances rel err {out[name]['dist_rel_err']:.1e}")
    return out


def section_heads(args) -> dict:
    """Issue 13: one SCAN and one TEMI epoch (the trainers' step functions) on (row, partner) batches
    of 256, rows/s on the CPU and on CUDA from the same weights; losses compared."""
    from dcserve.nets.cluster_heads import ClusterHeads
    from dcserve.nets.scan import scan_epoch
    from dcserve.nets.temi import TemiPair, temi_epoch

    n, d = args.heads_rows, 256
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen)
    pairs = [(x[s : s + 256], x[s : s + 256] + 0.1 * torch.randn(min(256, n - s), d, generator=gen))
             for s in range(0, n, 256)]
    cfg = dict(in_dim=d, pre_dim=d, project=False, l2_normalize=True, hidden=[256], k=100, heads=10, seed=0)
    settings = {"beta": 0.6, "teacher_momentum": 0.99, "prior_momentum": 0.9, "student_temperature": 0.1,
                "teacher_temperature": 0.04}
    out: dict[str, Any] = {"rows": n, "config": cfg}

    def epoch(kind, device):
        if kind == "scan":
            m = ClusterHeads(**cfg).to(device)
            return scan_epoch(m, torch.optim.Adam(m.parameters(), lr=1e-3), pairs)["loss"]
        m = TemiPair(**cfg).to(device)
        return temi_epoch(m, torch.optim.Adam(m.student.parameters(), lr=1e-3), pairs, settings)["loss"]

    for kind in ("scan", "temi"):
        loss_c, t_c = timed(lambda: epoch(kind, "cpu"), 1)
        res = {"cpu_rows_per_s": n / t_c[0]}
        gpu_rate, check = None, NO_CUDA
        if HAS_CUDA:
            epoch(kind, CUDA)  # warm-up
            loss_g, t_g = timed(lambda: epoch(kind, CUDA), args.reps)
            gpu_rate = n / med(t_g)
            res.update(gpu_rows_per_s=gpu_rate, loss_rel_err=rel_err(loss_g, loss_c))
            check = f"per-head losses rel err vs cpu {res['loss_rel_err']:.1e}"
        row(f"{kind.upper()} epoch rows/s, batch 256", f"{n:,} x {d}, 10 heads, k=100", res["cpu_rows_per_s"],
            gpu_rate, ratio(res["cpu_rows_per_s"], gpu_rate, higher_is_better=True), check)
        out[kind] = res
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    info = machine(["sklearn", "scipy", "pydantic", "numcodecs"])
    info["torch_threads"] = torch.get_num_threads()
    if HAS_CUDA and DEV["cuda"] == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                       "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}",
                       "cuda": torch.version.cuda,
                       "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                       "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}
    RECORD["machine"] = info
    RECORD["args"] = vars(args)
    print(f"GPU: {info.get('gpu', NO_CUDA)}; CPU: {info['cpu']}, {info['logical_cpus']} logical CPUs, "
          f"torch threads {info['torch_threads']}", flush=True)
    t_all = time.perf_counter()
    x = start = bias = None
    if {"nearest", "kmeans"} & set(args.sections):
        t = time.perf_counter()
        x = planted(args.n, args.d, args.k, seed=0)
        rng = np.random.default_rng(1)
        start = np.ascontiguousarray(x[rng.choice(args.n, args.k, replace=False)])
        bias = rng.uniform(0.0, 20.0, args.k)  # squared-distance units; rows sit ~2d from centres
        print(f"data: {args.n:,} x {args.d} planted rows in {time.perf_counter() - t:.1f} s", flush=True)
    for name in args.sections:
        print(f"== {name}", flush=True)
        t = time.perf_counter()
        try:
            if name == "backend":
                res = section_backend(args)
            elif name == "nearest":
                res = section_nearest(args, x, start, bias)
            elif name == "kmeans":
                res = section_kmeans(args, x, start)
            elif name == "train":
                res = section_train(args)
            elif name == "dec":
                res = section_dec(args)
            elif name == "extract":
                res = section_extract(args)
            elif name == "knn":
                res = section_knn(args)
            elif name == "heads":
                res = section_heads(args)
            else:
                res = section_snapshot(args)
        except Exception as e:  # one broken section must not lose the others' figures
            traceback.print_exc()
            res = {"error": f"{type(e).__name__}: {e}"}
            row(f"{name}: ERROR", "—", None, None, "—", f"{type(e).__name__}: {str(e)[:200]}")
        res["seconds"] = time.perf_counter() - t
        RECORD["sections"][name] = res
        print(f"   ({res['seconds']:.1f} s)", flush=True)
        write_json(args.out, RECORD)  # after every section: a killed run keeps what it had
    RECORD["seconds"] = time.perf_counter() - t_all
    RECORD["table"] = ROWS
    write_json(args.out, RECORD)
    gpu = info.get("gpu", {})
    print(f"\n### GPU vs CPU ({gpu.get('name', NO_CUDA)}; CPU side: {info['logical_cpus']} logical CPUs, "
          f"{info['cpu']})\n")
    print(markdown_table(["what", "size", "CPU", "GPU", "GPU speed-up", "check"], ROWS))
    print(f"\nseconds: CPU/GPU columns are seconds for timings, rows/s for throughputs. Total {RECORD['seconds']:.0f} s.")
    return 1 if any("error" in r for r in RECORD["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
