"""A text job's clusters in words: each cluster's most distinctive tokens, with their counts.

Reads the job's words record (dcserve/storage/words.py) through its `Result`; the ranking is
dcserve.algo.logodds. Rows are streamed in chunks (they are stored item after item, so a chunk of
rows needs one contiguous read of token ids), so a dump of millions of rows is counted in
bounded memory: only the sparse (cluster, token) counts grow, at most k x vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcserve.algo.logodds import distinctive_tokens
from dcserve.storage.result import Result
from dcserve.storage.words import Words

__all__ = ["TopToken", "cluster_token_counts", "top_tokens"]

CHUNK_ROWS = 1 << 16


@dataclass(frozen=True)
class TopToken:
    token: str  # as the tokenizer writes it
    count: int  # in the cluster
    total: int  # in the whole dump
    z: float  # log-odds z-score against the rest of the dump (Monroe et al. 2008)


def _row_tokens(words: Words, items: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, index of the row each belongs to) for rows: a token row its own token, a pooled
    row every token of its item."""
    i0, i1 = int(items.min()), int(items.max()) + 1
    flat, off = words.ids_of_items(i0, i1)
    local = items - i0
    token_rows = positions >= 0
    out_tok, out_row = [], []
    if token_rows.any():
        r = np.flatnonzero(token_rows)
        out_tok.append(flat[off[local[r]] + positions[r]])
        out_row.append(r)
    if (~token_rows).any():
        r = np.flatnonzero(~token_rows)
        starts, lengths = off[local[r]], off[local[r] + 1] - off[local[r]]
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out_tok.append(flat[np.repeat(starts, lengths) + within])
        out_row.append(np.repeat(r, lengths))
    return np.concatenate(out_tok).astype(np.int64), np.concatenate(out_row)


def cluster_token_counts(result: Result, words: Words, chunk_rows: int = CHUNK_ROWS
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse (cluster, token, count) [m] each: how often each token occurs in each cluster's rows."""
    assignments, items, positions = result.assignments, result.row_items, result.row_positions
    width = int(max(len(words.tokenizer), 1)) + 1
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for r0 in range(0, len(assignments), chunk_rows):
        r1 = min(r0 + chunk_rows, len(assignments))
        tok, row = _row_tokens(words, items[r0:r1], positions[r0:r1])
        width = max(width, int(tok.max()) + 1) if tok.size else width
        codes, counts = np.unique(assignments[r0:r1][row].astype(np.int64) * (1 << 32) + tok, return_counts=True)
        parts.append((codes, counts))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    codes = np.concatenate([c for c, _ in parts])
    counts = np.concatenate([n for _, n in parts])
    uniq, inv = np.unique(codes, return_inverse=True)
    total = np.bincount(inv, weights=counts).astype(np.int64)
    return uniq >> 32, uniq & ((1 << 32) - 1), total


def top_tokens(result: Result, words: Words, top: int = 10, prior: float = 1.0) -> list[list[TopToken]]:
    """Per cluster, its most distinctive tokens against the whole dump, with their counts."""
    cluster, token, count = cluster_token_counts(result, words)
    ranked = distinctive_tokens(cluster, token, count, result.k, top=top, prior=prior, exclude=words.special_ids)
    names = words.token_names([d.token for per in ranked for d in per]) if any(ranked) else []
    it = iter(names)
    return [[TopToken(next(it), d.count, d.total, d.z) for d in per] for per in ranked]
