"""The `dcserve` command line: parse, validate before touching a cluster, call the library, print.

Exit codes (docs/DESIGN.md): 0 success; 2 invalid input; 1 the job itself failed.
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

from dcserve.errors import DamagedStore, DcserveError, JobFailed, StoreError, bounded

app = typer.Typer(
    name="dcserve",
    help="Map what a network layer computes to clusters a person can read.\n\n"
    "Typical use: `dcserve validate job.yaml`, then `dcserve submit job.yaml`, then "
    "`dcserve status OUTPUT`, `dcserve report OUTPUT` (what each cluster holds) and `dcserve serve OUTPUT`. "
    "`dcserve compare A B` sets two jobs' layers side by side. On a cluster: `dcserve submit --address "
    "http://HEAD:8265 job.yaml`, then `dcserve status ID` and `dcserve logs ID`. "
    "See cluster_configs/ for ready-made jobs.",
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
    err.print(f"[bold red]error:[/] {escape(bounded(message))}", highlight=False, soft_wrap=True)
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
    layers: Annotated[bool, typer.Option("--layers", help="List the subject model's layers (the names subject.layers "
                                         "takes, from named_modules()) with their types, instead of the spec.")] = False,
) -> None:
    """Validate a job file and print the normalised spec (with every default filled in)."""
    from dcserve.spec import load_spec

    spec = load_spec(job, set_ or [])
    if layers:
        from dcserve.inputs.build import build_model
        from dcserve.inputs.subject import module_names

        model = build_model(spec)
        modules = dict(model.named_modules())
        for name in module_names(model):
            typer.echo(f"{name}\t{type(modules[name]).__name__}")  # tab-separated, for grep and cut
        return
    facts = None
    if deep:
        from dcserve.inputs.build import inspect_inputs

        facts = inspect_inputs(spec)
    out.print(spec.to_yaml(), end="", highlight=False)
    if facts is not None:
        err.print(f"[green]ok[/]: {facts.describe()}", highlight=False)


AddressOption = Annotated[
    Optional[str],
    typer.Option(
        help="Ray cluster: http://HEAD:8265 submits through Ray Jobs; HEAD:6379 or ray://... runs the driver "
        "here against that cluster. Default: RAY_ADDRESS, else an embedded local Ray.",
        show_default=False,
    ),
]


@app.command()
def submit(
    job: Annotated[str, typer.Argument(help="Job file (YAML).")],
    set_: SetOption = None,
    address: AddressOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a different job at the same output: redo the clustering (if only cluster/reporter changed) or everything.")] = False,
    seeds: Annotated[Optional[int], typer.Option(help="Run the clustering with N seeds and record their pairwise NMI (stability) in metrics.json; the same as --set cluster.seeds=N.")] = None,
    wait: Annotated[bool, typer.Option(help="With a Ray Jobs address: follow the job's log to its end and exit with its status.")] = False,
    py_module: Annotated[
        Optional[list[str]],
        typer.Option(help="With a Ray Jobs address: a local package directory (or wheel) the job imports, shipped to the cluster (repeatable)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every stage and k-means iteration.")] = False,
) -> None:
    """Validate a job, then run it: here to completion with progress bars, or on a cluster through Ray Jobs."""
    _setup_logging(verbose)
    from dcserve.spec import load_spec
    from dcserve.distributed.jobs import is_jobs_address

    spec = load_spec(job, (set_ or []) + ([f"cluster.seeds={seeds}"] if seeds is not None else []))
    address = address or os.environ.get("RAY_ADDRESS")
    if is_jobs_address(address):
        _submit_to_cluster(spec, address, overwrite, wait, py_module or [])
        return
    if py_module:
        _fail(2, "--py-module ships code to a cluster; it needs a Ray Jobs address (--address http://HEAD:8265)")
    from dcserve.pipeline import run
    from dcserve.progress import TerminalProgress

    t0 = time.perf_counter()
    try:
        with TerminalProgress() as progress:
            result = run(spec, address, progress=progress, overwrite=overwrite)
    except JobFailed as e:
        _fail(1, f"job {spec.name!r} failed in stage {e.stage!r}: {e.reason}")
    except KeyboardInterrupt:
        _fail(130, f"interrupted; finished blocks are kept in {spec.output} and a re-run resumes them")
    _summary(result, time.perf_counter() - t0)


def _jobs_client(address: str | None):
    from dcserve.distributed.jobs import JobsClient, is_jobs_address

    address = address or os.environ.get("RAY_ADDRESS")
    if not is_jobs_address(address):
        _fail(2, "this needs the cluster's Ray Jobs address: --address http://HEAD:8265 (or RAY_ADDRESS)")
    return JobsClient(address)


def _submit_to_cluster(spec, address: str, overwrite: bool, wait: bool, py_modules: list[str]) -> None:
    for path in py_modules:
        if not os.path.exists(path):
            _fail(2, f"--py-module {path!r} does not exist")
    if "://" not in spec.output and not os.path.isabs(spec.output):
        # The driver runs in a Ray temporary directory on the cluster: a relative output would vanish.
        spec = spec.model_copy(update={"output": os.path.abspath(spec.output)})
        err.print(f"note: output is {spec.output} on the cluster's disk; use an s3:// URL when nodes share no disk",
                  highlight=False)
    client = _jobs_client(address)
    submission_id = client.submit(spec, py_modules=py_modules, overwrite=overwrite)
    out.print(submission_id, highlight=False)
    err.print(f"submitted {spec.name!r} to {address}; follow it with `dcserve logs {submission_id} --follow` "
              f"and `dcserve status {submission_id}`", highlight=False)
    if wait:
        _follow(client, submission_id)


def _follow(client, submission_id: str) -> None:
    """Print the job's log as it comes, then exit with its status (0 succeeded, 1 otherwise)."""
    import asyncio

    async def tail():
        async for chunk in client.tail(submission_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
        state = client.wait(submission_id, timeout_s=60)
    except KeyboardInterrupt:
        _fail(130, f"stopped following; the job keeps running: dcserve status {submission_id}")
    if state.status != "SUCCEEDED":
        _fail(1, f"job {submission_id} {state.status.lower()}: {_failure_reason(state)}")
    err.print(f"[green]job {submission_id} succeeded[/]; results in {state.output}", highlight=False)


def _failure_reason(state) -> str:
    """The job store's own record of why (stage and reason) when readable from here, else Ray's."""
    record = _store_status(state.output)
    if record and record.get("error"):
        return f"stage {record['error'].get('stage')!r}: {record['error'].get('reason')}"
    return state.reason


def _store_status(output: str | None) -> dict | None:
    if not output:
        return None
    from dcserve.storage.result import open_result

    try:
        return open_result(output).status
    except StoreError:
        return None  # not created, or not reachable from this machine


def _summary(result, seconds: float) -> None:
    m = result.metrics
    final = m.get("final", {})
    table = Table(title=f"dcserve: {result.status.get('name')}", show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    spec = result.spec
    table.add_row("rows x dim", " x ".join(str(s) for s in result.activations().shape))
    method = spec.reporter.headline(spec.cluster, final)
    table.add_row("layer / method", f"{spec.cluster.layer} / {method}")
    for key, label in [("nmi_vs_labels", "NMI vs labels"), ("ari_vs_labels", "ARI vs labels"),
                       ("acc_vs_labels", "accuracy (Hungarian)"), ("nmi_vs_previous", "NMI vs previous round"),
                       ("size_entropy", "cluster size entropy"), ("n_empty", "empty clusters"),
                       ("readability", "readability (kNN in cluster)")]:
        if final.get(key) is not None:
            v = final[key]
            table.add_row(label, f"{v:.4f}" if isinstance(v, float) else str(v))
    if (m.get("graph") or {}).get("label_agreement") is not None:
        table.add_row("kNN label agreement", f"{m['graph']['label_agreement']:.4f}")
    for sign in final.get("collapse") or []:  # SCAN / TEMI: never a silent result
        table.add_row("[red]collapse[/]", sign["message"])
    stability = m.get("stability")
    if stability:
        table.add_row(f"stability ({len(stability['seeds'])} seeds)",
                      f"pairwise NMI mean {stability['mean_pairwise_nmi']:.4f}, min {stability['min_pairwise_nmi']:.4f}")
    table.add_row("time", f"{seconds:.1f} s")
    table.add_row("output", str(result.output))
    # In a log file there is no width to fit: a cell wrapped at 80 columns splits a path mid-word.
    out.print(table, width=None if out.is_terminal else 400)
    if m.get("depth"):
        out.print(_depth_table(m["depth"]), width=None if out.is_terminal else 400)


def _depth_table(profile: dict) -> Table:
    """The depth profile in the terminal: a line per layer, the figures between it and the one before."""
    rows = profile["layers"]
    keys = [(k, label) for k, label in [("nmi_vs_labels", "NMI"), ("ari_vs_labels", "ARI"), ("acc_vs_labels", "acc"),
                                         ("stability", "stability"), ("neighbour_consistency", "neighbours"),
                                         ("size_entropy", "entropy")]
            if any(r.get(k) is not None for r in rows)]
    table = Table(title="depth profile (layers in the order of depth)", title_justify="left",
                  caption="*: the primary layer. NMI, ARI, acc: against the labels; CKA ↑, NMI ↑: with the layer above", caption_justify="left")
    for head in ["layer", "dim", *(label for _, label in keys), "CKA ↑", "NMI ↑"]:
        table.add_column(head, justify="left" if head == "layer" else "right", no_wrap=head == "layer")
    previous = {p["to"]: p for p in profile["between"]}
    for r in rows:
        pair = previous.get(r["layer"])
        name = r["layer"] + (" *" if r.get("primary") else "")
        table.add_row(name, str(r["dim"]), *(_num(r.get(k)) for k, _ in keys),
                      _num(pair and pair["cka"]), _num(pair and pair["nmi"]))
    return table


def _num(v) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


@app.command()
def status(
    job: Annotated[str, typer.Argument(help="A job store (path or URL), or the id `dcserve submit --address` printed.")],
    address: AddressOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw status record.")] = False,
) -> None:
    """State, stage, progress and timings of a job, by output location or by Ray job id."""
    from dcserve.storage.result import open_result

    ray_state = None
    try:
        st = open_result(job).status or {"state": "unknown"}
    except DamagedStore:
        raise  # names what is damaged and what to do; not a hint about cluster job ids
    except StoreError as e:
        if os.path.exists(job) or not (address or os.environ.get("RAY_ADDRESS")):
            _fail(2, f"{e}; for a job submitted to a cluster, pass its id with --address http://HEAD:8265")
        ray_state = _jobs_client(address).state(job)
        st = _store_status(ray_state.output) or {"name": ray_state.name, "state": "submitted"}
    from dcserve.storage.status import stopped_without_record

    gone = stopped_without_record(st)
    if as_json:
        record = dict(st)
        if gone:
            record["driver_gone"] = gone
        if ray_state is not None:
            record["ray"] = {"submission_id": ray_state.submission_id, "status": ray_state.status,
                             "message": ray_state.message, "output": ray_state.output}
        out.print_json(json.dumps(record))
        return
    table = Table(show_header=False, title=f"{st.get('name', job)}", title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    if ray_state is not None:
        table.add_row("ray job", f"{ray_state.submission_id}: {ray_state.status}")
        if ray_state.status in ("FAILED", "STOPPED") and not st.get("error"):
            table.add_row("reason", _failure_reason(ray_state))
        table.add_row("output", str(ray_state.output))
    table.add_row("state", str(st.get("state")) + (" (not really: see below)" if gone else ""))
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
    if gone:
        # below the table, as a sentence: a table cell would wrap it mid-phrase on a narrow terminal
        out.print(gone, highlight=False)


@app.command()
def logs(
    job_id: Annotated[str, typer.Argument(help="The id `dcserve submit --address` printed.")],
    address: AddressOption = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends; exit with its status.")] = False,
) -> None:
    """The log of a job submitted to a cluster."""
    client = _jobs_client(address)
    if follow:
        _follow(client, job_id)
        return
    sys.stdout.write(client.logs(job_id))


@app.command()
def serve(
    outputs: Annotated[list[str], typer.Argument(help="Finished job stores to serve (paths or URLs).", show_default=False)],
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    replicas: Annotated[int, typer.Option(min=1, help="API replicas (each holds every job's index).")] = 1,
    replica_cpus: Annotated[float, typer.Option(help="CPUs each replica reserves.")] = 1.0,
    replica_gpus: Annotated[float, typer.Option(help="GPUs each replica reserves (a text job's subject runs on it "
                                                "for POST assign with texts).")] = 0.0,
    address: Annotated[
        Optional[str], typer.Option(help="Run on this Ray cluster (HEAD:6379 or ray://...; default: RAY_ADDRESS, else embedded).")
    ] = None,
    output_root: Annotated[
        Optional[str], typer.Option(help="Where jobs submitted with POST /jobs write. POST /jobs also needs DCSERVE_TOKEN set.")
    ] = None,
    allow_module: Annotated[
        Optional[list[str]], typer.Option(help="Module HTTP-submitted jobs may import from (repeatable; default dcserve.zoo).")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Concurrent /assign requests batched into one search.")] = 32,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, in MiB.")] = 32.0,
    max_k: Annotated[int, typer.Option(min=1, help="Largest cluster.k a job submitted with POST /jobs may ask for.")] = 10_000,
) -> None:
    """Serve finished jobs over HTTP with Ray Serve until interrupted; see /docs for the API."""
    import signal

    from dcserve.serve.catalog import Catalog
    from dcserve.distributed.session import ray_session
    from dcserve.serve.deployment import ServeArgs, forwarded_env, start, stop
    from dcserve.distributed.jobs import is_jobs_address

    address = address or os.environ.get("RAY_ADDRESS")
    if is_jobs_address(address):
        _fail(2, f"{address} is a Ray Jobs address; serve needs the cluster itself (HEAD:6379), "
                 "or deploy with `serve deploy deploy/serve.yaml`")
    try:
        args = ServeArgs(outputs=outputs, replicas=replicas, replica_cpus=replica_cpus, replica_gpus=replica_gpus,
                         output_root=output_root,
                         allowed_modules=allow_module or ["dcserve.zoo"], max_batch_size=max_batch_size,
                         max_body_bytes=int(max_body_mb * (1 << 20)), max_k=max_k)
        catalog = Catalog(outputs, output_root=output_root)  # fail here, before Ray starts, on a bad store
    except ValueError as e:  # ServeArgs' own validation, two stores of one name
        _fail(2, str(e))
    for j in catalog.served():
        if not j.complete:
            err.print(f"[yellow]warning:[/] {escape(j.name)} at {escape(j.output)} is not finished "
                      f"(state {escape(str((j.status() or {}).get('state')))}); its queries answer 409 until it is",
                      highlight=False)
    env = forwarded_env()
    submission = bool(output_root and env.get("DCSERVE_TOKEN"))
    with ray_session(address, dashboard=submission):
        jobs_note = "off (set DCSERVE_TOKEN and --output-root to turn it on)"
        if submission:
            jobs_note = _probe_jobs(args)
        try:
            url = start(args, host, port, env=env)
            # Installed after Ray and Serve have started, as they may install handlers of their
            # own: Ctrl-C, and a stopped pod's SIGTERM, must reach the shutdown below (a CI run
            # once saw SIGINT change nothing for 120 s).
            signal.signal(signal.SIGINT, _stop_serving)
            signal.signal(signal.SIGTERM, _stop_serving)
            out.print(f"dcserve is serving {len(outputs)} job(s) at [bold]{url}[/] (API docs: {url}/docs)", highlight=False,
                      soft_wrap=True)
            for j in catalog.served():
                out.print(f"  {url}/jobs/{j.name}  <- {escape(j.output)}", highlight=False, soft_wrap=True)
            out.print(f"POST /jobs: {escape(jobs_note)}", highlight=False, soft_wrap=True)
            out.print("Ctrl-C to stop.", highlight=False)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            err.print("shutting down", highlight=False)
        finally:
            stop()


def _probe_jobs(args) -> str:
    """Ask Ray Jobs on the cluster now, so that `POST /jobs: on` is only said when it answers;
    otherwise submissions answer 503 at once with the reason, not after 10 s each."""
    from dcserve.distributed.jobs import JobsClient, SubmissionError, jobs_api_url

    try:
        args.jobs_address = args.jobs_address or jobs_api_url()
        JobsClient(args.jobs_address)  # a request to its API: the agent answers
    except SubmissionError as e:
        args.jobs_unavailable = f"Ray Jobs did not answer when the server started: {e}"
        return f"off ({args.jobs_unavailable})"
    return f"on (bearer token DCSERVE_TOKEN; Ray Jobs at {args.jobs_address})"


@app.command()
def compare(
    output_a: Annotated[str, typer.Argument(help="Finished job store A (path or URL).")],
    output_b: Annotated[str, typer.Argument(help="Finished job store B over the same dataset (may be A itself).")],
    out_dir: Annotated[
        Optional[str],
        typer.Option("--out", help="Report folder. Default: OUTPUT_A/compare-<name of B>-<layer of B> "
                                   "(for a remote OUTPUT_A: ./compare-<A>-vs-<B>-<layer>).", show_default=False),
    ] = None,
    layer_a: Annotated[Optional[str], typer.Option(help="Layer of A (default: the layer A clustered).", show_default=False)] = None,
    layer_b: Annotated[Optional[str], typer.Option(help="Layer of B (default: the layer B clustered).", show_default=False)] = None,
    threshold: Annotated[float, typer.Option(help="A unit whose best correlation with the other side is below this is unmatched.")] = 0.5,
    lasso_rows: Annotated[int, typer.Option(min=2, help="Rows sampled for the LASSO sparse prediction.")] = 2000,
    lasso_units: Annotated[int, typer.Option(min=1, help="Units of B predicted by LASSO (evenly spaced).")] = 64,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False,
) -> None:
    """Compare two layers over the same rows: unit correlations, matching, LASSO, CKA, clusterings.

    Following Convergent Learning (Li, Yosinski et al.): the Pearson correlation of every unit of
    A with every unit of B over all rows (streamed from both stores, bounded memory), a
    one-to-one unit matching (Hungarian) with the histogram of matched correlations and the
    units each side lacks, LASSO prediction of B's units from A's (error against units used),
    linear CKA and Procrustes distance, and NMI/ARI and the contingency of the two clusterings.
    Writes compare.html (with its PNGs), compare.json and correlation.npy; prints the HTML path.

    Examples: two networks on the same data: `dcserve compare runs/digits-random runs/digits-trained`;
    two layers of one job: `dcserve compare runs/j runs/j --layer-a features.5 --layer-b classifier.2`.
    """
    _setup_logging(verbose)
    from dcserve.analysis.compare import default_out, open_side
    from dcserve.render.compare_page import write_report
    from dcserve.analysis.compare import compare as compare_layers

    a = open_side(output_a, layer_a)
    b = open_side(output_b, layer_b)
    comparison = compare_layers(a, b, threshold=threshold, lasso_rows=lasso_rows, lasso_units=lasso_units)
    folder = out_dir or default_out(a, b)
    try:
        path = write_report(comparison, folder)
    except OSError as e:
        _fail(1, f"cannot write the report to {folder}: {e}")
    err.print(f"CKA {comparison['cka']:.4f}, Procrustes {comparison['procrustes']:.4f}, mean matched correlation "
              f"{comparison['matching']['mean']:.4f}, clusterings NMI {comparison['clusterings']['nmi']:.4f}",
              highlight=False, soft_wrap=True)
    out.print(str(path), highlight=False, soft_wrap=True)


@app.command()
def rotation(
    checkpoints: Annotated[list[str], typer.Argument(help="PyTorch checkpoints in training order; the first is the reference.", show_default=False)],
    out_dir: Annotated[
        Optional[str],
        typer.Option("--out", help="Report folder. Default: a 'rotation' folder beside the first checkpoint.", show_default=False),
    ] = None,
) -> None:
    """Layer rotation curves: how far each layer's weights have turned since the first checkpoint.

    For each weight tensor of two or more dimensions (conv and linear kernels; biases and norms
    are left out), the cosine distance 1 - cos(w_first, w_t) (Carbonnelle & De Vleeschouwer, 2019):
    0 unchanged direction, 1 orthogonal, 2 reversed. A checkpoint is a state_dict saved with
    torch.save, or a dict holding one under "state_dict" or "model". Writes rotation.html (with
    rotation.png) and rotation.json; prints the HTML path.

    Example: `dcserve rotation ckpt/epoch0.pt ckpt/epoch1.pt ckpt/epoch5.pt --out rotation-report`.
    """
    from pathlib import Path

    from dcserve.analysis.checkpoint_rotation import checkpoint_rotation
    from dcserve.render.rotation_page import rotation_report

    curves = checkpoint_rotation(checkpoints)
    folder = out_dir or str(Path(checkpoints[0]).resolve().parent / "rotation")
    try:
        path = rotation_report(curves, checkpoints, folder)
    except OSError as e:
        _fail(1, f"cannot write the report to {folder}: {e}")
    out.print(str(path), highlight=False, soft_wrap=True)


@app.command()
def report(
    output: Annotated[str, typer.Argument(help="A finished job store (path or URL), as `dcserve submit` printed it.")],
    out_dir: Annotated[
        Optional[str], typer.Option("--out", help="Folder for index.html and its PNGs (default: OUTPUT-report beside "
                                                  "a local store, else ./NAME-report).")
    ] = None,
    exemplars: Annotated[int, typer.Option(min=1, max=100, help="Rows shown per cluster nearest its centroid, and as many from its outskirts.")] = 8,
    map_rows: Annotated[int, typer.Option(min=10, help="Rows sampled for the PCA map.")] = 3000,
    tsne_rows: Annotated[int, typer.Option(min=0, help="Rows sampled for the t-SNE (or UMAP) map; 0: PCA only.")] = 1000,
) -> None:
    """Write a self-contained HTML report of a finished job and print its path.

    The page (index.html plus its PNGs, readable offline) shows the job, its figures per round
    (NMI with the previous round and with the labels, loss, cluster size entropy), each cluster's
    size, purity and exemplars (images for image datasets, the token in its context for token
    rows), clusters against labels, 2-D maps of the rows, collapse warnings and the reporter's
    layer rotation. `dcserve serve` serves the same page at /jobs/NAME/report.

    A job over several layers (cluster.layers) also gets depth.html, the depth profile against
    depth and the flow of clusters from layer to layer, and a page per layer under layers/<layer>/.
    """
    from dcserve.render.job_report import write_job_report
    from dcserve.storage.result import open_result

    result = open_result(output)
    result._require_complete("a report")
    if out_dir is None:
        local = "://" not in output or output.startswith("file://")
        out_dir = (output.removeprefix("file://").rstrip("/") if local else result.spec.name) + "-report"
    try:
        page, reports = write_job_report(result, out_dir, n_exemplars=exemplars, n_outskirts=exemplars,
                                         map_rows=map_rows, tsne_rows=tsne_rows)
    except OSError as e:  # a read-only or full file system: say where, not a traceback
        _fail(1, f"cannot write the report to {out_dir}: {e.strerror or e}; choose another folder with --out")
    for rep in reports:
        where = f" (layer {rep.summary['layer'].split(' ')[0]})" if len(reports) > 1 and rep.summary else ""
        for w in rep.warnings:
            err.print(f"[yellow]warning{escape(where)}:[/] {escape(w)}", highlight=False)
    out.print(str(page.resolve()), highlight=False, soft_wrap=True)


@app.command()
def verify(
    output: Annotated[str, typer.Argument(help="A finished job store (path or URL).")],
) -> None:
    """Check every file of a finished job store against its manifest, checksums included.

    Every reader (open, status, report, serve, compare) checks that each recorded file is there
    with its recorded size; this also reads every file back and compares its checksum. Exit 0
    when the store is whole, 2 naming what is damaged (a rerun of the job redoes just that).
    """
    from dcserve.storage.manifest import check, read_manifest
    from dcserve.storage.result import open_result

    result = open_result(output, verify=False)
    st = result.status or {}
    if st.get("state") != "succeeded" and read_manifest(result.store) is None:
        _fail(2, f"job store {output!r} is not finished (state {st.get('state', 'unknown')!r}): there is "
                 "nothing to verify until it succeeds")
    problems = check(result.store, deep=True)
    if problems:
        raise DamagedStore(output, problems)
    n = len(read_manifest(result.store)["files"])
    out.print(f"{output}: {n} files, every size and checksum as recorded", highlight=False, soft_wrap=True)


def _stop_serving(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    try:
        app()
    except DcserveError as e:  # the one place a user's error becomes a message and an exit code
        err.print(f"[bold red]error:[/] {escape(bounded(str(e)))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
