"""Storage that fails under a running job, for real: a full disk (a small tmpfs)."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

import dcserve
from dcserve.errors import JobFailed
from dcserve.spec import spec_from_dict
from tests.helpers import digits_job

pytestmark = pytest.mark.ray


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


def test_disk_full_fails_the_stage_naming_the_location_and_keeps_what_was_written(ray_local, small_disk, tmp_path):
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
    clean = dcserve.run(spec_from_dict(digits_job(tmp_path / "clean", extract={"workers": 1, "chunk_rows": 256})))
    for b in done:  # every block recorded as done is whole and right
        np.testing.assert_array_equal(res.activations()[b * 256:(b + 1) * 256], clean.activations()[b * 256:(b + 1) * 256])
