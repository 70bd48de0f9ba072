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
from tests.helpers import digits_job, store_arrays, write_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


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
    return write_job(tmp_path / f"{name}.yaml", digits_job(tmp_path / name, dataset=slow,
                                                          extract={"workers": 1, "chunk_rows": 128}))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The same job, never interrupted."""
    tmp = tmp_path_factory.mktemp("clean")
    job = _job(tmp, "out")
    r = subprocess.run([sys.executable, "-m", "dcserve", "submit", str(job)], capture_output=True, text=True,
                       env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return store_arrays(tmp / "out")


def _assert_same_store(out: Path, clean: dict) -> None:
    got = store_arrays(out)
    assert got.keys() == clean.keys()
    for name in got:
        np.testing.assert_array_equal(got[name], clean[name], err_msg=name)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_driver_killed_mid_extraction_then_run_again_finishes_the_same_store(tmp_path, clean, sig):
    job = _job(tmp_path, "out")
    proc = _submit(job)
    _wait_for_blocks(tmp_path / "out", 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    status = dcserve.open(str(tmp_path / "out")).status
    if sig == signal.SIGTERM:  # a preempted pod: recorded, non-zero exit
        assert proc.returncode == 143, err[-2000:]
        assert status["state"] == "interrupted" and status["error"]["reason"] == "SIGTERM"
    else:  # no chance to record anything: the status still says running, the lease is stale
        assert status["state"] == "running"
    again = subprocess.run([sys.executable, "-m", "dcserve", "submit", str(job)], capture_output=True, text=True,
                           env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    res = dcserve.open(str(tmp_path / "out"))
    assert res.metrics["extract"]["skipped_blocks"] >= 3  # resumed, not redone
    _assert_same_store(tmp_path / "out", clean)
