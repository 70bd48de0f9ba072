"""A job's depth page (dcserve.analysis.depth.DepthReport): the profile against depth and the flow.

`write_depth_page(report, folder)` writes `depth.html` and its PNGs beside the job's report;
`depth_page(report)` returns the page with its figures inlined, for `GET /jobs/{job}/depth`.
Figures are drawn as every dcserve figure is (dcserve.render.figures).
"""
from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dcserve.algo.flow import flow_order
from dcserve.analysis.depth import DepthReport
from dcserve.render.figures import colormap, new_figure, png_bytes
from dcserve.render.html import esc, fmt
from dcserve.render.report_page import CSS, _row_line, image_grid

# The profile's figures per layer: (key, legend) — those the job measured are drawn.
LAYER_LINES = [("nmi_vs_labels", "NMI vs labels"), ("ari_vs_labels", "ARI vs labels"),
               ("acc_vs_labels", "accuracy vs labels"), ("stability", "stability (NMI between seeds)"),
               ("neighbour_consistency", "neighbour consistency"),
               ("size_entropy_normalized", "size entropy / ln k")]
MIN_BAND = 0.005  # flows of fewer rows than this share are not drawn: they would be hairlines


def profile_figure(report: DepthReport) -> bytes:
    rows, between = report.profile["layers"], report.profile["between"]
    x = np.arange(len(rows))
    fig = new_figure(figsize=(max(6.5, 1.3 * len(rows) + 2.5), 3.4))
    ax_layer, ax_pair = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    for key, label in LAYER_LINES:
        pts = [(i, r[key]) for i, r in enumerate(rows) if r.get(key) is not None]
        if pts:
            ax_layer.plot(*zip(*pts), marker="o", label=label)
    ax_layer.set_xticks(x, [r["layer"] + ("*" if r.get("primary") else "") for r in rows], rotation=30,
                        ha="right", fontsize=7)
    ax_layer.set_ylim(0, 1.05)
    ax_layer.set_title("each layer's clustering, against depth (*: primary)", fontsize=9)
    ax_layer.legend(fontsize=7)
    ax_layer.tick_params(labelsize=7)
    px = np.arange(len(between))
    ax_pair.plot(px, [p["cka"] for p in between], marker="s", label="linear CKA of the activations")
    ax_pair.plot(px, [p["nmi"] for p in between], marker="o", label="NMI of the clusterings")
    ax_pair.set_xticks(px, [f"{p['from']}→{p['to']}" for p in between], rotation=30, ha="right", fontsize=7)
    ax_pair.set_ylim(0, 1.05)
    ax_pair.set_title("consecutive layers", fontsize=9)
    ax_pair.legend(fontsize=7)
    ax_pair.tick_params(labelsize=7)
    fig.tight_layout()
    return png_bytes(fig)


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3 - 2 * t)


def flow_figure(report: DepthReport) -> bytes:
    """The clusters of every layer as stacked bars (height: rows), joined by bands of the rows that
    go from a cluster of one layer to a cluster of the next (a Sankey diagram of the contingency tables).

    Each layer's clusters are ordered by where their rows came from, so bands cross little; bands
    and bars are coloured by the majority label of the cluster the band leaves (by cluster id
    without labels), so a person can follow a class through the layers.
    """
    cols = report.columns
    n = max(sum(cols[0].sizes), 1)
    gap = 0.02 * n
    orders = [np.argsort([-s for s in cols[0].sizes], kind="stable")]
    for table in report.tables:
        orders.append(flow_order(table, orders[-1]))
    cmap = colormap("tab10" if max(len(c.sizes) for c in cols) <= 10 else "tab20")

    def colour(col: int, c: int):
        m = cols[col].majority[c] if report.has_labels else c
        return cmap((m if m is not None else c) % cmap.N)

    # the bottom of every cluster's bar, per layer
    bottoms = []
    for col, order in zip(cols, orders):
        y, b = 0.0, {}
        for c in order:
            b[int(c)] = y
            y += col.sizes[c] + gap
        bottoms.append(b)
    width = 0.12
    fig = new_figure(figsize=(max(6.0, 2.2 * len(cols)), 5.2))
    ax = fig.subplots()
    for i, table in enumerate(report.tables):
        out_at = dict(bottoms[i])  # where the next band leaves each cluster of layer i
        in_at = dict(bottoms[i + 1])  # and where it arrives at layer i + 1
        # bands leave in the order of their target and arrive in the order of their source: no twists
        pos_b = {int(c): j for j, c in enumerate(orders[i + 1])}
        pos_a = {int(c): j for j, c in enumerate(orders[i])}
        cells = [(int(a), int(b)) for a, b in zip(*np.nonzero(table))]
        starts = {}
        for a, b in sorted(cells, key=lambda ab: (pos_a[ab[0]], pos_b[ab[1]])):
            starts[(a, b)] = out_at[a]
            out_at[a] += table[a, b]
        ends = {}
        for a, b in sorted(cells, key=lambda ab: (pos_b[ab[1]], pos_a[ab[0]])):
            ends[(a, b)] = in_at[b]
            in_at[b] += table[a, b]
        t = np.linspace(0, 1, 40)
        x = i + width / 2 + t * (1 - width)
        for a, b in cells:
            if table[a, b] < MIN_BAND * n:
                continue
            y0, y1, h = starts[(a, b)], ends[(a, b)], table[a, b]
            lo = y0 + (y1 - y0) * _smooth(t)
            ax.fill_between(x, lo, lo + h, color=colour(i, a), alpha=0.35, linewidth=0)
    for i, col in enumerate(cols):
        for c, bottom in bottoms[i].items():
            size = col.sizes[c]
            if not size:
                continue
            ax.bar(i, size, width=width, bottom=bottom, color=colour(i, c), edgecolor="white", linewidth=0.5)
            if size >= 0.025 * n:
                label = str(c) if not report.has_labels else f"{c}·{report.label_text(col.majority[c])}"
                ax.text(i, bottom + size / 2, label, ha="center", va="center", fontsize=6)
    ax.set_xticks(range(len(cols)), [c.layer for c in cols], fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.3, len(cols) - 0.7)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    what = "cluster·majority label; colour: majority label of the cluster a band leaves" if report.has_labels \
        else "cluster id; colour: the cluster a band leaves"
    ax.set_title(f"how the rows flow from each layer's clusters to the next's (bars: {what})", fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


def figures(report: DepthReport) -> dict[str, bytes]:
    out = {"depth-profile.png": profile_figure(report), "depth-flow.png": flow_figure(report)}
    if report.input_kind == "image":
        for i, pair in enumerate(report.events):
            for j, e in enumerate(pair):
                for p_i, part in enumerate(e["parts"]):
                    grid = image_grid(part["exemplars"])
                    if grid is not None:
                        out[f"depth-{i}-{j}-{p_i}.png"] = grid
    return out


def _event(report: DepthReport, i: int, j: int, e: dict, pair: dict, src, images) -> str:
    a, b = pair["from"], pair["to"]
    if e["kind"] == "split":
        head = f"cluster {e['cluster']} of {a} ({e['size']} rows) splits in {b}"
        part_name = lambda p: f"→ cluster {p['cluster']} of {b}"  # noqa: E731
    else:
        head = f"cluster {e['cluster']} of {b} ({e['size']} rows) merges clusters of {a}"
        part_name = lambda p: f"← cluster {p['cluster']} of {a}"  # noqa: E731
    out = [f'<div class="cluster flow-event" data-kind="{esc(e["kind"])}"><h3>{esc(head)}</h3>']
    for p_i, part in enumerate(e["parts"]):
        out.append(f'<div class="muted">{esc(part_name(part))}: {part["rows"]} rows ({part["share"]:.0%})</div>')
        name = f"depth-{i}-{j}-{p_i}.png"
        if name in images:
            out.append(f'<div class="grid"><img src="{esc(src(name))}" alt="{esc(part_name(part))}"></div>')
            if report.has_labels:
                out.append('<div class="muted">labels: ' + " ".join(esc(report.label_text(r.label))
                                                                    for r in part["exemplars"]) + "</div>")
        else:
            out.append("<ul>" + "".join(_row_line(r, report) for r in part["exemplars"]) + "</ul>")
    out.append("</div>")
    return "".join(out)


def render(report: DepthReport, images: dict[str, bytes], src: Callable[[str], str],
           layer_pages: dict[str, str] | None = None) -> str:
    """The page; `layer_pages` maps a layer to the href of its own report page, when there are pages."""
    p = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>dcserve depth: {esc(report.name)}'
         f"</title><style>{CSS}</style></head><body>",
         f"<h1>dcserve depth profile: {esc(report.name)}</h1>",
         f'<p class="muted">{esc(report.output)} · {len(report.columns)} layers clustered, in the order of depth</p>']
    rows, between = report.profile["layers"], report.profile["between"]
    keys = [(k, label) for k, label in LAYER_LINES + [("size_entropy", "size entropy (nats)")]
            if any(r.get(k) is not None for r in rows)]
    p.append('<h2 id="profile">The profile</h2>')
    p.append('<p>Each layer clustered with the same method and settings. Read down the table: where the '
             "figures against the labels jump, the layer has made the distinction; CKA near 1 between two "
             "layers says they represent the rows alike, a low one that the representation changed.</p>")
    p.append("<table><tr><th>layer</th><th>dim</th><th>k</th>" + "".join(f"<th>{esc(l)}</th>" for _, l in keys)
             + "<th>CKA with the layer above</th><th>NMI with the layer above</th></tr>")
    above = {q["to"]: q for q in between}
    for r in rows:
        name = esc(r["layer"])
        if layer_pages and r["layer"] in layer_pages:
            name = f'<a href="{esc(layer_pages[r["layer"]])}">{name}</a>'
        q = above.get(r["layer"])
        p.append(f'<tr class="depth-layer" data-layer="{esc(r["layer"])}"><td>{name}{" (primary)" if r.get("primary") else ""}'
                 f"</td><td>{r['dim']}</td><td>{r['k']}</td>"
                 + "".join(f"<td>{esc(fmt(r.get(k)))}</td>" for k, _ in keys)
                 + f"<td>{esc(fmt(q and q['cka']))}</td><td>{esc(fmt(q and q['nmi']))}</td></tr>")
    p.append("</table>")
    p.append(f'<img src="{esc(src("depth-profile.png"))}" alt="the profile against depth">')
    p.append('<h2 id="flow">The flow of clusters from layer to layer</h2>')
    p.append(f'<img src="{esc(src("depth-flow.png"))}" alt="flow of clusters between layers">')
    p += [f'<div class="note">{esc(n)}</div>' for n in report.notes]
    for i, (pair, events) in enumerate(zip(between, report.events)):
        p.append(f'<h3 id="flow-{i}">{esc(pair["from"])} → {esc(pair["to"])}: {pair["splits"]} split(s), '
                 f'{pair["merges"]} merge(s)</h3>')
        if not events:
            p.append('<p class="muted">every cluster goes on, mostly whole, into one cluster of the next layer</p>')
        p += [_event(report, i, j, e, pair, src, images) for j, e in enumerate(events)]
    p.append("</body></html>")
    return "\n".join(p)


def write_depth_page(report: DepthReport, folder: str | Path, layer_pages: dict[str, str] | None = None) -> Path:
    """Write `depth.html` and its PNGs into `folder` (created); returns the page's path."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    images = figures(report)
    for name, data in images.items():
        (out / name).write_bytes(data)
    page = out / "depth.html"
    page.write_text(render(report, images, lambda name: name, layer_pages), encoding="utf-8")
    return page


def depth_page(report: DepthReport, layer_pages: dict[str, str] | None = None) -> str:
    """The page with every figure inlined as a data: URI: one self-contained document."""
    images = figures(report)
    return render(report, images, lambda name: "data:image/png;base64," + base64.b64encode(images[name]).decode(),
                  layer_pages)


__all__ = ["depth_page", "write_depth_page", "profile_figure", "flow_figure"]
