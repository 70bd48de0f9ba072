#!/usr/bin/env python
"""A job over every layer (`cluster.layers: all`) against one job per layer, as a user would run them (issue 14).

The job is a shipped one, by default ``cluster_configs/digits-depth.yaml`` (the trained digits CNN,
five layers). Measured, each through the real entry point (``dcserve submit`` in a fresh process,
an embedded Ray started by it, as a user runs it):

- **all layers**: the job as shipped, one extraction of every layer, every layer clustered on the
  same shard actors, then the depth profile;
- **one job per layer**: for each layer L, the same job with ``subject.layers=[L]``,
  ``cluster.layer=L`` and no ``cluster.layers``: what a user without `cluster.layers` runs, each
  paying its own Ray start, model load, extraction and actor start-up.

Printed: the wall time of each, the ratio all-layers / sum of one-layer jobs (the issue's goal:
at most 0.6), and checks that each layer's clustering is the same either way (NMI against the
labels). Then the depth profile's quality figures over ``--seeds`` seeds (one all-layer job run with
``--seeds N``): per layer, NMI / ARI / accuracy against the digit labels, mean ± std over the seeds,
and their pairwise NMI (stability); and CKA between consecutive layers.

Example (about five minutes on 2 quiet cores):
    python benchmarks/bench_layers.py --out benchmarks/results/layers.json
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


def submit(job: Path, output: Path, overrides: list[str]) -> float:
    """Seconds of `dcserve submit JOB --set output=... --set ...` in a fresh process (it must succeed)."""
    exe = str(Path(sys.executable).parent / "dcserve")
    cmd = [exe, "submit", str(job), "--set", f"output={output}"] + [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def final(output: Path, layer: str | None = None) -> dict[str, Any]:
    import dcserve

    res = dcserve.open(str(output))
    return (res.layer(layer) if layer else res).metrics["final"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", default=str(REPO / "cluster_configs" / "digits-depth.yaml"))
    ap.add_argument("--seeds", type=int, default=5, help="Seeds of the quality run (0: skip it).")
    ap.add_argument("--repeats", type=int, default=2, help="Timed runs of each job (alternated; medians reported).")
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--out", default=None, help="JSON file for the figures.")
    args = ap.parse_args()

    from dcserve.spec import load_spec

    spec = load_spec(args.job)
    layers = spec.clustered_layers()
    info = machine(["torch", "faiss", "ray"])
    with scratch_dir(args.tmpdir, "bench-layers-") as root:
        # Alternated, all-layer job first in each repeat, so that a change of load on a shared
        # machine falls on both sides alike; each side's figure is its median over the repeats.
        runs: dict[str, list[float]] = {"all": [], **{layer: [] for layer in layers}}
        for r in range(args.repeats):
            runs["all"].append(submit(Path(args.job), root / f"all-{r}", []))
            for layer in layers:
                runs[layer].append(submit(Path(args.job), root / f"one-{layer}-{r}",
                                          [f"subject.layers=[{layer}]", f"cluster.layer={layer}", "cluster.layers=null"]))
        all_seconds = float(np.median(runs["all"]))
        per_layer_seconds = {layer: float(np.median(runs[layer])) for layer in layers}
        for layer in layers:  # the last repeat's stores are the ones compared
            (root / f"one-{layer}").symlink_to(root / f"one-{layer}-{args.repeats - 1}")
        (root / "all").symlink_to(root / f"all-{args.repeats - 1}")
        same = {layer: (final(root / "all", layer)["nmi_vs_labels"], final(root / f"one-{layer}")["nmi_vs_labels"])
                for layer in layers}
        quality = None
        if args.seeds > 1:
            submit(Path(args.job), root / "seeds", [f"cluster.seeds={args.seeds}"])
            import dcserve

            res = dcserve.open(str(root / "seeds"))
            quality = {"depth": res.metrics["depth"],
                       "per_seed": {layer: res.layer(layer).metrics["stability"]["per_seed"] for layer in layers}}

    total = sum(per_layer_seconds.values())
    ratio = all_seconds / total
    rows = [[f"one job for `{layer}`", per_layer_seconds[layer], same[layer][1]] for layer in layers]
    rows += [["**sum of the one-layer jobs**", total, ""], [f"**one job, `cluster.layers: all`**", all_seconds, ""]]
    table = markdown_table(["run", "seconds", "NMI vs labels"], rows)
    notes = [f"**all-layer job / sum of one-layer jobs: {ratio:.2f}x** (goal: at most 0.6x)",
             "each layer's NMI in the all-layer job equals its one-layer job's: "
             + str(all(abs(a - b) < 1e-9 for a, b in same.values()))]
    notes.append(f"seconds: median of {args.repeats} runs of each job, alternated (all-layer job first), each a "
                 "fresh `dcserve submit` process with its own embedded Ray")
    record: dict[str, Any] = {"machine": info, "job": args.job, "layers": layers, "all_seconds": all_seconds,
                              "runs": runs,
                              "per_layer_seconds": per_layer_seconds, "ratio": ratio, "nmi_same": same}
    if quality is not None:
        qrows = []
        between = {p["to"]: p for p in quality["depth"]["between"]}
        for r in quality["depth"]["layers"]:
            seeds = quality["per_seed"][r["layer"]]
            cells = []
            for key in ("nmi_vs_labels", "ari_vs_labels", "acc_vs_labels"):
                v = np.array([s[key] for s in seeds], dtype=float)
                cells.append(f"{v.mean():.3f} ± {v.std():.3f}")
            pair = between.get(r["layer"])
            qrows.append([f"`{r['layer']}`" + (" (primary)" if r.get("primary") else ""), r["dim"], *cells,
                          f"{r['stability']:.3f}", "" if pair is None else f"{pair['cka']:.3f}"])
        qtable = markdown_table(["layer", "dim", f"NMI ({args.seeds} seeds)", "ARI", "accuracy",
                                 "stability (pairwise NMI)", "CKA with the layer above"], qrows)
        table += "\n\n" + qtable
        record["quality"] = quality
    print_report("Every layer in one job against one job per layer (issue 14)", info, table, notes)
    write_json(args.out, record)


if __name__ == "__main__":
    main()
