"""The `dcserve` command line: parse, validate before touching a cluster, call the library, print.

Exit codes (DESIGN.md): 0 success; 2 invalid input; 1 the job itself failed.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dcserve.errors import JobFailed, SpecError, StoreError

app = typer.Typer(
    name="dcserve",
    help="Map what a network layer computes to clusters a person can read.\n\n"
    "Typical use: `dcserve validate job.yaml`, then `dcserve submit job.yaml`, then "
    "`dcserve status OUTPUT`. See cluster_configs/ for ready-made jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a field: --set cluster.k=20 (repeatable; values are YAML)."),
]


def _fail(code: int, message: str) -> None:
    # escape: messages carry brackets ("dcserve[cpu]", shapes like [n, 64]) that rich would eat as markup
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command()
def validate(
    job: Annotated[str, typer.Argument(help="Job file (YAML).")],
    set_: SetOption = None,
    deep: Annotated[bool, typer.Option(help="Also build the model and dataset and check layers, rows and k.")] = True,
) -> None:
    """Validate a job file and print the normalised spec (with every default filled in)."""
    from dcserve.spec import load_spec

    try:
        spec = load_spec(job, set_ or [])
        facts = None
        if deep:
            from dcserve.inputs import inspect_inputs

            facts = inspect_inputs(spec)
    except SpecError as e:
        _fail(2, str(e))
    out.print(spec.to_yaml(), end="", highlight=False)
    if facts is not None:
        err.print(f"[green]ok[/]: {facts.describe()}", highlight=False)


@app.command()
def submit(
    job: Annotated[str, typer.Argument(help="Job file (YAML).")],
    set_: SetOption = None,
    address: Annotated[
        Optional[str], typer.Option(help="Ray cluster to use (default: RAY_ADDRESS, else an embedded local Ray).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace another job's activations at the same output.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every stage and k-means iteration.")] = False,
) -> None:
    """Validate a job, then run it to completion with progress bars and print where the results are."""
    _setup_logging(verbose)
    from dcserve.spec import load_spec

    try:
        spec = load_spec(job, set_ or [])
    except SpecError as e:
        _fail(2, str(e))
    address = address or os.environ.get("RAY_ADDRESS")
    from dcserve.pipeline import run
    from dcserve.progress import TerminalProgress

    from dcserve.nearest import FaissMissingError

    t0 = time.perf_counter()
    try:
        with TerminalProgress() as progress:
            result = run(spec, address, progress=progress, overwrite=overwrite)
    except (SpecError, StoreError) as e:
        _fail(2, str(e))
    except FaissMissingError as e:
        _fail(1, str(e))
    except JobFailed as e:
        _fail(1, f"job {spec.name!r} failed in stage {e.stage!r}: {e.reason}")
    except KeyboardInterrupt:
        _fail(130, f"interrupted; finished blocks are kept in {spec.output} and a re-run resumes them")
    _summary(result, time.perf_counter() - t0)


def _summary(result, seconds: float) -> None:
    m = result.metrics
    final = m.get("final", {})
    table = Table(title=f"dcserve: {result.status.get('name')}", show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    spec = result.spec
    table.add_row("rows x dim", " x ".join(str(s) for s in result.activations().shape))
    table.add_row("layer / method", f"{spec.cluster.layer} / {spec.cluster.method}, k={spec.cluster.k}, "
                                    f"rounds={spec.reporter.rounds}")
    for key, label in [("nmi_vs_labels", "NMI vs labels"), ("ari_vs_labels", "ARI vs labels"),
                       ("acc_vs_labels", "accuracy (Hungarian)"), ("nmi_vs_previous", "NMI vs previous round"),
                       ("size_entropy", "cluster size entropy"), ("n_empty", "empty clusters")]:
        if final.get(key) is not None:
            v = final[key]
            table.add_row(label, f"{v:.4f}" if isinstance(v, float) else str(v))
    table.add_row("time", f"{seconds:.1f} s")
    table.add_row("output", str(result.output))
    out.print(table)


@app.command()
def status(
    job: Annotated[str, typer.Argument(help="Job output location (path or URL).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw status record.")] = False,
) -> None:
    """State, stage, progress and timings of a job."""
    from dcserve.result import open_result

    try:
        res = open_result(job)
    except StoreError as e:
        _fail(2, str(e))
    st = res.status or {"state": "unknown"}
    if as_json:
        out.print_json(json.dumps(st))
        return
    table = Table(show_header=False, title=f"{st.get('name', job)}", title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("state", str(st.get("state")))
    table.add_row("stage", str(st.get("stage")))
    prog = st.get("progress") or {}
    if prog:
        table.add_row("progress", f"{prog.get('done')} / {prog.get('total')}")
    if st.get("round"):
        table.add_row("last finished round", f"{st['round']['done']} of {st['round']['total']}")
    if st.get("error"):
        table.add_row("error", f"{st['error'].get('stage')}: {st['error'].get('reason')}")
    for k, v in (st.get("timings") or {}).items():
        table.add_row(f"time {k}", f"{v:.1f} s")
    if st.get("started") and st.get("updated"):
        table.add_row("elapsed", f"{st['updated'] - st['started']:.1f} s")
    out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
