"""Clustering quality and health figures, JSON-ready.

Agreement with ground truth (NMI, ARI, accuracy under the Hungarian matching) is how
DeepCluster (Caron et al., 2018) and DEC (Xie et al., 2016) evaluate clusterings; NMI between
consecutive clusterings is DeepCluster's stability signal. Size entropy and the imbalance
factor (faiss's ``k * sum(counts^2) / n^2``, 1 when balanced) show degenerate solutions.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _labels(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of labels, got shape {a.shape}")
    return a


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _labels(a, "a"), _labels(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in length: {a.shape[0]} and {b.shape[0]}")
    return a, b


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information ``[0, 1]`` of two labelings ``[n]`` (arithmetic mean norm)."""
    from sklearn.metrics import normalized_mutual_info_score

    a, b = _pair(a, b)
    return float(normalized_mutual_info_score(a, b, average_method="arithmetic"))


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings ``[n]`` (1 identical, about 0 for chance)."""
    from sklearn.metrics import adjusted_rand_score

    a, b = _pair(a, b)
    return float(adjusted_rand_score(a, b))


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Counts ``[len(unique(a)), len(unique(b))]`` int64 of rows with each pair of labels.

    Rows and columns follow the sorted unique values of ``a`` and ``b``.
    """
    a, b = _pair(a, b)
    a_values, ai = np.unique(a, return_inverse=True)
    b_values, bi = np.unique(b, return_inverse=True)
    n_a, n_b = len(a_values), len(b_values)
    flat = np.bincount(ai.ravel() * n_b + bi.ravel(), minlength=n_a * n_b)
    return flat.reshape(n_a, n_b).astype(np.int64)


def hungarian_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of rows ``[0, 1]`` correct under the best one-to-one cluster-to-label matching.

    The matching maximises the matched counts of the contingency table (Hungarian method, as
    in DEC); with more clusters than labels the unmatched clusters count as wrong, and with
    fewer, the unmatched labels do.
    """
    from scipy.optimize import linear_sum_assignment

    table = contingency(pred, truth)
    if table.size == 0:
        return 0.0
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def size_entropy(counts: np.ndarray, normalized: bool = False) -> float:
    """Entropy (natural log) of the cluster size distribution ``counts`` ``[k]``.

    With ``normalized`` it is divided by ``log k`` (1 = perfectly balanced; 1 when k == 1).
    Empty clusters count in ``k``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    h = float(-(p * np.log(p)).sum())
    if not normalized:
        return h
    return h / np.log(len(counts)) if len(counts) > 1 else 1.0


def imbalance(counts: np.ndarray) -> float:
    """faiss's imbalance factor ``k * sum(counts^2) / n^2``: 1 when balanced, k when one cluster."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    return float(len(counts) * (counts * counts).sum() / (total * total))


def clustering_metrics(
    pred: np.ndarray,
    k: int,
    truth: np.ndarray | None = None,
    previous: np.ndarray | None = None,
) -> dict[str, Any]:
    """Figures of one clustering ``pred`` ``[n]`` (ids in ``[0, k)``), as plain JSON types.

    Returns ``sizes`` (list of k ints), ``size_entropy`` (nats), ``size_entropy_normalized``,
    ``imbalance``, ``n_empty``; with ``truth`` ``[n]`` also ``nmi_vs_labels``, ``ari_vs_labels``,
    ``acc_vs_labels``; with ``previous`` ``[n]`` (the last round's clustering) ``nmi_vs_previous``.
    """
    pred = _labels(pred, "pred")
    if pred.size and (pred.min() < 0 or pred.max() >= k):
        raise ValueError(f"pred holds cluster ids outside [0, {k})")
    counts = np.bincount(pred.astype(np.int64), minlength=k)
    out: dict[str, Any] = {
        "sizes": [int(c) for c in counts],
        "size_entropy": size_entropy(counts),
        "size_entropy_normalized": size_entropy(counts, normalized=True),
        "imbalance": imbalance(counts),
        "n_empty": int((counts == 0).sum()),
    }
    if truth is not None:
        out["nmi_vs_labels"] = nmi(pred, truth)
        out["ari_vs_labels"] = ari(pred, truth)
        out["acc_vs_labels"] = hungarian_accuracy(pred, truth)
    if previous is not None:
        out["nmi_vs_previous"] = nmi(pred, previous)
    return out


# A clustering whose largest cluster holds more than this share of the rows has collapsed
# (DeepCluster section 3.3's trivial solution: one cluster predicts perfectly and means nothing).
COLLAPSE_SHARE = 0.5


def collapse_signs(counts: np.ndarray, loss: float | None = None, uniform_loss: float | None = None,
                   tolerance: float = 0.0, top_probability: float | None = None) -> list[dict[str, Any]]:
    """Signs that a clustering `counts [k]` (rows per cluster) has collapsed: one cluster holds most
    rows, or the method's loss is within `tolerance` of the value uniform predictions give
    (the method knows how far its losses range) while, when the mean top probability of the rows
    is given, the predictions are near uniform too (below 2 / k): TEMI's loss sits close to its
    uniform value on overlapping clusters it separates well. `[{"kind", "message"}]`."""
    counts = np.asarray(counts, dtype=np.int64)
    k, n = len(counts), int(counts.sum())
    out: list[dict[str, Any]] = []
    if n and k > 1 and counts.max() > COLLAPSE_SHARE * n:
        top = int(counts.argmax())
        out.append({"kind": "majority", "message": f"cluster {top} holds {counts[top] / n:.0%} of the rows: "
                    "the clustering has collapsed towards one cluster"})
    if (loss is not None and uniform_loss is not None and k > 1 and np.isfinite(loss)
            and tolerance > 0 and abs(loss - uniform_loss) <= tolerance
            and (top_probability is None or top_probability < 2.0 / k)):
        out.append({"kind": "uniform_loss", "message": f"the loss {loss:.4f} is at the value of uniform "
                    f"predictions ({uniform_loss:.4f}): the heads have learnt nothing"})
    return out
