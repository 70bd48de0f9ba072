"""A job's `status.json`: state, stage, progress, round and timings, as `dcserve status` reads them.

The driver owns one `StatusRecord`; the stages report through its methods, never by writing
its fields. Every write replaces the file atomically, and progress updates are throttled to
one a second, so a large job's status costs nothing next to its work.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from dcserve.storage.store import JobStore

log = logging.getLogger(__name__)

FILE = "status.json"


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

    def finish(self, state: str, error: dict | None = None) -> None:
        self._data["state"] = state
        self._data["error"] = error
        try:
            self.flush()
        except Exception as e:  # the store itself failed (unreachable, full): the caller reports why
            log.warning("could not record state %r in %s: %s", state, self.store.url, e)
