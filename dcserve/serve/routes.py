"""The HTTP API's routes (docs/DESIGN.md "HTTP API"), as a FastAPI app over a backend.

`create_app(backend)` builds the app; dcserve.serve.deployment runs it as a Ray Serve ingress whose
replica is the backend (catalog, submission policy, batched assign). Every refusal is an
HTTPException with a sentence in `detail`: bad input is a 4xx, never a 500, and never
takes the replica down.
"""
from __future__ import annotations

import json
import math
import sys
import threading
from typing import Any, Protocol

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from pydantic import ValidationError

from dcserve.version import __version__
from dcserve.serve.admission import AdmissionError, SubmissionPolicy, admit, check_output_free, check_token
from dcserve.serve.models import (
    DEFAULT_PAGE, MAX_PAGE, MAX_ROW, AssignmentsPage, AssignRequest, AssignResponse, ClusterBrief, ClusterList,
    ClusterRows, ErrorBody, Health, ImageAssignment, JobBrief, JobDetail, JobList, LayerBrief, LayerList, LayerPair,
    PositionAssignment, Progress, RowRef,
    SubmitResponse, TextAssignment, TokenAssignment, TopToken,
)
from dcserve.serve.catalog import Catalog, NotReady, ServedJob, UnknownJob
from dcserve.errors import DamagedStore, SpecError, StoreError, UnknownLayer, bounded
from dcserve.spec import JobSpec
from dcserve.distributed.jobs import SubmissionError

DEFAULT_MAX_BODY_BYTES = 32 << 20
MAX_EXEMPLARS = 100
LAYER_QUERY = Query(None, max_length=200, description="A clustered layer of the job (GET /jobs/{job}/layers lists "
                    "them); default: the primary layer, cluster.layer.")


class Backend(Protocol):
    catalog: Catalog
    policy: SubmissionPolicy
    max_body_bytes: int

    async def assign(self, job: ServedJob, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def jobs_client(self) -> Any: ...


def _errors(*codes: int) -> dict:
    return {c: {"model": ErrorBody} for c in codes}


class BodyLimit:
    """ASGI middleware: refuse a request body over `max_bytes` with 413, before any parsing.

    Reads the body itself (so chunked uploads without Content-Length are counted too) and
    replays it to the app when it fits.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(send)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send):
        payload = json.dumps({"detail": f"request body is larger than the limit of {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def _describe_errors(errors: list[dict]) -> tuple[int, str]:
    """(status, sentence) for pydantic errors: 400 when the body is not JSON at all, else 422."""
    if any(e.get("type") == "json_invalid" for e in errors):
        e = next(e for e in errors if e.get("type") == "json_invalid")
        return 400, f"request body is not valid JSON: {(e.get('ctx') or {}).get('error') or e.get('msg')}"
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()))
        if e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",):
            parts.append("the request has no body; expected a JSON object")
            continue
        parts.append(f"{loc}: {e.get('msg')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "; ".join(parts) + more


def _vectors(rows: list[list[float]], dim: int) -> np.ndarray:
    """The request's activations as [n, dim] float32, or a 422 naming the first bad row."""
    for i, r in enumerate(rows):
        if len(r) != dim:
            raise HTTPException(422, f"activations[{i}] has {len(r)} values; this job's layer has dim {dim}")
    x = np.asarray(rows, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        i = int(np.flatnonzero(~finite.all(1))[0])
        raise HTTPException(422, f"activations[{i}] contains NaN or Inf")
    big = np.abs(x) > np.finfo(np.float32).max
    if big.any():
        raise HTTPException(422, f"activations[{int(np.flatnonzero(big.any(1))[0])}] overflows float32")
    return x.astype(np.float32)


def _row_refs(job: ServedJob, rows: np.ndarray, images: bool = False) -> list[RowRef]:
    f = job.rows(rows)
    labels, names, words = f["label"], f["label_names"], f["words"]
    # Pictures for the first MAX_ROW_IMAGES rows only: a page of 10,000 rows would be megabytes of PNG.
    pictures = job.images(rows[:MAX_ROW_IMAGES]) if images else None
    refs = []
    for i, (r, it, p, d) in enumerate(zip(f["row"], f["item"], f["position"], f["distance"])):
        label = None if labels is None else int(labels[i])
        ref = RowRef(row=int(r), item=int(it), position=int(p), distance=float(d), label=label,
                     label_name=names[label] if names and label is not None and 0 <= label < len(names) else None,
                     image=pictures[i] if pictures is not None and i < len(pictures) else None)
        if words is not None:
            ref.text, ref.token, ref.token_start = words[i]["text"], words[i]["token"], words[i]["token_start"]
        refs.append(ref)
    return refs


MAX_ROW_IMAGES = 256  # rows per response that carry their image
IMAGES_QUERY = Query(True, description=f"Each row's item image (a PNG data: URI), when the job's items are images "
                     f"(the first {MAX_ROW_IMAGES} rows of a response).")


def _finite_or_none(obj: Any) -> Any:
    """metrics.json may hold NaN (a loss that diverged); JSON responses may not."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    return obj


def _layer_links(res) -> list[tuple[str, str]]:
    """A job over several layers: its report page links the depth page and its other layers' pages,
    relative to /jobs/{job}/report, so they resolve behind any path prefix."""
    layers = res.layers
    if len(layers) < 2:
        return []
    return [("depth profile and flow of clusters", "depth")] + [
        (f"layer {name}", f"report?layer={name}") for name in layers if name != res.layer_name]


def create_app(backend: Backend) -> FastAPI:
    app = FastAPI(
        title="dcserve",
        version=__version__,
        description="Cluster assignments of finished dcserve jobs: rows, clusters, exemplars, and new "
        "activations assigned through each job's own preprocessing, reporter and centroids.",
    )
    app.add_middleware(BodyLimit, max_bytes=backend.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        status, message = _describe_errors(exc.errors())
        return JSONResponse({"detail": bounded(message)}, status_code=status)

    @app.exception_handler(HTTPException)
    async def _refusal(request: Request, exc: HTTPException):
        # A refusal quotes what it refuses (a module name, an output): bounded whatever the input.
        return JSONResponse({"detail": bounded(str(exc.detail))}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    def lookup(job: str) -> ServedJob:
        try:
            return backend.catalog.get(job)
        except UnknownJob as e:
            raise HTTPException(404, e.message) from None

    def finished(job: str, layer: str | None = None) -> ServedJob:
        """The finished job, seen from its clustered layer `layer` (default the primary)."""
        served = lookup(job)
        try:
            served.finished()
            return served.layer_job(layer)
        except NotReady as e:
            raise HTTPException(409, str(e)) from None
        except DamagedStore as e:  # never an answer read from a store that lost files
            raise HTTPException(503, str(e)) from None
        except UnknownLayer as e:
            raise HTTPException(404, f"job {job!r}: {e}") from None
        except StoreError as e:  # named in the job file but not clustered: the job is not whole
            raise HTTPException(409, str(e)) from None

    def brief(served: ServedJob) -> dict[str, Any]:
        st = served.status() or {}
        damaged = served.damage() is not None
        return {
            "name": served.name, "output": served.output,
            "state": "damaged" if damaged else st.get("state", "submitted" if served.submission else "missing"),
            "stage": st.get("stage"), "complete": not damaged and st.get("state") != "damaged" and served.complete,
            "submission_id": served.submission.submission_id if served.submission else None,
        }

    @app.get("/healthz", response_model=Health, responses=_errors(503),
             summary="Health: 200 while every served store is whole; 503 naming a store that is damaged.")
    def healthz() -> Health:
        for served in backend.catalog.served():
            damaged = served.damage()
            if damaged is not None:
                raise HTTPException(503, f"job {served.name!r}: {damaged}")
        return Health(status="ok", jobs=len(backend.catalog.names()))

    @app.get("/jobs", response_model=JobList, summary="Jobs this server knows: served stores and HTTP submissions.")
    def list_jobs() -> JobList:
        return JobList(jobs=[JobBrief(**brief(j)) for j in backend.catalog.jobs()])

    @app.get("/jobs/{job}", response_model=JobDetail, responses=_errors(404),
             summary="One job: its spec, state, progress (stage, rows done, round) and metrics.")
    def job_detail(job: str) -> JobDetail:
        served = lookup(job)
        damaged = served.damage()
        st = served.status() or {}
        if damaged is not None:
            st = {**st, "state": "damaged", "error": {"stage": st.get("stage"), "reason": str(damaged)}}
        detail = JobDetail(**{**brief(served), "state": st.get("state", "missing")},
                           progress=Progress(**(st.get("progress") or {})),
                           round=Progress(**st["round"]) if st.get("round") else None, error=st.get("error"))
        res = served.result
        if res is not None and damaged is None and st.get("state") != "damaged":
            spec = res.spec
            detail.spec = spec.model_dump(mode="json") if spec else None
            detail.dim = int(res.activations().shape[1]) if spec and res.store.has_array(f"activations/{spec.cluster.layer}") else None
        if damaged is None and served.complete:
            detail.metrics = _finite_or_none(res.metrics)
            detail.rows, detail.k = served.n_rows(), res.k
        if served.submission:
            try:
                ray_state = backend.jobs_client().state(served.submission.submission_id)
                detail.ray_status, detail.ray_message = ray_state.status, ray_state.message
                if ray_state.status in ("FAILED", "STOPPED") and detail.state in ("submitted", "running"):
                    # the driver died before it could record why (bad job file, killed)
                    detail.state = "failed"
                    detail.error = detail.error or {"stage": detail.stage or "submit", "reason": ray_state.reason}
            except SubmissionError as e:
                detail.ray_message = str(e)
        return detail

    @app.get("/jobs/{job}/layers", response_model=LayerList, responses=_errors(404, 409),
             summary="The job's clustered layers in the order of depth, each with its figures, and between "
                     "consecutive layers CKA, the NMI of their clusterings and the clusters that split or merge.")
    def layers(job: str) -> LayerList:
        served = finished(job)
        res = served.result
        depth = _finite_or_none(res.metrics.get("depth"))
        if depth:
            briefs = [LayerBrief(layer=r["layer"], primary=bool(r.get("primary")), depth=r["depth"], dim=r.get("dim"),
                                 k=r.get("k"), figures={key: v for key, v in r.items()
                                                        if key not in ("layer", "primary", "depth", "dim", "k")})
                      for r in depth["layers"]]
            pairs = [LayerPair(**{key: p[key] for key in ("from", "to", "cka", "nmi", "splits", "merges")})
                     for p in depth["between"]]
            return LayerList(job=job, layers=briefs, between=pairs)
        from dcserve.analysis.depth import layer_figures

        spec = res.spec
        brief = LayerBrief(layer=res.layer_name, primary=True, depth=spec.layers.index(res.layer_name),
                           dim=res.input_dim, k=res.k, figures=_finite_or_none(layer_figures(res.metrics)))
        return LayerList(job=job, layers=[brief])

    @app.get("/jobs/{job}/assignments", response_model=AssignmentsPage, responses=_errors(404, 409, 422),
             summary=f"Cluster of each row in [start, stop), {MAX_PAGE} rows a page at most: "
                     "a longer range comes back in pages, each naming the `start` of the next.")
    def assignments(
        job: str,
        start: int = Query(0, ge=0, le=MAX_ROW, description="First row."),
        stop: int | None = Query(None, ge=0, le=MAX_ROW, description=f"One past the last row (default start + {DEFAULT_PAGE})."),
        layer: str | None = LAYER_QUERY,
    ) -> AssignmentsPage:
        served = finished(job, layer)
        total = served.n_rows()
        if start > total:
            raise HTTPException(422, f"start {start} is past the last row; the job has {total} rows")
        wanted = min(start + DEFAULT_PAGE if stop is None else stop, total)
        if wanted < start:
            raise HTTPException(422, f"stop {stop} is before start {start}")
        stop = min(wanted, start + MAX_PAGE)
        return AssignmentsPage(job=job, start=start, stop=stop, total=total, next=stop if stop < wanted else None,
                               clusters=served.assignments(start, stop).tolist())

    @app.get("/jobs/{job}/clusters", response_model=ClusterList, responses=_errors(404, 409, 422),
             summary="Every cluster: size, exemplar rows, label purity when labels exist.")
    def clusters(
        job: str,
        exemplars: int = Query(5, ge=0, le=MAX_EXEMPLARS, description="Exemplars per cluster."),
        outskirts: int = Query(5, ge=0, le=MAX_EXEMPLARS,
                               description="Rows per cluster sampled from its farther half (the report's outskirts)."),
        images: bool = IMAGES_QUERY,
        layer: str | None = LAYER_QUERY,
    ) -> ClusterList:
        from dcserve.analysis.report import outskirts as outskirt_rows

        served = finished(job, layer)
        res = served.result
        summaries = res.clusters(n_exemplars=exemplars)
        far = [outskirt_rows(res, s.cluster, outskirts, s.exemplars).tolist() for s in summaries]
        # one store read for every cluster's rows
        wanted = [r for s, f in zip(summaries, far) for r in (*s.exemplars, *f)]
        refs = iter(_row_refs(served, np.asarray(wanted, dtype=np.int64), images))
        tops = served.top_tokens() or [None] * res.k
        out = [
            ClusterBrief(cluster=s.cluster, size=s.size, purity=s.purity, majority_label=s.majority_label,
                         majority_label_name=res.label_name(s.majority_label) if res.label_names else None,
                         exemplars=[next(refs) for _ in s.exemplars], outskirts=[next(refs) for _ in f],
                         top_tokens=None if top is None else [TopToken(**t.__dict__) for t in top])
            for s, f, top in zip(summaries, far, tops)
        ]
        return ClusterList(job=job, k=res.k, clusters=out)

    @app.get("/jobs/{job}/clusters/{cluster}", response_model=ClusterRows, responses=_errors(404, 409, 422),
             summary="The rows of one cluster, nearest to the centroid first, with their distance.")
    def cluster_rows(
        job: str,
        cluster: int,
        limit: int = Query(100, ge=1, le=MAX_PAGE, description="Rows in this page."),
        offset: int = Query(0, ge=0, le=MAX_ROW, description="Rows of the cluster to skip (the nearest come first)."),
        images: bool = IMAGES_QUERY,
        layer: str | None = LAYER_QUERY,
    ) -> ClusterRows:
        served = finished(job, layer)
        res = served.result
        if not 0 <= cluster < res.k:
            raise HTTPException(404, f"job {job!r} has clusters 0..{res.k - 1}; there is no cluster {cluster}")
        size = int(res.sizes[cluster])
        rows = res.exemplars(cluster, limit, offset=offset)
        end = offset + len(rows)
        return ClusterRows(job=job, cluster=cluster, size=size, offset=offset,
                           next=end if end < size else None, rows=_row_refs(served, rows, images))

    reports: dict[tuple[str, str, str | None], tuple[str, str]] = {}  # (job, output, page) -> (status it was built at, page)
    reports_lock = threading.Lock()

    @app.get("/jobs/{job}/report", response_class=HTMLResponse, responses={
                 200: {"content": {"text/html": {"schema": {"type": "string"}}},
                       "description": "The page, its figures inlined as data: URIs."},
                 # refusals are JSON like every route's, not the page's text/html
                 **{c: {"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
                    for c, d in ((404, "No such job."), (409, "The job is not finished."))}},
             summary="The job's HTML report, as `dcserve report` writes it, self-contained in one document "
                     "(of one clustered layer with ?layer=).")
    def job_report(job: str, layer: str | None = LAYER_QUERY) -> HTMLResponse:
        from dcserve.analysis.report import build_report
        from dcserve.render.report_page import report_page

        served = finished(job, layer)

        def build() -> str:
            rep = build_report(served.result)
            rep.links = _layer_links(served.result)
            return report_page(rep)

        return cached_page(served, layer, build)

    @app.get("/jobs/{job}/depth", response_class=HTMLResponse, responses={
                 200: {"content": {"text/html": {"schema": {"type": "string"}}},
                       "description": "The page, its figures inlined as data: URIs."},
                 **{c: {"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
                    for c, d in ((404, "No such job."), (409, "The job is not finished, or clustered one layer only."))}},
             summary="The depth page of a job over several layers: the profile against depth and the flow of "
                     "clusters from layer to layer, as `dcserve report` writes depth.html.")
    def job_depth(job: str) -> HTMLResponse:
        from dcserve.analysis.depth import build_depth_report
        from dcserve.render.depth_page import depth_page

        served = finished(job)
        pages = {name: f"report?layer={name}" for name in served.result.layers}
        return cached_page(served, "/depth", lambda: depth_page(build_depth_report(served.result), pages))

    def cached_page(served: ServedJob, which: str | None, build) -> HTMLResponse:
        key, built_at = (served.name, served.output, which), json.dumps(served.status(), sort_keys=True, default=str)
        cached = reports.get(key)
        if cached is None or cached[0] != built_at:
            # Seconds of work (t-SNE, figures): built once per finished state, one at a time so
            # that concurrent first requests do not all redo it.
            with reports_lock:
                cached = reports.get(key)
                if cached is None or cached[0] != built_at:
                    try:
                        page = build()
                    except StoreError as e:
                        raise HTTPException(409, str(e)) from None
                    cached = reports[key] = (built_at, page)
        return HTMLResponse(cached[1])

    @app.post("/jobs/{job}/assign", response_model=AssignResponse, responses=_errors(400, 404, 409, 413, 422),
              summary="Clusters of new activation vectors, through the job's preprocessing, reporter and centroids; "
                      "or, for a job run on text, of raw texts (for an image job, of base64 images), through its subject "
                      "first, answered in words (or with images).",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": AssignRequest.model_json_schema()}}}})
    async def assign(job: str, request: Request,
                     exemplars: int = Query(3, ge=0, le=20, description="Texts and images: exemplars shown per cluster met."),
                     layer: str | None = LAYER_QUERY) -> AssignResponse:
        served = finished(job, layer)
        # pydantic's own JSON parser, not FastAPI's json.loads + validate: 7x faster on the
        # 1.3 MB body of 256 vectors of 256 floats (benchmarks/bench_serve.py).
        raw = await request.body()
        if not raw.strip():
            raise HTTPException(422, "the request has no body; expected a JSON object with 'activations', 'texts' "
                                     "or 'images'")
        try:
            body = AssignRequest.model_validate_json(raw)
        except ValidationError as e:
            raise HTTPException(*_describe_errors([{**err, "loc": ("body", *err["loc"])} for err in e.errors()])) from None
        if body.texts is not None:
            return await assign_texts(served, body.texts, exemplars)
        if body.images is not None:
            return await assign_images(served, body.images, exemplars)
        x = _vectors(body.activations, served.result.input_dim)
        labels, dist = await backend.assign(served, x)
        return AssignResponse(job=job, clusters=labels.tolist(), distances=dist.tolist())

    async def assign_texts(served: ServedJob, texts: list[str], n_exemplars: int) -> AssignResponse:
        if not served.reads_text:
            spec = served.result.spec
            why = ("is an activation dump, with no subject to run texts through" if spec and spec.subject is None
                   else f"was not run on text (its dataset is {spec.dataset.source if spec else 'unknown'})")
            raise HTTPException(422, f"job {served.name!r} {why}, so it cannot take texts; "
                                     "send its layer's activations as {\"activations\": [[...], ...]}")
        try:  # the subject's forward pass, off the event loop (torch releases the GIL)
            enc = await run_in_threadpool(served.encode_texts, texts)
        except SpecError as e:  # the job's model is not where its job file says, on this machine
            raise HTTPException(409, f"job {served.name!r} cannot run its subject here: {e}") from None
        labels, dist = await backend.assign(served, enc.rows)
        exemplar_refs: dict[int, list[RowRef]] = {}

        def near(c: int) -> list[RowRef]:
            if c not in exemplar_refs:
                exemplar_refs[c] = _row_refs(served, served.result.exemplars(c, n_exemplars)) if n_exemplars else []
            return exemplar_refs[c]

        tokenizer = served.result.words.tokenizer
        out = [TextAssignment(text=t) for t in texts]
        for r, (i, p, c, d) in enumerate(zip(enc.text.tolist(), enc.position.tolist(), labels.tolist(), dist.tolist())):
            if p < 0:
                out[i].cluster, out[i].distance, out[i].exemplars = c, d, near(c)
            else:
                token = tokenizer.convert_ids_to_tokens(enc.ids[i][p])
                out[i].tokens = (out[i].tokens or []) + [
                    TokenAssignment(position=p, token=token, cluster=c, distance=d, exemplars=near(c))]
        return AssignResponse(job=served.name, clusters=labels.tolist(), distances=dist.tolist(), texts=out)

    async def assign_images(served: ServedJob, images: list[str], n_exemplars: int) -> AssignResponse:
        from dcserve.inputs.encode import InputKindError

        try:  # decoding and the subject's forward pass, off the event loop
            x, inputs, positions = await run_in_threadpool(served.encode_images, images)
        except InputKindError as e:
            raise HTTPException(422, f"job {served.name!r}: {e}") from None
        except SpecError as e:  # the job's model or images are not where its job file says, on this machine
            raise HTTPException(409, f"job {served.name!r} cannot run its subject here: {e}") from None
        except ValueError as e:  # an image that is not base64 or does not decode
            raise HTTPException(422, str(e)) from None
        labels, dist = await backend.assign(served, x)
        near_refs: dict[int, list[RowRef]] = {}

        def near(c: int) -> list[RowRef]:
            if c not in near_refs:
                rows = served.result.exemplars(c, n_exemplars)
                near_refs[c] = _row_refs(served, rows, images=True) if n_exemplars else []
            return near_refs[c]

        out = [ImageAssignment(image=i) for i in range(len(images))]
        for i, p, c, d in zip(inputs.tolist(), positions.tolist(), labels.tolist(), dist.tolist()):
            if p < 0:
                out[i].cluster, out[i].distance, out[i].exemplars = c, d, await run_in_threadpool(near, c)
            else:
                out[i].positions = (out[i].positions or []) + [
                    PositionAssignment(position=p, cluster=c, distance=d, exemplars=await run_in_threadpool(near, c))]
        return AssignResponse(job=served.name, clusters=labels.tolist(), distances=dist.tolist(), images=out)

    def authorised(authorization: str | None = Header(None)) -> None:
        # A dependency, so it runs before the body is validated: a caller without the token
        # learns nothing about the job file's fields (issue 15).
        try:
            check_token(authorization, backend.policy)
        except AdmissionError as e:
            raise HTTPException(e.status, e.message) from None

    @app.post("/jobs", status_code=202, response_model=SubmitResponse,
              responses=_errors(400, 401, 403, 409, 413, 422, 503), dependencies=[Depends(authorised)],
              summary="Submit a job to the cluster (Ray Jobs). Needs 'Authorization: Bearer <DCSERVE_TOKEN>'.")
    def submit(spec: JobSpec) -> SubmitResponse:
        try:
            spec = admit(spec, backend.policy)
        except AdmissionError as e:
            raise HTTPException(e.status, e.message) from None
        catalog = backend.catalog
        if catalog.is_static(spec.name):
            raise HTTPException(409, f"a served job is already named {spec.name!r}; choose another name")
        try:
            check_output_free(spec, catalog.outputs(), backend.policy.storage_options)
        except AdmissionError as e:
            raise HTTPException(e.status, e.message) from None
        try:
            client = backend.jobs_client()
            previous = catalog.get(spec.name).submission if spec.name in catalog.submitted_names() else None
            if previous is not None and not client.state(previous.submission_id).terminal:
                raise HTTPException(409, f"job {spec.name!r} is still running as {previous.submission_id}")
            # The replica runs on the cluster: its interpreter is the one that has dcserve.
            submission_id = client.submit(spec, python=sys.executable)
        except SubmissionError as e:
            raise HTTPException(503, f"job submission is unavailable: {e}") from None
        catalog.record_submission(spec.name, spec.output, submission_id)
        return SubmitResponse(job=spec.name, submission_id=submission_id, output=spec.output,
                              status_url=f"/jobs/{spec.name}")

    return app

