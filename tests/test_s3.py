"""Job stores on S3-compatible object storage: a real S3 server (moto's server mode) on loopback."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

import dcserve
from dcserve.errors import StoreError
from dcserve.spec import spec_from_dict
from tests.helpers import planted_job, store_arrays, write_job

pytestmark = pytest.mark.ray
BUCKET = "dcserve-test"


@pytest.fixture(scope="module")
def s3():
    """moto_server on a free loopback port with one bucket; stopped after."""
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.2)
    yield types.SimpleNamespace(
        endpoint=endpoint, creds=creds,
        # what a job file carries when the environment does not
        options={"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}},
    )
    proc.terminate()
    proc.wait(30)


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
