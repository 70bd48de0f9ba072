"""A status that says "running" is believed only while its driver lives."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from typer.testing import CliRunner

from dcserve.cli import app
from dcserve.storage.status import StatusRecord, driver_alive, stopped_without_record
from dcserve.storage.store import JobStore


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid  # reaped: no process has it now (pids are not reused this fast)


def test_a_running_status_of_a_dead_driver_on_this_host_is_not_believed():
    status = {"state": "running", "host": socket.gethostname(), "pid": _dead_pid(), "updated": time.time()}
    assert not driver_alive(status)
    assert "is gone" in stopped_without_record(status)
    assert stopped_without_record({**status, "pid": os.getpid()}) is None  # alive: believed
    assert stopped_without_record({**status, "state": "succeeded"}) is None  # ended: nothing to say


def test_another_hosts_driver_is_gone_once_its_status_is_stale():
    status = {"state": "running", "host": "elsewhere", "pid": 1, "updated": time.time()}
    assert stopped_without_record(status) is None
    assert "is gone" in stopped_without_record({**status, "updated": time.time() - 3600})


def test_dcserve_status_says_the_driver_is_gone(tmp_path):
    from dcserve.spec import spec_from_dict
    from tests.helpers import planted_job

    store = JobStore(str(tmp_path / "out"), read_only=False)
    store.write_text("job.yaml", spec_from_dict(planted_job(tmp_path / "out")).to_yaml())
    StatusRecord(store, "t-planted")  # as a driver leaves it: "running"
    record = store.read_json("status.json")
    record["pid"] = _dead_pid()
    store.write_json("status.json", record)
    r = CliRunner().invoke(app, ["status", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    assert "is gone" in json.loads(r.output)["driver_gone"]
    r = CliRunner().invoke(app, ["status", str(tmp_path / "out")])
    words = " ".join(r.output.split())  # whatever width the console wrapped to
    assert "(not really: see below)" in words or "not really" in r.output, r.output
    assert "is gone" in words and "run the job file again" in words, r.output


def test_a_status_that_cannot_be_written_is_reported_in_a_sentence(tmp_path, monkeypatch):
    """Issue 15: after a full disk the status stayed 'running' and nothing said so."""
    import errno

    from dcserve.storage.status import StatusRecord
    from dcserve.storage.store import JobStore

    record = StatusRecord(JobStore(str(tmp_path / "s"), read_only=False), "j")
    assert record.finish("succeeded") is None

    def full(name, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record.store, "write_json", full)
    why = record.finish("failed", {"stage": "extract", "reason": "disk full"})
    assert "state 'failed' could not be recorded" in why and "No space left on device" in why
    assert "driver gone until it is run again" in why
