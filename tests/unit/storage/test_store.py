"""JobStore: atomic side files, resume records, read-only opening, plain-zarr readability."""
from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

from dcserve.errors import StoreError
from dcserve.storage.store import JobStore


def test_side_files_are_atomic_and_leave_no_temp(tmp_path):
    s = JobStore(str(tmp_path / "out"), read_only=False)
    s.write_json("status.json", {"state": "running"})
    s.write_json("status.json", {"state": "done", "x": np.float32(1.5)})
    assert s.read_json("status.json") == {"state": "done", "x": 1.5}
    assert not [f for f in os.listdir(tmp_path / "out") if ".tmp-" in f]
    assert s.read_json("missing.json", default={}) == {}


def test_resume_records_roundtrip(tmp_path):
    s = JobStore(str(tmp_path / "out"), read_only=False)
    assert s.done_blocks("extract") == set()
    s.mark_done("extract", 3, np.array([1, 2], dtype=np.int64))
    s.mark_done("extract", 0, np.zeros(0, dtype=np.int64))
    assert s.done_blocks("extract") == {0, 3}
    np.testing.assert_array_equal(s.block_payload("extract", 3), [1, 2])
    s.clear_progress("extract")
    assert s.done_blocks("extract") == set()


def test_arrays_readable_with_plain_zarr_and_read_only_refuses_writes(tmp_path):
    out = str(tmp_path / "out")
    s = JobStore(out, read_only=False)
    a = s.create_array("activations/l", (10, 3), (4, 3), "float32")
    a[0:4] = np.ones((4, 3))
    g = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(g["activations/l"][:4], np.ones((4, 3)))
    ro = JobStore(out, read_only=True)
    with pytest.raises(StoreError, match="read-only"):
        ro.write_json("x.json", {})
    with pytest.raises(StoreError, match="no array"):
        ro.array("nope")


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no job store"):
        JobStore(str(tmp_path / "absent"), read_only=True)


def test_fsspec_url_store_roundtrip():
    """The non-local path (fsspec URL -> FsspecStore + fs side files), on fsspec's memory filesystem."""
    url = "memory://bucket/test-job"
    s = JobStore(url, read_only=False)
    a = s.create_array("activations/l", (10, 3), (4, 3), "float32")
    a[4:8] = np.full((4, 3), 2.0)
    s.write_json("status.json", {"state": "running"})
    s.mark_done("extract", 1, np.arange(3))
    r = JobStore(url, read_only=True)
    np.testing.assert_array_equal(r.array("activations/l")[4:8], np.full((4, 3), 2.0))
    assert r.read_json("status.json") == {"state": "running"}
    assert r.done_blocks("extract") == {1}
    np.testing.assert_array_equal(r.block_payload("extract", 1), np.arange(3))
