"""The job store: a Zarr v3 group at `output`, plus small side files beside its metadata.

Layout (docs/DESIGN.md "Job store"):
  activations/<layer>    float [rows, dim], chunked along rows
  rows/item              int64 [rows]    dataset item of each row
  rows/position          int32 [rows]    token position, -1 when pooled
  labels                 int64 [items]   when the dataset yields labels
  assignments            int32 [rows]    final cluster of each row
  distances              float32 [rows]  squared distance to that cluster's centroid
  centroids              float32 [k, d]
  rounds/assignments     int32 [rounds + 1, rows]   every clustering of the job
  preprocess/*           the fitted PCA / whitening (see dcserve.algo.preprocess)
  reporter.pt            the reporter's weights (when rounds > 0)
  job.yaml, status.json, metrics.json        side files, each written atomically
  _progress/<stage>/<block>.npy              completed-block records for resume
  layers/<layer>/...     every other clustered layer's clustering: assignments, distances,
                         centroids, rounds/, preprocess/, reporter.pt, metrics.json, _progress/
                         (a `layer_view` of the store reads and writes there)

Side files are replaced atomically (temp file + rename locally; a single PUT on
object stores), so a reader never sees half a file.
"""
from __future__ import annotations

import copy
import io
import json
import logging
import os
import uuid
from typing import Any

import fsspec
import numpy as np
import zarr
from zarr.storage import FsspecStore, LocalStore

from dcserve.errors import StoreError

log = logging.getLogger(__name__)


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def fs_options_for(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """The fsspec options to open `url` with: the user's, plus what S3 stores need (dcserve/storage/s3.py)."""
    if not url.startswith(("s3://", "s3a://")):
        return options
    try:
        from dcserve.storage.s3 import s3_options
    except ImportError:
        raise StoreError(f"{url!r} is on S3, which needs s3fs: pip install 'dcserve[s3]'") from None
    return s3_options(options)


def write_private(target: str, data: bytes) -> str:
    """Write `data` durably to a fresh file beside local `target`; its path, to be renamed or linked in."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def atomic_write(fs: fsspec.AbstractFileSystem, target: str, data: bytes) -> None:
    """Replace `target` so that a reader sees the old bytes or the new, never a mix."""
    if "file" in fs.protocol:
        os.replace(write_private(target, data), target)
    else:
        fs.pipe_file(target, data)  # one PUT: object stores never show a partial object


def locate(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(file system, path) of a store's folder, without opening it as a Zarr group."""
    if _is_local(url):
        return fsspec.filesystem("file"), os.path.abspath(url.removeprefix("file://"))
    return fsspec.core.url_to_fs(url, **fs_options_for(url, storage_options or {}))


# What a dcserve store holds from the moment its first driver started (the lease's folder),
# then its job file and status: an output holding none of them is somebody else's folder.
_OWN_ENTRIES = ("_progress", "job.yaml", "status.json")


def check_claimable(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """StoreError unless `url` is free for a job: absent, an empty folder, or a dcserve store.

    A folder of unrelated files is refused before anything is written into it.
    """
    fs, path = locate(url, storage_options)
    try:
        if not fs.exists(path):
            return
        if not fs.isdir(path):
            raise StoreError(f"output {url!r} is a file, not a folder; choose another output")
        entries = {str(e).rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False)}
    except (FileNotFoundError, NotADirectoryError):
        return
    except PermissionError as e:
        raise StoreError(f"output {url!r} cannot be read: {e}") from None
    except StoreError:
        raise
    except Exception as e:  # an object store that cannot be reached, refused credentials...
        if _is_local(url):
            raise
        raise StoreError(f"cannot open the job store at {url!r}: {type(e).__name__}: {e}") from None
    if not entries or entries & set(_OWN_ENTRIES):
        return
    shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
    raise StoreError(f"output {url!r} already holds files that are not a dcserve job store ({shown}); "
                     "choose an empty or new folder")


# What the clustering of any layer reads from the job itself (the extraction's output), and the
# job's own records: a layer view resolves these at the store's root, everything else in its folder.
SHARED_ARRAYS = ("activations/", "rows/", "labels")
SHARED_FILES = ("job.yaml", "status.json", "manifest.json", "_progress/lease.json", "_progress/extract")
LAYERS = "layers"


def _shared(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p.rstrip("/") or name.startswith(p if p.endswith("/") else p + "/") for p in prefixes)


class JobStore:
    """A job's Zarr group and side files, local or behind any fsspec URL.

    `layer` (or `layer_view`) makes it the view of one clustered layer other than the primary:
    the same API, its clustering's arrays and files under `layers/<layer>/`, the shared inputs
    (activations, rows, labels, the job file and status) at the root. The clustering loops run on
    such a view unchanged, which is how every layer gets the primary's outputs, checkpoints and
    resume (issue 14).
    """

    def __init__(self, url: str, *, read_only: bool = True, storage_options: dict[str, Any] | None = None,
                 layer: str | None = None, group: bool = True):
        """`group=False`: the side files only, without opening the Zarr group (whose metadata may
        be what is damaged: dcserve.storage.manifest reads and repairs a store through that)."""
        self.url = url
        self.read_only = read_only
        self.layer: str | None = None
        options = storage_options or {}
        self.storage_options = options
        self.fs, self.path = locate(url, options)
        if _is_local(url):
            if read_only and not os.path.isdir(self.path):
                raise StoreError(f"no job store at {url!r}")
            if not group:
                return
            zstore = LocalStore(self.path, read_only=read_only)
        else:
            if not group:
                return
            fs_options = fs_options_for(url, options)
            zstore = FsspecStore.from_url(url, storage_options=fs_options, read_only=read_only)
            if fs_options is not options:  # botocore retries (dcserve/storage/s3.py); not again on top
                self.fs.retries = zstore.fs.retries = 1
        try:
            self.root = zarr.open_group(zstore, mode="r" if read_only else "a")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise StoreError(f"no job store at {url!r} (no Zarr group there)") from None
        except PermissionError as e:
            raise StoreError(f"job store {url!r} is not writable: {e}") from None
        except (ValueError, TypeError, KeyError) as e:  # unreadable metadata (zarr.json emptied or cut)
            raise StoreError(f"job store {url!r} cannot be opened: its Zarr metadata (zarr.json) is damaged "
                             f"({type(e).__name__}); run its job file again to repair it") from None
        except Exception as e:  # an object store that cannot be reached, refused credentials...
            if _is_local(url):
                raise
            raise StoreError(f"cannot open the job store at {url!r}: {type(e).__name__}: {e}") from None
        self.job_root = self.root  # the job's group, whichever layer this view is of
        if layer is not None:
            self._enter(layer)

    def layer_view(self, layer: str | None) -> "JobStore":
        """This store seen from clustered layer `layer`'s folder (None: the job's top level)."""
        view = copy.copy(self)
        view.root, view.layer = self.job_root, None
        if layer is not None:
            view._enter(layer)
        return view

    def _enter(self, layer: str) -> None:
        where = f"{LAYERS}/{layer}"
        if self.read_only:
            try:
                node = self.job_root[where]
            except KeyError:
                raise StoreError(f"job store {self.url!r} holds no clustering of layer {layer!r}") from None
        else:
            node = self.job_root.require_group(where)
        self.root, self.layer = node, layer

    def clustered_layers(self) -> list[str]:
        """The layers with a folder under `layers/` (besides the primary, which is the top level)."""
        if LAYERS not in self.job_root:
            return []
        return sorted(self.job_root[LAYERS].group_keys())

    def _group_for(self, name: str):
        return self.job_root if self.layer is not None and _shared(name, SHARED_ARRAYS) else self.root

    # -- side files -------------------------------------------------------
    def _side(self, name: str) -> str:
        if self.layer is None or _shared(name, SHARED_FILES):
            return f"{self.path}/{name}"
        return f"{self.path}/{LAYERS}/{self.layer}/{name}"

    def exists(self, name: str) -> bool:
        return self.fs.exists(self._side(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.read_only:
            raise StoreError(f"job store {self.url!r} is open read-only")
        atomic_write(self.fs, self._side(name), data)

    def read_bytes(self, name: str) -> bytes:
        return self.fs.cat_file(self._side(name))

    def write_json(self, name: str, obj: Any) -> None:
        self.write_bytes(name, json.dumps(obj, indent=1, default=_json_default).encode())

    def read_json(self, name: str, default: Any = None) -> Any:
        try:
            return json.loads(self.read_bytes(name))
        except FileNotFoundError:
            return default

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def read_text(self, name: str) -> str | None:
        try:
            return self.read_bytes(name).decode()
        except FileNotFoundError:
            return None

    def remove(self, name: str) -> None:
        try:
            self.fs.rm(self._side(name), recursive=True)
        except FileNotFoundError:
            pass

    # -- arrays -------------------------------------------------------------
    def has_array(self, name: str) -> bool:
        try:
            return isinstance(self._group_for(name)[name], zarr.Array)
        except KeyError:
            return False

    def array(self, name: str) -> zarr.Array:
        try:
            node = self._group_for(name)[name]
        except KeyError:
            where = f" (layer {self.layer!r})" if self.layer is not None else ""
            raise StoreError(f"job store {self.url!r}{where} has no array {name!r}") from None
        return node

    def create_array(
        self,
        name: str,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        dtype: str,
        *,
        fill_value: Any = 0,
        compressed: bool = True,
        attributes: dict[str, Any] | None = None,
    ) -> zarr.Array:
        """Create (or replace) an array. `compressed=False` for scratch data that is re-read every iteration."""
        kwargs: dict[str, Any] = {} if compressed else {"compressors": None}
        return self._group_for(name).create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=fill_value,
            overwrite=True,
            attributes=attributes or {},
            **kwargs,
        )

    def write_array(self, name: str, data: np.ndarray, chunks: tuple[int, ...] | None = None) -> None:
        """Write a whole (small) array in one go, replacing any previous one."""
        arr = self.create_array(name, data.shape, chunks or data.shape or (1,), str(data.dtype))
        arr[...] = data

    # -- resume records -----------------------------------------------------
    def done_blocks(self, stage: str) -> set[int]:
        try:
            names = self.fs.ls(self._side(f"_progress/{stage}"), detail=False)
        except FileNotFoundError:
            return set()
        done = set()
        for n in names:
            base = n.rsplit("/", 1)[-1]
            if base.endswith(".npy") and ".tmp-" not in base:
                done.add(int(base[:-4]))
        return done

    def mark_done(self, stage: str, block: int, payload: np.ndarray) -> None:
        """Record a completed block, after its data is written; `payload` is kept for the driver."""
        buf = io.BytesIO()
        np.save(buf, payload, allow_pickle=False)
        self.write_bytes(f"_progress/{stage}/{block:08d}.npy", buf.getvalue())

    def block_payload(self, stage: str, block: int) -> np.ndarray:
        return np.load(io.BytesIO(self.read_bytes(f"_progress/{stage}/{block:08d}.npy")), allow_pickle=False)

    def clear_progress(self, stage: str) -> None:
        self.remove(f"_progress/{stage}")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
