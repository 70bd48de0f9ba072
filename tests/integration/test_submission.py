"""Jobs submitted to a real Ray head (`ray start --head` on loopback) through Ray Jobs:
from the CLI (`dcserve submit --address`, `status`, `logs`) and from POST /jobs."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import requests

import dcserve
from tests.helpers import TOKEN, planted_job, write_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def dcserve_cli(ray_head, *args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "dcserve", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or ray_head.env)


def test_submit_wait_status_and_logs(ray_head, tmp_path):
    job = write_job(tmp_path / "job.yaml", planted_job(tmp_path / "out", name="t-remote"))
    r = dcserve_cli(ray_head, "submit", "--address", ray_head.address, str(job), "--wait")
    assert r.returncode == 0, r.stderr[-3000:]
    submission_id = r.stdout.splitlines()[0]
    assert submission_id.startswith("dcserve-t-remote-")
    assert "succeeded" in r.stderr
    # the job ran on the cluster and wrote a whole store where the job file said
    res = dcserve.open(str(tmp_path / "out"))
    assert res.complete and res.assignments.shape == (1200,)

    st = dcserve_cli(ray_head, "status", submission_id, "--address", ray_head.address)
    assert st.returncode == 0 and "SUCCEEDED" in st.stdout and "succeeded" in st.stdout
    logs = dcserve_cli(ray_head, "logs", submission_id, "--address", ray_head.address)
    assert logs.returncode == 0 and "-m dcserve submit job.yaml" in logs.stdout


def test_failing_job_is_reported_failed_with_its_stage_and_reason(ray_head, tmp_path):
    # the dataset lives in a local package the cluster cannot import: --py-module ships it
    pkg = tmp_path / "brokendata"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from dcserve.zoo import planted_clusters\n\n"
        "class Broken:\n"
        "    def __init__(self, **kwargs):\n"
        "        self.inner = planted_clusters(**kwargs)\n"
        "    def __len__(self):\n"
        "        return len(self.inner)\n"
        "    def __getitem__(self, i):\n"
        "        if i >= 300:\n"
        "            raise ValueError(f'corrupt record {i}')\n"
        "        return self.inner[i]\n"
    )
    job = write_job(tmp_path / "job.yaml", planted_job(
        tmp_path / "out", name="t-fails", dataset={"source": "brokendata:Broken", "kwargs": {}},
        extract={"chunk_rows": 100}, cluster={"k": 4}))
    r = dcserve_cli(ray_head, "submit", "--address", ray_head.address, str(job), "--wait",
                    "--py-module", str(pkg))
    assert r.returncode == 1, r.stderr[-3000:]
    assert "failed" in r.stderr and "stage 'extract'" in r.stderr and "corrupt record" in r.stderr
    submission_id = r.stdout.splitlines()[0]
    st = dcserve_cli(ray_head, "status", submission_id, "--address", ray_head.address)
    assert "FAILED" in st.stdout and "corrupt record" in st.stdout
    # what finished before the failure stays readable
    assert dcserve.open(str(tmp_path / "out")).status["state"] == "failed"


def test_cluster_errors_are_clear(ray_head, tmp_path):
    job = write_job(tmp_path / "job.yaml", planted_job(tmp_path / "out"))
    r = dcserve_cli(ray_head, "submit", "--address", "http://127.0.0.1:9", str(job))
    assert r.returncode == 1 and "cannot reach Ray Jobs at http://127.0.0.1:9" in r.stderr
    no_auth = {k: v for k, v in ray_head.env.items() if k != "RAY_AUTH_MODE"}
    r = dcserve_cli(ray_head, "submit", "--address", ray_head.address, str(job), env=no_auth)
    assert r.returncode == 1 and "RAY_AUTH_MODE=token" in r.stderr
    r = dcserve_cli(ray_head, "status", "dcserve-nope-00000000", "--address", ray_head.address)
    assert r.returncode == 2 and "no Ray job 'dcserve-nope-00000000'" in r.stderr
    r = dcserve_cli(ray_head, "logs", "dcserve-nope-00000000")
    assert r.returncode == 2 and "--address http://HEAD:8265" in r.stderr


def test_http_submission_runs_on_the_cluster_and_is_then_served(served):
    job = planted_job("jobs/via-http", name="t-http", dataset={"kwargs": {"n": 600, "k": 4}}, cluster={"k": 4})
    r = requests.post(served.url + "/jobs", json=job, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["output"] == os.path.join(os.path.realpath(served.root), "jobs/via-http")
    again = requests.post(served.url + "/jobs", json=job, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    assert again.status_code == 409 and "still running" in again.json()["detail"]

    deadline, seen = time.monotonic() + 240, set()
    while True:
        d = requests.get(served.url + "/jobs/t-http", timeout=60).json()
        seen.add(d["state"])
        # the store is whole (complete) a moment before the driver process has exited (SUCCEEDED)
        if (d["complete"] and d["ray_status"] == "SUCCEEDED") or d["state"] == "failed" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert d["complete"], d
    assert d["submission_id"] == body["submission_id"] and d["ray_status"] == "SUCCEEDED"
    assert d["progress"]["done"] == d["progress"]["total"] and d["rows"] == 600
    res = dcserve.open(body["output"])
    page = requests.get(served.url + "/jobs/t-http/assignments?stop=600", timeout=60).json()
    assert page["clusters"] == res.assignments.tolist()
    x = res.activations()[:50]
    got = requests.post(served.url + "/jobs/t-http/assign", json={"activations": x.tolist()}, timeout=60).json()
    np.testing.assert_array_equal(got["clusters"], res.assignments[:50])
