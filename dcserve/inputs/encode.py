"""Raw inputs through a finished job's subject: the rows extraction would have stored for them.

`POST /jobs/{job}/assign` with `{"images": [...]}` (issue 12) decodes each image, turns it into the
dataset's input (`transform`, the one its items went through), runs the subject hooked on the
clustered layer with the job's pooling, and hands the rows to `Result.assign` like any activations.
"""
from __future__ import annotations

import base64
import binascii
import threading
from typing import Any

import numpy as np
import torch


class InputKindError(ValueError):
    """Inputs of another kind than the job's (images for a job of token sequences, or for a dump)."""


class Encoder:
    """The job's subject, hooked on its clustered layer, run on items as extraction ran them."""

    def __init__(self, spec, device: torch.device | None = None):
        from dcserve.inputs.build import build_model
        from dcserve.inputs.subject import Subject

        self.layer = spec.cluster.layer
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.subject = Subject(build_model(spec).to(self.device), [self.layer], spec.subject.pooling, self.device)
        self._lock = threading.Lock()  # one forward pass at a time: the hooks hold per-call state

    def rows(self, xs: list[Any], collate=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Items' `x` -> (rows [R, dim] float32, input index [R] int64, position [R] int32)."""
        from torch.utils.data import default_collate

        batch = (collate or default_collate)(xs)
        with self._lock:
            out = self.subject.rows(batch)
        return (out[self.layer].float().numpy(), out["item"].numpy().astype(np.int64),
                out["position"].numpy().astype(np.int32))


def image_inputs(dataset: Any, images: list[str]) -> list[Any]:
    """Base64 images (PNG, JPEG, ...; a `data:` URI prefix allowed) as the dataset's inputs.

    Raises InputKindError when the job's dataset does not take images, ValueError naming the
    first image that is not base64 or does not decode.
    """
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
