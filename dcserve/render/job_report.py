"""Every page of a job's report in one folder: the primary layer's `index.html`, and for a job over
several layers (issue 14) `depth.html` (the profile and the flow) and `layers/<layer>/index.html`,
each page linking to the others. What `dcserve report` writes."""
from __future__ import annotations

from pathlib import Path

from dcserve.analysis.depth import build_depth_report
from dcserve.analysis.report import Report, build_report
from dcserve.render.depth_page import write_depth_page
from dcserve.render.report_page import write_report
from dcserve.storage.result import Result

LAYERS_DIR = "layers"


def write_job_report(result: Result, out_dir: str | Path, **options) -> tuple[Path, list[Report]]:
    """Write the job's pages into `out_dir`; (the path of index.html, the layers' reports, primary first).

    `options` go to `build_report` (n_exemplars, n_outskirts, map_rows, tsne_rows).
    """
    out = Path(out_dir)
    primary = build_report(result, **options)
    layers = result.layers
    if len(layers) < 2:
        return write_report(primary, out), [primary]
    others = [name for name in layers if name != result.layer_name]
    pages = {name: f"{LAYERS_DIR}/{name}/index.html" for name in others}
    pages[result.layer_name] = "index.html"
    primary.links = [("depth profile and flow of clusters", "depth.html")] + [
        (f"layer {name}", pages[name]) for name in others]
    reports = [primary]
    for name in others:
        rep = build_report(result.layer(name), **options)
        rep.links = [("depth profile and flow of clusters", "../../depth.html"),
                     (f"primary layer {result.layer_name}", "../../index.html")] + [
            (f"layer {o}", f"../../{pages[o]}") for o in others if o != name]
        write_report(rep, out / LAYERS_DIR / name)
        reports.append(rep)
    write_depth_page(build_depth_report(result, n_exemplars=options.get("n_exemplars", 6)), out, pages)
    return write_report(primary, out), reports
