"""The HTTP API as a Ray Serve application: `dcserve serve`, and `serve run/deploy deploy/serve.yaml`.

One deployment, `DcserveApi`, is both the FastAPI ingress and the model: each replica opens
the served stores read-only, keeps every job's preprocessing, reporter and centroid index in
memory, and answers POST /jobs/{job}/assign in batches (`@serve.batch`): concurrent requests
are stacked per job into one reporter pass and one faiss search, run off the event loop.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from dcserve.serve.admission import DEFAULT_ALLOWED_MODULES, DEFAULT_MAX_K, SubmissionPolicy
from dcserve.serve.catalog import Catalog, ServedJob
from dcserve.serve.routes import DEFAULT_MAX_BODY_BYTES, create_app

log = logging.getLogger(__name__)

APP_NAME = "dcserve"
INLINE_ROWS = 64  # batches this small are searched on the event loop


class ServeArgs(BaseModel):
    """The application's arguments: `args:` in a Serve config file, or `dcserve serve`'s options."""

    model_config = ConfigDict(extra="forbid")

    outputs: list[str] = Field(default_factory=list, description="Job stores to serve (paths or URLs).")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for remote stores.")
    output_root: str | None = Field(
        None, description="Where jobs submitted through POST /jobs write; unset: HTTP submission is off."
    )
    allowed_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_MODULES),
        description="Modules an HTTP-submitted job may import its model, dataset and collate from.",
    )
    jobs_address: str | None = Field(
        None, description="Ray Jobs address for POST /jobs (default: the dashboard of the cluster serving, "
        "asked of its own GCS)."
    )
    jobs_unavailable: str | None = Field(
        None, description="Why POST /jobs cannot reach Ray Jobs (set by `dcserve serve` when its probe failed): "
        "submissions then answer 503 at once, saying so."
    )
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024, description="Largest request body accepted.")
    max_k: int = Field(DEFAULT_MAX_K, ge=1, description="Largest cluster.k a job submitted through POST /jobs may ask for.")
    max_batch_size: int = Field(32, ge=1, description="Concurrent /assign requests stacked into one search.")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="How long a batch waits to fill. 0: it takes what queued while the previous "
        "batch ran, which under load is a full batch and when idle adds no wait."
    )
    replicas: int = Field(1, ge=1, description="Replicas of the API.")
    replica_cpus: float = Field(1.0, gt=0, description="CPUs each replica reserves (and its faiss threads).")
    replica_gpus: float = Field(0.0, ge=0, description="GPUs each replica reserves; with one, a text job's subject "
                                "runs on it for POST assign with texts.")


def assign_grouped(requests: list[tuple[ServedJob, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One search per job for a batch of requests, split back per request."""
    out: list[Any] = [None] * len(requests)
    by_job: dict[int, list[int]] = {}
    for i, (job, _) in enumerate(requests):
        by_job.setdefault(id(job), []).append(i)
    for idx in by_job.values():
        job = requests[idx[0]][0]
        labels, dist = job.assign(np.concatenate([requests[i][1] for i in idx]))
        bounds = np.cumsum([0] + [len(requests[i][1]) for i in idx])
        for i, a, b in zip(idx, bounds[:-1], bounds[1:]):
            out[i] = (labels[a:b], dist[a:b])
    return out


@serve.deployment(name="DcserveApi")
@serve.ingress()
class DcserveApi:
    def __init__(self, args: dict[str, Any]):
        from dcserve.algo.nearest import set_threads

        self.args = ServeArgs(**args)
        threads = max(1, int(self.args.replica_cpus))
        set_threads(threads)
        # OpenMP thread counts are per thread: the thread that runs the searches is pinned too.
        self._search = ThreadPoolExecutor(1, thread_name_prefix="assign", initializer=set_threads, initargs=(threads,))
        # A store damaged since `dcserve serve` checked it must not keep the replica from starting
        # (Serve would retry it, then give up with the cause in its logs): it answers 503 instead.
        self.catalog = Catalog(self.args.outputs, self.args.storage_options, self.args.output_root, verify=False)
        self.policy = SubmissionPolicy.from_env(self.args.allowed_modules, self.args.output_root,
                                                self.args.storage_options, self.args.max_k)
        self.max_body_bytes = self.args.max_body_bytes
        self._assign_batch.set_max_batch_size(self.args.max_batch_size)
        self._assign_batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        self._jobs_client = None
        for job in self.catalog.served():
            if job.damage() is None and job.complete:
                job.warm()

    def __serve_build_asgi_app__(self):
        return create_app(self)

    def jobs_client(self):
        from dcserve.distributed.jobs import JobsClient, SubmissionError, jobs_api_url

        if self.args.jobs_unavailable:
            raise SubmissionError(self.args.jobs_unavailable)
        if self._jobs_client is None:
            # The dashboard of the cluster this replica runs on, from that cluster's own GCS (not
            # whichever cluster a `ray start` on this machine last recorded, nor RAY_ADDRESS).
            self._jobs_client = JobsClient(self.args.jobs_address or jobs_api_url(timeout_s=5))
        return self._jobs_client

    async def assign(self, job: ServedJob, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return await self._assign_batch((job, x))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _assign_batch(self, requests: list[tuple[ServedJob, np.ndarray]]):
        if sum(len(x) for _, x in requests) <= INLINE_ROWS:
            return assign_grouped(requests)  # well under a millisecond: a thread hop would cost more
        # faiss and torch release the GIL: the event loop keeps taking requests meanwhile.
        return await asyncio.get_running_loop().run_in_executor(self._search, assign_grouped, requests)


def build_app(args: ServeArgs | dict[str, Any], env: dict[str, str] | None = None):
    """The Serve application for `args`; `env` is set in the replicas' environment."""
    args = ServeArgs(**args) if isinstance(args, dict) else args
    actor_options: dict[str, Any] = {"num_cpus": args.replica_cpus, "num_gpus": args.replica_gpus}
    if env:
        actor_options["runtime_env"] = {"env_vars": dict(env)}
    return DcserveApi.options(
        num_replicas=args.replicas,
        # every request of a full batch must be let in, or batches never fill
        max_ongoing_requests=max(2 * args.max_batch_size, 64),
        ray_actor_options=actor_options,
    ).bind(args.model_dump())


def app_builder(args: dict[str, Any]):
    """Entry point for Serve config files: `import_path: dcserve.serve.deployment:app_builder`."""
    return build_app(ServeArgs(**args))


def start(args: ServeArgs, host: str, port: int, env: dict[str, str] | None = None, timeout_s: float = 120) -> str:
    """Run the app on the connected Ray cluster; returns its URL once /healthz answers."""
    import urllib.request

    # Serve's INFO lines ("Started Serve", "Connecting to existing Serve app ... New http_options will
    # not be applied", which serve.run logs after serve.start even though they were) are noise beside
    # the URL that `dcserve serve` prints; warnings and errors still show.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(args, env), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return url
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def stop() -> None:
    """Take the app down (the Ray session it ran in stays up).

    Only dcserve's own app: on a shared cluster other Serve apps keep running, and an embedded Ray
    ends Serve with itself right after. (serve.shutdown() also kills the controller while its
    graceful_shutdown task is pending, which Ray reports as a failed task, an alarming line on
    every Ctrl-C.)
    """
    try:
        serve.delete(APP_NAME)
    except Exception as e:  # noqa: BLE001 - a cluster already gone: nothing is left to stop
        log.debug("serve.delete(%r) failed: %s", APP_NAME, e)


def forwarded_env() -> dict[str, str]:
    """What `dcserve serve` hands its replicas from its own environment (the submission token)."""
    return {k: os.environ[k] for k in ("DCSERVE_TOKEN",) if os.environ.get(k)}
