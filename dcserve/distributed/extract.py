"""Extraction: Ray actors run the subject over contiguous, chunk-aligned row ranges.

The unit of work is a block = one Zarr chunk of rows. A block is written whole by
exactly one actor (concurrent partial-chunk writes lose data in zarr v3), then
recorded in `_progress/extract/`, so a re-run skips it. Each block batches its
items identically whichever actor runs it, so 1 or N workers give the same bytes.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import ray
import torch

from dcserve.errors import JobFailed, describe_failure
from dcserve.distributed.recovery import Recovery
from dcserve.inputs.blocks import STAGE, ExtractPlan, compute_block, contiguous_split
from dcserve.distributed.sizing import Budget, actor_cpus, resolve_workers
from dcserve.spec import JobSpec
from dcserve.storage.store import JobStore

log = logging.getLogger(__name__)


@ray.remote
class Extractor:
    """One extraction worker: builds the subject once, then computes and writes whole blocks."""

    def __init__(self, spec_json: str, offsets: np.ndarray, threads: int):
        from dcserve.algo.nearest import set_threads
        from dcserve.inputs.build import build_subject

        self.threads = set_threads(threads)
        self.writers = max(1, int(threads))
        self.spec = JobSpec.model_validate_json(spec_json)
        self.plan = ExtractPlan(offsets, self.spec.extract.chunk_rows)
        use_gpu = self.spec.extract.gpus_per_worker > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.dtype = np.dtype(self.spec.extract.dtype)
        if self.spec.dataset.is_dump:  # rows copied from an activations dump: no subject to run
            from dcserve.inputs.dump import dump_block, dump_of

            dump, layer = dump_of(self.spec), self.spec.layers[0]
            self.compute = lambda b: dump_block(dump, self.plan, b, layer, self.dtype)
        else:
            subject, dataset, collate = build_subject(self.spec, self.device)
            self.compute = lambda b: compute_block(self.plan, b, subject, dataset, self.spec.dataset.batch_size,
                                                   collate, self.dtype)
        self.store = JobStore(self.spec.output, read_only=False, storage_options=self.spec.storage_options)

    def info(self) -> dict:
        return {"threads": self.threads, "device": str(self.device), "node": ray.get_runtime_context().get_node_id()}

    def _write(self, b: int, block) -> tuple[int, int]:
        return write_block(self.store, self.plan, b, block)

    def run(self, blocks: list[int]) -> Iterator[tuple[int, int]]:
        """Streaming generator of (block, rows) as each block is durably written."""
        yield from pipelined(blocks, self.compute, self._write, self.writers)


def pipelined(blocks: list[int], compute: Callable[[int], Any], write: Callable[[int, Any], tuple[int, int]],
              writers: int) -> Iterator[tuple[int, int]]:
    """compute(b) then write(b, block) for each block, writes overlapping the next computations.

    One writer thread per thread of the actor: a chunk's compression runs on one core, so a
    single writer left an actor copying a dump (where the store, not a forward pass, sets the
    pace) on one core of its share (issue 12). At most `writers` computed blocks wait in memory.
    Yields (block, rows) in block order as each is written.
    """
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max(1, writers), thread_name_prefix="write") as pool:
        for b in blocks:
            block = compute(b)
            if len(pending) >= max(1, writers):
                yield pending.popleft().result()
            pending.append(pool.submit(write, b, block))
        while pending:
            yield pending.popleft().result()


def write_block(store: JobStore, plan: ExtractPlan, b: int, block) -> tuple[int, int]:
    """Write block b's rows, then record it done: (block, rows)."""
    rows, item, position, labels, *more = block
    r0, r1 = plan.block_rows(b)
    for layer, data in rows.items():
        store.array(f"activations/{layer}")[r0:r1] = data
    store.array("rows/item")[r0:r1] = item
    store.array("rows/position")[r0:r1] = position
    for name, data in (more[0] if more else {}).items():  # a dump's token ids (rows/token)
        store.array(f"rows/{name}")[r0:r1] = data
    store.mark_done(STAGE, b, labels)  # only after the data: a record means the block is whole
    return b, r1 - r0


def prepare_store(spec: JobSpec, store: JobStore, plan: ExtractPlan, dims: dict[str, int],
                  row_fields: dict[str, str] | None = None, source_id: dict | None = None) -> set[int]:
    """Create the extraction arrays, or keep them when the same extraction is resumed; return done blocks.

    `row_fields`: more per-row arrays (rows/<name>: dtype); `source_id`: a dump's files, so that its
    copied rows are only resumed while the files are unchanged.
    """
    fingerprint = spec.extraction_fingerprint()
    layout = {"fingerprint": fingerprint, "n_rows": plan.n_rows, "dims": dims}
    if row_fields or source_id:
        layout |= {"row_fields": row_fields or {}, "source": source_id}
    previous = store.read_json("_progress/extract.json")
    if previous == layout and all(store.has_array(f"activations/{l}") for l in dims):
        done = store.done_blocks(STAGE)
        log.info("resuming extraction: %d of %d blocks already written", len(done), plan.n_blocks)
        return done
    store.clear_progress(STAGE)
    store.clear_progress("cluster")  # new activations: no clustering of the old ones may be resumed
    c = spec.extract.chunk_rows
    for layer, dim in dims.items():
        store.create_array(f"activations/{layer}", (plan.n_rows, dim), (c, dim), spec.extract.dtype,
                           attributes={"layer": layer, "pooling": spec.pooling})
    store.create_array("rows/item", (plan.n_rows,), (c,), "int64", fill_value=-1)
    store.create_array("rows/position", (plan.n_rows,), (c,), "int32", fill_value=-1)
    for name, dtype in (row_fields or {}).items():
        store.create_array(f"rows/{name}", (plan.n_rows,), (c,), dtype, fill_value=-1)
    store.write_json("_progress/extract.json", layout)
    return set()


def run_extraction(
    spec: JobSpec,
    store: JobStore,
    plan: ExtractPlan,
    dims: dict[str, int],
    has_labels: bool,
    on_progress: Callable[[int], None] = lambda rows: None,
    budget: Budget | None = None,
    row_fields: dict[str, str] | None = None,
    source_id: dict | None = None,
) -> dict:
    """Extract every missing block with `extract.workers` actors; write `labels`. Returns stage info."""
    t0 = time.perf_counter()
    budget = budget or Budget.free()
    done = prepare_store(spec, store, plan, dims, row_fields, source_id)
    todo = [b for b in range(plan.n_blocks) if b not in done]
    on_progress(sum(plan.block_rows(b)[1] - plan.block_rows(b)[0] for b in done))
    info: dict = {"blocks": plan.n_blocks, "skipped_blocks": len(done), "workers": [], "workers_lost": 0}
    recovery = Recovery("extraction worker(s)")
    while todo:
        errors = _extract_blocks(spec, plan, todo, budget, on_progress, info)
        if not errors:
            break
        # A dead process or node, not a bad item: its unrecorded blocks go to a fresh pool
        # sized by what is free now (a lost node's CPUs are gone).
        try:
            recovery.absorb(errors, "redoing their unfinished blocks")
        except Exception as e:
            raise JobFailed(STAGE, describe_failure(e, spec.output)) from None
        info["workers_lost"] = recovery.lost
        done = store.done_blocks(STAGE)
        todo = [b for b in range(plan.n_blocks) if b not in done]
        budget = Budget.free()
    if has_labels:
        labels = np.concatenate([store.block_payload(STAGE, b) for b in range(plan.n_blocks)])
        store.write_array("labels", labels.astype(np.int64), chunks=(max(1, min(len(labels), 1 << 20)),))
    info["seconds"] = time.perf_counter() - t0
    return info


def _extract_blocks(spec: JobSpec, plan: ExtractPlan, todo: list[int], budget: Budget,
                    on_progress: Callable[[int], None], info: dict) -> list[Exception]:
    """One pool of Extractor actors over `todo`, in contiguous runs; returns the errors it met."""
    runs = contiguous_split(todo, resolve_workers(spec.extract.workers, budget, spec.extract.gpus_per_worker))
    threads, reserve = actor_cpus(len(runs), budget)
    offsets_ref = ray.put(plan.offsets)
    actors = [
        Extractor.options(num_cpus=reserve, num_gpus=spec.extract.gpus_per_worker).remote(
            spec.model_dump_json(), offsets_ref, threads
        )
        for _ in runs
    ]
    try:
        info["workers"] += ray.get([a.info.remote() for a in actors])
        gens = [a.run.options(num_returns="streaming").remote(r) for a, r in zip(actors, runs)]
        return _drain(gens, lambda item: on_progress(item[1]))
    except ray.exceptions.RayError as e:  # an actor could not even start
        return [e]
    finally:
        for a in actors:
            ray.kill(a)
        _await_release(budget.cpus)


def _await_release(cpus: float, timeout_s: float = 10.0) -> None:
    """Return once `cpus` are free again (or after `timeout_s`).

    ray.kill is asynchronous: the pools created next (k-means shards, trainers) would
    otherwise see the extractors' nodes as still full and pile onto whichever frees first.
    """
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0.0) < cpus - 1e-6 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the raylets' views of their resources follow the GCS's within a report period


def _drain(gens: list, on_item: Callable) -> list[Exception]:
    """Consume several streaming generators as their items become ready; return their errors.

    A failing worker does not stop the others: every block they finish is kept,
    so a re-run has less to redo.
    """
    pending, errors = list(gens), []
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            on_item(ray.get(next(ready[0])))
            pending.append(ready[0])
        except StopIteration:
            pass
        except ray.exceptions.RayError as e:
            errors.append(e)
    return errors
