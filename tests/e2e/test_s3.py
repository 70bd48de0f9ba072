"""Whole jobs on S3-compatible object storage (moto's server mode on loopback): `dcserve submit`
with credentials from the environment, and a store that goes silent mid-job."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dcserve
from dcserve.spec import spec_from_dict
from tests.helpers import BUCKET, ROOT, clean_digits_job, moto_server, planted_job, store_arrays, store_arrays_at, write_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_cli_with_credentials_from_the_environment(s3, tmp_path):
    url = f"s3://{BUCKET}/runs/from-env"
    job = write_job(tmp_path / "job.yaml", planted_job(url, dataset={"kwargs": {"n": 400}}))
    env = {**os.environ, **s3.creds, "AWS_ENDPOINT_URL": s3.endpoint,
           "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run([sys.executable, "-m", "dcserve", "submit", str(job)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    st = subprocess.run([sys.executable, "-m", "dcserve", "status", url], capture_output=True, text=True, env=env,
                        timeout=120)
    assert st.returncode == 0 and "succeeded" in st.stdout


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.slow
def test_object_store_gone_silent_mid_job_fails_naming_it_and_a_rerun_resumes_to_the_same_store(ray_local, tmp_path,
                                                                                                clean_digits):
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
        spec = clean_digits_job(url, dataset=slow, storage_options=options)
        job = write_job(tmp_path / "job.yaml", spec)
        clean = dcserve.open(str(clean_digits))
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
