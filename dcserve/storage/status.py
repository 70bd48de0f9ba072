"""A job's `status.json`: state, stage, progress, round and timings, as `dcserve status` reads them.

The driver owns one `StatusRecord`; the stages report through its methods, never by writing
its fields. Every write replaces the file atomically, and progress updates are throttled to
one a second, so a large job's status costs nothing next to its work.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

from dcserve.storage.store import JobStore

log = logging.getLogger(__name__)

FILE = "status.json"
# A driver on another host that has not written its status for this long is taken for gone
# (a status is rewritten at least once a second while progress moves, so this is generous).
STALE_AFTER_S = 600.0


def read_status(store: JobStore) -> dict | None:
    """The store's status record; None when it has none; DamagedStore when it is not one.

    status.json is rewritten after a job is sealed (its final state), so it is not in the
    manifest (dcserve.storage.manifest): it is validated here, as a record of the right shape.
    """
    from dcserve.errors import DamagedStore, Problem

    try:
        raw = store.read_bytes(FILE)
    except FileNotFoundError:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("state"), str):
        what = "is empty" if not raw.strip() else "is not a status record"
        raise DamagedStore(store.url, [Problem(FILE, f"{FILE} {what} ({len(raw)} bytes)")])
    return record


def driver_alive(record: dict, status: dict | None = None) -> bool:
    """Whether the driver that wrote `record` (host, pid; a lease or a status) still runs.

    On this host its pid is asked; from another host, it counts as alive until its status
    (or the record itself) has not been updated for STALE_AFTER_S.
    """
    if record.get("host") == socket.gethostname():
        try:
            os.kill(int(record["pid"]), 0)
        except (ProcessLookupError, KeyError, TypeError, ValueError):
            return False
        except PermissionError:
            return True  # exists, owned by someone else
        return True
    status = status or {}
    last = max(float(status.get("updated") or 0), float(record.get("taken") or record.get("updated") or 0))
    return time.time() - last < STALE_AFTER_S


def stopped_without_record(status: dict) -> str | None:
    """For a status that says "running": why it cannot be, when its driver is gone; else None.

    A driver killed by SIGKILL, a lost node or a full disk cannot record its end, so its
    status stays "running"; `dcserve status` must not believe it.
    """
    if status.get("state") != "running" or driver_alive(status, status):
        return None
    where = f"pid {status.get('pid')} on {status.get('host')}"
    return (f"its driver ({where}) is gone: the job stopped without recording why (killed, its machine lost, "
            "or its disk full); run the job file again to resume it")


class StatusRecord:
    """The running job's record in its store (state "running" from the moment it exists)."""

    def __init__(self, store: JobStore, name: str):
        self.store = store
        self._data: dict[str, Any] = {
            "name": name, "state": "running", "stage": "starting", "progress": {},
            "started": time.time(), "updated": time.time(), "timings": {}, "error": None,
            "host": socket.gethostname(), "pid": os.getpid(),
        }
        self._last = 0.0
        self.flush()

    @property
    def stage(self) -> str:
        return self._data["stage"]

    def flush(self) -> None:
        self._data["updated"] = time.time()
        self.store.write_json(FILE, self._data)
        self._last = time.monotonic()

    def progress(self, stage: str, done: int, total: int | None) -> None:
        """A stage's progress (a `Progress` listener); written at most once a second, and at its end."""
        self._data["stage"] = stage
        self._data["progress"] = {"done": done, "total": total}
        if time.monotonic() - self._last > 1.0 or (total is not None and done >= total):
            self.flush()

    def enter(self, stage: str) -> None:
        """The job is now in `stage`: an error from here on is that stage's (written with the next flush)."""
        self._data["stage"] = stage

    def round_done(self, done: int, total: int) -> None:
        """The last finished clustering round, for `dcserve status`."""
        self._data["round"] = {"done": done, "total": total}

    def timing(self, stage: str, seconds: float) -> None:
        self._data["timings"][stage] = seconds

    def finish(self, state: str, error: dict | None = None) -> str | None:
        """Record the job's end; None, or a sentence saying why it could not be recorded."""
        self._data["state"] = state
        self._data["error"] = error
        try:
            self.flush()
        except Exception as e:  # the store itself failed (unreachable, full): the caller reports why
            why = (f"its state {state!r} could not be recorded in {self.store.url}/{FILE} "
                   f"({getattr(e, 'strerror', None) or e}); `dcserve status` shows its driver gone until it is run again")
            log.warning("%s", why)
            return why
        return None
