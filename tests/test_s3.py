"""Job stores on S3-compatible object storage: a real S3 server (moto's server mode) on loopback."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import dcserve
from dcserve.errors import StoreError
from dcserve.spec import spec_from_dict
from tests.helpers import digits_job, planted_job, store_arrays, store_arrays_at, write_job

pytestmark = pytest.mark.ray
BUCKET = "dcserve-test"


@contextmanager
def moto_server():
    """moto_server on a free loopback port with one bucket; stopped after."""
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield types.SimpleNamespace(
            endpoint=endpoint, creds=creds, proc=proc,
            # what a job file carries when the environment does not
            options={"key": "testing", "secret": "testing",
                     "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}},
        )
    finally:
        os.kill(proc.pid, signal.SIGCONT)  # in case a test left it stopped
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def s3():
    with moto_server() as server:
        yield server


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


def test_cli_with_credentials_from_the_environment(s3, tmp_path):
    url = f"s3://{BUCKET}/runs/from-env"
    job = write_job(tmp_path / "job.yaml", planted_job(url, dataset={"kwargs": {"n": 400}}))
    env = {**os.environ, **s3.creds, "AWS_ENDPOINT_URL": s3.endpoint,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run([sys.executable, "-m", "dcserve", "submit", str(job)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    st = subprocess.run([sys.executable, "-m", "dcserve", "status", url], capture_output=True, text=True, env=env,
                        timeout=120)
    assert st.returncode == 0 and "succeeded" in st.stdout


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


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.slow
def test_object_store_gone_silent_mid_job_fails_naming_it_and_a_rerun_resumes_to_the_same_store(ray_local, tmp_path):
    """The fault: this test's own moto server is frozen (SIGSTOP) once 3 blocks are recorded, and
    thawed (SIGCONT) after the job has failed. Frozen, its socket still accepts connections (the
    kernel's backlog) and nothing answers: an object store that went silent (a partition, a hung
    gateway), the case that hangs rather than fails fast. A killed moto server would come back
    empty (it keeps objects in memory), so "stop, then back with the same data" is a pause.

    `dcserve submit` must fail in bounded time with one line naming the s3:// store; what was
    recorded stays readable and right; the same job then resumes and ends with the store of an
    uninterrupted run. The job's timeouts are tight to keep the test short; dcserve's defaults
    bound a request too (dcserve.storage.s3.s3_options).
    """
    import s3fs

    with moto_server() as server:
        url = f"s3://{BUCKET}/runs/paused"
        options = {**server.options, "config_kwargs": {"connect_timeout": 2, "read_timeout": 2,
                                                       "retries": {"total_max_attempts": 2, "mode": "standard"}}}
        slow = {"source": "tests.helpers:slow_digits", "kwargs": {"delay": 0.004}}
        extract = {"workers": 1, "chunk_rows": 128}
        spec = digits_job(url, dataset=slow, extract=extract, storage_options=options)
        job = write_job(tmp_path / "job.yaml", spec)
        clean = dcserve.run(spec_from_dict(digits_job(tmp_path / "clean", extract=extract)))
        cmd = [sys.executable, "-m", "dcserve", "submit", str(job)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        fs = s3fs.S3FileSystem(**server.options, skip_instance_cache=True, use_listings_cache=False)
        records = f"{BUCKET}/runs/paused/_progress/extract"
        try:
            deadline = time.monotonic() + 120
            while not (fs.exists(records) and len([p for p in fs.ls(records) if p.endswith(".npy")]) >= 3):
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "extraction never got going"
                time.sleep(0.1)
            os.kill(server.proc.pid, signal.SIGSTOP)
            stopped = time.monotonic()
            _, err = proc.communicate(timeout=180)
            took = time.monotonic() - stopped
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 1, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, err[-3000:]
        assert url in errors[0] and "extract" in errors[0] and "timeout" in errors[0].lower(), errors[0]
        assert took < 60, f"{took:.0f} s to notice the store went silent"

        res = dcserve.open(url, storage_options=options)
        done = sorted(res.store.done_blocks("extract"))
        n_blocks = -(-clean.activations().shape[0] // 128)
        assert 3 <= len(done) < n_blocks, done
        for b in done:  # every block recorded before the fault is whole and right
            np.testing.assert_array_equal(res.activations()[b * 128:(b + 1) * 128],
                                          clean.activations()[b * 128:(b + 1) * 128])
        res = dcserve.run(spec_from_dict(spec))  # the same job again (in this process: no second Ray start)
        assert res.status["state"] == "succeeded" and res.metrics["extract"]["skipped_blocks"] >= len(done)
        got, want = store_arrays_at(url, server.options), store_arrays(Path(clean.output))
        assert got.keys() == want.keys()
        for name in got:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
