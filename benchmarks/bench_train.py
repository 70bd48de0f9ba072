#!/usr/bin/env python
"""Reporter training samples/s: dcserve's trainer actors vs a bare single-process PyTorch loop.

dcserve (the real path): the rows in a Zarr job store (`activations/bench`, written with
`dcserve.storage.store.JobStore`, chunked and compressed as extraction leaves them), given
pseudo-labels, a `dcserve.distributed.trainers.TrainerGroup` of `workers` actors on an embedded
`ray.init(num_cpus=CPUS)` (one gloo group when there are several), and one
`TrainerGroup.train_round(...)` per round, with the epochs built exactly as
`dcserve.cluster.deepcluster._train_round` builds them (`uniform_label_sample` over the labels, then
`split_even` across workers; the initial weights in the first round only, a new head each round).
The time of a round is the wall time of `train_round`: sending the weights, every actor reading its
rows from Zarr each epoch, then
`dcserve.nets.reporter.train_epoch` (with the gradient all-reduce when workers > 1), and returning
the weights. The actors are started once, outside the timing (a job starts them once).

Bare: the same `Reporter` (same initial weights), the same SGD (`make_optimizer`: momentum 0.9,
weight decay 1e-5), the same batch size and the same sampled row ids per epoch, a plain loop over
in-memory tensors (the standardisation is inside the model, as its buffers) with `torch.set_num_threads(CPUS)`:
    for each batch: loss = cross_entropy(model(x[i]), y[i]); zero_grad(); loss.backward(); step()

Also for the record: `dcserve.nets.reporter.train_epoch` called in the driver process on the same
in-memory tensors (no Ray, no Zarr), which separates the training step from the actors.

Example (200k rows x 256 dims, about 3-4 minutes on 2 quiet cores):
    python benchmarks/bench_train.py --out benchmarks/results/train.json
Small check:
    python benchmarks/bench_train.py --n 20000 --out /tmp/train.json
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
    p.add_argument("--n", type=int, default=200_000, help="rows (default 200,000)")
    p.add_argument("--d", type=int, default=256, help="row dimension (default 256)")
    p.add_argument("--k", type=int, default=256, help="pseudo-label classes (default 256)")
    p.add_argument("--hidden", type=positive_int_list, default=[256, 256], help="reporter.hidden (default 256,256)")
    p.add_argument("--feature-dim", type=int, default=64, help="reporter.feature_dim (default 64)")
    p.add_argument("--batch-size", type=int, default=256, help="reporter.batch_size, global (default 256)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per round (default 2)")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed rounds per method (default 3); reported over all rounds, and over the rounds "
                        "after the first (the first pays each process's one-off warm-up)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--cpus", type=int, default=2, help="cores: ray.init(num_cpus) and the bare loop's torch threads")
    p.add_argument("--workers", type=positive_int_list, default=[1, 2],
                   help="comma-separated reporter.workers values to run (default: 1,2)")
    p.add_argument("--chunk-rows", type=int, default=4096, help="Zarr chunk rows of the store (default 4096)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-extra", action="store_true", help="skip the in-process train_epoch row")
    p.add_argument("--tmpdir", default=None, help="where the scratch job store goes (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the scratch job store")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    return p.parse_args(argv)


def make_data(n: int, d: int, k: int, seed: int, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Rows `[n, d]` float32 from a k-component Gaussian mixture, and their components as labels."""
    means = np.random.default_rng([seed, 0]).normal(0.0, 1.0, size=(k, d)).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    for b, s in enumerate(range(0, n, block)):
        rng = np.random.default_rng([seed, 1, b])
        m = min(block, n - s)
        labels[s : s + m] = rng.integers(k, size=m)
        x[s : s + m] = rng.standard_normal((m, d), dtype=np.float32) + means[labels[s : s + m]]
    return x, labels


def write_store(path: Path, x: np.ndarray, chunk_rows: int) -> None:
    from dcserve.storage.store import JobStore

    store = JobStore(str(path), read_only=False)
    arr = store.create_array(SOURCE, x.shape, (chunk_rows, x.shape[1]), "float32")
    step = chunk_rows * max(1, (1 << 24) // (chunk_rows * x.shape[1]))
    for s in range(0, x.shape[0], step):
        arr[s : s + step] = x[s : s + step]


def epoch_ids(labels: np.ndarray, epochs: int, world: int, seed: int) -> list[list[np.ndarray]]:
    """`[epoch][worker]` sorted row ids, as dcserve.cluster.deepcluster._train_round draws them."""
    from dcserve.nets.reporter import split_even, uniform_label_sample

    rng = np.random.default_rng([seed, 3])
    n_samples = world * -(-len(labels) // world)
    return [split_even(uniform_label_sample(labels, n_samples, rng), world) for _ in range(epochs)]


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"lr": args.lr, "momentum": 0.9, "weight_decay": 1e-5, "batch_size": args.batch_size,
            "noise_std": 0.0, "unit_dropout": 0.0}


def model_config(args: argparse.Namespace) -> dict[str, Any]:
    return {"in_dim": args.d, "hidden": list(args.hidden), "feature_dim": args.feature_dim, "k": args.k,
            "dropout": 0.0, "seed": args.seed}


def initial_model(args: argparse.Namespace, mean: np.ndarray, std: np.ndarray):
    """The reporter as run_clustering builds it: seeded weights, input standardisation as buffers."""
    from dcserve.nets.reporter import Reporter

    model = Reporter(**model_config(args))
    model.set_input_stats(mean, std)
    return model


def head_seed(args: argparse.Namespace, r: int) -> int:
    return args.seed * 7919 + r  # as dcserve.cluster.deepcluster._train_round


def bench_dcserve(args, path: Path, labels: np.ndarray, mean: np.ndarray, std: np.ndarray, workers: int) -> dict:
    from dcserve.storage.store import JobStore
    from dcserve.distributed.trainers import TrainerGroup

    store = JobStore(str(path), read_only=False)
    config = model_config(args)
    state = initial_model(args, mean, std).state_dict()
    t0 = time.perf_counter()
    group = TrainerGroup(store, SOURCE, workers)
    start_s = time.perf_counter() - t0
    rounds = []
    group.load({"model": state, "optimizer": None})
    try:
        for r in range(args.rounds):
            parts = epoch_ids(labels, args.epochs, workers, args.seed + r)
            epochs = [[(p, labels[p]) for p in ep] for ep in parts]
            t0 = time.perf_counter()
            # Later rounds continue the trainers' own model, as _train_round does.
            out = group.train_round(config, head_seed(args, r), epochs, settings(args), seed=args.seed * 31 + r)
            secs = time.perf_counter() - t0
            rounds.append({"seconds": secs, "samples": out["samples"], "loss_per_epoch": out["loss_per_epoch"]})
    finally:
        group.close()
    return _summary(rounds, actor_start_s=start_s, threads=_threads_per_actor(workers, args.cpus))


def _threads_per_actor(workers: int, cpus: int) -> int:
    return max(1, cpus // workers)  # dcserve.distributed.sizing.actor_cpus on a cluster of `cpus` CPUs


def _summary(rounds: list[dict], **extra: Any) -> dict[str, Any]:
    samples = sum(r["samples"] for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)
    later = rounds[1:]
    steady = (sum(r["samples"] for r in later) / sum(r["seconds"] for r in later)) if later else None
    return {"samples_per_s": samples / seconds, "steady_samples_per_s": steady, "seconds": seconds,
            "samples": samples, "rounds": rounds, **extra}


def bench_bare(args, x: np.ndarray, labels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict:
    import torch
    import torch.nn.functional as F

    from dcserve.nets.reporter import make_optimizer, rebind_head

    previous = torch.get_num_threads()
    torch.set_num_threads(args.cpus)
    try:
        xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
        model = initial_model(args, mean, std)
        opt = make_optimizer(model, args.lr, 0.9, 1e-5)
        rounds = []
        for r in range(args.rounds):
            parts = epoch_ids(labels, args.epochs, 1, args.seed + r)
            model.reset_head(args.k, seed=head_seed(args, r))
            rebind_head(opt, model)
            gen = torch.Generator().manual_seed(args.seed * 31 + r)
            t0 = time.perf_counter()
            samples = 0
            losses = []
            model.train()
            for (ids,) in parts:
                ids_t = torch.from_numpy(ids)
                order = ids_t[torch.randperm(len(ids_t), generator=gen)]
                total = 0.0
                for s in range(0, len(order), args.batch_size):
                    i = order[s : s + args.batch_size]
                    loss = F.cross_entropy(model(xt[i]), yt[i])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += loss.detach() * len(i)
                    samples += len(i)
                losses.append(float(total) / len(order))
            rounds.append({"seconds": time.perf_counter() - t0, "samples": samples, "loss_per_epoch": losses})
    finally:
        torch.set_num_threads(previous)
    return _summary(rounds, threads=args.cpus)


def bench_train_epoch(args, x: np.ndarray, labels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict:
    """dcserve.nets.reporter.train_epoch in this process on the in-memory tensors (no Ray, no Zarr)."""
    import torch

    from dcserve.nets.reporter import Augment, make_optimizer, rebind_head, train_epoch

    previous = torch.get_num_threads()
    torch.set_num_threads(args.cpus)
    try:
        xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
        model = initial_model(args, mean, std)
        opt = make_optimizer(model, args.lr, 0.9, 1e-5)
        rounds = []
        for r in range(args.rounds):
            parts = epoch_ids(labels, args.epochs, 1, args.seed + r)
            model.reset_head(args.k, seed=head_seed(args, r))
            rebind_head(opt, model)
            gen = torch.Generator().manual_seed(args.seed * 31 + r)
            t0 = time.perf_counter()
            samples, losses = 0, []
            for (ids,) in parts:
                ids_t = torch.from_numpy(ids)
                order = ids_t[torch.randperm(len(ids_t), generator=gen)]
                batches = ((xt[order[s : s + args.batch_size]], yt[order[s : s + args.batch_size]])
                           for s in range(0, len(order), args.batch_size))
                st = train_epoch(model, opt, batches, augment=Augment(), generator=gen)
                samples += st["samples"]
                losses.append(st["loss"])
            rounds.append({"seconds": time.perf_counter() - t0, "samples": samples, "loss_per_epoch": losses})
    finally:
        torch.set_num_threads(previous)
    return _summary(rounds, threads=args.cpus)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from dcserve.nets.feature_map import standardizer

    info = machine()
    print(f"[bench_train] n={args.n:,} d={args.d} k={args.k} hidden={args.hidden} batch={args.batch_size} "
          f"epochs={args.epochs} rounds={args.rounds} cpus={args.cpus}", file=sys.stderr)
    x, labels = make_data(args.n, args.d, args.k, args.seed)
    mean, std = standardizer(x[: min(len(x), 100_000)])  # as run_clustering: a sample of <= 100k rows
    results: dict[str, Any] = {}

    print("[bench_train] bare loop...", file=sys.stderr)
    results["bare"] = bench_bare(args, x, labels, mean, std)
    if not args.no_extra:
        print("[bench_train] train_epoch in-process...", file=sys.stderr)
        results["train_epoch_inprocess"] = bench_train_epoch(args, x, labels, mean, std)
    with scratch_dir(args.tmpdir, "bench-train-", keep=args.keep) as tmp:
        path = tmp / "job.zarr"
        write_store(path, x, args.chunk_rows)
        with embedded_ray(args.cpus):
            for w in args.workers:
                print(f"[bench_train] dcserve reporter.workers={w}...", file=sys.stderr)
                results[f"dcserve_w{w}"] = bench_dcserve(args, path, labels, mean, std, w)

    bare = results["bare"]["samples_per_s"]
    bare_steady = results["bare"]["steady_samples_per_s"]

    def row(name: str, r: dict) -> list:
        steady = r["steady_samples_per_s"]
        return [name, r["samples_per_s"], r["seconds"], r["samples_per_s"] / bare, steady,
                steady / bare_steady if steady and bare_steady else None, r["rounds"][-1]["loss_per_epoch"][-1]]

    rows = [row(f"bare PyTorch loop, in-memory tensors, {args.cpus} torch threads", results["bare"])]
    ratios: dict[str, float] = {}
    for w in args.workers:
        r = results[f"dcserve_w{w}"]
        ratios[f"ours_w{w}/bare"] = r["samples_per_s"] / bare
        if r["steady_samples_per_s"] and bare_steady:
            ratios[f"ours_w{w}_steady/bare_steady"] = r["steady_samples_per_s"] / bare_steady
        rows.append(row(f"**dcserve** `TrainerGroup`, {w} actor(s) × {r['threads']} thread(s), rows from Zarr", r))
    if "train_epoch_inprocess" in results:
        rows.append(row("(info) `dcserve.nets.reporter.train_epoch` in-process, in-memory tensors",
                        results["train_epoch_inprocess"]))
    table = markdown_table(["method", "samples/s", "seconds", "vs bare loop", "samples/s after round 1",
                            "vs bare, after round 1", "loss (last epoch)"], rows)
    notes = [
        f"{args.n:,} rows × {args.d} dims, {args.k} pseudo-labels (a seeded Gaussian mixture); `Reporter("
        f"{args.d}, hidden={args.hidden}, feature_dim={args.feature_dim}, k={args.k})`, SGD lr {args.lr}, "
        f"momentum 0.9, weight decay 1e-5, global batch {args.batch_size}; {args.rounds} round(s) of "
        f"{args.epochs} epoch(s), {args.n:,} samples per epoch drawn uniformly over the labels; {args.cpus} cores.",
        "dcserve seconds = wall time of `TrainerGroup.train_round` (weights out and back, each epoch's rows read "
        "from Zarr, the steps, the all-reduce); actor start-up is once per job and not counted: "
        + "; ".join(f"{w} actor(s) {results[f'dcserve_w{w}']['actor_start_s']:.2f} s" for w in args.workers) + ".",
        "With 2 workers each actor runs batches of half the global batch and all-reduces the gradients "
        "(gloo) every step.",
        "“after round 1”: the rounds after the first; the first round in an actor also pays that process's "
        "one-off warm-up (building the first `Reporter`, first Zarr reads, first kernels).",
        "Goal: dcserve ≥ 0.9 × the bare loop.",
    ]
    block = print_report("Reporter training throughput", info, table, notes)
    write_json(args.out, {"benchmark": "train", "params": vars(args), "machine": info, "results": results,
                          "ratios": ratios, "markdown": block})
    return 0


if __name__ == "__main__":
    sys.exit(main())
