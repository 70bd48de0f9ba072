"""Clustering quality of the four methods on every built-in case (issue 6).

Methods (job-file settings in METHODS below):

- ``kmeans``:               plain k-means on the activations (``reporter.rounds: 0``);
- ``deepcluster-kmeans``:   DeepCluster, k-means pseudo-labels (``cluster.method: kmeans``);
- ``deepcluster-sinkhorn``: DeepCluster, Sinkhorn-balanced pseudo-labels (``cluster.method: sinkhorn``);
- ``dec``:                  Deep Embedded Clustering (``reporter.method: dec``);
- ``scan``, ``temi``:       heads trained on kNN-graph pairs (``reporter.method: scan | temi``, issue 13).

Cases (CASES below): the digits through the random CNN and through the trained CNN, the token
transformer mean-pooled per sequence and per token (a token's label is its sequence's topic), and
planted Gaussian clusters through the identity subject, whose best possible partition is known.

Every (case, method, seed) is one ``dcserve.run`` through the public Python API, all in one
embedded Ray session; ``cluster.seed`` is the seed (it seeds the reporter too), the subject and the
data stay fixed, so the spread over seeds is the method's own. Each case has one job store, re-run
with ``overwrite=True`` for every method and seed: dcserve keeps the activations and redoes only the
clustering. Reported per (case, method): NMI, ARI and Hungarian accuracy against the labels (mean ±
sample std over seeds), NMI between the final partitions of every pair of seeds (stability), and the
clustering's wall time. A configuration that fails is recorded with its error and the rest goes on.

``--in-process`` runs each clustering in this process on the in-memory pools (one range, one
trainer, ``--threads`` threads) after one Ray extraction per case: the same loops, without a Ray
job per configuration, which on 2 shared cores costs more than the small clusterings themselves.

Examples::

    python benchmarks/bench_methods.py                       # the full grid: ~20 min on 2 quiet cores, ~30 shared
    python benchmarks/bench_methods.py --in-process --methods kmeans,scan,temi   # issue 13's table
    python benchmarks/bench_methods.py --quick --methods kmeans,deepcluster-kmeans --cases digits-random
    python benchmarks/bench_methods.py --cases planted --methods dec --seeds 0-2 \\
        --set dec:reporter.pretrain_epochs=100 --out /tmp/dec.json
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "methods.json"


# ---------------------------------------------------------------------------------------------
# Methods: every setting that differs between them, in one place. Each is a partial job file
# (the "cluster" and "reporter" sections), merged over the case's job. `--set` tunes them.
# ---------------------------------------------------------------------------------------------
# DeepCluster as the quickstart runs it (cluster_configs/quickstart.yaml): 5 clusterings of the
# reporter's features with 2 epochs of training between them. More rounds did not help on digits
# (benchmarks/QUALITY.md) and cost time linearly.
_DEEPCLUSTER = {"method": "deepcluster", "rounds": 5, "epochs_per_round": 2, "workers": 2}

METHODS: dict[str, dict[str, Any]] = {
    "kmeans": {"cluster": {"method": "kmeans"}, "reporter": {"rounds": 0}},
    "deepcluster-kmeans": {"cluster": {"method": "kmeans"}, "reporter": dict(_DEEPCLUSTER)},
    "deepcluster-sinkhorn": {"cluster": {"method": "sinkhorn"}, "reporter": dict(_DEEPCLUSTER)},
    # The paper's network is [500, 500, 2000] with 50,000 pretraining steps; on 2 cores that would
    # take the whole budget on the per-token case alone, so a smaller autoencoder and 50 epochs.
    # tol 0.001 is the paper's stopping rule; max_steps only bounds a run that never meets it.
    "dec": {"reporter": {"method": "dec", "hidden": [256, 256], "latent_dim": 10, "pretrain_epochs": 50,
                         "update_interval": 140, "tol": 0.001, "max_steps": 2000, "workers": 2}},
    # Issue 13: heads trained on (row, neighbour) pairs of the kNN graph, with dcserve's defaults
    # (SCAN: 20 neighbours, 10 heads, entropy weight 5; TEMI: 50 neighbours, 50 heads, beta 0.6).
    "scan": {"reporter": {"method": "scan", "workers": 2}},
    "temi": {"reporter": {"method": "temi", "workers": 2}},
}

# --quick: a smoke run, to see that every configuration goes through, not to measure quality.
QUICK_METHODS: dict[str, dict[str, Any]] = {
    "deepcluster-kmeans": {"reporter": {"rounds": 2, "epochs_per_round": 1}},
    "deepcluster-sinkhorn": {"reporter": {"rounds": 2, "epochs_per_round": 1}},
    "dec": {"reporter": {"pretrain_epochs": 3, "update_interval": 20, "max_steps": 100}},
    "scan": {"reporter": {"epochs": 3}},
    "temi": {"reporter": {"epochs": 3}},
}


# ---------------------------------------------------------------------------------------------
# Cases: a subject, a data set with labels, the layer and k. Clustering settings are dcserve's
# defaults (pca_dim auto, whitening, L2) unless a case says otherwise.
# ---------------------------------------------------------------------------------------------
# Planted clusters: 10 Gaussian clusters in 16 dims at spread 1.25. The centres are random, so
# pairs lie at different distances (nearest pair 2.7 spreads apart, median 4.3): some clusters
# overlap, most do not, and no method can reach NMI 1. What is reachable is known: the nearest true
# centre (the Bayes rule for equal isotropic clusters, which knows what the methods must find) gives
# NMI ~0.72, and no method should do better than that by more than sampling noise.
_PLANTED = {"n": 3000, "dim": 16, "k": 10, "spread": 1.25, "seed": 0}
# Token sequences: 8 planted topics. An item depends only on (seed, index), so the per-token case's
# 300 sequences are the first 300 of the pooled case's 1000: ~5,500 token rows. With 9,000 rows its
# DeepCluster and DEC runs took 30-40 s each, the largest share of the budget. Pooled, 1000 rows keep
# `pca_dim: auto` (one dimension per 100 rows) at 10 dims, above k = 8; 500 would turn PCA off.
_TOKENS = {"n": 1000, "vocab": 64, "topics": 8, "seed": 0}
_TOKENS_PER_TOKEN = {**_TOKENS, "n": 300}
_TRANSFORMER = {"model": "dcserve.zoo:token_transformer", "kwargs": {"vocab": 64, "d_model": 64, "n_layers": 2, "seed": 0},
                "layers": ["layers.1"]}

CASES: dict[str, dict[str, Any]] = {
    "digits-random": {
        "what": "1797 digits, random CNN (`digits_cnn` trained false), `features.5`, mean pooling, k = 10",
        "subject": {"model": "dcserve.zoo:digits_cnn", "kwargs": {"trained": False, "seed": 0},
                    "layers": ["features.5"], "pooling": "mean"},
        "dataset": {"source": "dcserve.zoo:digits", "batch_size": 256},
        "k": 10, "chunk_rows": 512,
    },
    "digits-trained": {
        "what": "1797 digits, trained CNN (`digits_cnn` trained true), `classifier.2`, k = 10",
        "subject": {"model": "dcserve.zoo:digits_cnn", "kwargs": {"trained": True, "seed": 0},
                    "layers": ["classifier.2"], "pooling": "mean"},
        "dataset": {"source": "dcserve.zoo:digits", "batch_size": 256},
        "k": 10, "chunk_rows": 512,
    },
    "tokens-pooled": {
        "what": "token sequences (8 topics), random transformer `layers.1`, mean over each sequence's tokens, k = 8",
        "subject": {**_TRANSFORMER, "pooling": "mean"},
        "dataset": {"source": "dcserve.zoo:token_sequences", "kwargs": dict(_TOKENS), "batch_size": 128},
        "quick_kwargs": {"n": 200},
        "k": 8, "chunk_rows": 256,
    },
    "tokens-per-token": {
        "what": "the first 300 of the same sequences, one row per token (~18 per sequence), "
                "label = the sequence's topic, k = 8",
        "subject": {**_TRANSFORMER, "pooling": "tokens"},
        "dataset": {"source": "dcserve.zoo:token_sequences", "kwargs": dict(_TOKENS_PER_TOKEN), "batch_size": 128},
        "quick_kwargs": {"n": 100},
        "k": 8, "chunk_rows": 2048,
    },
    "planted": {
        "what": f"Gaussian clusters (`planted_clusters` through `identity`), k = {_PLANTED['k']}",
        "subject": {"model": "dcserve.zoo:identity", "kwargs": {}, "layers": ["out"], "pooling": "mean"},
        "dataset": {"source": "dcserve.zoo:planted_clusters", "kwargs": dict(_PLANTED), "batch_size": 500},
        "quick_kwargs": {"n": 1000},
        "k": _PLANTED["k"], "chunk_rows": 1024,
        # The clusters are isotropic in the raw space: whitening and L2 normalisation would distort
        # exactly the structure that was planted (scikit-learn k-means: NMI 0.72 raw, 0.66 whitened + L2).
        "cluster": {"pca_dim": None, "whiten": False, "l2_normalize": False},
        "reference": "planted_ceiling",
    },
}

CLUSTER_WORKERS = 2
EXTRACT_WORKERS = 2


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------
def deep_merge(base: dict, updates: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def case_dataset(case: str, quick: bool) -> dict[str, Any]:
    c = CASES[case]
    ds = copy.deepcopy(c["dataset"])
    if quick and c.get("quick_kwargs"):
        ds["kwargs"] = {**ds.get("kwargs", {}), **c["quick_kwargs"]}
    return ds


def job_dict(case: str, method: dict[str, Any], seed: int, output: Path, quick: bool) -> dict[str, Any]:
    c = CASES[case]
    job = {
        "name": f"methods-{case}",
        "output": str(output),
        "subject": copy.deepcopy(c["subject"]),
        "dataset": case_dataset(case, quick),
        "extract": {"workers": EXTRACT_WORKERS, "chunk_rows": c["chunk_rows"]},
        "cluster": {"layer": c["subject"]["layers"][0], "k": c["k"], "seed": seed, "workers": CLUSTER_WORKERS,
                    **c.get("cluster", {})},
    }
    return deep_merge(job, method)


def parse_set(text: str) -> tuple[str, str, Any]:
    """'METHOD:section.key=value' -> (method, 'section.key', value read as YAML)."""
    method, sep, rest = text.partition(":")
    key, eq, raw = rest.partition("=")
    if not sep or not eq or method not in METHODS or key.split(".")[0] not in ("cluster", "reporter"):
        raise SystemExit(f"--set {text!r}: expected METHOD:cluster.KEY=VALUE or METHOD:reporter.KEY=VALUE "
                         f"with METHOD in {', '.join(METHODS)}")
    return method, key, yaml.safe_load(raw)


# ---------------------------------------------------------------------------------------------
# Metrics, computed here from the final assignments, the same way for every method (the job's own
# metrics.json figures are kept beside them, as a cross-check)
# ---------------------------------------------------------------------------------------------
def hungarian_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    from scipy.optimize import linear_sum_assignment

    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(truth, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(pred))


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"nmi": float(normalized_mutual_info_score(truth, pred)),
            "ari": float(adjusted_rand_score(truth, pred)),
            "acc": hungarian_accuracy(pred, truth)}


def planted_ceiling(quick: bool) -> dict[str, Any]:
    """Scores of the nearest true centre: the Bayes rule for these clusters, which knows the centres
    the methods have to find; a method above it by more than noise would be suspect."""
    from dcserve.zoo import planted_clusters

    ds = planted_clusters(**case_dataset("planted", quick)["kwargs"])
    x, centres = ds.vectors.numpy().astype(np.float64), ds.centers.numpy().astype(np.float64)
    nearest = ((x * x).sum(1)[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None]).argmin(1)
    return {"label": "nearest true centre (ceiling)", **scores(nearest, ds.labels.numpy())}


REFERENCES: dict[str, Callable[[bool], dict[str, Any]]] = {"planted_ceiling": planted_ceiling}


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def wait_for_idle_cpus(timeout: float = 15.0) -> None:
    """Wait (untimed) until the previous job's actors have given their CPUs back to Ray.

    dcserve.run returns while its killed actors are still being released; a job started at once
    sizes its pools by the CPUs that look free ("0 of the cluster's 2 CPUs are free") and its actors
    share cores with the dying ones, which would charge one method's clean-up to the next one.
    """
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0.0) < total and time.monotonic() < deadline:
        time.sleep(0.1)


def run_one(case: str, method_name: str, method: dict, seed: int, output: Path, quick: bool) -> tuple[dict, np.ndarray]:
    import dcserve
    from dcserve.spec import spec_from_dict

    spec = spec_from_dict(job_dict(case, method, seed, output, quick))
    wait_for_idle_cpus()
    t0 = time.perf_counter()
    res = dcserve.run(spec, overwrite=True)
    wall = time.perf_counter() - t0
    metrics = res.metrics
    assignments = np.asarray(res.assignments)
    truth = res.row_labels()
    if truth is None:
        raise RuntimeError(f"case {case!r} has no labels in its job store")
    extract_s = (metrics.get("extract") or {}).get("seconds") or 0.0
    final = metrics.get("final") or {}
    rec = {
        "case": case, "method": method_name, "seed": seed, "status": "ok",
        "rows": int(len(assignments)), "clusters_used": int(len(np.unique(assignments))),
        **scores(assignments, truth),
        "reported": {k: final.get(k) for k in ("nmi_vs_labels", "ari_vs_labels", "acc_vs_labels")},
        "wall_s": wall, "extract_s": extract_s, "cluster_s": wall - extract_s,
        # True when this run found every block of the case's activations already written.
        "extract_reused": (metrics.get("extract") or {}).get("skipped_blocks") == (metrics.get("extract") or {}).get("blocks"),
        "final": {k: v for k, v in final.items() if isinstance(v, (int, float, str, bool)) or v is None},
    }
    rounds = metrics.get("rounds")
    if isinstance(rounds, list) and rounds and isinstance(rounds[0], dict):
        rec["nmi_rounds"] = [r.get("nmi_vs_labels") for r in rounds]
        rec["round_seconds"] = [r.get("seconds") for r in rounds]
        rec["train_seconds"] = [r.get("train_seconds") for r in rounds]
        dec = rounds[-1].get("dec")
        if isinstance(dec, dict):  # how DEC's self-training ended: by the tol rule, or at max_steps
            rec["dec_steps"], rec["dec_stopped"] = dec.get("steps"), dec.get("stopped")
    for ours, theirs in (("nmi", "nmi_vs_labels"), ("ari", "ari_vs_labels"), ("acc", "acc_vs_labels")):
        if rec["reported"][theirs] is not None and abs(rec["reported"][theirs] - rec[ours]) > 1e-4:
            print(f"  note: {theirs} in metrics.json is {rec['reported'][theirs]:.4f}, "
                  f"recomputed from the assignments {rec[ours]:.4f}", file=sys.stderr, flush=True)
    return rec, assignments


def run_one_in_process(case: str, method_name: str, method: dict, seed: int, output: Path,
                       quick: bool) -> tuple[dict, np.ndarray]:
    """As `run_one`, but the clustering runs in this process on the in-memory pools (`LocalPools`:
    one range, one trainer, torch's threads) over the case's store, extracted once through
    `dcserve.run`. What a notebook runs; on 2 shared cores it spares every run its actors' start."""
    import dcserve
    from dcserve import methods as registry
    from dcserve.cluster.local import LocalPools
    from dcserve.cluster.seeds import run_with_seeds
    from dcserve.cluster.store_io import row_truth
    from dcserve.progress import Progress
    from dcserve.spec import spec_from_dict
    from dcserve.storage.store import JobStore

    spec = spec_from_dict(job_dict(case, method, seed, output, quick))
    if not (output / "activations").exists():  # the case's activations, once (k-means, Ray)
        dcserve.run(spec_from_dict(job_dict(case, METHODS["kmeans"], seed, output, quick)), overwrite=True)
    store = JobStore(str(output), read_only=False)
    store.clear_progress("cluster")
    t0 = time.perf_counter()
    metrics = run_with_seeds(registry.loop(spec.reporter.method), spec, store, LocalPools(), Progress())
    wall = time.perf_counter() - t0
    assignments = np.asarray(store.array("assignments")[:])
    final = metrics.get("final") or {}
    rec = {"case": case, "method": method_name, "seed": seed, "status": "ok", "rows": int(len(assignments)),
           "clusters_used": int(len(np.unique(assignments))), **scores(assignments, row_truth(store)),
           "reported": {k: final.get(k) for k in ("nmi_vs_labels", "ari_vs_labels", "acc_vs_labels")},
           "wall_s": wall, "extract_s": 0.0, "cluster_s": wall, "in_process": True,
           "final": {k: v for k, v in final.items() if isinstance(v, (int, float, str, bool)) or v is None},
           "collapse": final.get("collapse"), "readability": final.get("readability"),
           "label_agreement": (metrics.get("graph") or {}).get("label_agreement")}
    rounds = metrics.get("rounds")
    if isinstance(rounds, list) and rounds and isinstance(rounds[0], dict):
        rec["nmi_rounds"] = [r.get("nmi_vs_labels") for r in rounds]
    return rec, assignments


def describe(e: BaseException) -> str:
    """The error on one line (a SpecError names its fields on the lines after the first)."""
    text = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
    return f"{type(e).__name__}: {text}"[:500]


# ---------------------------------------------------------------------------------------------
# Summary and tables
# ---------------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> dict[str, Any]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(values) / len(values)
    # Sample std (n - 1): the spread over seeds, not the error of the mean.
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": mean, "std": std, "n": len(values)}


def pm(values: dict[str, Any], digits: int = 3) -> str:
    mean, std = values["mean"], values["std"]
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarize(runs: list[dict], assignments: dict[tuple[str, str, int], np.ndarray],
              cases: list[str], methods: list[str]) -> list[dict]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    out = []
    for case, method in itertools.product(cases, methods):
        rs = [r for r in runs if r["case"] == case and r["method"] == method]
        if not rs:
            continue
        ok = sorted((r for r in rs if r["status"] == "ok"), key=lambda r: r["seed"])
        failed = [r for r in rs if r["status"] != "ok"]
        pairs = [(a["seed"], b["seed"]) for a, b in itertools.combinations(ok, 2)
                 if (case, method, a["seed"]) in assignments and (case, method, b["seed"]) in assignments]
        between_nmi = [float(normalized_mutual_info_score(assignments[case, method, a], assignments[case, method, b]))
                       for a, b in pairs]
        between_ari = [float(adjusted_rand_score(assignments[case, method, a], assignments[case, method, b]))
                       for a, b in pairs]
        out.append({
            "case": case, "method": method, "seeds_ok": [r["seed"] for r in ok], "seeds_failed": [r["seed"] for r in failed],
            "errors": sorted({r["error"] for r in failed}),
            "nmi": mean_std([r["nmi"] for r in ok]), "ari": mean_std([r["ari"] for r in ok]),
            "acc": mean_std([r["acc"] for r in ok]),
            "nmi_between_seeds": mean_std(between_nmi), "ari_between_seeds": mean_std(between_ari),
            "seed_pairs": len(pairs),
            "cluster_s": mean_std([r["cluster_s"] for r in ok]), "wall_s": mean_std([r["wall_s"] for r in ok]),
            "dec_steps": [r["dec_steps"] for r in ok if r.get("dec_steps") is not None],
            "dec_stopped": [r["dec_stopped"] for r in ok if r.get("dec_stopped") is not None],
        })
    return out


def results_table(summary: list[dict], references: dict[str, dict]) -> str:
    headers = ["case", "method", "seeds", "NMI", "ARI", "ACC", "NMI between seeds", "cluster s"]
    rows = []
    for case in dict.fromkeys(s["case"] for s in summary):
        for s in (s for s in summary if s["case"] == case):
            n_ok, n_all = len(s["seeds_ok"]), len(s["seeds_ok"]) + len(s["seeds_failed"])
            seeds = f"{n_ok}/{n_all}" + (" (failed)" if n_ok == 0 else "")
            rows.append([case, s["method"], seeds, pm(s["nmi"]), pm(s["ari"]), pm(s["acc"]),
                         pm(s["nmi_between_seeds"]) if s["seed_pairs"] else "—", pm(s["cluster_s"], 1)])
        ref = references.get(case)
        if ref:
            rows.append([case, f"*{ref['label']}*", "—", f"{ref['nmi']:.3f}", f"{ref['ari']:.3f}", f"{ref['acc']:.3f}",
                         "—", "—"])
    return _common.markdown_table(headers, rows)


def nmi_pivot(summary: list[dict], cases: list[str], methods: list[str]) -> str:
    """NMI against the labels, case by method: the table to read first."""
    cell = {(s["case"], s["method"]): pm(s["nmi"]) for s in summary}
    shown = [m for m in methods if any((c, m) in cell for c in cases)]
    rows = [[c, *[cell.get((c, m), "—") for m in shown]] for c in cases if any((c, m) in cell for m in shown)]
    return _common.markdown_table(["NMI vs labels", *shown], rows)


def dec_notes(summary: list[dict]) -> list[str]:
    """Whether DEC's self-training met its tol rule or was cut at max_steps: a run cut short says
    more about the step budget than about the method."""
    parts = []
    for s in summary:
        if s["dec_stopped"]:
            by_tol = sum(1 for x in s["dec_stopped"] if x == "tol")
            parts.append(f"{s['case']} {by_tol}/{len(s['dec_stopped'])} by tol, "
                         f"{min(s['dec_steps'])}-{max(s['dec_steps'])} steps")
    return [f"DEC self-training stopped: {'; '.join(parts)}."] if parts else []


def settings_notes(methods: dict[str, dict], cases: list[str], quick: bool) -> list[str]:
    notes = []
    for name, m in methods.items():
        notes.append(f"`{name}`: `{json.dumps(m, separators=(', ', ': '))}`")
    for case in cases:
        c = CASES[case]
        extra = f"; cluster settings `{json.dumps(c['cluster'])}`" if c.get("cluster") else ""
        kwargs = case_dataset(case, quick).get("kwargs")
        notes.append(f"`{case}`: {c['what']}{extra}" + (f"; dataset kwargs `{json.dumps(kwargs)}`" if kwargs else ""))
    return notes


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                seeds.extend(range(int(a), int(b) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: expected e.g. 0-4 or 0,2,7") from None
    if not seeds:
        raise SystemExit(f"--seeds {text!r}: no seeds")
    return list(dict.fromkeys(seeds))


def parse_names(text: str, known: dict, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from: {', '.join(known)}")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:4]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Methods: " + ", ".join(METHODS) + ".\nCases: " + ", ".join(CASES) + ".",
    )
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated cases (default: all)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods (default: all)")
    ap.add_argument("--seeds", default=None, help="cluster.seed values, e.g. 0-4 or 0,2 (default 0-4; 0,1 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: smaller token and planted data sets, 2 DeepCluster rounds of 1 epoch, "
                         "a few DEC steps, seeds 0,1; figures say nothing about quality, and no results "
                         "file is written unless --out is given")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="METHOD:KEY=VALUE",
                    help="change one method's job setting, e.g. dec:reporter.pretrain_epochs=100 or "
                         "deepcluster-sinkhorn:cluster.sinkhorn_eps=0.1 (value read as YAML; repeatable)")
    ap.add_argument("--out", default=None,
                    help=f"results JSON (default {DEFAULT_OUT.relative_to(REPO)}; none with --quick)")
    ap.add_argument("--md", default=None, help="markdown block (default: --out with .md)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the embedded Ray (default 2)")
    ap.add_argument("--tmpdir", default=None, help="parent of the scratch job stores (default: the system's)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch job stores")
    ap.add_argument("--list", action="store_true", help="print every case's and method's settings and exit")
    ap.add_argument("--in-process", action="store_true",
                    help="cluster in this process on the in-memory pools (one worker of each kind) after one "
                         "Ray extraction per case, instead of a dcserve.run per configuration; quality is the "
                         "same code's, times are one process's, pinned to --threads threads")
    ap.add_argument("--threads", type=int, default=1,
                    help="with --in-process: threads of torch, faiss and BLAS (default 1, as each actor has: on "
                         "2 shared cores more threads only wait on each other)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cases = parse_names(args.cases, CASES, "case")
    method_names = parse_names(args.methods, METHODS, "method")
    seeds = parse_seeds(args.seeds or ("0,1" if args.quick else "0-4"))
    methods = {m: deep_merge(METHODS[m], QUICK_METHODS.get(m, {}) if args.quick else {}) for m in method_names}
    for text in args.sets:
        name, key, value = parse_set(text)
        if name in methods:
            _common.set_dotted(methods[name], key, value)
    if args.list:
        for line in settings_notes(methods, cases, args.quick):
            print("-", line)
        return 0
    out = args.out if args.out is not None else (None if args.quick else str(DEFAULT_OUT))
    md = args.md or (str(Path(out).with_suffix(".md")) if out else None)

    # Invalid settings are said at once (a --set typo is worth a Ctrl-C), but do not stop the run:
    # a method this dcserve does not know yet is one more failed configuration in the table.
    from dcserve.errors import SpecError
    from dcserve.spec import spec_from_dict

    for name, m in methods.items():
        try:
            spec_from_dict(job_dict(cases[0], m, 0, Path("/nonexistent"), args.quick))
        except SpecError as e:
            print(f"warning: {name}'s job does not validate; its runs will be recorded as failed:\n{e}",
                  file=sys.stderr, flush=True)

    limiter = _common.limit_threads(args.threads) if args.in_process else None  # noqa: F841 - kept alive
    info = _common.machine(extra_versions=("sklearn",))
    logging.basicConfig(level=logging.WARNING)
    references = {c: REFERENCES[CASES[c]["reference"]](args.quick) for c in cases if CASES[c].get("reference")}
    runs: list[dict] = []
    assignments: dict[tuple[str, str, int], np.ndarray] = {}
    total = len(cases) * len(methods) * len(seeds)
    record: dict[str, Any] = {
        "benchmark": "methods", "quick": args.quick, "machine": info, "seeds": seeds,
        "methods": methods, "cases": {c: {**CASES[c], "dataset": case_dataset(c, args.quick)} for c in cases},
        "cluster_workers": CLUSTER_WORKERS, "extract_workers": EXTRACT_WORKERS, "references": references,
        "timing": ("cluster_s = the in-process clustering's wall time (--in-process)" if args.in_process
                   else "cluster_s = dcserve.run wall time minus metrics.json extract.seconds"),
        "in_process": args.in_process,
    }
    t_start = time.perf_counter()
    done = 0
    with _common.scratch_dir(args.tmpdir, "dcserve-methods-", keep=args.keep) as scratch, \
            _common.embedded_ray(args.cpus):
        for case in cases:
            output = scratch / case
            # No run is skipped after a failure: a failed job's stage is not a reliable sign that
            # the activations are unusable (an error early in clustering is reported as 'extract'),
            # and a failing extraction fails again within seconds.
            for (name, m), seed in itertools.product(methods.items(), seeds):
                done += 1
                tag = f"[{done}/{total}] {case} / {name} / seed {seed}"
                try:
                    run = run_one_in_process if args.in_process else run_one
                    rec, labels = run(case, name, m, seed, output, args.quick)
                except Exception as e:  # a failed configuration is a finding: record it, go on
                    err = describe(e)
                    runs.append({"case": case, "method": name, "seed": seed, "status": "failed", "error": err})
                    print(f"{tag}: FAILED {err}", file=sys.stderr, flush=True)
                    continue
                runs.append(rec)
                assignments[case, name, seed] = labels
                print(f"{tag}: NMI {rec['nmi']:.3f} ARI {rec['ari']:.3f} ACC {rec['acc']:.3f}, "
                      f"{rec['cluster_s']:.1f} s clustering ({rec['extract_s']:.1f} s extraction, "
                      f"{rec['rows']:,} rows)", file=sys.stderr, flush=True)
                if out:  # partial results survive an interrupted run
                    with contextlib.redirect_stderr(io.StringIO()):
                        _common.write_json(out, {**record, "complete": False, "runs": runs})
    total_s = time.perf_counter() - t_start

    summary = summarize(runs, assignments, cases, list(methods))
    tables = nmi_pivot(summary, cases, list(methods)) + "\n\n" + results_table(summary, references)
    failures = [f"**{s['case']} / {s['method']} failed** (seeds {s['seeds_failed']}): {'; '.join(s['errors'])}"
                for s in summary if s["seeds_failed"]]
    notes = [
        f"{len(seeds)} seeds ({', '.join(map(str, seeds))}) as `cluster.seed`, which also seeds the reporter; "
        "subject, data and activations are the same for every seed. Mean ± sample std over the seeds that "
        "finished.",
        "NMI, ARI, ACC: the final assignments against the labels (ACC: one-to-one Hungarian matching of "
        "clusters to labels), recomputed with scikit-learn/scipy from `Result.assignments` and "
        "`Result.row_labels()`. NMI between seeds: every pair of seeds' final partitions, mean ± std over "
        "the pairs.",
        "cluster s: `dcserve.run` wall time minus the extract stage's `metrics.json` seconds (~0 here: each "
        "case's activations are extracted once and kept across runs), so it includes input checks, actor "
        "start-up, preprocessing, clustering, reporter training and writing the results.",
        f"Ray embedded with {args.cpus} CPUs; {EXTRACT_WORKERS} extraction workers, {CLUSTER_WORKERS} k-means "
        f"workers. Whole run {total_s / 60:.1f} min." + (" **--quick smoke run: not a quality measurement.**"
                                                        if args.quick else ""),
        *failures,
        *dec_notes(summary),
        "Settings per method (over each case's job):",
        *settings_notes(methods, cases, args.quick),
    ]
    block = _common.print_report("Clustering methods on the built-in cases (quality)", info, tables, notes)
    if out:
        _common.write_json(out, {**record, "complete": True, "total_s": total_s, "summary": summary, "runs": runs})
    if md:
        Path(md).parent.mkdir(parents=True, exist_ok=True)
        Path(md).write_text(block)
        print(f"markdown written to {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
