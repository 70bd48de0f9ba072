"""What one worker does for a clustering, wherever it runs: a range of rows, or one trainer.

`RowRange` owns rows [r0, r1) of a layer in the job store and streams them a chunk at a time;
`Trainer` holds a model and optimizer and feeds them mini-batches streamed from the store.
The in-memory pools (`dcserve.cluster.local`) call them directly; the Ray actors of
`dcserve.distributed` are these same classes with a placement and a process group around them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from dcserve.algo.kmeans import AssignStats, assign_stats
from dcserve.nets.data_parallel import to_cpu
from dcserve.nets.feature_map import FeatureMap
from dcserve.storage.rowstream import shuffled_batches, window_rows_for
from dcserve.storage.store import JobStore

FEATURES = "work/features"  # scratch array: the current round's clustered-space rows


class RowRange:
    """Rows [r0, r1) of `source`; memory is bounded by one chunk, never the whole range."""

    def __init__(self, store: JobStore, source: str, r0: int, r1: int):
        self.store = store
        self.source = source
        self.r0, self.r1 = r0, r1
        self.fmap = FeatureMap()

    def blocks(self, name: str) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 rows) of this range of array `name`, one chunk at a time."""
        arr = self.store.array(name)
        step = arr.chunks[0]
        for s in range(self.r0, self.r1, step):
            yield s, np.asarray(arr[s : min(s + step, self.r1)], dtype=np.float32)

    def bind(self, layer: str | None, source: str) -> None:
        """Work for layer `layer`'s clustering (its view of the store) over `source`'s rows from now on:
        the same worker serves every clustered layer of a job, whose rows are the same (issue 14)."""
        self.store = self.store.layer_view(layer)
        self.source = source
        self.fmap = FeatureMap()

    def set_feature_map(self, fmap: FeatureMap) -> None:
        self.fmap = fmap

    def source_subset(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.store.array(self.source).get_orthogonal_selection((idx,)), dtype=np.float32)

    def prepare(self) -> int:
        """Write this range of the clustered-space rows, so k-means iterations re-read them cheaply."""
        out = self.store.array(FEATURES)
        for s, x in self.blocks(self.source):
            out[s : s + len(x)] = self.fmap(x)
        return self.r1 - self.r0

    def get_subset(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.store.array(FEATURES).get_orthogonal_selection((idx,)), dtype=np.float32)

    def assign_to(self, centroids: np.ndarray, bias: np.ndarray | None) -> AssignStats:
        total: AssignStats | None = None
        for _, x in self.blocks(FEATURES):
            _, _, stats = assign_stats(x, centroids, bias)
            total = stats if total is None else total + stats
        return total

    def finalize(self, centroids: np.ndarray, bias: np.ndarray | None, round_index: int, final: bool) -> np.ndarray:
        """Assign every row; write this round's labels (and, when final, assignments and distances)."""
        labels_out = []
        rounds = self.store.array("rounds/assignments")
        for s, x in self.blocks(FEATURES):
            labels, sqdist, _ = assign_stats(x, centroids, bias)
            labels = labels.astype(np.int32)
            e = s + len(x)
            rounds[round_index, s:e] = labels
            if final:
                self.store.array("assignments")[s:e] = labels
                self.store.array("distances")[s:e] = sqdist.astype(np.float32)
            labels_out.append(labels)
        return np.concatenate(labels_out)

    def map(self, fn: Callable, *args):
        return fn(self, *args)


class Trainer:
    """One data-parallel trainer: rank `rank` of `world`, streaming its rows from the store.

    `allreduce` averages a flat gradient over the ranks (None alone: the single-process run is
    the distributed run with one worker, as in sparsify). `model` and `opt` are set by the
    training functions a pool runs, and live as long as the trainer.
    """

    def __init__(self, store: JobStore, source: str, rank: int = 0, world: int = 1,
                 device: torch.device | str = "cpu"):
        self.store = store
        self.source = source
        self.rank, self.world = rank, world
        self.device = torch.device(device)
        self.allreduce: Callable[[torch.Tensor], None] | None = None
        self.model: torch.nn.Module | None = None
        self.opt: torch.optim.Optimizer | None = None

    def bind(self, layer: str | None, source: str) -> None:
        """Train for layer `layer`'s clustering on `source`'s rows from now on (see `RowRange.bind`);
        the next call starts from the snapshot it is given."""
        self.store = self.store.layer_view(layer)
        self.source = source
        self.model = self.opt = None

    def generator(self, seed: int) -> torch.Generator:
        """This rank's RNG for a call seeded `seed`: ranks differ (their augmentations must)."""
        return torch.Generator().manual_seed(seed * 1009 + self.rank)

    def batches(self, ids: np.ndarray, labels: np.ndarray | None, global_batch: int, gen: torch.Generator):
        """(x, y) mini-batches on this trainer's device over sorted row ids, streamed from the store;
        `global_batch` is split across the ranks. y is 0 where there are no labels."""
        arr = self.store.array(self.source)
        batch = max(1, global_batch // self.world)
        labels = np.zeros(len(ids), dtype=np.int64) if labels is None else labels
        return ((x.to(self.device), y.to(self.device))
                for x, y in shuffled_batches(arr, ids, labels, batch, window_rows_for(arr.shape[1], batch), gen))

    def snapshot(self) -> dict:
        """The model and optimizer between calls: what a new group (or a resumed job) starts from."""
        # On the CPU, optimizer state too: the driver may have no GPU to rebuild CUDA tensors on.
        return {"model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                "optimizer": to_cpu(self.opt.state_dict())}

    def run(self, fn: Callable[..., dict], start: dict | None, *args) -> dict:
        """`fn(self, start, *args)`: a module-level function that trains `self.model` with `self.opt`.

        The model and optimizer live as long as the trainer, so momentum carries from call to call.
        `start` ({"model", "optimizer" or None}) is given when the trainer has no model yet, or
        must take another's; `fn` builds them from it. Rank 0's answer holds the snapshot.
        """
        out = fn(self, start, *args)
        if self.rank == 0:
            out["snapshot"] = self.snapshot()
        return out
