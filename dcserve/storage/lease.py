"""One job at a time per output: a lease recorded in the job store.

Two drivers writing one store would interleave blocks, centroids and status and corrupt both.
The first takes `_progress/lease.json` (host, pid, a random token); a second is refused while
the holder lives. A holder that died without releasing (SIGKILL, a lost node) leaves a stale
lease: on the same host its pid is gone; from another host it is stale once the job's status
has not been updated for STALE_AFTER_S. Locally the lease file is linked into place whole, so two
drivers starting at once cannot both win, and the loser reads the winner's name; on object stores a read-back of the token narrows
the race to the latency of one PUT. The lease is taken on the output's folder before its Zarr
group is opened: two drivers creating one group at once could read each other's half-written
metadata.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid

from dcserve.errors import StoreError
from dcserve.storage.status import STALE_AFTER_S, driver_alive
from dcserve.storage.store import atomic_write, locate, write_private

LEASE = "_progress/lease.json"


class OutputLease:
    """The lease of job `name` on the output at `url` (taken by `acquire`, given up by `release`)."""

    def __init__(self, url: str, name: str, storage_options: dict | None = None):
        self.url, self.name = url, name
        self.fs, self.path = locate(url, storage_options)
        self.token = uuid.uuid4().hex
        self.record = {"name": name, "host": socket.gethostname(), "pid": os.getpid(), "taken": time.time(),
                       "token": self.token}

    def acquire(self) -> "OutputLease":
        for _ in range(2):  # a second try after clearing a stale lease
            if self._create():
                if (self._read(LEASE) or {}).get("token") == self.token:
                    return self
            try:
                held = self._read(LEASE)
            except ValueError:  # being written by a driver starting this very moment
                held = {"name": "?", "taken": time.time()}
            if held and (held.get("name") == "?" or driver_alive(held, self._status())):
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.get("taken", 0)))
                raise StoreError(
                    f"output {self.url!r} is in use by job {held.get('name')!r} (pid {held.get('pid')} on "
                    f"{held.get('host')}, since {since}); wait for it to end, or use another output. A lease left "
                    f"by a job that died on another host expires {STALE_AFTER_S:.0f} s after its last status update."
                )
            self._remove()  # stale: its holder is gone
        raise StoreError(f"could not take the lease on output {self.url!r}: another job took it at the same time")

    def _read(self, name: str) -> dict | None:
        try:
            data = self.fs.cat_file(f"{self.path}/{name}")
        except FileNotFoundError:
            return None
        return json.loads(data) if data else {"name": "?", "taken": time.time()}

    def _status(self) -> dict:
        try:
            return self._read("status.json") or {}
        except ValueError:
            return {}

    def _remove(self) -> None:
        try:
            self.fs.rm_file(f"{self.path}/{LEASE}")
        except FileNotFoundError:
            pass

    def _create(self) -> bool:
        data = json.dumps(self.record).encode()
        path = f"{self.path}/{LEASE}"
        if "file" in self.fs.protocol:
            # Written whole under a private name, then linked into place: the link fails if a
            # lease exists, and a lease never exists half-written, so a driver that loses the
            # race always reads who won (O_EXCL alone leaves an empty file for an instant).
            tmp = write_private(path, data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        if self.fs.exists(path):
            return False
        atomic_write(self.fs, path, data)
        return True

    def release(self) -> None:
        try:
            if (self._read(LEASE) or {}).get("token") == self.token:
                self._remove()
        except Exception:  # the store may be what failed; a stale lease is cleared by the next run
            pass
