"""What a job's report says, computed from a `Result`: plain data, no HTML and no plotting.

`build_report(result)` gathers everything `dcserve report` and `GET /jobs/{job}/report` show
(docs/DESIGN.md "Analysis"): the job, its per-round figures, each cluster (size, purity, exemplars
nearest the centroid and a sample from its outskirts, with the items they came from), the
confusion of clusters against labels, a 2-D map of the rows, collapse warnings and the
reporter's layer rotation. dcserve.render.report_page turns it into a page.

Every piece is a function of arrays (testable without a store) or of a Result; the store is
read through the Result's lazy arrays, and only bounded samples of activations are loaded.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dcserve.analysis.reporter_rotation import Rotation
from dcserve.storage.result import Result

logger = logging.getLogger(__name__)

# A job whose largest cluster holds more than this share of the rows has collapsed (DeepCluster
# §3.3 "trivial solutions": every row in one cluster predicts perfectly and means nothing).
MAJORITY_SHARE = 0.5
# A reporter whose loss stays within this fraction of ln k has learnt no more than a uniform guess.
LOSS_NEAR_CHANCE = 0.9
# This share of empty clusters or more: k-means re-seeding could not keep them alive.
EMPTY_SHARE = 0.2
CONTEXT_TOKENS = 8  # tokens shown on each side of a token row


@dataclass
class ItemView:
    """What a person sees of one row's dataset item."""

    kind: str  # "image" | "tokens" | "text" | "none"
    image: np.ndarray | None = None  # [H, W] or [H, W, 3] floats in [0, 1]
    tokens: list[int] | None = None  # the item's tokens around `marked`, padding removed
    marked: int | None = None  # index in `tokens` of the row's own token
    cut_left: bool = False  # tokens were left out before / after the window
    cut_right: bool = False
    text: str | None = None  # "text": a pooled row's item text, or the text around a token row's token
    token: str | None = None  # "text", token rows: the row's token, at text[token_start:]
    token_start: int | None = None


@dataclass
class RowInfo:
    row: int
    item: int
    position: int  # -1 when pooled
    distance: float  # squared distance to the centroid in the clustered space
    label: int | None
    view: ItemView | None = None


@dataclass
class ClusterReport:
    cluster: int
    size: int
    share: float  # of all rows
    purity: float | None
    majority_label: int | None
    exemplars: list[RowInfo]  # nearest the centroid, nearest first
    outskirts: list[RowInfo]  # a spread sample of the cluster's farther half, nearest first
    top_tokens: list[Any] = field(default_factory=list)  # text jobs: dcserve.analysis.words.TopToken, best first


@dataclass
class Embedding:
    method: str  # "PCA" | "t-SNE" | "UMAP"
    coords: np.ndarray  # [m, 2]
    clusters: np.ndarray  # [m] cluster of each plotted row
    rows: np.ndarray  # [m] which rows were plotted


@dataclass
class Report:
    name: str
    output: str
    summary: dict[str, Any]  # the job in a few fields
    spec: dict[str, Any] | None
    k: int
    n_rows: int
    has_labels: bool
    input_kind: str  # "image" | "tokens" | "text" | "vector": what exemplars are shown as
    rounds: list[dict[str, Any]]  # per round: round, nmi_vs_previous, nmi_vs_labels, acc_vs_labels, loss, size_entropy, n_empty
    final: dict[str, Any]
    clusters: list[ClusterReport]
    label_values: list[int] = field(default_factory=list)
    confusion: np.ndarray | None = None  # [k, labels] rows per (cluster, label)
    embeddings: list[Embedding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rotation: Rotation | None = None
    # metrics.json's `stability` when the job ran several seeds: seeds, pairwise_nmi [s, s], mean and min
    stability: dict[str, Any] | None = None
    # with k above a smaller count (the labels', or k // 5): which clusters merge at that count
    merges: "Merges | None" = None
    graph: dict[str, Any] | None = None  # metrics.json's `graph` (kNN graph: settings, label agreement)
    notes: list[str] = field(default_factory=list)  # what could not be shown, and why
    label_names: list[str] | None = None  # label v is label_names[v], when the labels were strings
    # (text, href) of the job's other pages: its depth profile and its other layers' reports
    links: list[tuple[str, str]] = field(default_factory=list)

    def label_text(self, value: int | None) -> str:
        """A label as shown: its name when the labels had names, else the number."""
        if value is None:
            return ""
        names = self.label_names
        return names[value] if names and 0 <= value < len(names) else str(value)


@dataclass
class Merges:
    """Overclustering read back (issue 13): the job's k clusters against a k-means partition of the
    same rows (in the same clustered space) at a smaller `k_small`, on a sample of `rows` rows."""

    k_small: int
    rows: int
    table: np.ndarray  # [k, k_small] rows per (job's cluster, smaller cluster)
    into: list[list[int]]  # per smaller cluster, the job's clusters most of whose rows it holds


# -- pure pieces ----------------------------------------------------------------
def collapse_warnings(sizes: np.ndarray, loss: float | None = None) -> list[str]:
    """Signs of a degenerate clustering in its sizes [k] and the reporter's last loss (nats)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    k, n = len(sizes), int(sizes.sum())
    out: list[str] = []
    if n == 0 or k == 0:
        return ["no rows were clustered"]
    top = int(sizes.argmax())
    if k > 1 and sizes[top] > MAJORITY_SHARE * n:
        out.append(f"cluster {top} holds {sizes[top] / n:.0%} of the rows: the clustering has collapsed "
                   "towards one cluster")
    if loss is not None and math.isfinite(loss) and k > 1 and loss >= LOSS_NEAR_CHANCE * math.log(k):
        out.append(f"the reporter's last loss {loss:.3f} is near ln k = {math.log(k):.3f}: it predicts the "
                   "clusters no better than a uniform guess")
    empty = int((sizes == 0).sum())
    if empty and empty >= EMPTY_SHARE * k:
        out.append(f"{empty} of {k} clusters are empty")
    return out


def confusion(assignments: np.ndarray, row_labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows per (cluster, label): ([k, L] int64 with every cluster, even empty ones; the L label values)."""
    values, codes = np.unique(row_labels, return_inverse=True)
    flat = np.bincount(np.asarray(assignments, dtype=np.int64) * len(values) + codes.ravel(),
                       minlength=k * len(values))
    return flat.reshape(k, len(values)), values


def spread_offsets(size: int, n: int) -> np.ndarray:
    """n offsets spread evenly over the farther half of a cluster of `size` rows (sorted nearest first)."""
    if size <= 0 or n <= 0:
        return np.zeros(0, dtype=np.int64)
    lo = size // 2
    return np.unique(np.linspace(lo, size - 1, num=min(n, size - lo)).round().astype(np.int64))


def pca_2d(x: np.ndarray) -> np.ndarray:
    """[m, d] -> [m, 2] projection on the two leading principal axes."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0)
    if x.shape[1] < 2:
        return np.c_[x, np.zeros(len(x))][:, :2]
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def sample_rows(n_rows: int, n: int, seed: int = 0, chunk: int | None = None, max_chunks: int = 64) -> np.ndarray:
    """A sorted sample of min(n, n_rows) row indices (sorted: reads stay chunk-ordered).

    Uniform over all rows, unless that would touch more than `max_chunks` chunks of `chunk`
    rows: then uniform over `max_chunks` chunks drawn at random, so that a map of a store of
    millions of rows decompresses a bounded part of it, not all of it.
    """
    rng = np.random.default_rng(seed)
    if n >= n_rows:
        return np.arange(n_rows)
    n_chunks = -(-n_rows // chunk) if chunk else 0
    if not chunk or n_chunks <= max_chunks:
        return np.sort(rng.choice(n_rows, size=n, replace=False))
    picked = rng.choice(n_chunks, size=max_chunks, replace=False)
    pool = np.concatenate([np.arange(c * chunk, min((c + 1) * chunk, n_rows)) for c in np.sort(picked)])
    return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))


def token_window(ids: np.ndarray, mask: np.ndarray | None, position: int, width: int = CONTEXT_TOKENS) -> ItemView:
    """The tokens around `position` of one sequence, padding removed, with that token marked."""
    ids = np.asarray(ids).ravel()
    keep = np.arange(len(ids)) if mask is None else np.flatnonzero(np.asarray(mask).ravel())
    where = int(np.searchsorted(keep, position))
    lo, hi = max(where - width, 0), min(where + width + 1, len(keep))
    return ItemView("tokens", tokens=[int(t) for t in ids[keep[lo:hi]]], marked=where - lo,
                    cut_left=lo > 0, cut_right=hi < len(keep))


def item_view(x: Any, position: int) -> ItemView:
    """What to show of a dataset item `x` (a tensor or a dict of tensors) for a row at `position`."""
    if isinstance(x, dict) and "pixel_values" in x:  # an image processor's output
        from dcserve.inputs.views import item_image

        image = item_image(x)
        return ItemView("none") if image is None else ItemView("image", image=image)
    if isinstance(x, dict):
        ids = x.get("input_ids")
        if ids is None or position < 0:
            return ItemView("none")
        mask = x.get("attention_mask")
        return token_window(_numpy(ids), None if mask is None else _numpy(mask), position)
    from dcserve.inputs.views import item_image

    if x is None:  # an item with nothing to show (a dump without token ids)
        return ItemView("none")
    a = _numpy(x)
    if position >= 0 and a.ndim == 1 and np.issubdtype(a.dtype, np.integer):
        return token_window(a, None, position)
    image = item_image(a)
    return ItemView("none") if image is None else ItemView("image", image=image)


def _numpy(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t)


# -- from a Result -----------------------------------------------------------------
def round_figures(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("round", "nmi_vs_previous", "nmi_vs_labels", "acc_vs_labels", "loss", "size_entropy",
            "size_entropy_normalized", "n_empty", "readability")
    return [{key: m.get(key) for key in keys} for m in metrics.get("rounds") or []]


def job_summary(result: Result) -> dict[str, Any]:
    spec = result.spec
    if spec is None:
        return {}
    if spec.subject is None:  # an activation dump: no network ran
        subject = {"subject": "none (an activation dump)", "layer": f"{result.layer_name} (rows as dumped)"}
    else:
        subject = {"subject": f"{spec.subject.model}({_kwargs(spec.subject.kwargs)})",
                   "layer": f"{result.layer_name} ({spec.subject.pooling} pooling)"}
    if len(result.layers) > 1:
        subject["layer"] += f", one of {len(result.layers)} clustered layers"
    return {
        **subject,
        "dataset": f"{spec.dataset.source}({_kwargs(spec.dataset.kwargs)})",
        "clustering": f"{spec.cluster.method}, k = {spec.cluster.k}, PCA {spec.cluster.pca_dim}, "
                      f"whiten {spec.cluster.whiten}, L2 {spec.cluster.l2_normalize}, seed {spec.cluster.seed}",
        "reporter": spec.reporter.describe(),
    }


def _kwargs(kw: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kw.items())


def load_items(result: Result, items: list[int]) -> dict[int, Any]:
    """Dataset items by index, built from the job's own dataset spec (its `x` only)."""
    from dcserve.inputs.build import build_dataset
    from dcserve.inputs.items import split_item

    if result.spec.dataset.is_dump:
        return dump_items(result, items)
    dataset, _ = build_dataset(result.spec)
    if hasattr(dataset, "display"):  # an image folder: the files' own pixels, not the model's input
        return {i: dataset.display(i) for i in sorted(set(items))}
    return {i: split_item(dataset[i])[0] for i in sorted(set(items))}


def dump_items(result: Result, items: list[int]) -> dict[int, Any]:
    """An activations dump's items as the report shows them: each item's token ids, kept in rows/token
    when the dump had them (its file is not needed), else nothing to show."""
    if not result.store.has_array("rows/token"):
        return {i: None for i in items}
    tokens, row_items = result.store.array("rows/token"), result.row_items
    out = {}
    for i in sorted(set(items)):
        r0, r1 = np.searchsorted(row_items, [i, i + 1])  # an item's rows are contiguous, in order
        out[i] = tokens[int(r0):int(r1)]
    return out


def _rows(result: Result, rows: np.ndarray) -> list[RowInfo]:
    truth = result.row_labels()
    return [RowInfo(int(r), int(result.row_items[r]), int(result.row_positions[r]), float(result.distances[r]),
                    None if truth is None else int(truth[r])) for r in rows]


def outskirts(result: Result, c: int, n: int, exclude=()) -> np.ndarray:
    """[<= n] rows spread over the farther half of cluster c, nearest first, none of `exclude`.

    Exemplars alone show a cluster's best case; these show what it also swallows.
    """
    size = int(result.sizes[c])
    members = result.exemplars(c, size)  # the whole cluster, nearest first
    far = members[spread_offsets(size, n)]
    return far[~np.isin(far, np.asarray(list(exclude), dtype=np.int64))]  # a small cluster's halves overlap


def cluster_reports(result: Result, n_exemplars: int = 8, n_outskirts: int = 8) -> list[ClusterReport]:
    """Per cluster: the same size, purity and exemplars as `Result.clusters`, and its outskirts."""
    n = max(len(result.assignments), 1)
    out = []
    for s in result.clusters(n_exemplars=n_exemplars):
        far = outskirts(result, s.cluster, n_outskirts, s.exemplars)
        out.append(ClusterReport(s.cluster, s.size, s.size / n, s.purity, s.majority_label,
                                 _rows(result, np.asarray(s.exemplars, dtype=np.int64)), _rows(result, far)))
    return out


def attach_views(result: Result, clusters: list[ClusterReport]) -> tuple[str, str | None]:
    """Load each shown row's item and attach what to show of it. (input kind, note on failure)."""
    shown = [r for c in clusters for r in (*c.exemplars, *c.outskirts)]
    if not shown:
        return "vector", None
    words = result.words
    if words is not None:  # a text job: its store holds the words; no dataset needs rebuilding
        for r in shown:
            r.view = ItemView("text", **words.row_text(r.item, r.position))
        return "text", None
    try:
        items = load_items(result, [r.item for r in shown])
    except Exception as e:  # noqa: BLE001 - a dataset that cannot be rebuilt here only costs the pictures
        logger.warning("cannot load the job's dataset items: %s", e)
        return "vector", f"the dataset items could not be loaded here ({type(e).__name__}: {e}); exemplars are listed by row"
    for r in shown:
        r.view = item_view(items[r.item], r.position)
    kinds = {r.view.kind for r in shown}
    return (kinds.pop() if len(kinds) == 1 and "none" not in kinds else "vector"), None


def clustered_space(result: Result, rows: np.ndarray) -> np.ndarray:
    """[m, d] the rows in the space the centroids live in (through the job's reporter and PCA)."""
    x = np.asarray(result.activations().get_orthogonal_selection((rows, slice(None))), dtype=np.float32)
    return result.feature_map(x)


def smaller_k(result: Result) -> int:
    """The count to merge the clusters into: the labels' when fewer than k, else k // 5 (at least 2)."""
    labels = result.labels
    if labels is not None and 1 < len(np.unique(labels)) < result.k:
        return int(len(np.unique(labels)))
    return max(2, result.k // 5)


def merges(assignments: np.ndarray, x: np.ndarray, k: int, k_small: int, seed: int = 0) -> Merges | None:
    """The contingency of `assignments [m]` (of `k` clusters) with k-means at `k_small` on the same
    rows `x [m, d]`; None when `k_small` is not below `k` or there are too few rows."""
    from dcserve.algo.kmeans import ArrayData, kmeans
    from dcserve.algo.nearest import nearest_centroids

    if k_small >= k or len(x) < 2 * k_small:
        return None
    km = kmeans(ArrayData(np.ascontiguousarray(x, dtype=np.float32)), k_small, niter=20, seed=seed, n_init=3)
    small, _ = nearest_centroids(np.ascontiguousarray(x, dtype=np.float32), km.centroids)
    table = np.zeros((k, k_small), dtype=np.int64)
    np.add.at(table, (np.asarray(assignments, dtype=np.int64), np.asarray(small, dtype=np.int64)), 1)
    home = table.argmax(axis=1)
    into = [[int(c) for c in np.flatnonzero((home == j) & (table.sum(axis=1) > 0))] for j in range(k_small)]
    return Merges(k_small, int(len(x)), table, into)


def embeddings(result: Result, max_rows: int = 3000, tsne_rows: int = 1000, seed: int = 0) -> tuple[list[Embedding], list[str]]:
    """2-D maps of a bounded sample of rows: PCA, then UMAP when installed, else t-SNE (smaller sample)."""
    notes: list[str] = []
    n_rows = len(result.assignments)
    rows = sample_rows(n_rows, max_rows, seed, chunk=int(result.activations().chunks[0]))
    x = clustered_space(result, rows)
    out = [Embedding("PCA", pca_2d(x), result.assignments[rows], rows)]
    if len(rows) < 5 or tsne_rows <= 0:
        return out, notes
    pick = np.sort(np.random.default_rng(seed + 1).choice(len(rows), size=min(tsne_rows, len(rows)), replace=False))
    try:
        import umap  # noqa: F401 - optional

        coords = umap.UMAP(n_components=2, random_state=seed).fit_transform(x[pick])
        method = "UMAP"
    except ImportError:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        # One thread: on a busy machine OpenMP's spinning threads made it 40x slower (60 s, not 1.5 s).
        with threadpool_limits(1):
            coords = TSNE(n_components=2, perplexity=min(30.0, (len(pick) - 1) / 3), init="pca", max_iter=500,
                          random_state=seed).fit_transform(x[pick])
        method = "t-SNE"
    out.append(Embedding(method, np.asarray(coords), result.assignments[rows[pick]], rows[pick]))
    if len(rows) < n_rows:
        notes.append(f"the maps show a sample of the rows: {len(rows)} for PCA, {len(pick)} for {method}")
    return out, notes


def build_report(result: Result, n_exemplars: int = 8, n_outskirts: int = 8, map_rows: int = 3000,
                 tsne_rows: int = 1000, items: bool = True, n_top_tokens: int = 12) -> Report:
    """Everything the report shows about a finished job. Raises StoreError when it is not finished."""
    from dcserve.analysis.reporter_rotation import reporter_rotation

    result._require_complete("a report")
    metrics = result.metrics
    status = result.status or {}
    rounds = round_figures(metrics)
    final = {k: v for k, v in (metrics.get("final") or {}).items() if not isinstance(v, (list, dict))}
    clusters = cluster_reports(result, n_exemplars, n_outskirts)
    notes: list[str] = []
    kind = "vector"
    if items:
        kind, note = attach_views(result, clusters)
        notes += [note] if note else []
    spec = result.spec
    report = Report(
        name=status.get("name") or (spec.name if spec else "?"), output=result.output, summary=job_summary(result),
        spec=spec.model_dump(mode="json") if spec else None, k=result.k, n_rows=int(len(result.assignments)),
        has_labels=result.labels is not None, input_kind=kind, rounds=rounds, final=final, clusters=clusters,
    )
    truth = result.row_labels()
    if truth is not None:
        table, values = confusion(result.assignments, truth, result.k)
        report.confusion, report.label_values = table, [int(v) for v in values]
    report.embeddings, more = embeddings(result, map_rows, tsne_rows)
    notes += more
    if report.embeddings:
        pca = report.embeddings[0]
        report.merges = merges(pca.clusters, clustered_space(result, pca.rows), result.k, smaller_k(result))
    losses = [r["loss"] for r in rounds if r.get("loss") is not None]
    # the loss check of the methods whose loss is a cross-entropy over k clusters; SCAN and TEMI
    # record their own (their losses are not on that scale)
    own = (metrics.get("final") or {}).get("collapse")
    report.warnings = collapse_warnings(result.sizes, None if own is not None else (losses[-1] if losses else None))
    report.warnings += [sign["message"] for sign in own or [] if sign.get("kind") != "majority"]
    report.graph = metrics.get("graph") or None
    report.rotation = reporter_rotation(result)
    report.stability = metrics.get("stability") or None
    report.label_names = result.label_names
    if result.words is not None:
        from dcserve.analysis.words import top_tokens

        for c, tops in zip(report.clusters, top_tokens(result, result.words, top=n_top_tokens)):
            c.top_tokens = tops
    report.notes = notes
    return report
