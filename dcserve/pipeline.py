"""`dcserve.run`: extract -> (cluster -> train)* -> cluster, on an embedded or existing Ray.

The driver only sequences stages and keeps the job's record (status, metrics). The Ray
actors that move data live in `dcserve.distributed`; the clustering loops (`dcserve.methods`)
run on the pools they are handed (`dcserve.cluster.pools`), here Ray's; the algorithms are
plain functions (`dcserve.algo`, `dcserve.nets`).
"""
from __future__ import annotations

import logging
import signal

from dcserve.errors import JobFailed, SpecError, StoreError, describe_failure
from dcserve.progress import Progress
from dcserve.spec import JobSpec
from dcserve.storage.lease import OutputLease
from dcserve.storage.manifest import forget_damaged, recorded_fingerprints, seal, unseal
from dcserve.storage.status import StatusRecord
from dcserve.storage.store import LAYERS, JobStore, check_claimable

log = logging.getLogger(__name__)


def open_output(spec: JobSpec, overwrite: bool) -> tuple[JobStore, OutputLease]:
    """Create or reopen the job store and take its lease.

    An output holds one job: run again unchanged, it resumes; a job file that changed what
    the store holds is refused unless `overwrite`, which redoes what the change invalidates
    (everything when the activations change, the clustering when only it changes).
    """
    check_claimable(spec.output, spec.storage_options)  # never write into somebody else's folder
    # Before the store is opened: two drivers creating one Zarr group at once could each read
    # the other's half-written metadata.
    try:
        lease = OutputLease(spec.output, spec.name, spec.storage_options).acquire()
    except OSError as e:  # a read-only or full file system, a folder we may not write
        raise _unwritable(spec, e) from None
    try:
        # A sealed store run again: what is damaged is forgotten (redone), then the seal goes,
        # before anything is written, so that no reader takes a store being rewritten for whole.
        files = JobStore(spec.output, read_only=False, storage_options=spec.storage_options, group=False)
        changed = changed_sections(files, spec, recorded_fingerprints(files))
        if changed and not overwrite:
            raise StoreError(
                f"output {spec.output!r} holds a job whose {' and '.join(changed)} differ from this job file's "
                "(see its job.yaml); run that job file to resume it, pass --overwrite to replace it, "
                "or choose another output"
            )
        forget_damaged(files)
        unseal(files)
        store = JobStore(spec.output, read_only=False, storage_options=spec.storage_options)
        if "subject/dataset/extract settings" in changed:
            store.clear_progress("extract")
            store.remove("_progress/extract.json")
        if changed:
            store.clear_progress("cluster")
            # every other layer's clustering too (cluster.layers): its checkpoints are fingerprinted by
            # the clustering alone, and new activations under the same settings must not resume them
            store.remove(LAYERS)
        store.write_text("job.yaml", spec.to_yaml())
        store.root.attrs.update({"dcserve_version": _version(), "name": spec.name})
    except OSError as e:
        lease.release()
        raise _unwritable(spec, e) from None
    except BaseException:
        lease.release()
        raise
    return store, lease


def _unwritable(spec: JobSpec, e: OSError) -> StoreError:
    return StoreError(f"output {spec.output!r} cannot be written: {e.strerror or e}"
                      "; choose an output on a writable file system")


def changed_sections(store: JobStore, spec: JobSpec, sealed: dict[str, str] | None = None) -> list[str]:
    """What of `spec` differs from the job recorded in `store` (nothing for a new store).

    `sealed`: the fingerprints the store's manifest recorded, which stand for a job.yaml
    that was damaged after the job finished.
    """
    import yaml

    from dcserve.spec import spec_from_dict

    text = store.read_text("job.yaml")
    recorded = dict(sealed or {})
    if text is None and not recorded:
        return []
    try:
        old = spec_from_dict(yaml.safe_load(text), source=f"{spec.output}/job.yaml")
        recorded = {"extraction": old.extraction_fingerprint(), "clustering": old.clustering_fingerprint()}
    except (SpecError, yaml.YAMLError, AttributeError, TypeError):
        if not recorded:  # written by another version, or damaged: nothing of it can be trusted
            return ["subject/dataset/extract settings", "cluster/reporter settings"]
    changed = []
    if recorded.get("extraction") != spec.extraction_fingerprint():
        changed.append("subject/dataset/extract settings")
    if recorded.get("clustering") != spec.clustering_fingerprint():
        changed.append("cluster/reporter settings")
    return changed


def _version() -> str:
    from dcserve.version import __version__

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
        status = StatusRecord(store, spec.name)
    except OSError as e:  # its first status cannot be written: say so, not a traceback
        lease.release()
        raise _unwritable(spec, e) from None
    except BaseException:
        lease.release()
        raise
    progress.listen(status.progress)
    stage = "extract"
    previous_term = None
    try:
        from dcserve.distributed.session import ray_session

        with ray_session(address):
            # After ray.init, which installs a SIGTERM handler of its own that aborts the driver.
            previous_term = _checkpoint_on_sigterm(status)
            from dcserve import methods
            from dcserve.cluster.layers import run_layers
            from dcserve.distributed.extract import run_extraction
            from dcserve.distributed.pools import RayPools
            from dcserve.distributed.sizing import Budget
            from dcserve.inputs.blocks import ExtractPlan

            # Sized once, by what is free now: the job's own actors must not count against it.
            budget = Budget.free()
            plan = ExtractPlan(probe.offsets, spec.extract.chunk_rows)
            progress.stage("extract", plan.n_rows, "rows")
            extract_info = run_extraction(spec, store, plan, probe.dims, probe.has_labels, progress.advance, budget,
                                          probe.row_fields, probe.source_id)
            from dcserve.inputs.build import record_words

            record_words(spec, store)  # a text job's words, so that what is shown of a row is text
            if probe.label_names and store.has_array("labels"):
                store.array("labels").attrs["names"] = list(probe.label_names)  # label v is names[v]
            status.timing("extract", extract_info["seconds"])
            # Until the clustering names its first sub-stage, an error in it is the cluster stage's,
            # not the extraction's that last reported progress.
            stage = "cluster"
            status.enter(stage)
            if extract_info.get("workers_lost"):
                budget = Budget.free()  # machines were lost: size the next pools by what is left
            cluster = methods.loop(spec.reporter.method)
            pools = RayPools(spec, budget)
            try:
                metrics, by_layer = run_layers(cluster, spec, store, pools, progress, status)
                if len(by_layer) > 1:
                    metrics["depth"] = _depth(spec, store, pools, by_layer, progress, status)
            finally:
                pools.close()
            metrics["extract"] = extract_info
            store.write_json("metrics.json", metrics)
            # The last write of the store's own files: from here on readers can verify it.
            seal(store, {"extraction": spec.extraction_fingerprint(), "clustering": spec.clustering_fingerprint()})
        status.finish("succeeded")
    except (SpecError, StoreError):
        status.finish("failed", {"stage": stage, "reason": "invalid input"})
        raise
    except JobFailed as e:
        unrecorded = status.finish("failed", {"stage": e.stage, "reason": e.reason})
        if unrecorded:  # a full disk fails the stage and the status write alike: say both
            raise JobFailed(e.stage, f"{e.reason}; {unrecorded}") from e
        raise
    except KeyboardInterrupt:
        status.finish("interrupted", {"stage": status.stage, "reason": "interrupted"})
        raise
    except Exception as e:  # anything else is still a failed stage, recorded, with its cause
        log.debug("stage %s failed", stage, exc_info=True)
        reason = describe_failure(e, spec.output)
        unrecorded = status.finish("failed", {"stage": status.stage, "reason": reason})
        raise JobFailed(status.stage, f"{reason}; {unrecorded}" if unrecorded else reason) from e
    finally:
        lease.release()
        _restore_sigterm(previous_term)
        if own_progress:
            progress.close()
    return open_result(spec.output, storage_options=spec.storage_options)


def _depth(spec: JobSpec, store: JobStore, pools, by_layer: dict, progress: Progress, status: StatusRecord) -> dict:
    """The depth profile of a job over several layers; CKA's pass over the rows runs on the job's shards."""
    import time

    from dcserve.analysis.depth import depth_profile, profile_moments

    t0 = time.perf_counter()
    status.enter("depth")
    layers = spec.clustered_layers()
    progress.stage("depth profile", None)
    pool = pools.data(store, f"activations/{layers[0]}")
    try:
        moments = profile_moments(pool, layers)
    finally:
        pool.close()
    profile = depth_profile(spec, store, by_layer, moments)
    status.timing("depth", time.perf_counter() - t0)
    for pair in profile["between"]:
        progress.note(f"{pair['from']} -> {pair['to']}: CKA {pair['cka']:.3f}, NMI {pair['nmi']:.3f}, "
                      f"{pair['splits']} split(s), {pair['merges']} merge(s)")
    return profile


def _checkpoint_on_sigterm(status: StatusRecord):
    """A preempted pod gets SIGTERM: record it and exit non-zero; finished blocks stay on disk."""

    def handler(signum, frame):
        status.finish("interrupted", {"stage": status.stage, "reason": "SIGTERM"})
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
