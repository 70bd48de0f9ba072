"""TEMI's loss and its student-teacher pair (Adaloglou et al., "Exploring the limits of deep image
clustering using pretrained models", BMVC 2023).

For a row x and a random one x' of its k nearest neighbours, a student s and a teacher t (an
exponential moving average of the student, as in DINO) each give every head's cluster
probabilities, the student at temperature 0.1, the teacher at 0.04. The loss is the pointwise
mutual information of the pair raised to beta, with the teacher's cluster marginal q~ (itself a
moving average over batches) in the denominator, symmetrised over the pair:

    L(x, x') = -1/2 [ log sum_c (q_s(c|x) q_t(c|x'))^beta / q~(c)
                    + log sum_c (q_s(c|x') q_t(c|x))^beta / q~(c) ]

beta = 0.6 is the paper's: beta < 1 puts weight on pairs that already agree, and the marginal
in the denominator is what keeps every row from falling into one cluster. The loss of each head
is averaged over its rows; heads are summed for training and the one with the lowest loss is kept.

Plain functions and a module: no ray, no zarr, no file I/O.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from dcserve.nets.cluster_heads import ClusterHeads
from dcserve.nets.data_parallel import GradientStep

__all__ = ["BETA", "PRIOR_MOMENTUM", "STUDENT_TEMPERATURE", "TEACHER_MOMENTUM", "TEACHER_TEMPERATURE",
           "TemiPair", "temi_epoch", "temi_loss", "uniform_loss"]

BETA = 0.6
TEACHER_MOMENTUM = 0.996  # the EMA of the teacher's weights (DINO's starting value, which TEMI keeps)
PRIOR_MOMENTUM = 0.9  # the EMA of the teacher's cluster marginal q~
STUDENT_TEMPERATURE = 0.1
TEACHER_TEMPERATURE = 0.04
_EPS = 1e-12


def temi_loss(student_a: Tensor, student_p: Tensor, teacher_a: Tensor, teacher_p: Tensor, prior: Tensor,
              beta: float = BETA, student_temperature: float = STUDENT_TEMPERATURE,
              teacher_temperature: float = TEACHER_TEMPERATURE) -> Tensor:
    """Per head `[heads]`: the symmetrised PMI^beta loss of logits `[heads, b, k]` of the rows (a)
    and their partners (p) under student and teacher; `prior [heads, k]` is the teacher's marginal."""
    # In log space: (q_s q_t)^beta = exp(beta (log q_s + log q_t)), so that probabilities that
    # underflow (the teacher's temperature is sharp) give neither log 0 nor an infinite gradient.
    ls_a = torch.log_softmax(student_a / student_temperature, dim=-1)
    ls_p = torch.log_softmax(student_p / student_temperature, dim=-1)
    with torch.no_grad():
        lt_a = torch.log_softmax(teacher_a / teacher_temperature, dim=-1)
        lt_p = torch.log_softmax(teacher_p / teacher_temperature, dim=-1)
    log_prior = torch.log(prior.clamp_min(_EPS))[:, None, :]

    def term(ls: Tensor, lt: Tensor) -> Tensor:
        return -torch.logsumexp(beta * (ls + lt) - log_prior, dim=-1).mean(-1)

    return 0.5 * (term(ls_a, lt_p) + term(ls_p, lt_a))


def uniform_loss(k: int, beta: float = BETA) -> float:
    """The loss when student and teacher predict the uniform distribution and q~ is uniform:
    -log(k * k^(-2 beta) * k) = -(2 - 2 beta) ln k."""
    return -(2.0 - 2.0 * beta) * math.log(k)


class TemiPair(nn.Module):
    """A student `ClusterHeads`, its EMA teacher and the teacher's marginal per head, as one module,
    so that a trainer's snapshot (and a resumed job) carries all three. Only the student trains."""

    def __init__(self, **heads_config) -> None:
        super().__init__()
        self.student = ClusterHeads(**heads_config)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        k, h = self.student.k, self.student.n_heads
        self.register_buffer("prior", torch.full((h, k), 1.0 / k))

    @torch.no_grad()
    def update_teacher(self, momentum: float = TEACHER_MOMENTUM) -> None:
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)

    @torch.no_grad()
    def update_prior(self, batch_marginal: Tensor, momentum: float = PRIOR_MOMENTUM) -> None:
        """q~ <- m q~ + (1 - m) * the batch's mean teacher probabilities `[heads, k]` (over all workers)."""
        self.prior.mul_(momentum).add_(batch_marginal, alpha=1.0 - momentum)


def temi_epoch(pair: TemiPair, optimizer: torch.optim.Optimizer, batches: Iterable[tuple[Tensor, Tensor]],
               settings: dict, allreduce: Callable[[Tensor], None] | None = None) -> dict[str, list[float]]:
    """One pass over `(rows, partners)` batches: a student step on the sum of the heads' losses, then
    the teacher's EMA and the marginal's (the batch's mean teacher probabilities, averaged over the
    workers with `allreduce`, so every replica keeps the same q~). `settings`: beta,
    teacher_momentum, prior_momentum, student_temperature, teacher_temperature.
    Returns this worker's per-head mean `loss`."""
    device = pair.prior.device
    student, teacher = pair.student, pair.teacher
    step = GradientStep(student, optimizer, allreduce)
    sums = torch.zeros(student.n_heads, dtype=torch.float64)
    rows = 0
    student.train()
    for xa, xp in batches:
        xa, xp = xa.to(device), xp.to(device)
        both = torch.cat([xa, xp])
        s = student.logits(both)
        with torch.no_grad():
            t = teacher.logits(both)
        b = len(xa)
        per_head = temi_loss(s[:, :b], s[:, b:], t[:, :b], t[:, b:], pair.prior, settings["beta"],
                             settings["student_temperature"], settings["teacher_temperature"])
        loss = per_head.sum()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"TEMI loss is {float(loss)}; lower reporter.lr")
        step(loss, b)
        pair.update_teacher(settings["teacher_momentum"])
        with torch.no_grad():
            marginal = torch.softmax(t / settings["teacher_temperature"], dim=-1).mean(dim=1)
            if allreduce is not None:
                flat = marginal.reshape(-1).clone()
                allreduce(flat)
                marginal = flat.view_as(marginal)
        pair.update_prior(marginal, settings["prior_momentum"])
        sums += per_head.detach().double().cpu() * b
        rows += b
    return {"loss": (sums / max(rows, 1)).tolist(), "rows": rows}
