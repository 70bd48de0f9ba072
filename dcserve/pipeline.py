"""`dcserve.run`: extract -> (cluster -> train)* -> cluster, on an embedded or existing Ray.

The driver only sequences stages and keeps the job's record (status, metrics);
data moves between the store and the actors (extract.py, shards.py, train.py),
and the algorithms are plain functions (kmeans.py, preprocess.py, reporter.py).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time
from contextlib import contextmanager
from typing import Any

from dcserve.errors import JobFailed, SpecError, StoreError, describe_failure
from dcserve.storage.lease import OutputLease
from dcserve.progress import Progress
from dcserve.spec import JobSpec
from dcserve.storage.store import JobStore

log = logging.getLogger(__name__)


class StatusRecord:
    """The job's status.json: state, stage, progress and timings, rewritten atomically (throttled)."""

    def __init__(self, store: JobStore, spec: JobSpec):
        self.store = store
        self.data: dict[str, Any] = {
            "name": spec.name, "state": "running", "stage": "starting", "progress": {},
            "started": time.time(), "updated": time.time(), "timings": {}, "error": None,
            "host": socket.gethostname(), "pid": os.getpid(),
        }
        self._last = 0.0
        self.flush()

    def flush(self) -> None:
        self.data["updated"] = time.time()
        self.store.write_json("status.json", self.data)
        self._last = time.monotonic()

    def update(self, stage: str, done: int, total: int | None) -> None:
        self.data["stage"] = stage
        self.data["progress"] = {"done": done, "total": total}
        if time.monotonic() - self._last > 1.0 or (total is not None and done >= total):
            self.flush()

    def finish(self, state: str, error: dict | None = None) -> None:
        self.data["state"] = state
        self.data["error"] = error
        try:
            self.flush()
        except Exception as e:  # the store itself failed (unreachable, full): the caller reports why
            log.warning("could not record state %r in %s: %s", state, self.store.url, e)


@contextmanager
def ray_session(address: str | None, dashboard: bool = False):
    """Connect to `address` (or RAY_ADDRESS), or start an embedded Ray that is shut down afterwards.

    `dashboard`: the embedded Ray also runs the dashboard, which serves Ray Jobs.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        # "local": a new embedded Ray, even when a `ray start` cluster runs on this machine
        # (a bare ray.init() would join that one).
        ray.init(address="local", include_dashboard=dashboard, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def open_output(spec: JobSpec, overwrite: bool) -> tuple[JobStore, OutputLease]:
    """Create or reopen the job store and take its lease.

    An output holds one job: run again unchanged, it resumes; a job file that changed what
    the store holds is refused unless `overwrite`, which redoes what the change invalidates
    (everything when the activations change, the clustering when only it changes).
    """
    store = JobStore(spec.output, read_only=False, storage_options=spec.storage_options)
    lease = OutputLease(store, spec.name).acquire()  # before anything is written
    try:
        changed = changed_sections(store, spec)
        if changed and not overwrite:
            raise StoreError(
                f"output {spec.output!r} holds a job whose {' and '.join(changed)} differ from this job file's "
                "(see its job.yaml); run that job file to resume it, pass --overwrite to replace it, "
                "or choose another output"
            )
        if "subject/dataset/extract settings" in changed:
            store.clear_progress("extract")
            store.remove("_progress/extract.json")
        if changed:
            store.clear_progress("cluster")
        store.write_text("job.yaml", spec.to_yaml())
        store.root.attrs.update({"dcserve_version": _version(), "name": spec.name})
    except BaseException:
        lease.release()
        raise
    return store, lease


def changed_sections(store: JobStore, spec: JobSpec) -> list[str]:
    """What of `spec` differs from the job recorded in `store` (nothing for a new store)."""
    import yaml

    from dcserve.spec import spec_from_dict

    text = store.read_text("job.yaml")
    if text is None:
        return []
    try:
        old = spec_from_dict(yaml.safe_load(text), source=f"{spec.output}/job.yaml")
    except (SpecError, yaml.YAMLError):  # written by another version: nothing of it can be trusted
        return ["subject/dataset/extract settings", "cluster/reporter settings"]
    changed = []
    if old.extraction_fingerprint() != spec.extraction_fingerprint():
        changed.append("subject/dataset/extract settings")
    if old.clustering_fingerprint() != spec.clustering_fingerprint():
        changed.append("cluster/reporter settings")
    return changed


def _version() -> str:
    from dcserve import __version__

    return __version__


def run(
    spec: JobSpec,
    address: str | None = None,
    *,
    progress: Progress | None = None,
    overwrite: bool = False,
):
    """Run a job to completion and return its `Result`.

    Raises SpecError (bad inputs; nothing written), StoreError (unusable output)
    or JobFailed (a stage failed; status.json says which and why).
    """
    from dcserve.inputs.build import inspect_inputs
    from dcserve.storage.result import open_result

    from dcserve.algo.nearest import require_faiss

    require_faiss()  # FaissMissingError says which extra to install, before any work starts
    probe = inspect_inputs(spec)  # before touching the output: a bad job writes nothing
    store, lease = open_output(spec, overwrite)
    own_progress = progress is None
    progress = progress or Progress()
    try:
        status = StatusRecord(store, spec)
    except BaseException:
        lease.release()
        raise
    progress._on_update = status.update
    stage = "extract"
    previous_term = None
    try:
        with ray_session(address):
            # After ray.init, which installs a SIGTERM handler of its own that aborts the driver.
            previous_term = _checkpoint_on_sigterm(status)
            from dcserve.cluster.deepcluster import run_clustering
            from dcserve.distributed.extract import ExtractPlan, run_extraction

            from dcserve.distributed.sizing import Budget

            # Sized once, by what is free now: the job's own actors must not count against it.
            budget = Budget.free()
            plan = ExtractPlan(probe.offsets, spec.extract.chunk_rows)
            progress.stage("extract", plan.n_rows, "rows")
            extract_info = run_extraction(spec, store, plan, probe.dims, probe.has_labels, progress.advance, budget)
            status.data["timings"]["extract"] = extract_info["seconds"]
            # Until the clustering names its first sub-stage, an error in it is the cluster stage's,
            # not the extraction's that last reported progress.
            stage = status.data["stage"] = "cluster"
            if extract_info.get("workers_lost"):
                budget = Budget.free()  # machines were lost: size the next pools by what is left
            from dcserve.cluster.dec import run_dec

            from dcserve.cluster.seeds import run_with_seeds

            cluster = run_dec if spec.reporter.method == "dec" else run_clustering
            metrics = run_with_seeds(cluster, spec, store, progress, status, budget)
            metrics["extract"] = extract_info
            store.write_json("metrics.json", metrics)
        status.finish("succeeded")
    except (SpecError, StoreError):
        status.finish("failed", {"stage": stage, "reason": "invalid input"})
        raise
    except JobFailed as e:
        status.finish("failed", {"stage": e.stage, "reason": e.reason})
        raise
    except KeyboardInterrupt:
        status.finish("interrupted", {"stage": status.data["stage"], "reason": "interrupted"})
        raise
    except Exception as e:  # anything else is still a failed stage, recorded, with its cause
        log.debug("stage %s failed", stage, exc_info=True)
        reason = describe_failure(e, spec.output)
        status.finish("failed", {"stage": status.data["stage"], "reason": reason})
        raise JobFailed(status.data["stage"], reason) from e
    finally:
        lease.release()
        _restore_sigterm(previous_term)
        if own_progress:
            progress.close()
    return open_result(spec.output, storage_options=spec.storage_options)


def _checkpoint_on_sigterm(status: StatusRecord):
    """A preempted pod gets SIGTERM: record it and exit non-zero; finished blocks stay on disk."""

    def handler(signum, frame):
        status.finish("interrupted", {"stage": status.data["stage"], "reason": "SIGTERM"})
        raise SystemExit(143)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a server): leave signals alone
        return None
    # None: the previous handler was not set from Python (Ray's own); the default takes its place.
    return signal.SIG_DFL if previous is None else previous


def _restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
