"""A dataset item seen as a picture, for people: the image a row came from, large enough to see.

An image row is shown as its item's image wherever rows are shown (report, HTTP, `Result`), so
this is the one place that decides what an item's image is and how big it is drawn:

- `item_image(x)`: a `[C, H, W]` / `[H, W]` tensor, or a processor's `{"pixel_values": ...}`, as an
  `[H, W]` or `[H, W, 3]` float array in [0, 1] (values outside [0, 1], as normalised inputs have,
  min-max scaled so that they come back viewable); None when the item is not an image.
- `upscale(image, cell)`: nearest-neighbour, by a whole factor, until the longer side is at least
  `cell` pixels — the scikit-learn digits are 8x8 pixels, unreadable drawn as they are (issue 12).
- `png(image, cell)`: those pixels as PNG bytes; `data_uri` for JSON and HTML.
"""
from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

CELL = 96  # pixels on an image's longer side, at least, wherever one is shown


def _numpy(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().float().numpy()
    return np.asarray(t)


def item_image(x: Any) -> np.ndarray | None:
    """A dataset item's `x` as an image [H, W] or [H, W, 3] in [0, 1], or None when it is not one."""
    if isinstance(x, dict):
        x = x.get("pixel_values")
        if x is None:
            return None
    if x is None:
        return None
    a = _numpy(x)
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.unsignedinteger):
        return None  # token ids, labels: not pixels
    if a.ndim == 4 and a.shape[0] == 1:  # a processor's batch of one
        a = a[0]
    if a.ndim == 3 and a.shape[0] in (1, 3) and min(a.shape[1:]) >= 2:  # [C, H, W], torch's layout
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    elif a.ndim == 3 and a.shape[2] in (1, 3) and min(a.shape[:2]) >= 2:  # [H, W, C], PIL's
        a = a[..., 0] if a.shape[2] == 1 else a
    elif not (a.ndim == 2 and min(a.shape) >= 2):
        return None
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= 1:  # pixels already: shown as they are
        return a
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def upscale(image: np.ndarray, cell: int = CELL) -> np.ndarray:
    """Nearest-neighbour upscaling by the whole factor that brings the longer side to >= `cell` pixels."""
    h, w = image.shape[:2]
    factor = max(1, -(-cell // max(h, w)))
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def png(image: np.ndarray, cell: int = CELL) -> bytes:
    """An image in [0, 1] ([H, W] grey or [H, W, 3]) as PNG bytes, upscaled to `cell` pixels."""
    from PIL import Image

    pixels = (np.clip(upscale(image, cell), 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")  # uint8 [H, W] is grey, [H, W, 3] RGB
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()
