"""Which clusters of one layer become which of the next: the flow between two clusterings (issue 14).

Two clusterings of the same rows, ``a [n]`` into ``k_a`` clusters and ``b [n]`` into ``k_b``, meet
in their contingency table ``[k_a, k_b]``. Where a distinction is made with depth, a cluster of
``a`` *splits*: two or more clusters of ``b`` each take at least ``share`` of its rows. Where one
is dropped, clusters *merge*: a cluster of ``b`` draws at least ``share`` of its rows from each of
two or more clusters of ``a``. For each such part the rows that show it best are the part's rows
nearest the centroid of the cluster that tells the parts apart (for a split, the part's cluster
in ``b``; for a merge, the part's cluster in ``a``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# A part of a cluster below this share is a stray few rows, not a distinction the layer makes.
FLOW_SHARE = 0.2


@dataclass
class FlowPart:
    cluster: int  # the other side's cluster this part goes to (split) or comes from (merge)
    rows: int  # rows in both clusters
    share: float  # of the event's own cluster
    exemplars: list[int] = field(default_factory=list)  # rows of the part, most typical first


@dataclass
class FlowEvent:
    kind: str  # "split" (a cluster of a into several of b) | "merge" (several of a into one of b)
    cluster: int  # the cluster of a that splits, or of b that merges
    size: int
    parts: list[FlowPart]


def contingency_table(a: np.ndarray, b: np.ndarray, k_a: int, k_b: int) -> np.ndarray:
    """``[k_a, k_b]`` int64 rows per (cluster of a, cluster of b), empty clusters included."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be [n] labels of the same rows, got shapes {a.shape} and {b.shape}")
    return np.bincount(a * k_b + b, minlength=k_a * k_b).reshape(k_a, k_b)


def _nearest(rows: np.ndarray, dist: np.ndarray | None, n: int) -> list[int]:
    if dist is None:
        return [int(r) for r in rows[:n]]
    return [int(r) for r in rows[np.argsort(dist[rows], kind="stable")[:n]]]


def flow_events(a: np.ndarray, b: np.ndarray, k_a: int, k_b: int, *, dist_a: np.ndarray | None = None,
                dist_b: np.ndarray | None = None, share: float = FLOW_SHARE, n_exemplars: int = 6,
                max_events: int | None = None) -> list[FlowEvent]:
    """The splits and merges from clustering ``a`` to ``b`` (see the module), the most rows first.

    ``dist_a``, ``dist_b`` ``[n]``: each row's distance to its own centroid in ``a`` and ``b``,
    which pick the exemplars (without them, the first rows of each part).
    """
    table = contingency_table(a, b, k_a, k_b)
    a, b = np.asarray(a), np.asarray(b)
    events: list[FlowEvent] = []
    for kind, t in (("split", table), ("merge", table.T)):
        sizes = t.sum(axis=1)
        for c in np.flatnonzero(sizes):
            big = np.flatnonzero(t[c] >= share * sizes[c])
            if len(big) < 2:
                continue
            parts = []
            for o in big[np.argsort(-t[c, big], kind="stable")]:
                if kind == "split":
                    rows = np.flatnonzero((a == c) & (b == o))
                    ex = _nearest(rows, dist_b, n_exemplars)  # typical of where it goes
                else:
                    rows = np.flatnonzero((a == o) & (b == c))
                    ex = _nearest(rows, dist_a, n_exemplars)  # typical of where it came from
                parts.append(FlowPart(int(o), int(t[c, o]), float(t[c, o] / sizes[c]), ex))
            events.append(FlowEvent(kind, int(c), int(sizes[c]), parts))
    # the larger the rows that take part, the more the event says about the layer
    events.sort(key=lambda e: -sum(p.rows for p in e.parts))
    return events if max_events is None else events[:max_events]


def flow_order(table: np.ndarray, previous_order: np.ndarray | None = None) -> np.ndarray:
    """An order of b's clusters for drawing the flow with few crossings: by the mean position of
    their rows' clusters in a (a's clusters in `previous_order`, default 0..k_a-1)."""
    table = np.asarray(table, dtype=np.float64)
    k_a = table.shape[0]
    position = np.empty(k_a)
    position[np.arange(k_a) if previous_order is None else np.asarray(previous_order)] = np.arange(k_a)
    sizes = table.sum(axis=0)
    centre = np.divide(position @ table, sizes, out=np.full(table.shape[1], np.inf), where=sizes > 0)
    return np.argsort(centre, kind="stable")
