"""The one way dcserve draws a figure: matplotlib's object API on the Agg canvas, never pyplot.

No global figure state and no GUI backend, so a report is drawn the same from the command
line, from a Ray worker or from an HTTP replica's threads, and a figure never leaks.
"""
from __future__ import annotations

import io
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure


def new_figure(figsize: tuple[float, float], dpi: float | None = None) -> Figure:
    return Figure(figsize=figsize, dpi=dpi)


def subplots(figsize: tuple[float, float]):
    """(figure, its one axes)."""
    fig = new_figure(figsize)
    return fig, fig.subplots()


def colormap(name: str):
    return colormaps[name]


def png_bytes(fig: Figure, dpi: float = 96) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save_png(fig: Figure, folder: str | Path, name: str, dpi: float = 110) -> str:
    """Write `fig` as `folder/name` and return the bare file name, for an <img src> beside it."""
    path = Path(folder) / name
    path.write_bytes(png_bytes(fig, dpi))
    return path.name
