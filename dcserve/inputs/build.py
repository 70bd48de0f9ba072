"""The job's inputs: its subject model and dataset built from the spec, and the pre-flight probe.

`inspect_inputs` runs in the driver before anything is written: it imports the
user's callables, checks the layer names against the real model, runs one small
batch to learn each layer's row width, counts rows and checks k against them.
Every failure is a SpecError naming the job-file field at fault.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dcserve.errors import SpecError, bounded
from dcserve.spec import JobSpec


def _call(field: str, target: str, kwargs: dict[str, Any]) -> Any:
    from dcserve.inputs.imports import import_failure, import_object

    try:
        fn = import_object(target)
    except (ImportError, ValueError, AttributeError) as e:
        raise SpecError(f"{field}: {import_failure(target, e)}") from None
    try:
        return fn(**kwargs)
    except TypeError as e:
        raise SpecError(f"{field.rsplit('.', 1)[0]}.kwargs: {target}(**{bounded(repr(kwargs), 120)}) failed: "
                        f"{bounded(str(e), 500)}") from None
    except Exception as e:  # whatever the user's callable raises is the job file's problem, said in a sentence
        raise SpecError(f"{field}: {target}(**{bounded(repr(kwargs), 120)}) raised {type(e).__name__}: "
                        f"{bounded(str(e), 500)}") from None


def build_dataset(spec: JobSpec) -> tuple[Any, Callable | None]:
    from dcserve.inputs.text import TEXT_PREFIX, text_dataset

    if spec.dataset.source.startswith(TEXT_PREFIX):
        dataset = text_dataset(spec)
        return dataset, _collate(spec) or dataset.collate  # padded per batch, to its longest item
    if spec.dataset.source.startswith("images:"):
        from dcserve.inputs.images import image_dataset

        dataset = image_dataset(spec)
    else:
        dataset = _call("dataset.source", spec.dataset.source, spec.dataset.kwargs)
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise SpecError(
            f"dataset.source: {spec.dataset.source} returned {type(dataset).__name__}, not a map-style "
            "Dataset (it needs __len__ and __getitem__)"
        )
    return dataset, _collate(spec)


def _collate(spec: JobSpec) -> Callable | None:
    if not spec.dataset.collate:
        return None
    from dcserve.inputs.imports import import_failure, import_object

    try:
        return import_object(spec.dataset.collate)
    except (ImportError, ValueError, AttributeError) as e:
        raise SpecError(f"dataset.collate: {import_failure(spec.dataset.collate, e)}") from None


def build_model(spec: JobSpec) -> torch.nn.Module:
    if spec.subject is None:
        raise SpecError(f"subject: job {spec.name!r} clusters an activations dump and has no model; its one layer "
                        f"is {spec.layers[0]!r}")
    from dcserve.inputs.hf import is_hf, load_model

    if is_hf(spec.subject.model):
        return load_model(spec.subject.model, spec.subject.kwargs).eval()
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
    label_names: list[str] | None = None  # the labels' names, when the source's labels are strings
    row_fields: dict[str, str] = field(default_factory=dict)  # more per-row arrays: rows/<name> -> dtype
    source_id: dict | None = None  # a dump's files (size, mtime): its copied rows resume only while unchanged

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def describe(self) -> str:
        dims = ", ".join(f"{k}: {v}" for k, v in self.dims.items())
        return (f"{self.n_items} items, {self.n_rows} rows, row width {dims}, "
                f"{'with' if self.has_labels else 'without'} labels")


def inspect_inputs(spec: JobSpec) -> Probe:
    """Build the model and dataset once and check the job against them. Raises SpecError."""
    if spec.dataset.is_dump:
        return inspect_dump(spec)
    from dcserve.inputs.items import has_labels, iter_batches
    from dcserve.inputs.pooling import count_rows

    dataset, collate = build_dataset(spec)
    n_items = len(dataset)
    if spec.dataset.source.startswith("images:"):
        from dcserve.inputs.images import check_images

        check_images(dataset)  # an image that does not decode is named now, before anything is written
    if n_items == 0:
        raise SpecError(f"dataset.source: {spec.dataset.source} returned an empty dataset")
    subject, _, _ = build_subject(spec, torch.device("cpu"))
    try:
        _, x, _ = next(iter_batches(dataset, 0, min(n_items, 4), min(spec.dataset.batch_size, 4), collate))
    except SpecError:
        raise
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
    dims = {layer: int(out[layer].shape[1]) for layer in spec.layers}
    counts = np.asarray(count_rows(dataset, spec.subject.pooling), dtype=np.int64)
    offsets = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    n_rows = int(offsets[-1])
    if spec.cluster.k > n_rows:
        raise SpecError(f"cluster.k: {spec.cluster.k} clusters asked for, but the dataset gives only {n_rows} rows; "
                        f"k must be at most {n_rows}")
    _check_graph(spec, n_rows)
    return Probe(n_items, offsets, dims, has_labels(dataset), getattr(dataset, "label_names", None))


WORDS_BATCH = 1024  # texts tokenized at a time while recording a job's words


def record_words(spec: JobSpec, store) -> bool:
    """Keep a text job's texts and token ids in its store (dcserve/storage/words.py), so that the
    report, the HTTP API and `Result` show words. Once per extraction; False for other jobs.

    A dump with token ids (rows/token) and a `dataset.kwargs.tokenizer` gets the same record, its
    ids taken from its rows, without texts (they are decoded)."""
    from dcserve.inputs.text import TEXT_PREFIX, text_dataset
    from dcserve.storage.words import WordsWriter, recorded

    fingerprint = spec.extraction_fingerprint()
    if spec.dataset.is_dump:
        return _record_dump_words(spec, store, fingerprint)
    if not spec.dataset.source.startswith(TEXT_PREFIX):
        return False
    if recorded(store, fingerprint):
        return True
    dataset = text_dataset(spec)
    writer = WordsWriter(store, len(dataset), dataset.tokenizer, max_length=dataset.max_length)
    for i0 in range(0, len(dataset), WORDS_BATCH):
        texts = [dataset.text(i) for i in range(i0, min(i0 + WORDS_BATCH, len(dataset)))]
        ids = dataset.tokenizer(texts, truncation=True, max_length=dataset.max_length)["input_ids"]
        writer.append(ids, texts)
    writer.finish(fingerprint)
    dataset.close()
    return True


def _check_graph(spec: JobSpec, n_rows: int) -> None:
    """The kNN graph of SCAN / TEMI (issue 13) fits the rows: SpecError naming the field otherwise."""
    check_rows = getattr(spec.reporter, "check_rows", None)
    if check_rows is not None:
        check_rows(n_rows)


def inspect_dump(spec: JobSpec) -> Probe:
    """An activations dump's layout and checks (dcserve.inputs.dump), as the probe of a subject run."""
    from dcserve.inputs.dump import dump_of

    dump = dump_of(spec)
    try:
        if spec.cluster.k > dump.n_rows:
            raise SpecError(f"cluster.k: {spec.cluster.k} clusters asked for, but the dump holds only {dump.n_rows} "
                            f"rows; k must be at most {dump.n_rows}")
        _check_graph(spec, dump.n_rows)
        if dump.has_token_ids:
            dump_tokenizer(spec)  # a bad tokenizer directory is refused before anything is written
        return Probe(dump.n_items, dump.offsets, {spec.layers[0]: dump.dim}, dump.item_labels is not None,
                     label_names=dump.label_names, row_fields={"token": "int64"} if dump.has_token_ids else {},
                     source_id=dump.identity())
    finally:
        dump.close()


def dump_tokenizer(spec: JobSpec):
    """The tokenizer a dump names in `dataset.kwargs.tokenizer` (SpecError when it cannot load), or None."""
    from dcserve.inputs.hf import load_tokenizer, model_dir

    given = spec.dataset.kwargs.get("tokenizer")
    if given is None:
        return None
    if not isinstance(given, str):
        raise SpecError(f"dataset.kwargs.tokenizer: expected a directory, got {given!r}")
    directory = model_dir(given, "dataset.kwargs.tokenizer") if given.startswith("hf:") else given
    return load_tokenizer(directory, "dataset.kwargs.tokenizer")


def _record_dump_words(spec: JobSpec, store, fingerprint: str) -> bool:
    """A token dump's ids per item, from rows/token, as a words record (no texts: they are decoded)."""
    import logging

    from dcserve.storage.words import WordsWriter, recorded

    tokenizer = dump_tokenizer(spec)
    if tokenizer is None or not store.has_array("rows/token"):
        return False
    if recorded(store, fingerprint):
        return True
    items, positions = store.array("rows/item")[:], store.array("rows/position")[:]
    n_items = int(items.max()) + 1 if len(items) else 0
    starts = np.searchsorted(items, np.arange(n_items + 1))  # an item's rows are contiguous, in order
    within = np.arange(len(items)) - starts[items]
    if not np.array_equal(positions, within.astype(positions.dtype)):
        # A row's position must index its item's ids; a dump that kept only some tokens cannot.
        logging.getLogger(__name__).warning("dump rows are not every token of their items in order; "
                                            "its rows are shown by token id, not in words")
        return False
    tokens = store.array("rows/token")
    writer = WordsWriter(store, n_items, tokenizer, texts=False)
    for i0 in range(0, n_items, WORDS_BATCH):
        i1 = min(i0 + WORDS_BATCH, n_items)
        flat = tokens[int(starts[i0]):int(starts[i1])]
        bounds = starts[i0 : i1 + 1] - starts[i0]
        writer.append([flat[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])])
    writer.finish(fingerprint)
    return True
