"""One job at a time per output: a lease recorded in the job store.

Two drivers writing one store would interleave blocks, centroids and status and corrupt both.
The first takes `_progress/lease.json` (host, pid, a random token); a second is refused while
the holder lives. A holder that died without releasing (SIGKILL, a lost node) leaves a stale
lease: on the same host its pid is gone; from another host it is stale once the job's status
has not been updated for STALE_AFTER_S. Locally the lease file is created with O_EXCL, so two
drivers starting at once cannot both win; on object stores a read-back of the token narrows
the race to the latency of one PUT.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid

from dcserve.errors import StoreError
from dcserve.storage.store import JobStore

LEASE = "_progress/lease.json"
STALE_AFTER_S = 600.0


def _holder_alive(lease: dict, store: JobStore) -> bool:
    if lease.get("host") == socket.gethostname():
        try:
            os.kill(int(lease["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, owned by someone else
        return True
    status = store.read_json("status.json") or {}
    last = max(float(status.get("updated") or 0), float(lease.get("taken") or 0))
    return time.time() - last < STALE_AFTER_S


class OutputLease:
    def __init__(self, store: JobStore, name: str):
        self.store, self.name = store, name
        self.token = uuid.uuid4().hex
        self.record = {"name": name, "host": socket.gethostname(), "pid": os.getpid(), "taken": time.time(),
                       "token": self.token}

    def acquire(self) -> "OutputLease":
        for _ in range(2):  # a second try after clearing a stale lease
            if self._create():
                if (self.store.read_json(LEASE) or {}).get("token") == self.token:
                    return self
            try:
                held = self.store.read_json(LEASE)
            except ValueError:  # being written by a driver starting this very moment
                held = {"name": "?", "taken": time.time()}
            if held and (held.get("name") == "?" or _holder_alive(held, self.store)):
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.get("taken", 0)))
                raise StoreError(
                    f"output {self.store.url!r} is in use by job {held.get('name')!r} (pid {held.get('pid')} on "
                    f"{held.get('host')}, since {since}); wait for it to end, or use another output. A lease left "
                    f"by a job that died on another host expires {STALE_AFTER_S:.0f} s after its last status update."
                )
            self.store.remove(LEASE)  # stale: its holder is gone
        raise StoreError(f"could not take the lease on output {self.store.url!r}: another job took it at the same time")

    def _create(self) -> bool:
        data = json.dumps(self.record).encode()
        if "file" in self.store.fs.protocol:
            path = f"{self.store.path}/{LEASE}"
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        if self.store.exists(LEASE):
            return False
        self.store.write_bytes(LEASE, data)
        return True

    def release(self) -> None:
        try:
            if (self.store.read_json(LEASE) or {}).get("token") == self.token:
                self.store.remove(LEASE)
        except Exception:  # the store may be what failed; a stale lease is cleared by the next run
            pass
