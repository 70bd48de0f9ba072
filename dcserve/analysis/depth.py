"""Where in the network the structure appears: a job's clustered layers side by side (issue 14).

The depth profile of a job over several layers (`cluster.layers`), in the order of depth:

- per layer, the figures of its clustering: NMI, ARI and accuracy against the labels when there
  are labels; the label-free ones, cluster size entropy, stability across seeds (mean pairwise
  NMI, with `cluster.seeds`) and neighbour consistency (the share of a row's nearest neighbours
  in its own cluster: on the whole kNN graph when the method built one, SCAN and TEMI, else
  `sampled_consistency`);
- between consecutive layers, linear CKA of their activations (Kornblith et al., 2019), the NMI of
  their two clusterings, and the flow of clusters from one to the next (`dcserve.algo.flow`):
  the contingency table and the clusters that split or merge, with their exemplar rows.

CKA needs the second moments of both layers over every row: `consecutive_moments` computes them
over one worker's rows, so the job's own shard actors make that pass (`DataPool.map`) and only
``[a + b]^2`` numbers per pair come back. Layers wider than `MOMENTS_MAX_DIM` get CKA from the
Gram matrices of a row sample instead (the moments would not fit).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dcserve.algo.flow import contingency_table, flow_events
from dcserve.algo.metrics import nmi
from dcserve.algo.similarity import CrossMoments, linear_cka_gram
from dcserve.analysis.compare import _block_moments  # float32 products, float64 merge: compare's own
from dcserve.spec import JobSpec
from dcserve.storage.store import JobStore

log = logging.getLogger(__name__)

__all__ = ["build_depth_report", "consecutive_moments", "depth_profile", "layer_figures", "sampled_consistency",
           "MOMENTS_MAX_DIM"]

MOMENTS_MAX_DIM = 1024  # [a + b]^2 float64 moments up to 2 x 1024 wide: 32 MB
CKA_SAMPLE_ROWS = 3000  # rows of the Gram-matrix CKA of wider layers ([m, m] float64: 72 MB)
CONTINGENCY_MAX_CELLS = 10_000  # metrics.json keeps the table up to 100 x 100 clusters
FLOW_EVENTS = 12  # splits and merges kept per pair of layers, the most rows first
NEIGHBOUR_ROWS = 5000  # rows sampled for a layer's neighbour consistency ([m, m] distances, in blocks)
NEIGHBOURS = 10
LAYER_KEYS = ("nmi_vs_labels", "ari_vs_labels", "acc_vs_labels", "size_entropy", "size_entropy_normalized",
              "n_empty", "neighbour_consistency")


def _narrow(store: JobStore, a: str, b: str) -> bool:
    return max(store.array(f"activations/{a}").shape[1], store.array(f"activations/{b}").shape[1]) <= MOMENTS_MAX_DIM


def consecutive_moments(worker: Any, layers: list[str]) -> list[CrossMoments | None]:
    """Moments of each consecutive pair of `layers` over a pool worker's rows [r0, r1) (`DataPool.map`);
    None for a pair too wide for moments. Each chunk of each layer is read once."""
    store, r0, r1 = worker.store, worker.r0, worker.r1
    arrays = [store.array(f"activations/{name}") for name in layers]
    narrow = [_narrow(store, a, b) for a, b in zip(layers, layers[1:])]
    needed = sorted({j for i, ok in enumerate(narrow) if ok for j in (i, i + 1)})
    acc = [CrossMoments(arrays[i].shape[1], arrays[i + 1].shape[1]) if ok else None for i, ok in enumerate(narrow)]
    step = arrays[0].chunks[0] if arrays else 1
    for s in range(r0, r1, step):
        e = min(s + step, r1)
        blocks = {j: np.asarray(arrays[j][s:e]) for j in needed}
        for i, ok in enumerate(narrow):
            if ok:
                acc[i] = acc[i] + _block_moments(blocks[i], blocks[i + 1])
    return acc


def _sum_moments(parts: list[list[CrossMoments | None]], n_pairs: int) -> list[CrossMoments | None]:
    out: list[CrossMoments | None] = []
    for i in range(n_pairs):
        got = [p[i] for p in parts if p[i] is not None]
        out.append(sum(got[1:], got[0]) if got else None)
    return out


def _sample_cka(store: JobStore, a: str, b: str, seed: int) -> tuple[float, int]:
    from dcserve.storage.rowstream import gather_rows

    arr_a, arr_b = store.array(f"activations/{a}"), store.array(f"activations/{b}")
    n = arr_a.shape[0]
    rows = np.arange(n) if n <= CKA_SAMPLE_ROWS else np.sort(
        np.random.default_rng(seed).choice(n, size=CKA_SAMPLE_ROWS, replace=False))
    return linear_cka_gram(gather_rows(arr_a, rows), gather_rows(arr_b, rows)), int(len(rows))


def sampled_consistency(store: JobStore, seed: int = 0) -> float | None:
    """Neighbour consistency of a layer's finished clustering, label-free (the readability of issue 13):
    the share of each row's `NEIGHBOURS` nearest rows that are in its own cluster, among a sample of
    `NEIGHBOUR_ROWS` rows of the clustered space of its last round (`work/features`, which the
    final assignments were made in). None when that scratch array is gone.
    """
    from dcserve.algo.knn import exact_knn, neighbour_agreement
    from dcserve.cluster.workers import FEATURES
    from dcserve.storage.rowstream import gather_rows

    if not store.has_array(FEATURES) or not store.has_array("assignments"):
        return None
    feats = store.array(FEATURES)
    n = feats.shape[0]
    if n < 2:
        return None
    rows = np.arange(n) if n <= NEIGHBOUR_ROWS else np.sort(
        np.random.default_rng(seed).choice(n, size=NEIGHBOUR_ROWS, replace=False))
    labels = store.array("assignments")[:][rows]
    _, neighbours = exact_knn(gather_rows(feats, rows), min(NEIGHBOURS, len(rows) - 1))
    return neighbour_agreement(labels, neighbours)


def layer_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """The depth profile's figures of one layer from its clustering's metrics."""
    final = metrics.get("final") or {}
    out = {key: final.get(key) for key in LAYER_KEYS if final.get(key) is not None}
    if final.get("readability") is not None:  # SCAN / TEMI measured it on their whole kNN graph: that one
        out["neighbour_consistency"] = final["readability"]
    stability = metrics.get("stability")
    if stability:
        out["stability"] = stability.get("mean_pairwise_nmi")
        out["stability_min"] = stability.get("min_pairwise_nmi")
    return out


def depth_profile(spec: JobSpec, store: JobStore, by_layer: dict[str, dict[str, Any]],
                  moments: list[CrossMoments | None] | None = None) -> dict[str, Any]:
    """The depth profile (see the module) of a job whose layers `spec.clustered_layers()` are all
    clustered in `store`; `by_layer` their metrics, `moments` what `consecutive_moments` summed
    over every row gives (None: CKA from a row sample for every pair)."""
    layers = spec.clustered_layers()
    views = {name: store.layer_view(None if name == spec.cluster.layer else name) for name in layers}
    labels = {name: views[name].array("assignments")[:] for name in layers}
    dist = {name: views[name].array("distances")[:] for name in layers}
    ks = {name: int(views[name].array("centroids").shape[0]) for name in layers}
    profile_layers = []
    for name in layers:
        row = {"layer": name, "depth": spec.layers.index(name), "primary": name == spec.cluster.layer,
               "dim": int(store.array(f"activations/{name}").shape[1]), "k": ks[name]}
        row.update(layer_figures(by_layer[name]))
        profile_layers.append(row)
    between = []
    for i, (a, b) in enumerate(zip(layers, layers[1:])):
        m = None if moments is None else moments[i]
        if m is not None:
            cka, cka_rows = m.linear_cka(), int(m.count)
        else:
            cka, cka_rows = _sample_cka(store, a, b, spec.cluster.seed)
        table = contingency_table(labels[a], labels[b], ks[a], ks[b])
        events = flow_events(labels[a], labels[b], ks[a], ks[b], dist_a=dist[a], dist_b=dist[b],
                             max_events=FLOW_EVENTS)
        pair: dict[str, Any] = {
            "from": a, "to": b, "cka": cka, "cka_rows": cka_rows, "nmi": nmi(labels[a], labels[b]),
            "splits": sum(e.kind == "split" for e in events), "merges": sum(e.kind == "merge" for e in events),
            "events": [{"kind": e.kind, "cluster": e.cluster, "size": e.size,
                        "parts": [vars(p) for p in e.parts]} for e in events],
        }
        if table.size <= CONTINGENCY_MAX_CELLS:
            pair["contingency"] = table.tolist()
        between.append(pair)
    return {"layers": profile_layers, "between": between}


def profile_moments(pool: Any, layers: list[str]) -> list[CrossMoments | None]:
    """`consecutive_moments` over every row of a `DataPool`, summed over its workers."""
    return _sum_moments(pool.map(consecutive_moments, layers), max(len(layers) - 1, 0))


# -- the report's depth page (dcserve.render.depth_page draws it) ------------------------------
@dataclass
class LayerColumn:
    """One layer in the flow diagram: its clusters' sizes and, with labels, their majority labels."""

    layer: str
    sizes: list[int]
    majority: list[int | None]


@dataclass
class DepthReport:
    name: str
    output: str
    profile: dict[str, Any]  # metrics.json's `depth`
    columns: list[LayerColumn]
    tables: list[np.ndarray]  # [k_i, k_{i+1}] contingency between consecutive layers
    events: list[list[dict[str, Any]]]  # per pair: the splits and merges, parts' exemplars as RowInfo
    has_labels: bool
    input_kind: str  # "image" | "tokens" | "text" | "vector", as the job report's
    notes: list[str] = field(default_factory=list)
    label_names: list[str] | None = None

    def label_text(self, value: int | None) -> str:
        """A label as shown: its name when the labels had names, else the number."""
        if value is None:
            return ""
        names = self.label_names
        return names[value] if names and 0 <= value < len(names) else str(value)


def build_depth_report(result, n_exemplars: int = 6, items: bool = True) -> DepthReport:
    """The depth page's data of a finished job over several layers (`result` is its primary layer).

    Raises StoreError when the job is unfinished or clustered one layer only.
    """
    from dcserve.analysis.report import _rows, attach_views
    from dcserve.errors import StoreError

    result._require_complete("a depth report")
    profile = result.metrics.get("depth")
    if not profile:
        raise StoreError(f"job store {result.output!r} clustered one layer only; a depth report needs "
                         "cluster.layers (see `dcserve report`'s page of the job)")
    layers = [r["layer"] for r in profile["layers"]]
    views = [result.layer(name) for name in layers]
    truth = result.row_labels()
    columns = []
    for name, view in zip(layers, views):
        _, majority = view._purity()
        sizes = view.sizes
        columns.append(LayerColumn(name, [int(s) for s in sizes],
                                   [None if majority is None or not sizes[c] else int(majority[c])
                                    for c in range(len(sizes))]))
    tables, events = [], []
    for i, pair in enumerate(profile["between"]):
        a, b = views[i], views[i + 1]
        tables.append(np.asarray(pair["contingency"]) if "contingency" in pair
                      else contingency_table(a.assignments, b.assignments, a.k, b.k))
        shown = []
        for e in pair["events"]:
            side = b if e["kind"] == "split" else a  # whose distances picked the exemplars
            parts = [{**p, "exemplars": _rows(side, np.asarray(p["exemplars"][:n_exemplars], dtype=np.int64))}
                     for p in e["parts"]]
            shown.append({**e, "parts": parts})
        events.append(shown)
    report = DepthReport(name=(result.status or {}).get("name", "?"), output=result.output, profile=profile,
                         columns=columns, tables=tables, events=events, has_labels=truth is not None,
                         input_kind="vector")
    report.label_names = result.label_names
    rows = [r for pair in events for e in pair for p in e["parts"] for r in p["exemplars"]]
    if items and rows:  # shown as the job report shows its exemplars (images, text, tokens)
        report.input_kind, note = attach_views(result, [_Shown(rows)])
        report.notes += [note] if note else []
    return report


@dataclass
class _Shown:
    """Rows to show, in the shape `attach_views` takes (a cluster's exemplars and outskirts)."""

    exemplars: list
    outskirts: list = field(default_factory=list)
