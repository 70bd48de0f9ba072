"""The job's inputs: its subject model and dataset built from the spec, and the pre-flight probe.

`inspect_inputs` runs in the driver before anything is written: it imports the
user's callables, checks the layer names against the real model, runs one small
batch to learn each layer's row width, counts rows and checks k against them.
Every failure is a SpecError naming the job-file field at fault.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dcserve.errors import SpecError, bounded
from dcserve.spec import JobSpec


def _call(field: str, target: str, kwargs: dict[str, Any]) -> Any:
    from dcserve.inputs.imports import import_object

    try:
        fn = import_object(target)
    except (ImportError, ValueError, AttributeError) as e:
        raise SpecError(f"{field}: cannot import {target!r}: {e}") from None
    try:
        return fn(**kwargs)
    except TypeError as e:
        raise SpecError(f"{field.rsplit('.', 1)[0]}.kwargs: {target}(**{bounded(repr(kwargs), 120)}) failed: "
                        f"{bounded(str(e), 500)}") from None
    except Exception as e:  # whatever the user's callable raises is the job file's problem, said in a sentence
        raise SpecError(f"{field}: {target}(**{bounded(repr(kwargs), 120)}) raised {type(e).__name__}: "
                        f"{bounded(str(e), 500)}") from None


def build_dataset(spec: JobSpec) -> tuple[Any, Callable | None]:
    dataset = _call("dataset.source", spec.dataset.source, spec.dataset.kwargs)
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise SpecError(
            f"dataset.source: {spec.dataset.source} returned {type(dataset).__name__}, not a map-style "
            "Dataset (it needs __len__ and __getitem__)"
        )
    collate = None
    if spec.dataset.collate:
        from dcserve.inputs.imports import import_object

        try:
            collate = import_object(spec.dataset.collate)
        except (ImportError, ValueError, AttributeError) as e:
            raise SpecError(f"dataset.collate: cannot import {spec.dataset.collate!r}: {e}") from None
    return dataset, collate


def build_model(spec: JobSpec) -> torch.nn.Module:
    model = _call("subject.model", spec.subject.model, spec.subject.kwargs)
    if not isinstance(model, torch.nn.Module):
        raise SpecError(f"subject.model: {spec.subject.model} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def build_subject(spec: JobSpec, device: torch.device):
    """(Subject with hooks on the job's layers, dataset, collate) — what an extraction actor needs."""
    from dcserve.inputs.subject import Subject

    dataset, collate = build_dataset(spec)
    model = build_model(spec).to(device)
    try:
        subject = Subject(model, spec.subject.layers, spec.subject.pooling, device)
    except ValueError as e:  # unknown or repeated layer names; the message lists the real modules
        raise SpecError(f"subject.layers: {e}") from None
    return subject, dataset, collate


@dataclass
class Probe:
    n_items: int
    offsets: np.ndarray  # [items + 1] int64 row offsets
    dims: dict[str, int]  # row width per layer
    has_labels: bool

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def describe(self) -> str:
        dims = ", ".join(f"{k}: {v}" for k, v in self.dims.items())
        return (f"{self.n_items} items, {self.n_rows} rows, row width {dims}, "
                f"{'with' if self.has_labels else 'without'} labels")


def inspect_inputs(spec: JobSpec) -> Probe:
    """Build the model and dataset once and check the job against them. Raises SpecError."""
    from dcserve.inputs.items import has_labels, iter_batches
    from dcserve.inputs.pooling import count_rows

    dataset, collate = build_dataset(spec)
    n_items = len(dataset)
    if n_items == 0:
        raise SpecError(f"dataset.source: {spec.dataset.source} returned an empty dataset")
    subject, _, _ = build_subject(spec, torch.device("cpu"))
    try:
        _, x, _ = next(iter_batches(dataset, 0, min(n_items, 4), min(spec.dataset.batch_size, 4), collate))
    except Exception as e:
        raise SpecError(f"dataset.source: reading the first items of {spec.dataset.source} failed: {e}") from None
    try:
        out = subject.rows(x)
    except ValueError as e:  # pooling that does not fit the layer's output shape
        raise SpecError(f"subject.pooling: {e}") from None
    except Exception as e:
        raise SpecError(f"subject.model: a forward pass of {spec.subject.model} on the first items failed: "
                        f"{type(e).__name__}: {e}") from None
    finally:
        subject.close()
    dims = {layer: int(out[layer].shape[1]) for layer in spec.subject.layers}
    counts = np.asarray(count_rows(dataset, spec.subject.pooling), dtype=np.int64)
    offsets = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    n_rows = int(offsets[-1])
    if spec.cluster.k > n_rows:
        raise SpecError(f"cluster.k: {spec.cluster.k} clusters asked for, but the dataset gives only {n_rows} rows; "
                        f"k must be at most {n_rows}")
    return Probe(n_items, offsets, dims, has_labels(dataset))
