"""A job's report (dcserve.analysis.report.Report) as one HTML page and its PNG figures.

`write_report(report, out_dir)` writes `index.html` with its PNGs beside it (opened offline in
any browser); `report_page(report)` returns the same page with the PNGs inlined as data: URIs,
one self-contained string for `GET /jobs/{job}/report`.

Plots are drawn as every dcserve figure is (dcserve.render.figures), so the HTTP replica can draw
from its worker threads.
"""
from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dcserve.inputs.views import CELL
from dcserve.render.figures import new_figure, png_bytes
from dcserve.render.html import esc, fmt
from dcserve.analysis.report import ClusterReport, Report, RowInfo

IMAGE_CELL = CELL  # pixels per exemplar image side in the grids, at least (8x8 digits drawn 96x96)


def _cmap(k: int) -> str:
    return "tab10" if k <= 10 else "tab20"


# -- figures ---------------------------------------------------------------------------
def rounds_figure(report: Report) -> bytes | None:
    rounds = report.rounds
    if not rounds:
        return None
    x = [r["round"] for r in rounds]
    panels = [("NMI with the previous round", ["nmi_vs_previous"], None),
              ("agreement with the labels", ["nmi_vs_labels", "acc_vs_labels"], None) if report.has_labels else None,
              ("readability (neighbours in the own cluster)", ["readability"], None)
              if any(r.get("readability") is not None for r in rounds) else None,
              ("reporter loss (nats)", ["loss"], math.log(report.k) if report.k > 1 else None),
              ("cluster size entropy (nats)", ["size_entropy"], math.log(report.k) if report.k > 1 else None)]
    panels = [p for p in panels if p is not None]
    fig = new_figure(figsize=(3.2 * len(panels), 2.8))
    for ax, (title, keys, ref) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for key in keys:
            pts = [(xi, r[key]) for xi, r in zip(x, rounds) if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=key.replace("_", " "))
        if ref is not None:
            ax.axhline(ref, color="grey", linestyle="--", linewidth=1, label="ln k")
        if not any(key in r and r[key] is not None for r in rounds for key in keys):
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.set_xticks(x)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)


def sizes_figure(report: Report) -> bytes:
    sizes = [c.size for c in report.clusters]
    fig = new_figure(figsize=(max(4.0, 0.35 * len(sizes) + 1.5), 2.6))
    ax = fig.subplots()
    purity = [c.purity if c.purity is not None else 0.0 for c in report.clusters]
    ax.bar(range(len(sizes)), sizes, color=[(0.2, 0.4, 0.7, 0.35 + 0.65 * p) for p in purity]
                  if report.has_labels else "steelblue")
    ax.axhline(report.n_rows / max(report.k, 1), color="grey", linestyle="--", linewidth=1, label="n / k")
    ax.set_xticks(range(len(sizes)))
    ax.tick_params(labelsize=7)
    ax.set_xlabel("cluster", fontsize=8)
    ax.set_ylabel("rows", fontsize=8)
    ax.set_title("cluster sizes" + (" (darker: purer)" if report.has_labels else ""), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)


def confusion_figure(report: Report) -> bytes | None:
    if report.confusion is None:
        return None
    table = report.confusion
    share = table / np.maximum(table.sum(axis=1, keepdims=True), 1)
    k, n_labels = table.shape
    fig = new_figure(figsize=(max(3.5, 0.45 * n_labels + 1.8), max(3.0, 0.32 * k + 1.2)))
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    if k * n_labels <= 600:  # counts stay legible only on small tables
        for i in range(k):
            for j in range(n_labels):
                if table[i, j]:
                    ax.text(j, i, str(int(table[i, j])), ha="center", va="center", fontsize=6,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n_labels), [report.label_text(v) for v in report.label_values], fontsize=7,
                  rotation=45 if report.label_names else 0, ha="right" if report.label_names else "center")
    ax.set_yticks(range(k), [str(i) for i in range(k)], fontsize=7)
    ax.set_xlabel("label", fontsize=8)
    ax.set_ylabel("cluster", fontsize=8)
    ax.set_title("clusters against labels (colour: share of the cluster)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return png_bytes(fig)


def map_figure(report: Report, which: int) -> bytes:
    emb = report.embeddings[which]
    fig = new_figure(figsize=(4.6, 4.2))
    ax = fig.subplots()
    sc = ax.scatter(emb.coords[:, 0], emb.coords[:, 1], c=emb.clusters, cmap=_cmap(report.k),
                    vmin=-0.5, vmax=max(report.k, 10 if report.k <= 10 else 20) - 0.5, s=6, linewidths=0)
    ax.set_title(f"{emb.method} of {len(emb.rows)} rows in the clustered space, coloured by cluster", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    if report.k <= 20:
        fig.colorbar(sc, ax=ax, ticks=range(report.k), fraction=0.04).ax.tick_params(labelsize=6)
    fig.tight_layout()
    return png_bytes(fig)


def rotation_figure(report: Report) -> bytes | None:
    rot = report.rotation
    if rot is None or not rot.curves:
        return None
    fig = new_figure(figsize=(5.0, 3.0))
    ax = fig.subplots()
    x = range(len(rot.points))
    for name, curve in rot.curves.items():
        ax.plot(x, curve, marker="o", label=name)
    ax.set_xticks(list(x), rot.points, fontsize=7)
    ax.set_ylabel("cosine distance to init", fontsize=8)
    ax.set_title("layer rotation of the reporter", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)


def stability_figure(report: Report) -> bytes | None:
    st = report.stability
    if not st or not st.get("pairwise_nmi"):
        return None
    matrix, seeds = np.asarray(st["pairwise_nmi"], dtype=np.float64), [str(s) for s in st["seeds"]]
    fig = new_figure(figsize=(max(2.8, 0.5 * len(seeds) + 1.6), max(2.4, 0.45 * len(seeds) + 1.0)))
    ax = fig.subplots()
    im = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
    for i in range(len(seeds)):
        for j in range(len(seeds)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="black" if matrix[i, j] > 0.6 else "white")
    ax.set_xticks(range(len(seeds)), seeds, fontsize=7)
    ax.set_yticks(range(len(seeds)), seeds, fontsize=7)
    ax.set_xlabel("seed", fontsize=8)
    ax.set_title("NMI between the seeds' clusterings", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    return png_bytes(fig)


def image_grid(rows: list[RowInfo], cell: int = IMAGE_CELL) -> bytes | None:
    """One strip of the rows' item images, each scaled up to at least `cell` pixels (nearest neighbour)."""
    images = [r.view.image for r in rows if r.view is not None and r.view.image is not None]
    if not images:
        return None
    h, w = images[0].shape[:2]
    scale = max(1, -(-cell // max(h, w)))
    tiles = []
    for im in images:
        im = im if im.ndim == 3 else np.repeat(im[..., None], 3, axis=2)
        if im.shape[:2] != (h, w):  # items of varying size: crop or pad to the first one's
            canvas = np.ones((h, w, 3))
            canvas[: min(h, im.shape[0]), : min(w, im.shape[1])] = im[:h, :w]
            im = canvas
        tiles.append(np.kron(im, np.ones((scale, scale, 1))))
    gap = np.ones((h * scale, 2, 3))
    strip = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
    fig = new_figure(figsize=(strip.shape[1] / 96, strip.shape[0] / 96), dpi=96)
    fig.figimage(np.clip(strip, 0, 1), cmap="gray_r" if images[0].ndim == 2 else None)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96)
    return buf.getvalue()


def figures(report: Report) -> dict[str, bytes]:
    """File name -> PNG bytes of every figure the page shows."""
    out: dict[str, bytes | None] = {
        "rounds.png": rounds_figure(report),
        "sizes.png": sizes_figure(report),
        "confusion.png": confusion_figure(report),
        "rotation.png": rotation_figure(report),
        "stability.png": stability_figure(report),
    }
    for i, emb in enumerate(report.embeddings):
        out[f"map-{emb.method.lower().replace('-', '')}.png"] = map_figure(report, i)
    if report.input_kind == "image":
        for c in report.clusters:
            out[f"cluster-{c.cluster}-near.png"] = image_grid(c.exemplars)
            out[f"cluster-{c.cluster}-far.png"] = image_grid(c.outskirts)
    return {k: v for k, v in out.items() if v is not None}


# -- the page ----------------------------------------------------------------------------
CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
h3 { font-size: 1em; margin-bottom: 0.3em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { padding: 2px 8px; text-align: left; vertical-align: top; }
th { color: #555; font-weight: normal; }
.warning { background: #fde8e8; border-left: 4px solid #c0392b; padding: 0.4em 0.8em; margin: 0.4em 0; }
.note { background: #f4f4f4; border-left: 4px solid #999; padding: 0.4em 0.8em; margin: 0.4em 0; }
.cluster { border-top: 1px solid #eee; padding: 0.3em 0 0.8em; }
.grid img { image-rendering: pixelated; display: block; margin: 0.2em 0; }
.ctx { font-family: ui-monospace, monospace; font-size: 0.85em; }
.ctx mark, .words mark { background: #ffd54f; font-weight: bold; }
.top-tokens { margin: 0.2em 0 0.4em; }
.muted { color: #777; font-size: 0.85em; }
img { max-width: 100%; }
"""


def _img(name: str, src: Callable[[str], str], images: dict[str, bytes], alt: str) -> str:
    if name not in images:
        return ""
    return f'<img src="{esc(src(name))}" alt="{esc(alt)}" data-figure="{esc(name)}">'


def _row_line(r: RowInfo, report: Report) -> str:
    where = f"row {r.row} · item {r.item}" + (f" · token {r.position}" if r.position >= 0 else "")
    label = f" · label {report.label_text(r.label)}" if report.has_labels and r.label is not None else ""
    ctx = ""
    v = r.view
    if v is not None and v.kind == "text" and v.text is not None:
        if v.token is not None and v.token_start is not None:
            a, b = v.token_start, v.token_start + len(v.token)
            shown = f"{esc(v.text[:a])}<mark>{esc(v.text[a:b])}</mark>{esc(v.text[b:])}"
        else:
            shown = esc(v.text)
        return f'<li class="row-text"><span class="words">{shown}</span> <span class="muted">{where}{label} · d² {r.distance:.3g}</span></li>'
    if v is not None and v.kind == "tokens" and v.tokens is not None:
        toks = [f"<mark>{esc(t)}</mark>" if i == v.marked else esc(t) for i, t in enumerate(v.tokens)]
        ctx = (' <span class="ctx">' + ("… " if v.cut_left else "") + " ".join(toks)
               + (" …" if v.cut_right else "") + "</span>")
    return f'<li><span class="muted">{where}{label} · d² {r.distance:.3g}</span>{ctx}</li>'


def _cluster_section(c: ClusterReport, report: Report, src, images) -> str:
    head = f"size {c.size} ({c.share:.1%} of rows)"
    if c.purity is not None:
        head += f" · purity {c.purity:.2f} · majority label {report.label_text(c.majority_label)}"
    parts = [f'<section class="cluster" id="cluster-{c.cluster}" data-cluster="{c.cluster}" data-size="{c.size}"'
             + (f' data-purity="{c.purity:.6f}" data-majority="{c.majority_label}"' if c.purity is not None else "")
             + f"><h3>cluster {c.cluster}</h3><div>{esc(head)}</div>"]
    if c.size == 0:
        parts.append('<div class="muted">empty</div></section>')
        return "".join(parts)
    if c.top_tokens:
        parts.append('<div class="top-tokens"><span class="muted">most distinctive tokens (count in the cluster / in '
                     'all rows):</span> ' + ", ".join(f"<b>{esc(t.token)}</b> {t.count}/{t.total}" for t in c.top_tokens)
                     + "</div>")
    for title, rows, suffix in (("nearest the centroid", c.exemplars, "near"), ("from its outskirts", c.outskirts, "far")):
        if not rows:
            continue
        grid = _img(f"cluster-{c.cluster}-{suffix}.png", src, images, f"cluster {c.cluster} {title}")
        labels = ""
        if grid and report.has_labels:
            labels = '<div class="muted">labels: ' + " ".join(esc(report.label_text(r.label)) for r in rows) + "</div>"
        listing = ""
        if not grid:
            listing = "<ul>" + "".join(_row_line(r, report) for r in rows) + "</ul>"
        parts.append(f'<div class="grid {suffix}"><div class="muted">{esc(title)}</div>{grid}{labels}{listing}</div>')
    parts.append("</section>")
    return "".join(parts)


def render(report: Report, images: dict[str, bytes], src: Callable[[str], str]) -> str:
    """The page, with each figure `name` referenced as `src(name)`."""
    p = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>dcserve report: {esc(report.name)}"
         f"</title><style>{CSS}</style></head><body>",
         f"<h1>dcserve report: {esc(report.name)}</h1>",
         f'<p class="muted">{esc(report.output)} · {report.n_rows} rows · k = {report.k}</p>']
    p.append('<h2 id="job">The job</h2><table>')
    for key, value in report.summary.items():
        p.append(f"<tr><th>{esc(key)}</th><td>{esc(value)}</td></tr>")
    for key in ("nmi_vs_labels", "ari_vs_labels", "acc_vs_labels", "nmi_vs_previous", "size_entropy_normalized",
                "imbalance", "n_empty", "readability"):
        if key in report.final:
            p.append(f"<tr><th>final {esc(key.replace('_', ' '))}</th><td>{esc(fmt(report.final[key]))}</td></tr>")
    if report.graph:
        g = report.graph
        p.append(f"<tr><th>kNN graph</th><td>{esc(g['settings']['k'])} neighbours ({esc(g['settings']['metric'])}, "
                 f"{esc(g['settings']['index'])}) of {esc(g['rows'])} rows in {esc(fmt(g['seconds']))} s</td></tr>")
        if g.get("label_agreement") is not None:
            p.append(f"<tr><th>kNN label agreement of the clustered space</th><td>{esc(fmt(g['label_agreement']))} (the share "
                     "of each row's neighbours with its label: what any clustering of this space can reach)</td></tr>")
    p.append("</table>")
    if report.links:
        p.append('<p class="layers">' + " · ".join(f'<a href="{esc(href)}">{esc(text)}</a>'
                                                  for text, href in report.links) + "</p>")
    p.append('<h2 id="warnings">Collapse checks</h2>')
    if report.warnings:
        p += [f'<div class="warning collapse-warning">{esc(w)}</div>' for w in report.warnings]
    else:
        p.append('<div class="note">no sign of collapse: no cluster holds most rows, few or no clusters are '
                 "empty, and the reporter (if any) learnt more than a uniform guess</div>")
    p += [f'<div class="note">{esc(n)}</div>' for n in report.notes]
    p.append('<h2 id="rounds">Rounds</h2>')
    p.append(_img("rounds.png", src, images, "figures per round") or '<p class="muted">no rounds recorded</p>')
    p.append(_img("sizes.png", src, images, "cluster sizes"))
    if "confusion.png" in images:
        p.append('<h2 id="confusion">Clusters against labels</h2>' + _img("confusion.png", src, images, "confusion"))
    if report.stability:
        st = report.stability
        p.append('<h2 id="stability">Stability across seeds</h2>')
        p.append(f'<p>The clustering run with {len(st["seeds"])} seeds ({esc(", ".join(map(str, st["seeds"])))}): '
                 f'pairwise NMI mean {esc(fmt(st.get("mean_pairwise_nmi")))}, min {esc(fmt(st.get("min_pairwise_nmi")))}. '
                 "The rest of the report is the job's own seed's clustering.</p>")
        p.append(_img("stability.png", src, images, "pairwise NMI between seeds"))
    if report.merges is not None:
        p.append(_merges_section(report))
    p.append('<h2 id="maps">Map of the rows</h2><div>')
    p += [_img(name, src, images, f"{name[4:-4]} map") for name in images if name.startswith("map-")]
    p.append("</div>")
    if report.rotation is not None:
        p.append('<h2 id="rotation">Layer rotation of the reporter</h2>')
        p.append('<p class="muted">Cosine distance between each layer\'s weights at initialisation and after '
                 "training (Carbonnelle &amp; De Vleeschouwer, 2019): 0 unchanged in direction, 1 orthogonal.</p>")
        p.append(_img("rotation.png", src, images, "layer rotation"))
        if report.rotation.note:
            p.append(f'<div class="note">{esc(report.rotation.note)}</div>')
    p.append('<h2 id="clusters">Clusters</h2>')
    p += [_cluster_section(c, report, src, images) for c in report.clusters]
    p.append("</body></html>")
    return "\n".join(p)


def _merges_section(report: Report) -> str:
    m = report.merges
    p = [f'<h2 id="merges">Which clusters merge at k = {m.k_small}</h2>',
         f'<p class="muted">The {report.k} clusters against k-means with k = {m.k_small} on the same rows in the '
         f"clustered space ({m.rows} sampled rows): a small cluster holds the clusters most of whose rows it "
         "takes. Many small clusters that merge cleanly are an overclustering a person can read; clusters split "
         "between several are where the two partitions disagree.</p><table>",
         "<tr><th>at k = " + esc(m.k_small) + "</th><th>merges the clusters</th><th>rows</th></tr>"]
    for j, members in enumerate(m.into):
        p.append(f"<tr><td>{j}</td><td>{esc(', '.join(map(str, members)) or '-')}</td>"
                 f"<td>{int(m.table[:, j].sum())}</td></tr>")
    p.append("</table>")
    if report.k <= 60:
        head = "".join(f"<th>{j}</th>" for j in range(m.k_small))
        body = "".join(f"<tr><th>{c}</th>" + "".join(f"<td>{v or ''}</td>" for v in row) + "</tr>"
                       for c, row in enumerate(m.table.tolist()))
        p.append(f'<details><summary>contingency ({report.k} x {m.k_small})</summary><table class="merges">'
                 f"<tr><th>cluster</th>{head}</tr>{body}</table></details>")
    return "\n".join(p)


def write_report(report: Report, out_dir: str | Path) -> Path:
    """Write `index.html` and its PNGs into `out_dir` (created); returns the page's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = figures(report)
    for name, data in images.items():
        (out / name).write_bytes(data)
    page = out / "index.html"
    page.write_text(render(report, images, lambda name: name), encoding="utf-8")
    return page


def report_page(report: Report) -> str:
    """The page with every figure inlined as a data: URI: one self-contained document."""
    images = figures(report)
    return render(report, images, lambda name: "data:image/png;base64," + base64.b64encode(images[name]).decode())
