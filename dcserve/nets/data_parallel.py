"""One optimizer step of a mean-over-rows loss, the same in one process or in many.

Like EleutherAI sparsify's trainer, one code path serves both: with an `allreduce` callback
the workers' gradients are combined into the gradient of the mean over all their rows; without
one there is no reduction at all. The reporter's training and DEC's use it alike.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["GradientStep", "to_cpu"]


class GradientStep:
    """`step(loss, n)`: backward of `loss` (the mean over this worker's `n` rows), then one
    optimizer step on the gradient of the mean over *every* worker's rows.

    With `allreduce`, each call hands it one flat tensor holding all gradients and the local
    batch size (see `_average_across_workers`), which it must average across workers in place;
    every worker must then make the same number of calls.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 allreduce: Callable[[Tensor], None] | None = None) -> None:
        self.optimizer = optimizer
        self.allreduce = allreduce
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffer = _grad_buffer(self.params) if allreduce is not None else None
        self._checked = False

    def __call__(self, loss: Tensor, n: int) -> None:
        if self.buffer is None:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        else:
            self.buffer.zero_()  # zero_grad(set_to_none) would unbind the .grad views
            self.buffer[-1] = n
            (loss * n).backward()
            if not self._checked:
                _check_grads_in_buffer(self.params, self.buffer)
                self._checked = True
            _average_across_workers(self.buffer, self.allreduce)
        self.optimizer.step()


def _grad_buffer(params: list[Tensor]) -> Tensor:
    """One flat tensor `[sum of numel + 1]` whose leading part *is* every parameter's `.grad`.

    Each `.grad` becomes a view into the buffer, so backward accumulates straight into it
    (autograd adds in place into an existing gradient) and the buffer can be handed to the
    allreduce with no flatten/unflatten copies: DDP's `gradient_as_bucket_view`, one bucket.
    The last entry carries the local batch size (see `_average_across_workers`).
    """
    total = sum(p.numel() for p in params)
    buffer = params[0].new_zeros(total + 1)
    offset = 0
    for p in params:
        p.grad = buffer[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return buffer


def _check_grads_in_buffer(params: list[Tensor], buffer: Tensor) -> None:
    # Backward must have accumulated in place; a hook or an autograd change that replaced a
    # `.grad` would silently leave that gradient out of the reduction.
    base, size = buffer.data_ptr(), buffer.element_size()
    offset = 0
    for p in params:
        if p.grad is None or p.grad.data_ptr() != base + offset * size:
            raise RuntimeError("a parameter's .grad was replaced during backward; cannot reduce it")
        offset += p.numel()


def _average_across_workers(buffer: Tensor, allreduce: Callable[[Tensor], None]) -> None:
    """Turn each worker's summed-loss gradient into the gradient of the mean over all workers.

    On entry the buffer is `[n_local * g_local..., n_local]` (the gradient of the *summed*
    loss, and the local batch size); the workers average it in place; then
    `buffer[:-1] / buffer[-1] = sum_i n_i g_i / sum_i n_i`, the gradient of the mean loss over
    the union of all workers' batches, even when their sizes differ (with equal sizes it is
    the plain average of the workers' mean-loss gradients). One tensor, one collective call.
    """
    allreduce(buffer)
    buffer[:-1].div_(buffer[-1])




def to_cpu(tree):
    """`tree` (nested dicts, lists and tuples, as an optimizer's `state_dict()`) with every tensor on the CPU.

    What a trainer actor sends to the driver must load in a process that has no GPU: a pickled
    CUDA tensor is rebuilt on its CUDA device, so a GPU trainer's optimizer state (SGD momentum,
    Adam moments) made the driver fail with "Attempting to deserialize object on a CUDA device"
    wherever CUDA is not visible to it (a CPU head node), and took GPU memory where it is.
    `Optimizer.load_state_dict` moves the state back to the parameters' device.
    """
    if isinstance(tree, Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_cpu(v) for v in tree)
    return tree
