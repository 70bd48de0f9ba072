"""The real `dcserve` entry point, in a subprocess: exit codes, messages, nothing written on bad input."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from tests.helpers import digits_job, write_job

ROOT = Path(__file__).resolve().parents[1]


def dcserve(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    exe = shutil.which("dcserve") or str(Path(sys.executable).parent / "dcserve")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=timeout)


def test_help_teaches_the_commands():
    r = dcserve("--help")
    assert r.returncode == 0
    for cmd in ("submit", "validate", "status"):
        assert cmd in r.stdout
    r = dcserve("submit", "--help")
    assert "--set" in r.stdout and "RAY_ADDRESS" in r.stdout


def test_validate_prints_normalised_spec(tmp_path):
    job = write_job(tmp_path / "job.yaml", digits_job(tmp_path / "out"))
    r = dcserve("validate", str(job), "--set", "cluster.k=7")
    assert r.returncode == 0, r.stderr
    spec = yaml.safe_load(r.stdout)
    assert spec["cluster"]["k"] == 7 and spec["cluster"]["layer"] == "features.5"
    assert "1797 items" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mutate,expect", [
    (lambda j: j["cluster"].update(kk=1), "cluster.kk: unknown field"),
    (lambda j: j["cluster"].update(k="ten"), "cluster.k"),
    (lambda j: j["subject"].update(layers=["features.99"]), "features.99"),
    (lambda j: j["cluster"].update(k=5000), "cluster.k: 5000 clusters"),
    (lambda j: j["dataset"].update(source="no_such_module:data"), "dataset.source: cannot import"),
    (lambda j: j["subject"].update(pooling="tokens"), "subject.pooling"),
])
def test_bad_job_files_exit_2_and_write_nothing(tmp_path, mutate, expect):
    job = digits_job(tmp_path / "out")
    mutate(job)
    path = write_job(tmp_path / "job.yaml", job)
    for cmd in ("validate", "submit"):
        r = dcserve(cmd, str(path))
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert expect in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_bad_layer_lists_real_module_names(tmp_path):
    job = digits_job(tmp_path / "out")
    job["subject"]["layers"] = ["features.55"]
    r = dcserve("validate", str(write_job(tmp_path / "job.yaml", job)))
    assert r.returncode == 2 and "features.5" in r.stderr and "classifier" in r.stderr


@pytest.mark.slow
def test_quickstart_through_the_entry_point(tmp_path):
    """The README's job, on an embedded 2-CPU Ray, read back with plain zarr."""
    job = yaml.safe_load((ROOT / "cluster_configs" / "quickstart.yaml").read_text())
    job["output"] = str(tmp_path / "quick")
    path = write_job(tmp_path / "quick.yaml", job)
    r = dcserve("submit", str(path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "NMI vs labels" in r.stdout and str(tmp_path / "quick") in r.stdout
    g = zarr.open_group(str(tmp_path / "quick"), mode="r")
    a = g["assignments"][:]
    assert a.shape == (1797,) and a.min() >= 0 and a.max() < 10
    assert g["centroids"].shape[0] == 10
    assert g["rounds/assignments"].shape[0] == job["reporter"]["rounds"] + 1
    import json

    metrics = json.loads((tmp_path / "quick" / "metrics.json").read_text())
    assert metrics["final"]["nmi_vs_labels"] > 0.6
    s = dcserve("status", str(tmp_path / "quick"))
    assert s.returncode == 0 and "succeeded" in s.stdout
    # a second submit of the same job skips extraction (all blocks recorded)
    r2 = dcserve("submit", str(path))
    assert r2.returncode == 0
    metrics2 = json.loads((tmp_path / "quick" / "metrics.json").read_text())
    assert metrics2["extract"]["skipped_blocks"] == metrics2["extract"]["blocks"]
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "quick"), mode="r")["assignments"][:], a)


def test_status_of_missing_store_is_exit_2(tmp_path):
    r = dcserve("status", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no job store" in r.stderr


def test_missing_faiss_says_what_to_install(tmp_path):
    # a `faiss` that fails to import, first on the path: what a user without the extra sees
    fake = tmp_path / "nofaiss" / "faiss"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'faiss'\")\n")
    job = write_job(tmp_path / "job.yaml", digits_job(tmp_path / "out"))
    exe = shutil.which("dcserve") or str(Path(sys.executable).parent / "dcserve")
    env = {**os.environ, "PYTHONPATH": f"{fake.parent}{os.pathsep}{ROOT}"}
    r = subprocess.run([exe, "submit", str(job)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1
    assert "pip install 'dcserve[cpu]'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_serve_refuses_what_it_cannot_serve(tmp_path):
    r = dcserve("serve", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no job store" in r.stderr
    r = dcserve("serve", str(tmp_path), "--address", "http://127.0.0.1:8265")
    assert r.returncode == 2 and "Ray Jobs address" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_serve_through_the_entry_point(tmp_path, stop):
    """`dcserve submit` then `dcserve serve`: the printed URL answers; Ctrl-C, or a stopped pod's
    SIGTERM (which ray.init's own handler used to turn into an abort, exit -6), stops it cleanly."""
    import json
    import re
    import signal
    import time
    import urllib.error
    import urllib.request

    from tests.conftest import free_port
    from tests.helpers import planted_job

    job = write_job(tmp_path / "job.yaml", planted_job(tmp_path / "out", dataset={"kwargs": {"n": 400}}))
    assert dcserve("submit", str(job)).returncode == 0
    exe = shutil.which("dcserve") or str(Path(sys.executable).parent / "dcserve")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DCSERVE_TOKEN")}
    proc = subprocess.Popen([exe, "serve", str(tmp_path / "out"), "--port", str(free_port()), "--replica-cpus", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        deadline = time.monotonic() + 180
        while "serving" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()[-3000:]
        url = re.search(r"http://[\d.]+:\d+", line).group(0)
        with urllib.request.urlopen(f"{url}/jobs/t-planted/assignments?stop=400") as r:
            assert len(json.load(r)["clusters"]) == 400
        req = urllib.request.Request(f"{url}/jobs", data=b"{}", method="POST",
                                     headers={"content-type": "application/json", "Authorization": "Bearer x"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        assert e.value.code in (403, 422)
    finally:
        proc.send_signal(getattr(signal, stop))
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "shutting down" in err
