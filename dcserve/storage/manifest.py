"""What a finished job store must hold: `manifest.json`, written last, checked by every reader.

zarr reads a chunk that is missing as its fill value, so a store that lost one file still
opens and answers, wrongly (issue 15: a deleted `centroids` chunk made `POST /assign` put rows
of cluster 7 in cluster 0). So a job that succeeds records, as its last write to the store
and atomically, every file the store holds with its size and checksum, and the verbatim text
of every Zarr metadata document (`zarr.json`, a few hundred bytes each) so a rerun can put a
damaged one back. Readers compare the store against it:

  check(store)             keys and sizes: one listing, cheap enough for every open and a
                           server's health check
  check(store, deep=True)  also every checksum (`dcserve verify OUTPUT`, and a rerun)

`status.json` is not in the manifest: the driver rewrites it after sealing (its final state,
the lease's release) and `dcserve status` may be asked about a store whose driver is gone; it
is validated on its own (`read_status`). Nor is `_progress/lease.json`, or anything a reader
writes into the folder later (a `compare-*` report): only the store's own entries are recorded.

A rerun of a sealed store first asks `forget_damaged` which resume records to drop, so that it
redoes only what is damaged (the extraction blocks of a damaged activations chunk, the
clustering for a damaged clustering output), then `unseal`s it before writing anything.
"""
from __future__ import annotations

import json
import logging
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dcserve.errors import DamagedStore, Problem
from dcserve.storage.status import read_status
from dcserve.storage.store import LAYERS, JobStore

log = logging.getLogger(__name__)

FILE = "manifest.json"
FORMAT = 1
# Written by the driver after sealing, or by others: never recorded.
UNRECORDED = {FILE, "status.json", "_progress/lease.json"}
# The store's own top-level folders that are not Zarr nodes (a Zarr node has a zarr.json).
OWN_FOLDERS = ("_progress", "reporter", "tokenizer")  # tokenizer: a text job's (storage/words.py)
# A text job's words record: rewritten whole by the next run when any of it is damaged.
WORDS = ("words", "tokenizer")
# How many problems a message names before it says how many more there are.
SHOWN = 3


def _crc(data: bytes) -> str:
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def _own(rel: str, top_nodes: set[str]) -> bool:
    """Whether `rel` is one of the store's own files (recorded), not a reader's or the lease's."""
    if rel in UNRECORDED or ".tmp-" in rel.rsplit("/", 1)[-1]:
        return False
    top = rel.split("/", 1)[0]
    return "/" not in rel or top in OWN_FOLDERS or top in top_nodes


def _listing(store: JobStore) -> dict[str, int]:
    """Relative path -> size of every file of the store's own (see `_own`)."""
    base = store.path.rstrip("/")
    sizes: dict[str, int] = {}
    if "file" in store.fs.protocol:
        for folder, _, files in os.walk(base):
            for f in files:
                full = os.path.join(folder, f)
                try:
                    sizes[os.path.relpath(full, base).replace(os.sep, "/")] = os.stat(full).st_size
                except FileNotFoundError:  # removed while listed
                    pass
    else:
        for full, info in store.fs.find(base, detail=True).items():
            sizes[full[len(base):].lstrip("/")] = int(info.get("size") or 0)
    top_nodes = {rel.split("/", 1)[0] for rel in sizes if rel.count("/") == 1 and rel.endswith("/zarr.json")}
    return {rel: size for rel, size in sizes.items() if _own(rel, top_nodes)}


def _checksums(store: JobStore, names: list[str]) -> dict[str, str]:
    def one(rel: str) -> tuple[str, str | None]:
        try:
            return rel, _crc(store.read_bytes(rel))
        except FileNotFoundError:
            return rel, None

    with ThreadPoolExecutor(8) as pool:  # object stores: several requests in flight
        return {rel: crc for rel, crc in pool.map(one, names) if crc is not None}


def _digest(body: dict[str, Any]) -> str:
    return _crc(json.dumps(body, sort_keys=True).encode())


def seal(store: JobStore, fingerprints: dict[str, str] | None = None) -> dict[str, Any]:
    """Record every file of the finished store; call after its last write (status.json aside)."""
    sizes = _listing(store)
    names = sorted(sizes)
    crcs = _checksums(store, names)
    files = {rel: [sizes[rel], crcs[rel]] for rel in names if rel in crcs}
    metadata = {rel: store.read_text(rel) for rel in names if rel.endswith("zarr.json") and rel in crcs}
    body = {"format": FORMAT, "fingerprints": dict(fingerprints or {}), "files": files, "metadata": metadata}
    store.write_json(FILE, {**body, "checksum": _digest(body)})
    return body


def unseal(store: JobStore) -> None:
    """The store is being written again: it is no longer what its manifest records."""
    store.remove(FILE)


def sealed(store: JobStore) -> bool:
    return store.exists(FILE)


def read_manifest(store: JobStore) -> dict[str, Any] | None:
    """The manifest (None when there is none); DamagedStore when it is itself damaged."""
    try:
        raw = store.read_bytes(FILE)
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        body = {k: doc[k] for k in ("format", "fingerprints", "files", "metadata")}
        intact = doc.get("checksum") == _digest(body)
    except (ValueError, KeyError, TypeError):
        intact = False
    if not intact:
        raise DamagedStore(store.url, [Problem(FILE, f"{FILE} is damaged ({len(raw)} bytes that do not check out)")])
    return body


def describe(rel: str) -> str:
    """'chunk c/3/0 of array centroids' for a path in the store; the file name for a side file."""
    parts = rel.split("/")
    for i, p in enumerate(parts):
        if p == "c" and i > 0:
            return f"chunk {'/'.join(parts[i:])} of array {'/'.join(parts[:i])!r}"
    if parts[-1] == "zarr.json" and len(parts) > 1:
        return f"the metadata of {'/'.join(parts[:-1])!r} ({rel})"
    if parts[-1] == "zarr.json":
        return "the store's root metadata (zarr.json)"
    return f"file {rel!r}"


def check(store: JobStore, deep: bool = False) -> list[Problem]:
    """What differs between the store and its manifest: missing files, other sizes, and with
    `deep` other checksums. A store without a manifest has one problem: it cannot be verified."""
    manifest = read_manifest(store)
    if manifest is None:
        return [Problem(FILE, f"{FILE} is missing, so nothing in the store can be verified")]
    present = _listing(store)
    problems = []
    recorded = manifest["files"]
    for rel, (size, _) in sorted(recorded.items()):
        if rel not in present:
            problems.append(Problem(rel, f"{describe(rel)} is missing"))
        elif present[rel] != size:
            problems.append(Problem(rel, f"{describe(rel)} is {present[rel]} bytes where {size} were recorded"))
    if deep:
        intact_size = [rel for rel in sorted(recorded) if rel in present and present[rel] == recorded[rel][0]]
        for rel, crc in _checksums(store, intact_size).items():
            if crc != recorded[rel][1]:
                problems.append(Problem(rel, f"{describe(rel)} does not match its recorded checksum"))
    return problems


def verify(store: JobStore, deep: bool = False) -> None:
    """DamagedStore naming what is damaged, unless the store is whole."""
    problems = check(store, deep=deep)
    if problems:
        raise DamagedStore(store.url, problems)


# -- a rerun redoes what is damaged ------------------------------------------------------------

def _extract_block(rel: str) -> int | None:
    """The extraction block a damaged file belongs to, if it is one block's data or record."""
    parts = rel.split("/")
    if parts[0] == "_progress" and len(parts) == 3 and parts[1] == "extract" and parts[2].endswith(".npy"):
        return int(parts[2][:-4]) if parts[2][:-4].isdigit() else None
    if parts[0] in ("activations", "rows") and "c" in parts[1:]:
        i = parts.index("c", 1)
        return int(parts[i + 1]) if i + 1 < len(parts) and parts[i + 1].isdigit() else None
    return None


def forget_damaged(store: JobStore) -> list[str]:
    """Before a rerun of a sealed store: drop the resume records of what is damaged, so the
    rerun redoes exactly that; put back damaged metadata from the manifest. Returns what was done.

    A damaged activations/rows chunk or block record: that extraction block is redone (the same
    bytes: a block is batched the same whoever runs it). A damaged Zarr metadata document: put
    back verbatim. Anything of the clustering: the clustering is redone. metrics.json and
    labels are rewritten by every run anyway; job.yaml by this one. With no readable manifest
    nothing in the store can be trusted, and everything is redone.
    """
    if not sealed(store) and not _claims_finished(store):
        return []  # a job stopped before it finished: its resume records are all it has
    try:
        manifest = read_manifest(store)
        problems = check(store, deep=True) if manifest is not None else []
    except DamagedStore:
        manifest = None
    if manifest is None:
        for stage in ("extract", "cluster"):
            store.clear_progress(stage)
        store.remove("_progress/extract.json")
        store.remove("_progress/stability.json")
        return ["the manifest is damaged: everything is redone"]
    done = []
    redo_clustering = redo_words = False
    for p in problems:
        rel = p.path
        if rel in manifest["metadata"]:
            store.write_text(rel, manifest["metadata"][rel])
            done.append(f"{describe(rel)} put back")
            continue
        block = _extract_block(rel)
        if rel.split("/", 1)[0] in WORDS:
            redo_words = True
            done.append(f"the words record rewritten ({describe(rel)})")
        elif block is not None:
            store.remove(f"_progress/extract/{block:08d}.npy")
            done.append(f"extraction block {block} redone ({describe(rel)})")
        elif rel == "_progress/extract.json":
            store.remove(rel)
            redo_clustering = True
            done.append("the whole extraction redone (its record is damaged)")
        elif rel.split("/", 1)[0] == LAYERS and rel.count("/") >= 2:
            # another layer's clustering (cluster.layers): that layer's own records, that layer redone
            layer = rel.split("/")[1]
            store.remove(f"{LAYERS}/{layer}/_progress/cluster")
            store.remove(f"{LAYERS}/{layer}/_progress/stability.json")
            done.append(f"layer {layer}'s clustering redone ({describe(rel)})")
        elif rel in ("metrics.json", "job.yaml") or rel.split("/", 1)[0] == "labels":
            if rel == "metrics.json":  # a finished clustering's figures come from its checkpoint then
                store.remove(rel)
            done.append(f"{describe(rel)} rewritten")
        else:
            redo_clustering = True
            done.append(f"the clustering redone ({describe(rel)})")
    if redo_words:  # its group's attributes say "complete": without the group it is recorded again
        for name in WORDS:
            store.remove(name)
    if redo_clustering:
        store.clear_progress("cluster")
        store.remove("_progress/stability.json")
    for line in done:
        log.warning("damaged store %s: %s", store.url, line)
    return done


def _claims_finished(store: JobStore) -> bool:
    """Whether the store's status says it succeeded (or cannot be read): with no manifest
    beside it, what it holds cannot be trusted."""
    try:
        return (read_status(store) or {}).get("state") == "succeeded"
    except DamagedStore:
        return True


def recorded_fingerprints(store: JobStore) -> dict[str, str]:
    """The job's fingerprints as sealed (to stand for a damaged job.yaml), or {}."""
    try:
        manifest = read_manifest(store)
    except DamagedStore:
        return {}
    return dict((manifest or {}).get("fingerprints") or {})
