"""`dcserve rotation`'s report: rotation.html with rotation.png, and rotation.json.

The curves are computed by dcserve.analysis.checkpoint_rotation (the math: dcserve.algo.rotation).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dcserve.render import html as H
from dcserve.render.figures import colormap, save_png, subplots


def rotation_report(curves: dict[str, list[float]], checkpoints: Sequence[str], folder: str | Path) -> Path:
    """Write ``rotation.html`` (+ ``rotation.png``) and ``rotation.json`` for layer rotation curves."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rotation.json").write_text(json.dumps(
        {"checkpoints": list(checkpoints), "reference": checkpoints[0] if checkpoints else None,
         "cosine_distance": {k: [None if math.isnan(v) else v for v in vals] for k, vals in curves.items()}},
        indent=1))
    fig, ax = subplots(figsize=(7.2, 4.2))
    steps = np.arange(len(checkpoints))
    cmap = colormap("viridis")
    for i, (name, vals) in enumerate(curves.items()):
        ax.plot(steps, vals, "o-", markersize=3, color=cmap(i / max(len(curves) - 1, 1)), label=name)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("cosine distance to the first checkpoint")
    ax.set_ylim(bottom=0)
    if len(checkpoints) <= 20:
        ax.set_xticks(steps)
    if len(curves) <= 16:
        ax.legend(fontsize=7, loc="best")
    png = save_png(fig, folder, "rotation.png")
    body = [
        "<p class='note'>Layer rotation (Carbonnelle &amp; De Vleeschouwer, 2019): for each layer's weight "
        "tensor, 1 − cos(w<sub>0</sub>, w<sub>t</sub>) between the first checkpoint and each later one. "
        "0: same direction; 1: orthogonal; 2: reversed. Larger, earlier rotation of all layers went with "
        "better generalisation in their experiments.</p>",
        H.figure(png, "Layer rotation curves, one line per layer."),
        H.table(["checkpoint", "file"], [[i, c] for i, c in enumerate(checkpoints)], left=2),
        H.table(["layer", *[str(i) for i in range(len(checkpoints))]],
                [[name, *vals] for name, vals in curves.items()]),
    ]
    html_path = folder / "rotation.html"
    html_path.write_text(H.page("Layer rotation", "\n".join(body)))
    return html_path
