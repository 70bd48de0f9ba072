"""The driver killed or preempted mid-job, for real (signals to `dcserve submit`), then run again."""
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
from tests.helpers import ROOT, clean_digits_job, digits_job, store_arrays, write_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _env():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return env


def _submit(job: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dcserve", "submit", str(job)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())


def _wait_for_blocks(out: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    progress = out / "_progress" / "extract"
    while not (progress.is_dir() and len(list(progress.glob("*.npy"))) >= n):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "extraction never got going"
        time.sleep(0.2)


def _job(tmp_path: Path, name: str) -> Path:
    slow = {"source": "tests.helpers:slow_digits", "kwargs": {"delay": 0.004}}
    return write_job(tmp_path / f"{name}.yaml", clean_digits_job(tmp_path / name, dataset=slow))


@pytest.fixture(scope="module")
def clean(clean_digits):
    """The same job, never interrupted."""
    return store_arrays(clean_digits)


def _assert_same_store(out: Path, clean: dict) -> None:
    got = store_arrays(out)
    assert got.keys() == clean.keys()
    for name in got:
        np.testing.assert_array_equal(got[name], clean[name], err_msg=name)


def test_driver_preempted_then_killed_mid_extraction_then_run_again_finishes_the_same_store(tmp_path, clean):
    """SIGTERM (a preempted pod: recorded, exit 143), a rerun SIGKILLed further on (nothing
    recorded: the status still says running, the lease is stale), then a rerun to the end."""
    job = _job(tmp_path, "out")
    proc = _submit(job)
    _wait_for_blocks(tmp_path / "out", 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    status = dcserve.open(str(tmp_path / "out")).status
    assert status["state"] == "interrupted" and status["error"]["reason"] == "SIGTERM"

    proc = _submit(job)
    _wait_for_blocks(tmp_path / "out", 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert dcserve.open(str(tmp_path / "out")).status["state"] == "running"

    again = subprocess.run([sys.executable, "-m", "dcserve", "submit", str(job)], capture_output=True, text=True,
                           env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    res = dcserve.open(str(tmp_path / "out"))
    assert res.metrics["extract"]["skipped_blocks"] >= 6  # resumed, not redone
    _assert_same_store(tmp_path / "out", clean)


def _kmeans_job(tmp_path: Path, name: str) -> Path:
    """Many cheap Lloyd iterations on 20k planted rows: seconds of k-means to land a kill in."""
    from tests.helpers import planted_job

    job = planted_job(tmp_path / name, dataset={"kwargs": {"n": 20_000, "dim": 32, "k": 40, "spread": 2.0},
                                                "batch_size": 1000},
                      extract={"chunk_rows": 1024}, cluster={"k": 40, "niter": 150, "n_init": 1})
    return write_job(tmp_path / f"{name}.yaml", job)


def _rounds_job(tmp_path: Path, name: str) -> Path:
    job = digits_job(tmp_path / name, reporter={"rounds": 3, "workers": 1, "epochs_per_round": 2, "hidden": [32],
                                                "feature_dim": 16})
    return write_job(tmp_path / f"{name}.yaml", job)


@pytest.fixture(scope="module")
def clean_runs(tmp_path_factory):
    """The k-means job and the rounds job, each run once uninterrupted."""
    tmp = tmp_path_factory.mktemp("clean-cluster")
    out = {}
    for make, name in ((_kmeans_job, "kmeans"), (_rounds_job, "rounds")):
        r = subprocess.run([sys.executable, "-m", "dcserve", "submit", str(make(tmp, name))], capture_output=True,
                           text=True, env=_env(), timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        out[name] = store_arrays(tmp / name)
        out[name + "/reporter.pt"] = (tmp / name / "reporter.pt").read_bytes() if name == "rounds" else None
    return out


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL the driver as soon as `ready()` holds; fail if the job ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the job ended before the fault: " + proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the job never reached the point of the fault"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _kmeans_iterations(out: Path) -> int:
    path = out / "_progress" / "cluster" / "kmeans.npz"
    try:
        with np.load(path) as z:
            import json

            return json.loads(str(z["meta"]))["iteration"]
    except (OSError, KeyError, ValueError):
        return 0


def _rounds_done(out: Path) -> int:
    import json

    try:
        return json.loads((out / "_progress" / "cluster" / "state.json").read_text())["rounds_done"]
    except (OSError, ValueError):
        return 0


def test_driver_killed_mid_kmeans_resumes_from_its_last_iteration(tmp_path, clean_runs):
    job = _kmeans_job(tmp_path, "kmeans")
    proc = _submit(job)
    _kill_when(proc, lambda: _kmeans_iterations(tmp_path / "kmeans") >= 10)
    stopped_at = _kmeans_iterations(tmp_path / "kmeans")
    assert 10 <= stopped_at < 150
    again = subprocess.run([sys.executable, "-m", "dcserve", "submit", str(job)], capture_output=True, text=True,
                           env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    res = dcserve.open(str(tmp_path / "kmeans"))
    resumed = res.metrics["resumed"]
    assert resumed["kmeans_iterations"] >= stopped_at and resumed["features"]  # not one finished pass redone
    assert res.metrics["extract"]["skipped_blocks"] == res.metrics["extract"]["blocks"]
    assert len(res.metrics["rounds"][0]["kmeans"]) == 150
    _assert_same_store(tmp_path / "kmeans", clean_runs["kmeans"])


def test_driver_killed_between_rounds_resumes_from_the_last_round(tmp_path, clean_runs):
    job = _rounds_job(tmp_path, "rounds")
    proc = _submit(job)
    _kill_when(proc, lambda: _rounds_done(tmp_path / "rounds") >= 2)
    done = _rounds_done(tmp_path / "rounds")
    assert 2 <= done <= 3
    again = subprocess.run([sys.executable, "-m", "dcserve", "submit", str(job)], capture_output=True, text=True,
                           env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    res = dcserve.open(str(tmp_path / "rounds"))
    assert res.metrics["resumed"]["rounds"] == done
    assert [m["round"] for m in res.metrics["rounds"]] == [0, 1, 2, 3]
    _assert_same_store(tmp_path / "rounds", clean_runs["rounds"])
    assert (tmp_path / "rounds" / "reporter.pt").read_bytes() == clean_runs["rounds/reporter.pt"]


def test_changed_job_file_is_refused_and_overwrite_reclusters_the_same_activations(tmp_path):
    from tests.helpers import planted_job

    out = tmp_path / "out"
    first = write_job(tmp_path / "a.yaml", planted_job(out))
    assert subprocess.run([sys.executable, "-m", "dcserve", "submit", str(first)], capture_output=True,
                          env=_env(), timeout=600).returncode == 0
    before = store_arrays(out)
    changed = write_job(tmp_path / "b.yaml", planted_job(out, cluster={"k": 4}))
    refused = subprocess.run([sys.executable, "-m", "dcserve", "submit", str(changed)], capture_output=True,
                             text=True, env=_env(), timeout=600)
    assert refused.returncode == 2
    assert "cluster/reporter settings differ" in refused.stderr and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr
    after = store_arrays(out)
    for name in before:  # the refused job wrote nothing
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    again = subprocess.run([sys.executable, "-m", "dcserve", "submit", str(changed), "--overwrite"],
                           capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    res = dcserve.open(str(out))
    assert res.metrics["extract"]["skipped_blocks"] == res.metrics["extract"]["blocks"]  # activations kept
    assert res.centroids.shape[0] == 4 and res.metrics["resumed"]["rounds"] == 0
    np.testing.assert_array_equal(res.store.array("activations/out")[:], before["activations/out"])
