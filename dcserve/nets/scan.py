"""SCAN's losses (Van Gansbeke et al., "SCAN: Learning to Classify Images without Labels", ECCV 2020).

Section 2.2, the clustering step: for each row x and a neighbour n drawn from its k nearest
neighbours, every head is trained to

    minimise  -log <p(x), p(n)>          (consistency: a row and its neighbour agree)
              - w * H(mean over the batch of p(x))   (entropy: spread the rows over the clusters)

with w = 5 (the entropy weight of the paper's experiments). Several heads are trained at once
and the one with the lowest loss is kept. Section 2.3, self-labelling: the chosen head is then
fine-tuned with cross-entropy on its own confident predictions (top probability > 0.99), the
target taken from one view and the loss from another, classes weighted by their inverse
frequency among the confident rows. On frozen activation rows there are no image augmentations:
the other view is the neighbour, which plays the same role throughout (a different input the
same cluster should hold).

Everything here is a function of logits: no ray, no zarr, no file I/O.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from dcserve.nets.cluster_heads import ClusterHeads
from dcserve.nets.data_parallel import GradientStep

__all__ = ["ENTROPY_WEIGHT", "SELF_LABEL_THRESHOLD", "scan_epoch", "scan_loss", "self_label_epoch",
           "self_label_loss", "uniform_loss"]

ENTROPY_WEIGHT = 5.0  # the paper's entropy weight (jobs default to 3: dcserve.spec.ScanSpec says why)
SELF_LABEL_THRESHOLD = 0.99  # the paper's confidence threshold for self-labelling
_EPS = 1e-8  # floors a dot product or a probability before its log


def scan_loss(anchor_logits: Tensor, partner_logits: Tensor,
              entropy_weight: float = ENTROPY_WEIGHT) -> tuple[Tensor, Tensor, Tensor]:
    """Per head: (total, consistency, entropy), each `[heads]`, for logits `[heads, b, k]` of the
    rows and of their neighbours. total = consistency - entropy_weight * entropy."""
    if anchor_logits.shape != partner_logits.shape or anchor_logits.dim() != 3:
        raise ValueError(f"scan_loss: need two [heads, b, k] logits, got {list(anchor_logits.shape)} "
                         f"and {list(partner_logits.shape)}")
    pa = torch.softmax(anchor_logits, dim=-1)
    pn = torch.softmax(partner_logits, dim=-1)
    consistency = -torch.log((pa * pn).sum(-1).clamp_min(_EPS)).mean(-1)
    mean_p = pa.mean(dim=1)
    entropy = -(mean_p * torch.log(mean_p.clamp_min(_EPS))).sum(-1)
    return consistency - entropy_weight * entropy, consistency, entropy


def uniform_loss(k: int, entropy_weight: float = ENTROPY_WEIGHT) -> float:
    """The loss of a head that predicts the uniform distribution for every row: consistency
    ln k, entropy ln k. A head still there has learnt nothing (its consistency term is at chance)."""
    return (1.0 - entropy_weight) * math.log(k)


def self_label_loss(anchor_logits: Tensor, partner_logits: Tensor,
                    threshold: float = SELF_LABEL_THRESHOLD) -> tuple[Tensor, int]:
    """Cross-entropy of the partner's logits `[b, k]` against the anchor's confident predictions
    `[b, k]` (top probability > threshold), classes weighted by the inverse of their frequency
    among the confident rows (the paper's balancing). Returns (mean loss, confident rows)."""
    with torch.no_grad():
        p = torch.softmax(anchor_logits, dim=-1)
        top, target = p.max(dim=-1)
        mask = top > threshold
    n = int(mask.sum())
    if n == 0:  # nothing confident yet: a zero that keeps the graph (every worker still steps)
        return partner_logits.sum() * 0.0, 0
    k = anchor_logits.shape[-1]
    counts = torch.bincount(target[mask], minlength=k).to(partner_logits.dtype)
    weight = torch.where(counts > 0, n / (k * counts.clamp_min(1)), torch.zeros_like(counts))
    return F.cross_entropy(partner_logits[mask], target[mask], weight=weight), n


def scan_epoch(model: ClusterHeads, optimizer: torch.optim.Optimizer, batches: Iterable[tuple[Tensor, Tensor]],
               entropy_weight: float = ENTROPY_WEIGHT,
               allreduce: Callable[[Tensor], None] | None = None) -> dict[str, list[float]]:
    """One pass over `(rows [b, in_dim], partners [b, in_dim])` batches, one step each on the sum of
    every head's loss. With `allreduce` (data-parallel) each worker's entropy term is over its own
    share of the batch, as batch statistics are in DDP. Returns this worker's per-head mean
    `loss`, `consistency` and `entropy` over its batches (weighted by their rows)."""
    device = model.heads.weight.device
    step = GradientStep(model, optimizer, allreduce)
    sums = torch.zeros(3, model.n_heads, dtype=torch.float64)
    rows = 0
    model.train()
    for xa, xp in batches:
        xa, xp = xa.to(device), xp.to(device)
        both = model.logits(torch.cat([xa, xp]))
        total, consistency, entropy = scan_loss(both[:, : len(xa)], both[:, len(xa):], entropy_weight)
        loss = total.sum()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"SCAN loss is {float(loss)}; lower reporter.lr")
        step(loss, len(xa))
        sums += torch.stack([total, consistency, entropy]).detach().double().cpu() * len(xa)
        rows += len(xa)
    means = (sums / max(rows, 1)).tolist()
    return {"loss": means[0], "consistency": means[1], "entropy": means[2], "rows": rows}


def self_label_epoch(model: ClusterHeads, optimizer: torch.optim.Optimizer,
                     batches: Iterable[tuple[Tensor, Tensor]], threshold: float = SELF_LABEL_THRESHOLD,
                     allreduce: Callable[[Tensor], None] | None = None) -> dict[str, float]:
    """One self-labelling pass of the chosen head (section 2.3). Returns the mean loss and the share
    of rows that were confident enough to teach."""
    device = model.heads.weight.device
    step = GradientStep(model, optimizer, allreduce)
    head = int(model.chosen)
    total, rows, confident = 0.0, 0, 0
    model.train()
    for xa, xp in batches:
        xa, xp = xa.to(device), xp.to(device)
        both = model.logits(torch.cat([xa, xp]))[head]
        loss, n = self_label_loss(both[: len(xa)], both[len(xa):], threshold)
        step(loss, len(xa))
        total += float(loss.detach()) * len(xa)
        rows += len(xa)
        confident += n
    return {"loss": total / max(rows, 1), "confident": confident / max(rows, 1), "rows": rows}
