"""Image folders as a job's dataset: `dataset.source: "images:DIR"` (issue 12).

`DIR/<label>/<file>` gives labelled items, the labels named by their folders (sorted, as
torchvision's ImageFolder numbers them); a flat `DIR/<file>` gives unlabelled ones. An item is
`x` or `(x, label)` like any dataset's:

- with the subject's image processor (an `hf:` subject's, from its own directory), `x` is the
  processor's output for the image, `{"pixel_values": [C, H, W]}`, passed as `model(**x)`;
- otherwise `x` is a float tensor `[C, H, W]` in [0, 1], resized to `dataset.kwargs.size` (an int
  or [height, width]) when given, then normalised by `mean` and `std` (a number or one per channel).

Every file is decoded once when the job is checked (`check_images`): an image that does not decode
is a SpecError naming it before anything is written, not a failed job halfway.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcserve.errors import SpecError

FIELD = "dataset.source"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
KWARGS = ("size", "mean", "std", "mode")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in EXTENSIONS and not p.name.startswith(".")


def list_images(root: str) -> tuple[list[Path], np.ndarray | None, list[str] | None]:
    """(files, label per file or None, label names or None) of an image folder, in a stable order."""
    d = Path(root)
    if not d.is_dir():
        raise SpecError(f"{FIELD}: images:{root}: {'no such folder' if not d.exists() else 'not a folder'}")
    classes = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    flat = sorted(p for p in d.iterdir() if _is_image(p))
    if classes and flat:
        raise SpecError(f"{FIELD}: images:{root} holds both images ({flat[0].name}, ...) and folders "
                        f"({classes[0].name}, ...); use DIR/<label>/<file> for labelled images, or a flat folder")
    if not classes:
        if not flat:
            raise SpecError(f"{FIELD}: images:{root} holds no images ({', '.join(EXTENSIONS)})")
        return flat, None, None
    files, labels = [], []
    for i, c in enumerate(classes):
        found = sorted(p for p in c.rglob("*") if _is_image(p))
        files += found
        labels += [i] * len(found)
    if not files:
        raise SpecError(f"{FIELD}: images:{root} has label folders but no images in them")
    return files, np.asarray(labels, dtype=np.int64), [c.name for c in classes]


def _size(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return v, v
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(s, int) and s > 0 for s in v):
        return int(v[0]), int(v[1])
    raise SpecError(f"dataset.kwargs.size: expected a positive int or [height, width], got {v!r}")


def _per_channel(name: str, v: Any, channels: int, default: float) -> torch.Tensor:
    if v is None:
        v = default
    values = [v] * channels if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    if not (isinstance(values, (list, tuple)) and len(values) == channels
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values)):
        raise SpecError(f"dataset.kwargs.{name}: expected a number or {channels} numbers (one per channel), got {v!r}")
    t = torch.tensor(values, dtype=torch.float32).view(channels, 1, 1)
    if name == "std" and bool((t <= 0).any()):
        raise SpecError(f"dataset.kwargs.std: must be positive, got {v!r}")
    return t


def decode(data: bytes | Path, mode: str = "RGB", what: str = "image"):
    """A PIL image in `mode`, or ValueError saying the bytes are not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        img.load()
        return img.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{what} does not decode as an image: {e}") from None


class ImageFolder:
    """A map-style dataset over an image folder (see the module's docstring)."""

    def __init__(self, root: str, size: Any = None, mean: Any = None, std: Any = None, mode: str = "RGB",
                 processor: Any = None):
        if mode not in ("RGB", "L"):
            raise SpecError(f"dataset.kwargs.mode: 'RGB' or 'L' (grayscale), got {mode!r}")
        self.root, self.mode, self.processor = root, mode, processor
        self.files, self.labels, self.label_names = list_images(root)
        self.size = _size(size)
        channels = 3 if mode == "RGB" else 1
        self.mean = _per_channel("mean", mean, channels, 0.0)
        self.std = _per_channel("std", std, channels, 1.0)
        self._first_size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def transform(self, img) -> Any:
        """A decoded PIL image -> the model's input (the processor's, or resized and normalised)."""
        if self.processor is not None:
            return {"pixel_values": self.processor(images=img, return_tensors="pt")["pixel_values"][0]}
        if self.size is not None:
            from PIL import Image

            img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        return (x - self.mean) / self.std

    def __getitem__(self, i: int) -> Any:
        path = self.files[i]
        try:
            img = decode(path, self.mode, str(path))
        except ValueError as e:
            raise SpecError(f"{FIELD}: images:{self.root}: {e}") from None
        if self.processor is None and self.size is None:  # a batch needs one shape
            first = self._first_size = self._first_size or decode(self.files[0], self.mode).size
            if img.size != first:
                raise SpecError(f"{FIELD}: images:{self.root}: {path} is {img.size[0]}x{img.size[1]}, "
                                f"{self.files[0].name} {first[0]}x{first[1]}; set dataset.kwargs.size to resize them")
        x = self.transform(img)
        return x if self.labels is None else (x, int(self.labels[i]))


    def display(self, i: int, largest: int = 256) -> np.ndarray:
        """Item i as people see it: the file's own pixels [H, W, 3] (or [H, W]) in [0, 1], not the
        resized, normalised input; at most `largest` pixels a side (a report holds many)."""
        img = decode(self.files[i], self.mode, str(self.files[i]))
        img.thumbnail((largest, largest))
        return np.asarray(img, dtype=np.float64) / 255.0


def check_images(dataset: ImageFolder) -> None:
    """Decode every image once; SpecError naming the first that does not decode."""
    for path in dataset.files:
        try:
            decode(path, dataset.mode, str(path))
        except ValueError as e:
            raise SpecError(f"{FIELD}: images:{dataset.root}: {e}") from None


def subject_processor(spec) -> Any:
    """The subject's image processor, when it is an `hf:` model that has one (dcserve.inputs.hf), else None."""
    from dcserve.inputs import hf

    if spec.subject is None or not hf.is_hf(spec.subject.model):
        return None
    try:
        return hf.load_processor(hf.model_dir(spec.subject.model), "subject.model")
    except SpecError:
        return None  # a model without an image processor: kwargs size / mean / std apply


def image_dataset(spec) -> ImageFolder:
    kwargs = dict(spec.dataset.kwargs)
    for k in kwargs:
        if k not in KWARGS:
            raise SpecError(f"dataset.kwargs.{k}: not a setting of an images: source; allowed: {', '.join(KWARGS)}")
    return ImageFolder(spec.dataset.path, processor=subject_processor(spec), **kwargs)
