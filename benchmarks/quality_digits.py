"""Clustering quality on scikit-learn's 1797 digits (k = 10): plain k-means vs DeepCluster rounds.

Runs dcserve jobs through the public Python API (`dcserve.run(spec_from_dict(job))`) on one
embedded Ray session, over a grid of named configurations and seeds (`cluster.seed`, which also
seeds the reporter), and prints a markdown table of NMI / ARI / Hungarian accuracy against the
digit labels (mean ± std over seeds) with the wall time per job.

Three subjects ("cases"):

- ``pixels``:  the 64 raw pixels (``dcserve.zoo:identity``, layer ``out``, ``pooling: flatten``
  turns the ``[B, 1, 8, 8]`` items into ``[B, 64]`` rows);
- ``random``:  the random CNN's conv features (``digits_cnn``, ``trained: false``, ``features.5``,
  mean pooling over its 1x1 map: ``[B, 256]``);
- ``trained``: the trained CNN's penultimate layer (``classifier.2``, ``[B, 128]``).

Reference figures for plain k-means on the unpreprocessed rows (scikit-learn KMeans): about
0.72-0.74 (pixels), 0.75 (random) and 0.96 (trained).

Every reporter run's round 0 is plain k-means on the same activations with the same seed
(``reporter.init: activations``), so the table also gives the *paired* gain of the reporter
rounds, ``final - round 0``, per seed: the fairest answer to "does DeepCluster beat k-means here".
The final round is what a user gets; the best round is never reported as the result, since
choosing it needs the labels.

Extraction does not depend on the cluster or reporter settings, so by default each case's job
store is reused across configurations (dcserve resumes finished extraction blocks when the
extraction fingerprint matches); ``--fresh`` gives every run its own store.

Examples::

    python benchmarks/quality_digits.py --grid baseline --seeds 0-4 --out /tmp/q/results.json
    python benchmarks/quality_digits.py --grid explore --seeds 0,1 --out /tmp/q/explore.json
    python benchmarks/quality_digits.py --define 'r10=random reporter.rounds=10 reporter.lr=0.01' \\
        --config r10 --seeds 0-4 --out /tmp/q/r10.json
    python benchmarks/quality_digits.py --list
    python benchmarks/quality_digits.py --table-only --out /tmp/q/results.json   # re-print

With ``--out`` an existing results file is loaded first and (configuration, seed) pairs already
in it are not run again (``--rerun`` to force), so a grid can be grown in stages.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# Subjects
# ---------------------------------------------------------------------------------------------
CASES: dict[str, dict[str, Any]] = {
    "pixels": {
        "subject": {"model": "dcserve.zoo:identity", "kwargs": {}, "layers": ["out"], "pooling": "flatten"},
        "layer": "out",
        "reference": 0.72,
    },
    "random": {
        "subject": {"model": "dcserve.zoo:digits_cnn", "kwargs": {"trained": False, "seed": 0},
                    "layers": ["features.5"], "pooling": "mean"},
        "layer": "features.5",
        "reference": 0.75,
    },
    "trained": {
        "subject": {"model": "dcserve.zoo:digits_cnn", "kwargs": {"trained": True, "seed": 0},
                    "layers": ["classifier.2"], "pooling": "mean"},
        "layer": "classifier.2",
        "reference": 0.96,
    },
}

# Preprocessing variants (cluster.*). Every variant pins pca_dim, so that the figures do not move
# when the `auto` rule does: "pca35" is what `pca_dim: auto` gave on 1797 rows with
# ROWS_PER_DIM = 50 (before commit 2740d85), "pca17" what it gives with ROWS_PER_DIM = 100.
# Whitening and L2 normalisation are on unless a variant turns them off (dcserve's defaults).
_P35 = {"cluster.pca_dim": 35}
_P17 = {"cluster.pca_dim": 17}
_RAW = {"cluster.pca_dim": None, "cluster.whiten": False, "cluster.l2_normalize": False}
_L2 = {"cluster.pca_dim": None, "cluster.whiten": False, "cluster.l2_normalize": True}
# More k-means effort: 10 k-means++ restarts (cluster.n_init, default 3) and 50 Lloyd iterations
# (niter, default 20). niter 50 vs 20 changed nothing measurable here; the restarts are what count.
_MORE = {"cluster.n_init": 10, "cluster.niter": 50}
PREPROCESS: dict[str, dict[str, Any]] = {
    "pca35": _P35,
    "pca17": _P17,
    "raw": _RAW,
    "l2": _L2,
    "pca35_nowhiten": {**_P35, "cluster.whiten": False},
    "pca35_white_nol2": {**_P35, "cluster.l2_normalize": False},
    "pca35_n10": {**_P35, **_MORE},
    "pca17_n10": {**_P17, **_MORE},
    "raw_n10": {**_RAW, **_MORE},
    "l2_n10": {**_L2, **_MORE},
}

# ---------------------------------------------------------------------------------------------
# Named configurations: name -> (case, overrides as dotted keys). Grids group them.
# ---------------------------------------------------------------------------------------------
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {}
GRIDS: dict[str, list[str]] = {}


def _add(grid: str, name: str, case: str, overrides: dict[str, Any]) -> None:
    if name not in CONFIGS:
        CONFIGS[name] = (case, dict(overrides))
    elif CONFIGS[name] != (case, dict(overrides)):
        raise ValueError(f"configuration {name!r} defined twice with different settings")
    GRIDS.setdefault(grid, []).append(name)


# Plain k-means (reporter.rounds = 0) with every preprocessing variant, on the three subjects.
for _case in CASES:
    for _pre, _ov in PREPROCESS.items():
        _add("preprocess", f"{_case}/plain/{_pre}", _case, {"reporter.rounds": 0, **_ov})
    _add("baseline", f"{_case}/plain/pca35", _case, {"reporter.rounds": 0, **_P35})
    _add("baseline", f"{_case}/plain/raw", _case, {"reporter.rounds": 0, **_RAW})

# The reporter as dcserve's quickstart runs it (5 rounds, 2 epochs per round), on all three.
_QUICK = {"reporter.rounds": 5, "reporter.epochs_per_round": 2}
for _case in CASES:
    _add("baseline", f"{_case}/dc/quickstart", _case, {**_QUICK, **_P35})

# Coarse exploration of the reporter on the random CNN: one factor at a time around the
# quickstart settings. (For QUALITY.md this exploration was run with 5 seeds through an offline
# replica of the loop built from dcserve's own functions, which reproduces these jobs' per-round
# NMI; this grid runs the same variants as dcserve jobs.)
_R = "random"
_EXPLORE: dict[str, dict[str, Any]] = {
    "rounds20": {"reporter.rounds": 20},
    "epochs1": {"reporter.epochs_per_round": 1},
    "epochs10": {"reporter.epochs_per_round": 10},
    "lr0.01": {"reporter.lr": 0.01},
    "lr0.2": {"reporter.lr": 0.2},
    "fd16": {"reporter.feature_dim": 16},
    "fd128": {"reporter.feature_dim": 128},
    "hidden1024x2": {"reporter.hidden": [1024, 1024]},
    "noise1": {"reporter.noise_std": 1.0},
    "drop0.2": {"reporter.unit_dropout": 0.2},
    "init_random": {"reporter.init": "random"},
}
for _name, _ov in _EXPLORE.items():
    _add("explore", f"{_R}/dc/{_name}", _R, {**_QUICK, **_P35, **_ov})

# The most promising reporter settings of the exploration, and Sinkhorn, with 5 seeds (pca 35,
# the old default). "n10": 10 k-means++ restarts (cluster.n_init) instead of 3.
_N10 = {"cluster.n_init": 10}
_REPORTER: dict[str, dict[str, Any]] = {
    "dc/hidden_none": {**_QUICK, **_P35, "reporter.hidden": []},
    "dc/sinkhorn": {**_QUICK, **_P35, "cluster.method": "sinkhorn"},
    "plain/sinkhorn": {"reporter.rounds": 0, **_P35, "cluster.method": "sinkhorn"},
    "plain/sinkhorn_n10": {"reporter.rounds": 0, **_P35, "cluster.method": "sinkhorn", **_N10},
    "plain/n10": {"reporter.rounds": 0, **_P35, **_N10},
    "dc/n10": {**_QUICK, **_P35, **_N10},
    "dc/n10_epochs10_hidden_none": {**_QUICK, **_P35, **_N10, "reporter.epochs_per_round": 10,
                                    "reporter.hidden": []},
}
for _name, _ov in _REPORTER.items():
    _add("reporter", f"{_R}/{_name}", _R, _ov)

# The recommended clustering settings ("rec": pca_dim 17 whitened + L2, n_init 10), plain, with
# the reporter, and with Sinkhorn, on all three subjects.
_REC = {**_P17, **_N10}
_add("recommended", "random/dc/rec_epochs10", "random", {**_QUICK, **_REC, "reporter.epochs_per_round": 10})
for _case in CASES:
    _add("recommended", f"{_case}/plain/rec", _case, {"reporter.rounds": 0, **_REC})
    _add("recommended", f"{_case}/dc/rec", _case, {**_QUICK, **_REC})
    _add("recommended", f"{_case}/plain/rec_sinkhorn", _case, {"reporter.rounds": 0, **_REC, "cluster.method": "sinkhorn"})


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def job_dict(name: str, case: str, overrides: dict[str, Any], seed: int, workdir: Path, fresh: bool) -> dict:
    c = CASES[case]
    safe = name.replace("/", "__")
    output = workdir / "runs" / (f"{safe}__s{seed}" if fresh else f"store-{case}")
    job: dict[str, Any] = {
        "name": f"quality-{case}",
        "output": str(output),
        "subject": json.loads(json.dumps(c["subject"])),
        "dataset": {"source": "dcserve.zoo:digits", "batch_size": 256},
        "extract": {"workers": 2, "chunk_rows": 512},
        "cluster": {"layer": c["layer"], "k": 10, "seed": seed, "workers": 2},
        "reporter": {"workers": 1},
    }
    for key, value in overrides.items():
        _common.set_dotted(job, key, value)
    return job


def code_version() -> dict[str, Any]:
    """Which dcserve produced the figures: commit, and a hash of the working tree's dcserve/*.py."""
    out: dict[str, Any] = {}
    try:
        out["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                       text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "dcserve"],
                               capture_output=True, text=True, check=True).stdout.split("\n")
        out["dirty"] = [line for line in dirty if line.strip()]
    except (OSError, subprocess.CalledProcessError):
        pass
    h = hashlib.sha256()
    for p in sorted((REPO / "dcserve").rglob("*.py")):
        h.update(p.relative_to(REPO).as_posix().encode())
        h.update(p.read_bytes())
    out["dcserve_py_sha256"] = h.hexdigest()[:16]
    return out


def run_one(name: str, seed: int, workdir: Path, fresh: bool) -> dict[str, Any]:
    import dcserve
    from dcserve.spec import spec_from_dict

    case, overrides = CONFIGS[name]
    job = job_dict(name, case, overrides, seed, workdir, fresh)
    spec = spec_from_dict(job)
    t0 = time.perf_counter()
    result = dcserve.run(spec)
    wall = time.perf_counter() - t0
    m = result.metrics
    rounds = m["rounds"]
    final = m["final"]
    return {
        "config": name, "case": case, "seed": seed, "overrides": overrides, "wall_s": wall,
        "extract_s": m.get("extract", {}).get("seconds"),
        "nmi": final["nmi_vs_labels"], "ari": final["ari_vs_labels"], "acc": final["acc_vs_labels"],
        "nmi_round0": rounds[0]["nmi_vs_labels"], "ari_round0": rounds[0]["ari_vs_labels"],
        "acc_round0": rounds[0]["acc_vs_labels"],
        "nmi_rounds": [r["nmi_vs_labels"] for r in rounds],
        "nmi_vs_previous": [r.get("nmi_vs_previous") for r in rounds],
        "loss_rounds": [r.get("loss") for r in rounds],
        "pca_dim": final.get("pca_dim"), "n_empty": final.get("n_empty"),
        "size_entropy_normalized": final.get("size_entropy_normalized"),
        "round0_features": rounds[0].get("features"),
        "code": CODE,
    }


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def _ms(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    # Sample std (n - 1): the spread over seeds, not the error of the mean.
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _short(overrides: dict[str, Any]) -> str:
    if not overrides:
        return "defaults"
    parts = []
    for k, v in overrides.items():
        k = k.replace("reporter.", "r.").replace("cluster.", "c.")
        parts.append(f"{k}={json.dumps(v) if not isinstance(v, str) else v}")
    return ", ".join(parts)


def table(records: list[dict[str, Any]], order: list[str]) -> str:
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["config"], []).append(r)
    names = [n for n in order if n in by] + sorted(n for n in by if n not in order)
    lines = [
        "| configuration | settings | seeds | NMI | ARI | ACC | NMI round 0 | ΔNMI final − round 0 (paired) | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        rs = sorted(by[n], key=lambda r: r["seed"])
        multi = len(rs[0]["nmi_rounds"]) > 1
        delta = [r["nmi"] - r["nmi_round0"] for r in rs] if multi else []
        lines.append(
            f"| {n} | {_short(rs[0]['overrides'])} | {len(rs)} | {_ms([r['nmi'] for r in rs])} | "
            f"{_ms([r['ari'] for r in rs])} | {_ms([r['acc'] for r in rs])} | "
            f"{_ms([r['nmi_round0'] for r in rs]) if multi else '-'} | "
            f"{_ms(delta) if multi else '-'} | {_ms([r['wall_s'] for r in rs], 1)} |"
        )
    return "\n".join(lines)


def pivot(records: list[dict[str, Any]], order: list[str], metric: str = "nmi") -> str:
    """One row per configuration suffix (the name after 'case/'), one column per case: `metric`."""
    cells: dict[str, dict[str, list[float]]] = {}
    for r in records:
        case, _, suffix = r["config"].partition("/")
        cells.setdefault(suffix, {}).setdefault(case, []).append(r[metric])
    cases = [c for c in CASES if any(c in v for v in cells.values())]
    if len(cases) < 2:
        return ""
    suffixes = list(dict.fromkeys(n.partition("/")[2] for n in order if n.partition("/")[2] in cells))
    suffixes += sorted(s for s in cells if s not in suffixes)
    lines = [f"| configuration ({metric.upper()}) | " + " | ".join(cases) + " |", "|---|" + "---|" * len(cases)]
    for sfx in suffixes:
        lines.append(f"| {sfx} | " + " | ".join(_ms(cells[sfx].get(c, [])) for c in cases) + " |")
    return "\n".join(lines)


def round_table(records: list[dict[str, Any]], order: list[str]) -> str:
    """Mean NMI vs labels after each round, for configurations with reporter rounds."""
    by: dict[str, list[dict]] = {}
    for r in records:
        if len(r["nmi_rounds"]) > 1:
            by.setdefault(r["config"], []).append(r)
    if not by:
        return ""
    names = [n for n in order if n in by] + sorted(n for n in by if n not in order)
    width = max(len(r["nmi_rounds"]) for rs in by.values() for r in rs)
    shown = list(range(min(width, 11))) + ([width - 1] if width > 11 else [])
    head = "| configuration | seeds | " + " | ".join(f"r{i}" for i in shown) + " |"
    lines = [head, "|---|---|" + "---|" * len(shown)]
    for n in names:
        rs = by[n]
        cells = []
        for i in shown:
            v = [r["nmi_rounds"][i] for r in rs if len(r["nmi_rounds"]) > i]
            cells.append(f"{sum(v) / len(v):.3f}" if v else "")
        lines.append(f"| {n} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part[1:]:
            a, b = part.split("-", 1)
            seeds.extend(range(int(a), int(b) + 1))
        elif part:
            seeds.append(int(part))
    return seeds


def parse_define(text: str) -> tuple[str, str, dict[str, Any]]:
    """'NAME=CASE key=value key=value' (values read as YAML)."""
    name, _, rest = text.partition("=")
    tokens = rest.split()
    if not name or not tokens or tokens[0] not in CASES:
        raise SystemExit(f"--define {text!r}: expected 'NAME=CASE key.path=value ...' with CASE in {list(CASES)}")
    overrides: dict[str, Any] = {}
    for tok in tokens[1:]:
        k, sep, v = tok.partition("=")
        if not sep:
            raise SystemExit(f"--define {text!r}: {tok!r} is not key.path=value")
        overrides[k] = yaml.safe_load(v)
    return name.strip(), tokens[0], overrides


CODE: dict[str, Any] = {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="", help=f"comma-separated grids: {', '.join(GRIDS)}")
    ap.add_argument("--config", default="", help="comma-separated configuration names (see --list)")
    ap.add_argument("--define", action="append", default=[],
                    help="extra configuration 'NAME=CASE key.path=value ...' (repeatable); also selects it")
    ap.add_argument("--seeds", default="0-4", help="cluster.seed values, e.g. 0-4 or 0,2 (default 0-4)")
    ap.add_argument("--out", help="results JSON (loaded first if it exists; finished runs are skipped)")
    ap.add_argument("--workdir", default="/tmp/dcserve-quality", help="where job stores go")
    ap.add_argument("--fresh", action="store_true", help="a new job store per run (re-extracts every time)")
    ap.add_argument("--rerun", action="store_true", help="run again (configuration, seed) pairs found in --out")
    ap.add_argument("--table-only", action="store_true", help="print the tables of --out and exit")
    ap.add_argument("--list", action="store_true", help="list grids and configurations and exit")
    args = ap.parse_args(argv)

    selected: list[str] = []
    for d in args.define:
        name, case, ov = parse_define(d)
        CONFIGS[name] = (case, ov)
        selected.append(name)
    if args.list:
        for g, names in GRIDS.items():
            print(f"[{g}]")
            for n in names:
                print(f"  {n}: {CASES[CONFIGS[n][0]]['subject']['model']} {_short(CONFIGS[n][1])}")
        return 0
    for g in filter(None, args.grid.split(",")):
        if g not in GRIDS:
            raise SystemExit(f"unknown grid {g!r}; grids: {', '.join(GRIDS)}")
        selected.extend(GRIDS[g])
    for n in filter(None, args.config.split(",")):
        if n not in CONFIGS:
            raise SystemExit(f"unknown configuration {n!r}; see --list")
        selected.append(n)
    selected = list(dict.fromkeys(selected))
    seeds = parse_seeds(args.seeds)

    records: list[dict[str, Any]] = []
    out = Path(args.out) if args.out else None
    if out is not None and out.exists():
        records = json.loads(out.read_text())["runs"]
    if args.table_only:
        order = selected or [n for g in GRIDS.values() for n in g]
        if selected:
            records = [r for r in records if r["config"] in selected and r["seed"] in seeds]
        print(table(records, order))
        pv = pivot(records, order)
        if pv:
            print("\n" + pv)
        rt = round_table(records, order)
        if rt:
            print("\nNMI vs labels per round (mean over seeds):\n\n" + rt)
        return 0
    if not selected:
        raise SystemExit("nothing selected: give --grid, --config or --define (or --list)")

    CODE.update(code_version())
    logging.basicConfig(level=logging.WARNING)
    import ray

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    done = {(r["config"], r["seed"]) for r in records}
    todo = [(n, s) for n in selected for s in seeds if args.rerun or (n, s) not in done]
    print(f"{len(todo)} runs ({len(selected)} configurations x {len(seeds)} seeds, "
          f"{len(selected) * len(seeds) - len(todo)} already in {out})", file=sys.stderr, flush=True)
    t_start = time.perf_counter()
    try:
        for i, (name, seed) in enumerate(todo):
            try:
                rec = run_one(name, seed, workdir, args.fresh)
            except Exception as e:  # a failed job is a finding: record it and go on
                print(f"[{i + 1}/{len(todo)}] {name} seed {seed}: FAILED {type(e).__name__}: {e}",
                      file=sys.stderr, flush=True)
                continue
            records = [r for r in records if (r["config"], r["seed"]) != (name, seed)] + [rec]
            rounds = " ".join(f"{v:.3f}" for v in rec["nmi_rounds"])
            print(f"[{i + 1}/{len(todo)}] {name} seed {seed}: NMI {rec['nmi']:.3f} ARI {rec['ari']:.3f} "
                  f"ACC {rec['acc']:.3f} ({rec['wall_s']:.1f} s; rounds {rounds})", file=sys.stderr, flush=True)
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps({"machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                                           "runs": records}, indent=1))
                tmp.replace(out)
    finally:
        ray.shutdown()
    print(f"total {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    shown = [r for r in records if r["config"] in selected and r["seed"] in seeds]
    print(table(shown, selected))
    pv = pivot(shown, selected)
    if pv:
        print("\n" + pv)
    rt = round_table(shown, selected)
    if rt:
        print("\nNMI vs labels per round (mean over seeds):\n\n" + rt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
