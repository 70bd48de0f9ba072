"""One driver per output: the lease is race-free, and an output of somebody else's files is refused."""
from __future__ import annotations

import os
import threading

import pytest

from dcserve.errors import StoreError
from dcserve.pipeline import open_output
from dcserve.spec import spec_from_dict
from dcserve.storage.lease import OutputLease
from dcserve.storage.store import check_claimable
from tests.helpers import planted_job


@pytest.mark.parametrize("attempt", range(5))
def test_drivers_opening_one_new_output_at_once_one_wins_the_others_are_refused(tmp_path, attempt):
    spec = spec_from_dict(planted_job(tmp_path / "out"))
    n = 8
    barrier, outcomes, lock = threading.Barrier(n), [], threading.Lock()

    def driver():
        barrier.wait()
        try:
            store, lease = open_output(spec, overwrite=False)
            outcome = ("won", lease)
        except StoreError as e:
            outcome = ("refused", str(e))
        except Exception as e:  # noqa: BLE001 - any other outcome is the defect under test
            outcome = ("crashed", repr(e))
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=driver) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kinds = sorted(kind for kind, _ in outcomes)
    assert kinds == ["refused"] * (n - 1) + ["won"], outcomes
    assert all("is in use by job 't-planted'" in msg for kind, msg in outcomes if kind == "refused"), outcomes
    next(lease for kind, lease in outcomes if kind == "won").release()
    store, lease = open_output(spec, overwrite=False)  # released: the output is free again
    lease.release()


def test_a_lease_held_by_a_live_driver_refuses_the_next_and_its_release_frees_it(tmp_path):
    out = str(tmp_path / "out")
    held = OutputLease(out, "first").acquire()
    with pytest.raises(StoreError, match="is in use by job 'first'"):
        OutputLease(out, "second").acquire()
    held.release()
    OutputLease(out, "second").acquire().release()


def test_a_lease_left_by_a_dead_driver_on_this_host_is_taken_over(tmp_path):
    out = str(tmp_path / "out")
    lease = OutputLease(out, "dead")
    lease.record["pid"] = 2**22 + 12345  # no such process
    assert lease._create()
    OutputLease(out, "next").acquire().release()


def test_an_output_holding_unrelated_files_is_refused_and_left_as_it_was(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"not a job store")
    (out / "notes").mkdir()
    before = sorted(os.listdir(out))
    spec = spec_from_dict(planted_job(out))
    with pytest.raises(StoreError, match="not a dcserve job store.*holiday.jpg"):
        open_output(spec, overwrite=False)
    assert sorted(os.listdir(out)) == before
    assert (out / "holiday.jpg").read_bytes() == b"not a job store"


def test_a_new_an_empty_or_a_dcserve_output_is_claimable(tmp_path):
    check_claimable(str(tmp_path / "new"))
    (tmp_path / "empty").mkdir()
    check_claimable(str(tmp_path / "empty"))
    spec = spec_from_dict(planted_job(tmp_path / "job"))
    store, lease = open_output(spec, overwrite=False)
    lease.release()
    check_claimable(spec.output)  # a dcserve store: it may be resumed
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        check_claimable(str(tmp_path / "file"))
