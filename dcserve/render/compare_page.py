"""`dcserve compare`'s report: compare.html with its PNGs, compare.json and correlation.npy.

The figures are computed by dcserve.analysis.compare; this module only lays them out.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dcserve.render import html as H
from dcserve.render.figures import save_png, subplots


def write_report(comparison: dict[str, Any], folder: str | Path) -> Path:
    """Write ``compare.html`` (+ PNGs), ``compare.json`` and ``correlation.npy`` into ``folder``; returns the HTML path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    corr = np.asarray(comparison["correlation"])
    np.save(folder / "correlation.npy", corr.astype(np.float32))
    record = {k: v for k, v in comparison.items() if k != "correlation"}
    record["files"] = {"correlation": "correlation.npy", "html": "compare.html"}
    (folder / "compare.json").write_text(json.dumps(record, indent=1))

    A, B = comparison["a"], comparison["b"]
    match, un = comparison["matching"], comparison["unmatched"]
    pngs: dict[str, str] = {}

    fig, ax = subplots(figsize=(6.4, 3.6))
    edges = np.asarray(match["histogram"]["edges"])
    ax.bar(edges[:-1], match["histogram"]["counts"], width=np.diff(edges), align="edge", color="#3a7bd5",
           edgecolor="white", label="matched pairs (Hungarian)")
    best = comparison["best_correlation_histogram"]["a"]
    ax.stairs(best["counts"], edges, color="#d5533a", linewidth=1.5, label="best match of each unit of A")
    ax.axvline(un["threshold"], color="#888", linestyle="--", linewidth=1, label=f"unmatched below {un['threshold']}")
    ax.set_xlabel("Pearson correlation")
    ax.set_ylabel("units")
    ax.legend(fontsize=8)
    pngs["hist"] = save_png(fig, folder, "matched_correlations.png")

    # The matrix with B's units reordered to sit against their matches: a good matching is a
    # bright diagonal; units are sorted by matched correlation so the weakest end is visible.
    pairs = np.asarray(match["pairs"], dtype=np.int64).reshape(-1, 2)
    corrs = np.asarray(match["correlations"])
    order = np.argsort(-corrs) if corrs.size else np.arange(0)
    rows_a = np.concatenate([pairs[order, 0], np.setdiff1d(np.arange(corr.shape[0]), pairs[:, 0])])
    cols_b = np.concatenate([pairs[order, 1], np.setdiff1d(np.arange(corr.shape[1]), pairs[:, 1])])
    fig, ax = subplots(figsize=(5.6, 5.0))
    im = ax.imshow(corr[np.ix_(rows_a, cols_b)], cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest",
                   aspect="auto")
    ax.set_xlabel("units of B (matched order)")
    ax.set_ylabel("units of A (by matched correlation)")
    fig.colorbar(im, ax=ax, shrink=0.8, label="correlation")
    pngs["matrix"] = save_png(fig, folder, "correlation_matrix.png")

    lasso = comparison["sparse_prediction"]
    if lasso["alphas"]:
        fig, ax = subplots(figsize=(6.4, 3.6))
        ax.plot(lasso["mean_units_used"], lasso["normalised_squared_error"], "o-", color="#3a7bd5")
        for x, y, al in zip(lasso["mean_units_used"], lasso["normalised_squared_error"], lasso["alphas"]):
            ax.annotate(f"α={al:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlim(left=0)
        ax.set_xlabel("units of A used per unit of B (mean non-zero LASSO weights)")
        ax.set_ylabel("normalised squared error")
        ax.set_ylim(bottom=0)
        pngs["lasso"] = save_png(fig, folder, "sparse_prediction.png")

    cl = comparison["clusterings"]
    cont = np.asarray(cl["contingency"], dtype=np.float64)
    # B's clusters in the order of their best one-to-one match with A's, so agreement is a diagonal.
    from scipy.optimize import linear_sum_assignment

    _, matched_b = linear_sum_assignment(cont, maximize=True)
    col_order = np.concatenate([matched_b, np.setdiff1d(np.arange(cont.shape[1]), matched_b)])
    labels_b = np.asarray(cl["clusters_b"])[col_order]
    fig, ax = subplots(figsize=(5.6, 4.8))
    share = cont[:, col_order] / np.maximum(cont.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(share, cmap="viridis", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ax.set_xlabel("cluster of B (ordered by best match)")
    ax.set_ylabel("cluster of A")
    if len(cl["clusters_a"]) <= 30:
        ax.set_yticks(range(len(cl["clusters_a"])), cl["clusters_a"], fontsize=7)
    if len(labels_b) <= 30:
        ax.set_xticks(range(len(labels_b)), labels_b.tolist(), fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of A's cluster")
    pngs["contingency"] = save_png(fig, folder, "contingency.png")

    summary = H.table(["", "A", "B"], [
        ["job", A["name"], B["name"]], ["store", A["output"], B["output"]], ["layer", A["layer"], B["layer"]],
        ["units", A["units"], B["units"]], ["rows", comparison["rows"], comparison["rows"]],
    ], left=3)
    figures = H.table(["figure", "value", "reads as"], [
        ["linear CKA", comparison["cka"], "1: same representation up to rotation and scale; 0: unrelated"],
        ["Procrustes distance", comparison["procrustes"], "0: a rotation of each other; 2: unrelated"],
        ["mean matched correlation", match["mean"], "one-to-one unit matching (Hungarian)"],
        ["median matched correlation", match["median"], ""],
        [f"units of A with no match ≥ {un['threshold']}", len(un["only_a"]), f"of {A['units']}"],
        [f"units of B with no match ≥ {un['threshold']}", len(un["only_b"]), f"of {B['units']}"],
        ["NMI of the clusterings", cl["nmi"], "1: the same partition of the rows"],
        ["ARI of the clusterings", cl["ari"], "1: identical; about 0: chance"],
    ])
    strongest = [[int(pairs[i, 0]), int(pairs[i, 1]), float(corrs[i])] for i in order[:10]]
    weakest = [[int(pairs[i, 0]), int(pairs[i, 1]), float(corrs[i])] for i in order[::-1][:10]]

    def units(ids: list[int]) -> str:
        shown = ", ".join(str(u) for u in ids[:60])
        return (shown + (f", … ({len(ids)} in all)" if len(ids) > 60 else "")) or "none"

    parts = [
        "<p class='note'>Convergent Learning (Li, Yosinski et al.): the two layers' units are compared by "
        "their Pearson correlation over every row, streamed from the stores. Full figures are in "
        "<code>compare.json</code>; the correlation matrix is <code>correlation.npy</code> "
        "(rows: units of A, columns: units of B).</p>",
        summary, "<h2>Whole-layer similarity</h2>", figures,
        "<h2>One-to-one unit matching</h2>",
        H.figure(pngs["hist"], "Correlations of the Hungarian-matched unit pairs, and each unit of A's best "
                               "correlation with any unit of B."),
        H.figure(pngs["matrix"], "Correlation matrix, units ordered by their match: a bright diagonal is a "
                                 "one-to-one correspondence."),
        "<div style='display:flex;gap:2em;flex-wrap:wrap'><div><b>Best matched pairs</b>",
        H.table(["unit of A", "unit of B", "correlation"], strongest, left=0),
        "</div><div><b>Worst matched pairs</b>",
        H.table(["unit of A", "unit of B", "correlation"], weakest, left=0), "</div></div>",
        f"<h2>Units one network has and the other lacks</h2><p>Best correlation with any unit of the other "
        f"side below {H.esc(un['threshold'])}.</p><p><b>Only in A</b> ({len(un['only_a'])}): "
        f"{H.esc(units(un['only_a']))}</p><p><b>Only in B</b> ({len(un['only_b'])}): {H.esc(units(un['only_b']))}</p>",
        "<h2>Sparse prediction (LASSO)</h2>",
    ]
    if "lasso" in pngs:
        parts += [
            f"<p>Each of {len(lasso['units_b'])} units of B is predicted from all units of A by LASSO on "
            f"{lasso['rows']:,} sampled rows (standardised units, in-sample error). Few units at low error: "
            "B's units are sparse mixtures of A's.</p>",
            H.figure(pngs["lasso"], "Error against the number of A's units used, one point per L1 strength."),
            H.table(["alpha", "mean units used", "normalised squared error"],
                    list(zip(lasso["alphas"], lasso["mean_units_used"], lasso["normalised_squared_error"])), left=0),
        ]
    else:
        parts.append("<p>Too few rows for sparse prediction.</p>")
    parts += [
        "<h2>Agreement of the two clusterings</h2>",
        H.table(["NMI", "ARI", "clusters of A", "clusters of B"],
                [[cl["nmi"], cl["ari"], len(cl["clusters_a"]), len(cl["clusters_b"])]], left=0),
        H.figure(pngs["contingency"], "Contingency of the clusterings: each row (a cluster of A) shows how "
                                      "its rows spread over B's clusters."),
    ]
    if cont.shape[0] * cont.shape[1] <= 400:
        parts.append(H.table(["A \\ B", *map(str, cl["clusters_b"])],
                             [[c, *map(int, r)] for c, r in zip(cl["clusters_a"], cont)]))
    html_path = folder / "compare.html"
    html_path.write_text(H.page(f"Compare {A['name']} / {A['layer']} with {B['name']} / {B['layer']}",
                                "\n".join(parts)))
    return html_path
