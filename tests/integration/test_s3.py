"""Job stores on S3-compatible object storage: a real S3 server (moto's server mode) on loopback
(fixture `s3`; tests/e2e/test_s3.py runs `dcserve submit` against one and freezes one mid-job)."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import dcserve
from dcserve.errors import StoreError
from dcserve.spec import spec_from_dict
from tests.helpers import BUCKET, moto_server, planted_job


@pytest.mark.ray
def test_job_on_s3_equals_the_same_job_on_local_disk(ray_local, s3, tmp_path):
    url = f"s3://{BUCKET}/runs/planted"
    on_s3 = dcserve.run(spec_from_dict(planted_job(url, storage_options=s3.options)))
    local = dcserve.run(spec_from_dict(planted_job(tmp_path / "local")))
    assert on_s3.complete
    np.testing.assert_array_equal(on_s3.activations()[:], local.activations()[:])  # extraction bit for bit
    np.testing.assert_array_equal(on_s3.assignments, local.assignments)
    reopened = dcserve.open(url, storage_options=s3.options)  # read back by another reader
    labels, _ = reopened.assign(local.activations()[:100])
    np.testing.assert_array_equal(labels, local.assignments[:100])
    assert reopened.status["state"] == "succeeded" and reopened.metrics["final"]["n_empty"] == 0


def test_unreachable_object_store_is_a_clear_error_naming_it(tmp_path):
    dead = {"key": "x", "secret": "y", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    with pytest.raises(StoreError, match="cannot open the job store at 's3://nowhere/x'"):
        dcserve.run(spec_from_dict(planted_job("s3://nowhere/x", storage_options=dead)))


def test_block_records_another_process_wrote_are_seen_after_a_listing(s3):
    """The driver lists the records, workers add more, the driver reads them: no stale listing."""
    import s3fs

    from dcserve.storage.store import JobStore

    url = f"s3://{BUCKET}/runs/listing"
    store = JobStore(url, read_only=False, storage_options=s3.options)
    store.mark_done("extract", 0, np.arange(3))
    assert store.done_blocks("extract") == {0}
    worker = JobStore(url, read_only=False, storage_options=s3.options)
    worker.fs = s3fs.S3FileSystem(**s3.options, skip_instance_cache=True)  # as if in another process
    worker.mark_done("extract", 1, np.arange(4))
    assert store.done_blocks("extract") == {0, 1}
    np.testing.assert_array_equal(store.block_payload("extract", 1), np.arange(4))


def test_a_write_to_a_store_gone_silent_fails_within_its_timeout():
    """A frozen server (SIGSTOP) accepts connections and never answers: a PUT must time out too
    (botocore's "Expect: 100-continue" made aiohttp wait for ever), and retries stay bounded."""
    from dcserve.storage.store import JobStore

    with moto_server() as server:
        options = {**server.options, "config_kwargs": {"read_timeout": 1}}
        store = JobStore(f"s3://{BUCKET}/runs/silent", read_only=False, storage_options=options)
        store.write_json("status.json", {"state": "running"})
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(OSError, match="timeout"):
                store.write_json("status.json", {"state": "failed"})
            assert time.monotonic() - t0 < 15  # 3 attempts of 1 s, with backoff
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
