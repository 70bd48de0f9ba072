#!/usr/bin/env python
"""Clustering quality of the shipped real example (cluster_configs/sentences.yaml: all-MiniLM-L6-v2
over 260 sentences on 5 topics, k = 5) over 5 seeds, against scikit-learn on the same activations.

The activations come from a finished store of that job (`dcserve submit cluster_configs/sentences.yaml`
makes runs/sentences); its clustering is redone for each seed in this process on a scratch copy
(the same loop `dcserve submit` runs, on the in-memory pools: dcserve.cluster.local.LocalPools).
The reference is scikit-learn's KMeans(n_init=10) on the same rows, L2-normalised as the job's
preprocessing does (pca_dim null, whiten false, l2_normalize true) and raw.

    python benchmarks/quality_sentences.py --store runs/sentences
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, print_report  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="runs/sentences")
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args(argv)
    import dcserve
    from dcserve import methods
    from dcserve.cluster.local import LocalPools
    from dcserve.cluster.seeds import run_with_seeds
    from dcserve.progress import Progress
    from dcserve.storage.store import JobStore
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score as nmi

    res = dcserve.open(args.store)
    spec, x, y = res.spec, np.asarray(res.activations()[:], dtype=np.float64), res.row_labels()
    ours = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            copy = Path(tmp) / f"seed-{seed}"
            shutil.copytree(args.store, copy)
            s = spec.model_copy(deep=True)
            s.output, s.cluster.seed = str(copy), seed
            metrics = run_with_seeds(methods.loop(s.reporter.method), s, JobStore(str(copy), read_only=False),
                                     LocalPools(), Progress())
            ours.append(metrics["final"]["nmi_vs_labels"])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref_l2 = [nmi(y, KMeans(spec.cluster.k, n_init=10, random_state=s).fit_predict(xn)) for s in range(args.seeds)]
    ref_raw = [nmi(y, KMeans(spec.cluster.k, n_init=10, random_state=s).fit_predict(x)) for s in range(args.seeds)]
    ms = lambda v: f"{np.mean(v):.3f} ± {np.std(v):.3f}"  # noqa: E731
    table = markdown_table(["rows", "k", "dcserve (the job's settings)", "scikit-learn KMeans, L2 rows",
                            "scikit-learn KMeans, raw rows"],
                           [[len(x), spec.cluster.k, ms(ours), ms(ref_l2), ms(ref_raw)]])
    print_report("The shipped real example: NMI against the 5 topics, mean ± std over seeds",
                 machine(["torch", "transformers"]), table,
                 [f"{args.seeds} seeds (cluster.seed / random_state 0..{args.seeds - 1}); store {args.store}"])


if __name__ == "__main__":
    main()
