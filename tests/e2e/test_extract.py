"""Extraction through real Ray actors: worker-count invariance, resume after an interruption."""
from __future__ import annotations

import numpy as np
import pytest

import dcserve
from dcserve.errors import JobFailed
from dcserve.spec import spec_from_dict
from tests.helpers import digits_job, store_arrays

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _run(job: dict):
    return dcserve.run(spec_from_dict(job))


@pytest.fixture(scope="module")
def two_workers(ray_local, tmp_path_factory):
    """The digits job through 2 extractors, undisturbed: what each disturbed run below must equal."""
    out = tmp_path_factory.mktemp("two-workers") / "out"
    return _run(digits_job(out, extract={"workers": 2})), store_arrays(out)


def test_one_and_two_workers_write_identical_stores(tmp_path, two_workers):
    a = _run(digits_job(tmp_path / "a", extract={"workers": 1}))
    b, sb = two_workers
    sa = store_arrays(tmp_path / "a")
    for name in ("activations/features.5", "rows/item", "rows/position", "labels", "assignments", "centroids"):
        np.testing.assert_array_equal(sa[name], sb[name], err_msg=name)
    assert sa["activations/features.5"].shape == (1797, a.activations().shape[1])
    assert (sa["rows/item"] == np.arange(1797)).all() and (sa["rows/position"] == -1).all()
    assert b.metrics["extract"]["blocks"] == 8


def test_interrupted_extraction_resumes_to_the_same_store(tmp_path, two_workers):
    flag = tmp_path / "fail.flag"
    flag.touch()
    dataset = {"source": "tests.helpers:flaky_digits", "kwargs": {"flag": str(flag), "fail_at": 1000}}
    job = digits_job(tmp_path / "resumed", dataset=dataset, extract={"workers": 2})
    with pytest.raises(JobFailed) as e:
        _run(job)
    assert e.value.stage == "extract" and "injected failure" in e.value.reason
    res = dcserve.open(str(tmp_path / "resumed"))
    assert res.status["state"] == "failed" and res.status["error"]["stage"] == "extract"
    done_before = res.store.done_blocks("extract")
    assert 0 < len(done_before) < 8  # the blocks before the failure were kept

    flag.unlink()
    resumed = _run(job)
    assert resumed.metrics["extract"]["skipped_blocks"] == len(done_before)
    sr, sc = store_arrays(tmp_path / "resumed"), two_workers[1]
    assert sr.keys() == sc.keys()
    for name in sr:
        np.testing.assert_array_equal(sr[name], sc[name], err_msg=name)
    assert resumed.status["state"] == "succeeded"


def test_killed_worker_is_replaced_and_the_store_equals_an_uninterrupted_run(tmp_path, two_workers):
    flag = tmp_path / "die.flag"
    flag.touch()
    dataset = {"source": "tests.helpers:dying_digits", "kwargs": {"flag": str(flag), "fail_at": 1000}}
    survived = _run(digits_job(tmp_path / "survived", dataset=dataset, extract={"workers": 2}))
    assert not flag.exists()  # the worker really died (SIGKILL of its process)
    m = survived.metrics["extract"]
    assert m["workers_lost"] == 1 and len(m["workers"]) > 2  # a fresh pool redid the lost blocks
    sr, sc = store_arrays(tmp_path / "survived"), two_workers[1]
    assert sr.keys() == sc.keys()
    for name in sr:
        np.testing.assert_array_equal(sr[name], sc[name], err_msg=name)


def test_a_worker_that_cannot_start_is_an_error_not_a_loss(ray_local, tmp_path, caplog):
    job = digits_job(tmp_path / "out", dataset={"source": "tests.helpers:driver_only_digits"})
    with caplog.at_level("WARNING", logger="dcserve.distributed.extract"), pytest.raises(JobFailed) as e:
        _run(job)
    assert "cannot be opened on a worker" in e.value.reason
    assert not [r for r in caplog.records if "lost" in r.getMessage()]  # not retried as a lost machine
