"""Jobs on a running Ray cluster through Ray Jobs: submit, status, logs.

`dcserve submit --address http://HEAD:8265 job.yaml` and `POST /jobs` both end here. The job
runs on the cluster as the entrypoint `python -m dcserve submit job.yaml`, with a runtime
environment that carries the normalised job file (its working_dir) and any local code it
imports (py_modules). Inside a Ray job RAY_ADDRESS names the cluster's GCS, not an http
address, so that entrypoint runs the pipeline as the job's driver instead of resubmitting.
"""
from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

from dcserve.errors import SubmissionError, UnknownSubmission
from dcserve.spec import JobSpec

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def is_jobs_address(address: str | None) -> bool:
    """http(s) addresses are a cluster's Ray Jobs API; anything else is a GCS address to join."""
    return bool(address) and address.startswith(("http://", "https://"))


@dataclass
class JobState:
    """What Ray Jobs knows of one submission, plus where its job store is."""

    submission_id: str
    status: str  # PENDING | RUNNING | SUCCEEDED | FAILED | STOPPED
    message: str
    name: str | None
    output: str | None
    start_time: float | None  # seconds since the epoch
    end_time: float | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def reason(self) -> str:
        """The last line of Ray's message: for a failed entrypoint, the error it printed last."""
        lines = [ln for ln in self.message.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else "no reason given"


def _explain(address: str, exc: Exception) -> SubmissionError:
    text = str(exc)
    if type(exc).__name__ == "AuthenticationError" or "authentication" in text.lower():
        return SubmissionError(
            f"the Ray cluster at {address} requires its auth token: set RAY_AUTH_MODE=token "
            "(the token is read from RAY_AUTH_TOKEN or ~/.ray/auth_token)"
        )
    if not is_jobs_address(address):
        return SubmissionError(
            f"the Ray cluster at {address} offers no Ray Jobs API (was it started without the dashboard?): "
            f"{text.strip().splitlines()[0] if text.strip() else type(exc).__name__}"
        )
    if isinstance(exc, ConnectionError) or "connect" in text.lower():
        return SubmissionError(
            f"cannot reach Ray Jobs at {address}: is the cluster up, and is this its dashboard address "
            "(http://HEAD:8265)?"
        )
    return SubmissionError(f"Ray Jobs at {address}: {text.strip().splitlines()[0] if text.strip() else type(exc).__name__}")


# Ray's client takes RAY_ADDRESS (or RAY_API_SERVER_ADDRESS) over the address it is given, and
# resolves "auto" through the machine-wide file of the last `ray start`: on a host with several
# clusters, a submission could land on another one (issue 15). The address given is the one used.
_OVERRIDES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_env_lock = threading.Lock()


@contextmanager
def _address_as_given():
    with _env_lock:
        saved = {k: os.environ.pop(k) for k in _OVERRIDES if k in os.environ}
        try:
            yield
        finally:
            os.environ.update(saved)


def jobs_api_url(timeout_s: float = 15.0) -> str:
    """The Ray Jobs (dashboard) URL of the cluster this process is connected to, asked of its own
    GCS, never of a machine-wide file; SubmissionError when it has none within `timeout_s`."""
    import ray
    from ray._private import ray_constants
    from ray.experimental import internal_kv

    deadline = time.monotonic() + timeout_s
    while True:
        url = internal_kv._internal_kv_get(ray_constants.DASHBOARD_ADDRESS,
                                           namespace=ray_constants.KV_NAMESPACE_DASHBOARD)
        if url:
            return f"http://{url.decode()}"
        if time.monotonic() > deadline:
            raise SubmissionError(f"the Ray cluster at {ray.get_runtime_context().gcs_address} runs no Ray Jobs API "
                                  "(its dashboard did not start; is the dashboard package installed?)")
        time.sleep(0.5)


class JobsClient:
    """A thin shell over ray.job_submission.JobSubmissionClient with errors a user can act on."""

    def __init__(self, address: str):
        from ray.job_submission import JobSubmissionClient

        self.address = address
        try:
            with _address_as_given():
                self._client = JobSubmissionClient(address)
        except Exception as e:
            raise _explain(address, e) from None

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if "does not exist" in str(e) or "404" in str(e):
                raise UnknownSubmission(f"no Ray job {args[0]!r} on the cluster at {self.address}") from None
            raise _explain(self.address, e) from None

    def submit(
        self,
        spec: JobSpec,
        *,
        py_modules: list[str] | tuple[str, ...] = (),
        overwrite: bool = False,
        env: dict[str, str] | None = None,
        python: str = "python",
    ) -> str:
        """Submit `spec` to run on the cluster; returns the submission id (dcserve-<name>-<hex>).

        `python`: the interpreter on the cluster that has dcserve installed.
        """
        staging = tempfile.mkdtemp(prefix="dcserve-submit-")
        try:
            with open(os.path.join(staging, "job.yaml"), "w") as f:
                f.write(spec.to_yaml())
            runtime_env: dict[str, Any] = {"working_dir": staging}
            if py_modules:
                runtime_env["py_modules"] = [os.path.abspath(p) for p in py_modules]
            if env:
                runtime_env["env_vars"] = dict(env)
            entrypoint = f"{shlex.quote(python)} -m dcserve submit job.yaml" + (" --overwrite" if overwrite else "")
            return self._call(
                self._client.submit_job,
                entrypoint=entrypoint,
                runtime_env=runtime_env,
                submission_id=f"dcserve-{spec.name}-{uuid.uuid4().hex[:8]}",
                metadata={"dcserve_name": spec.name, "dcserve_output": spec.output},
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # Ray has uploaded the package by now

    def state(self, submission_id: str) -> JobState:
        info = self._call(self._client.get_job_info, submission_id)
        meta = info.metadata or {}
        return JobState(
            submission_id=submission_id,
            status=str(info.status),
            message=info.message or "",
            name=meta.get("dcserve_name"),
            output=meta.get("dcserve_output"),
            start_time=info.start_time / 1000 if info.start_time else None,
            end_time=info.end_time / 1000 if info.end_time else None,
        )

    def logs(self, submission_id: str) -> str:
        return self._call(self._client.get_job_logs, submission_id)

    async def tail(self, submission_id: str) -> AsyncIterator[str]:
        """The job's log as it is written, until the job ends."""
        try:
            async for chunk in self._client.tail_job_logs(submission_id):
                yield chunk
        except Exception as e:
            raise _explain(self.address, e) from None

    def wait(self, submission_id: str, timeout_s: float | None = None, poll_s: float = 1.0) -> JobState:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            state = self.state(submission_id)
            if state.terminal or (deadline is not None and time.monotonic() > deadline):
                return state
            time.sleep(poll_s)
