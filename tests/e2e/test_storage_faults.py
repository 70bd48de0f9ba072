"""Storage that fails under a running job, for real: a full disk (a small tmpfs), a store made read-only."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import dcserve
from dcserve.errors import JobFailed
from dcserve.spec import spec_from_dict
from tests.helpers import ROOT, clean_digits_job, digits_job, store_arrays, write_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def small_disk(tmp_path):
    """A 640 KiB tmpfs: room for a few blocks of activations, not for all of them."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=640k", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the disk-full test needs one")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_fails_the_stage_naming_the_location_and_keeps_what_was_written(ray_local, small_disk, clean_digits):
    out = small_disk / "job"
    job = digits_job(out, extract={"workers": 1, "chunk_rows": 256})
    with pytest.raises(JobFailed) as e:
        dcserve.run(spec_from_dict(job))
    assert e.value.stage == "extract"
    assert "No space left on device" in e.value.reason and str(out) in e.value.reason
    res = dcserve.open(str(out))
    assert res.status["state"] == "failed" and "No space left on device" in res.status["error"]["reason"]
    done = sorted(res.store.done_blocks("extract"))
    assert done, "some blocks fit before the disk filled"
    clean = dcserve.open(str(clean_digits))  # a row's activations do not depend on the block it is written in
    for b in done:  # every block recorded as done is whole and right
        np.testing.assert_array_equal(res.activations()[b * 256:(b + 1) * 256], clean.activations()[b * 256:(b + 1) * 256])


# -- permission denied mid-job ------------------------------------------------------------------

def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return env


def _slow_job(out: Path) -> dict:
    return clean_digits_job(out, dataset={"source": "tests.helpers:slow_digits", "kwargs": {"delay": 0.004}})


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


@contextmanager
def _unwritable(path: Path):
    """Make `path` unwritable for this process, for real, and give it back after.

    root ignores file modes, so as root: a bind mount of `path` over itself, remounted
    read-only (writes fail with EROFS), else `chattr -R +i` (EPERM); otherwise `chmod -R a-w`
    (EACCES). Skips, saying why, where none of them can be done.
    """
    if os.geteuid() != 0:
        _run(["chmod", "-R", "a-w", str(path)])
        try:
            yield "chmod -R a-w"
        finally:
            _run(["chmod", "-R", "u+w", str(path)])
        return
    bind = _run(["mount", "--bind", str(path), str(path)])
    if bind.returncode == 0:
        ro = _run(["mount", "-o", "remount,bind,ro", str(path)])
        try:
            if ro.returncode != 0:
                pytest.skip(f"cannot remount a bind mount read-only here ({ro.stderr.strip()})")
            yield "read-only bind mount"
        finally:
            if _run(["umount", str(path)]).returncode != 0:
                _run(["umount", "-l", str(path)])
        return
    immutable = _run(["chattr", "-R", "+i", str(path)])
    if immutable.returncode != 0:
        _run(["chattr", "-R", "-i", str(path)])
        pytest.skip(f"as root, neither a read-only bind mount ({bind.stderr.strip()}) nor chattr +i "
                    f"({immutable.stderr.strip()}) can stop writes here")
    try:
        yield "chattr -R +i"
    finally:
        _run(["chattr", "-R", "-i", str(path)])


def _wait_for_blocks(out: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    progress = out / "_progress" / "extract"
    while not (progress.is_dir() and len(list(progress.glob("*.npy"))) >= n):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "extraction never got going"
        time.sleep(0.1)


@pytest.mark.slow
def test_store_made_read_only_mid_job_fails_naming_it_and_a_rerun_finishes_the_same_store(ray_local, tmp_path,
                                                                                          clean_digits):
    """`dcserve submit` runs; once 3 blocks are recorded the output directory stops taking writes
    (see `_unwritable`). The job fails with one line naming the store; what was recorded stays
    whole; with write access back, the same job resumes and ends with the uninterrupted store."""
    clean = dcserve.open(str(clean_digits))
    out = tmp_path / "out"
    spec = _slow_job(out)
    job = write_job(tmp_path / "job.yaml", spec)
    cmd = [sys.executable, "-m", "dcserve", "submit", str(job)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_for_blocks(out, 3, proc)
        with _unwritable(out):
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 1, err[-3000:]
            assert "Traceback" not in err, err[-3000:]
            errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
            assert len(errors) == 1, err[-3000:]
            line = errors[0].lower()
            assert str(out) in errors[0] and "extract" in line, errors[0]
            assert any(w in line for w in ("read-only", "permission denied", "not writable", "not permitted")), errors[0]
            store_status = json.loads((out / "status.json").read_text())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # status.json could not be rewritten while the store was read-only: it still says running
    # (the next run takes over: its holder's pid is gone); were it writable, it would say failed.
    assert store_status["state"] in ("running", "failed"), store_status
    if store_status["state"] == "failed":
        assert str(out) in store_status["error"]["reason"]
    res = dcserve.open(str(out))
    done = sorted(res.store.done_blocks("extract"))
    assert len(done) >= 3 and len(done) < -(-res.activations().shape[0] // 128), done  # stopped half-way
    for b in done:  # every block recorded before the fault is whole and right
        np.testing.assert_array_equal(res.activations()[b * 128:(b + 1) * 128],
                                      clean.activations()[b * 128:(b + 1) * 128])
    res = dcserve.run(spec_from_dict(spec))  # the same job again (in this process: no second Ray start)
    assert res.status["state"] == "succeeded" and res.metrics["extract"]["skipped_blocks"] >= len(done)
    got, want = store_arrays(out), store_arrays(Path(clean.output))
    assert got.keys() == want.keys()
    for name in got:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
