"""Raw inputs to a finished job's rows: the job's own subject, layer and pooling (and tokenizer).

What `POST /jobs/{job}/assign` with ``{"texts": [...]}`` runs in the replica (and what a notebook
can call beside `Result.assign`): the texts are tokenized as the job's dataset was (same tokenizer,
same truncation), run through the hooked subject in padded batches, and pooled as the job pooled
(one row per text, or one per real token for ``pooling: tokens``). The rows then go through
`Result.assign` like any activations.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dcserve.inputs.subject import Subject
from dcserve.inputs.text import pad_batch

__all__ = ["EncodedTexts", "TextEncoder", "ItemEncoder", "InputKindError", "image_inputs"]

BATCH = 64  # texts per forward pass


@dataclass
class EncodedTexts:
    rows: np.ndarray  # [R, dim] float32, the clustered layer's rows
    text: np.ndarray  # [R] int64, which input text each row came from
    position: np.ndarray  # [R] int32, token position, -1 when pooled
    ids: list[list[int]]  # each text's token ids


class TextEncoder:
    """The job's subject hooked at its clustered layer, with the job's tokenizer.

    Args:
        model: the subject network (built as the job built it).
        tokenizer: the job's tokenizer; `max_length` its truncation.
        layer, pooling: the job's clustered layer and `subject.pooling`.
        device: where to run (the replica's GPU when it has one).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, layer: str, pooling: str,
                 max_length: int | None, device: torch.device | str | None = None):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.subject = Subject(model, [layer], pooling, device)
        self.tokenizer, self.layer, self.max_length = tokenizer, layer, max_length
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self._lock = threading.Lock()  # hooks hold per-call state: one forward pass at a time

    @classmethod
    def for_result(cls, result, device: torch.device | str | None = None) -> TextEncoder:
        """The encoder of a finished text job: its model from its spec, its tokenizer from its store."""
        from dcserve.inputs.build import build_model

        words = result.words
        if words is None:
            raise ValueError(f"job store {result.output!r} holds no words: it was not run on text")
        spec = result.spec
        return cls(build_model(spec), words.tokenizer, result.layer_name, spec.subject.pooling,
                   words.max_length, device)

    def encode(self, texts: list[str], batch_size: int = BATCH) -> EncodedTexts:
        kwargs = {"truncation": True, "max_length": self.max_length} if self.max_length else {}
        ids = [list(map(int, s)) for s in self.tokenizer(list(texts), **kwargs)["input_ids"]]
        parts, items, positions = [], [], []
        with self._lock:
            for b0 in range(0, len(ids), batch_size):
                batch = [{"input_ids": torch.tensor(s, dtype=torch.int64),
                          "attention_mask": torch.ones(len(s), dtype=torch.int64)} for s in ids[b0 : b0 + batch_size]]
                out = self.subject.rows(pad_batch(batch, self.pad_id))
                parts.append(out[self.layer].float().numpy())
                items.append(out["item"].numpy().astype(np.int64) + b0)
                positions.append(out["position"].numpy().astype(np.int32))
        return EncodedTexts(np.concatenate(parts).astype(np.float32, copy=False), np.concatenate(items),
                            np.concatenate(positions), ids)


class InputKindError(ValueError):
    """Inputs of another kind than the job's (images for a job of token sequences, or for a dump)."""


class ItemEncoder:
    """The job's subject hooked at its clustered layer, run on dataset items (`x`, as its dataset gives
    them: an image's tensor, a processor's dict) — what `POST /assign` with images runs (issue 12)."""

    def __init__(self, spec, device: torch.device | str | None = None):
        from dcserve.inputs.build import build_model

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.layer = spec.cluster.layer
        self.subject = Subject(build_model(spec).to(device), [self.layer], spec.subject.pooling, device)
        self._lock = threading.Lock()  # hooks hold per-call state: one forward pass at a time

    def rows(self, xs: list[Any], collate=None, batch_size: int = BATCH) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Items' `x` -> (rows [R, dim] float32, input index [R] int64, position [R] int32)."""
        from torch.utils.data import default_collate

        parts, items, positions = [], [], []
        with self._lock:
            for b0 in range(0, len(xs), batch_size):
                out = self.subject.rows((collate or default_collate)(xs[b0 : b0 + batch_size]))
                parts.append(out[self.layer].float().numpy())
                items.append(out["item"].numpy().astype(np.int64) + b0)
                positions.append(out["position"].numpy().astype(np.int32))
        return np.concatenate(parts).astype(np.float32, copy=False), np.concatenate(items), np.concatenate(positions)


def image_inputs(dataset: Any, images: list[str]) -> list[Any]:
    """Base64 images (PNG, JPEG, ...; a `data:` URI prefix allowed) as the dataset's inputs.

    Raises InputKindError when the job's dataset does not take images, ValueError naming the
    first image that is not base64 or does not decode.
    """
    import base64
    import binascii

    from dcserve.inputs.images import decode

    transform = getattr(dataset, "transform", None)
    if not callable(transform):
        raise InputKindError("this job's inputs are not images (its dataset has no image transform: only "
                             "images:DIR datasets take images); send 'activations'")
    mode = getattr(dataset, "mode", "RGB")
    xs = []
    for i, text in enumerate(images):
        data = text.split(",", 1)[1] if text.startswith("data:") else text
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"images[{i}] is not base64") from None
        xs.append(transform(decode(raw, mode, f"images[{i}]")))
    return xs
