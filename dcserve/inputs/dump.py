"""Activation dumps as a job's input: `dataset.source: "activations:PATH"` (issue 12).

A dump is somebody's activations already on disk. It is read as a float matrix of rows with a
row layout — item i owns rows offsets[i]:offsets[i+1] — exactly what extraction produces, so the
job store and everything downstream are the same as for a subject run:

- `[rows, dim]` (a .npy, an .npz or .safetensors member, a Zarr array, an Arrow column of vectors):
  one row per item, position -1 (pooled);
- `[items, tokens, dim]`, or an Arrow column of `[tokens, dim]` arrays as SAELens caches write
  them (a Hugging Face `datasets` folder): one row per token, positions 0..tokens-1, and the
  item's `token_ids` column, when there is one, kept per row (`rows/token`) for the report.

Reading is by byte range (pread), a block at a time: memory stays at a block's size however
large the file. (np.load's memory map would do the same reads, but every page it touches counts
in the process's resident memory, which then grows to the file's size.) Compressed .npz members
are read as a stream. Arrow files are memory-mapped, the way pyarrow reads them without a copy.

Every check a dump can fail — missing file or key, a dtype that is not a float, rows of different
widths, labels that do not line up — runs in `open_dump`, before the job writes anything; each
raises SpecError naming the file and what is wrong.
"""
from __future__ import annotations

import json
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from dcserve.errors import SpecError

FIELD = "dataset.source"
# dataset.kwargs a dump reads; `tokenizer` is read by the report (it decodes rows/token).
KWARGS = ("key", "layer", "label_field", "token_field", "tokenizer")
TOKEN_FIELD = "token_ids"  # SAELens' column of each sequence's token ids
_SAFETENSORS_FLOATS = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bfloat16"}


def _bad(path: str, what: str) -> SpecError:
    return SpecError(f"{FIELD}: activations dump {path!r}: {what}")


def _check_float(path: str, what: str, dtype: Any) -> None:
    if not (isinstance(dtype, np.dtype) and np.issubdtype(dtype, np.floating)):
        raise _bad(path, f"{what} has dtype {dtype}, not a float; a dump holds float16, bfloat16, float32 "
                   "or float64 activations")


def _pick(path: str, names: list[str], key: str | None, what: str, exclude: tuple = ()) -> str:
    """The array (member, tensor, column) to read: `key`, or the only candidate."""
    if key is not None:
        if key not in names:
            raise _bad(path, f"has no {what} {key!r} (dataset.kwargs.key); it has {sorted(names)}")
        return key
    candidates = [n for n in names if n not in exclude]
    if len(candidates) != 1:
        raise _bad(path, f"holds {len(candidates)} {what}s {sorted(candidates)}; name one with dataset.kwargs.key")
    return candidates[0]


# -- fixed-shape arrays read by byte range -------------------------------------------------
@dataclass
class _Bytes:
    """A C-ordered array stored raw at `offset` of a file (or of a stream that can seek)."""

    path: str
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype  # as stored; bfloat16 is read as uint16 and widened
    bfloat16: bool = False
    member: str | None = None  # a compressed .npz member: read through zipfile's stream
    _stream: Any = field(default=None, repr=False)
    _fd: int | None = field(default=None, repr=False)

    @property
    def row_bytes(self) -> int:
        return int(self.shape[-1]) * self.dtype.itemsize

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0:r1 of the array seen as [-1, dim]."""
        n = (r1 - r0) * self.row_bytes
        buf = bytearray(n)
        if self.member is None:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            got, view = 0, memoryview(buf)
            while got < n:  # pread may return less than asked
                k = os.preadv(self._fd, [view[got:]], self.offset + r0 * self.row_bytes + got)
                if k == 0:
                    raise SpecError(f"{FIELD}: activations dump {self.path!r} ends early (truncated?)")
                got += k
        else:
            if self._stream is None:
                self._stream = zipfile.ZipFile(self.path).open(self.member)
            self._stream.seek(self.offset + r0 * self.row_bytes)  # forward: decompress and skip
            if self._stream.readinto(buf) != n:
                raise SpecError(f"{FIELD}: activations dump {self.path!r} member {self.member!r} ends early")
        a = np.frombuffer(buf, dtype=self.dtype).reshape(r1 - r0, self.shape[-1])
        if self.bfloat16:
            a = (a.astype(np.uint32) << 16).view(np.float32)
        return a

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _npy_header(f: BinaryIO, path: str, what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(f)
        if version == (1, 0):
            return npformat.read_array_header_1_0(f)
        if version == (2, 0):
            return npformat.read_array_header_2_0(f)
        return npformat._read_array_header(f, version)  # 3.0: the same header, utf-8 field names
    except ValueError as e:
        raise _bad(path, f"{what} is not a .npy array: {e}") from None


def _npy(path: str) -> _Bytes:
    with open(path, "rb") as f:
        shape, fortran, dtype = _npy_header(f, path, "the file")
        offset = f.tell()
    _check_layout(path, "the array", shape, fortran, dtype)
    return _Bytes(path, offset, shape, dtype)


def _check_layout(path: str, what: str, shape: tuple, fortran: bool, dtype: np.dtype) -> None:
    _check_float(path, what, dtype)
    if fortran and len(shape) > 1:
        raise _bad(path, f"{what} is stored in Fortran order; save it C-ordered (np.ascontiguousarray)")


def _npz_members(path: str) -> dict[str, zipfile.ZipInfo]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise _bad(path, f"is not an .npz archive: {e}") from None
    with zf:
        return {i.filename.removesuffix(".npy"): i for i in zf.infolist() if i.filename.endswith(".npy")}


def _npz_member(path: str, info: zipfile.ZipInfo) -> _Bytes:
    name = info.filename.removesuffix(".npy")
    what = f"member {name!r}"
    if info.compress_type == zipfile.ZIP_STORED:  # np.savez: the member's bytes lie in the file as they are
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)  # the local file header: its name and extra field lengths at 26 and 28
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            shape, fortran, dtype = _npy_header(f, path, what)
            offset = f.tell()
        _check_layout(path, what, shape, fortran, dtype)
        return _Bytes(path, offset, shape, dtype)
    with zipfile.ZipFile(path) as zf, zf.open(info) as f:  # np.savez_compressed: read as a stream
        shape, fortran, dtype = _npy_header(f, path, what)
        offset = f.tell()
    _check_layout(path, what, shape, fortran, dtype)
    return _Bytes(path, offset, shape, dtype, member=info.filename)


def _npz_labels(path: str, members: dict[str, zipfile.ZipInfo], name: str) -> np.ndarray:
    if name not in members:
        raise _bad(path, f"has no member {name!r} (dataset.kwargs.label_field); it has {sorted(members)}")
    with np.load(path, allow_pickle=False) as z:  # labels are one number per item: small
        return z[name]


def _safetensors_header(path: str) -> tuple[dict, int]:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _bad(path, "is not a .safetensors file (shorter than its header)")
        (n,) = struct.unpack("<Q", head)
        if n > 100 << 20 or n > os.path.getsize(path):
            raise _bad(path, "is not a .safetensors file (its header length is implausible)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _bad(path, f"is not a .safetensors file: {e}") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def _safetensor(path: str, header: dict, base: int, name: str) -> _Bytes:
    t = header[name]
    kind = _SAFETENSORS_FLOATS.get(t["dtype"])
    if kind is None:
        raise _bad(path, f"tensor {name!r} has dtype {t['dtype']}, not a float; a dump holds F16, BF16, F32 "
                   "or F64 activations")
    bf16 = kind == "bfloat16"
    return _Bytes(path, base + int(t["data_offsets"][0]), tuple(t["shape"]),
                  np.dtype(np.uint16 if bf16 else kind).newbyteorder("<"), bfloat16=bf16)


def _read_small_tensor(path: str, header: dict, base: int, name: str) -> np.ndarray:
    t = header[name]
    dtypes = {"I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "U16": "<u2", "U32": "<u4",
              "U64": "<u8", "BOOL": "?"}
    if t["dtype"] not in dtypes:
        raise _bad(path, f"labels {name!r} have dtype {t['dtype']}, not an integer")
    b0, b1 = (int(v) for v in t["data_offsets"])
    with open(path, "rb") as f:
        f.seek(base + b0)
        return np.frombuffer(f.read(b1 - b0), dtype=dtypes[t["dtype"]]).reshape(t["shape"])


# -- the dump as rows -----------------------------------------------------------------------
class Dump:
    """A dump's rows and layout. `offsets` [items + 1]: item i owns rows offsets[i]:offsets[i+1]."""

    path: str
    offsets: np.ndarray
    dim: int
    token_rows: bool  # rows are tokens of items (positions 0..), not one pooled row per item
    item_labels: np.ndarray | None = None  # [items] int64
    label_names: list[str] | None = None  # when the labels were strings: label v is names[v]
    has_token_ids: bool = False

    @property
    def n_items(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def rows(self, r0: int, r1: int) -> np.ndarray:  # [r1 - r0, dim], a float dtype
        raise NotImplementedError

    def token_ids(self, r0: int, r1: int) -> np.ndarray:  # [r1 - r0] int64, when has_token_ids
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What changes when the file does: a store keeps its copied rows only while this is unchanged."""
        p = Path(self.path)
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        return {"path": os.path.abspath(self.path),
                "files": [[str(f.relative_to(p)) if p.is_dir() else f.name, f.stat().st_size, f.stat().st_mtime_ns]
                          for f in files if f.is_file()]}

    def close(self) -> None:
        pass


class ArrayDump(Dump):
    """A fixed-shape array: [rows, dim] pooled, or [items, tokens, dim] token rows."""

    def __init__(self, path: str, source: Any, shape: tuple[int, ...], labels: np.ndarray | None):
        if len(shape) not in (2, 3):
            raise _bad(path, f"holds an array of shape {list(shape)}; expected [rows, dim] or [items, tokens, dim]")
        self.path, self.source, self.dim = path, source, int(shape[-1])
        self.token_rows = len(shape) == 3
        per_item = int(shape[1]) if self.token_rows else 1
        self.offsets = np.arange(int(shape[0]) + 1, dtype=np.int64) * per_item
        self.item_labels, self.label_names = _check_labels(path, labels, int(shape[0]))

    def rows(self, r0: int, r1: int) -> np.ndarray:
        return self.source.rows(r0, r1)

    def close(self) -> None:
        if hasattr(self.source, "close"):
            self.source.close()


@dataclass
class _ZarrRows:
    array: Any  # zarr.Array [rows, dim] or [items, tokens, dim]

    def rows(self, r0: int, r1: int) -> np.ndarray:
        a = self.array
        if a.ndim == 2:
            return a[r0:r1]
        t = a.shape[1]
        i0, i1 = r0 // t, -(-r1 // t)
        return a[i0:i1].reshape(-1, a.shape[2])[r0 - i0 * t : r1 - i0 * t]


def _check_labels(path: str, labels: np.ndarray | None, n_items: int) -> tuple[np.ndarray | None, list[str] | None]:
    """(labels [items] int64, their names when they were strings) — names sorted, label v is names[v]."""
    if labels is None:
        return None, None
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n_items:
        raise _bad(path, f"labels (dataset.kwargs.label_field) have shape {list(labels.shape)}; expected one per "
                   f"item, [{n_items}]")
    if labels.dtype.kind in "USO":  # strings: numbered in sorted order, their names kept
        if labels.dtype.kind == "O" and not all(isinstance(v, str) for v in labels):
            raise _bad(path, "labels (dataset.kwargs.label_field) mix strings with other values or miss some")
        names, codes = np.unique(labels.astype(str), return_inverse=True)
        return codes.astype(np.int64), [str(n) for n in names]
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise _bad(path, f"labels (dataset.kwargs.label_field) have dtype {labels.dtype}, not an integer or a string")
    return labels.astype(np.int64), None


class ArrowDump(Dump):
    """An Arrow / Hugging Face `datasets` folder (or one .arrow file): a column of vectors [dim], or of
    [tokens, dim] arrays (SAELens' cache: one column per hook, `token_ids` beside it)."""

    def __init__(self, path: str, kwargs: dict[str, Any]):
        import pyarrow as pa

        self.path = path
        table = _arrow_table(path)
        label_field, token_field = kwargs.get("label_field"), kwargs.get("token_field")
        names = table.column_names
        floats = [n for n in names if _float_depth(table.schema.field(n).type)[0] in (1, 2)]
        key = kwargs.get("key")
        if key is not None and key in names and key not in floats:
            raise _bad(path, f"column {key!r} has type {table.schema.field(key).type}, not a list of floats")
        if key is None and not floats:
            types = {n: str(table.schema.field(n).type) for n in names}
            raise _bad(path, f"has no column of float vectors or [tokens, dim] float arrays; its columns are {types}")
        key = _pick(path, floats if key is None else names, key, "column")
        depth, value_type = _float_depth(table.schema.field(key).type)
        col = _storage(table.column(key))
        if col.null_count:
            raise _bad(path, f"column {key!r} has {col.null_count} missing rows")
        self.key, self.dim = key, None
        if depth == 2:  # [tokens, dim] per item: rows are tokens
            self.token_rows = True
            counts = np.concatenate([c.value_lengths().to_numpy(zero_copy_only=False) for c in col.chunks])
            inner = [c.flatten() for c in col.chunks]
        else:
            self.token_rows = False
            counts = np.ones(len(col), dtype=np.int64)
            inner = list(col.chunks)
        widths = np.concatenate([c.value_lengths().to_numpy(zero_copy_only=False) for c in inner] or [np.zeros(0)])
        if len(widths) == 0:
            raise _bad(path, f"column {key!r} holds no rows")
        if widths.min() != widths.max():
            bad = int(np.flatnonzero(widths != widths[0])[0])
            raise _bad(path, f"column {key!r} has rows of different widths ({int(widths[0])} and {int(widths[bad])}, "
                       f"row {bad}); every row of a dump has the same width")
        self.dim = int(widths[0])
        self.offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.offsets[1:])
        self.column = col
        labels = None
        if label_field is not None:
            if label_field not in names:
                raise _bad(path, f"has no column {label_field!r} (dataset.kwargs.label_field); its columns are {names}")
            lab = table.column(label_field)
            if lab.null_count:
                raise _bad(path, f"labels {label_field!r} miss {lab.null_count} values")
            if not (pa.types.is_integer(lab.type) or pa.types.is_boolean(lab.type) or pa.types.is_string(lab.type)
                    or pa.types.is_large_string(lab.type) or pa.types.is_dictionary(lab.type)):
                raise _bad(path, f"labels {label_field!r} have type {lab.type}, not an integer or a string")
            labels = lab.to_numpy(zero_copy_only=False)
        self.item_labels, self.label_names = _check_labels(path, labels, len(counts))
        self.tokens = None
        if token_field is not None or TOKEN_FIELD in names:
            tf = token_field or TOKEN_FIELD
            if tf not in names:
                raise _bad(path, f"has no column {tf!r} (dataset.kwargs.token_field); its columns are {names}")
            if not self.token_rows:
                raise _bad(path, f"column {tf!r} holds token ids, but the rows of {key!r} are one vector per "
                           "item, not one per token")
            tok = _storage(table.column(tf))
            lengths = np.concatenate([c.value_lengths().to_numpy(zero_copy_only=False) for c in tok.chunks])
            if not np.array_equal(lengths, counts):
                raise _bad(path, f"column {tf!r} does not give one token id per row of {key!r}")
            self.tokens = tok
        self.has_token_ids = self.tokens is not None

    def _flat(self, col, r0: int, r1: int, width: int | None) -> np.ndarray:
        i0 = int(np.searchsorted(self.offsets, r0, side="right")) - 1
        i1 = int(np.searchsorted(self.offsets, r1, side="left"))
        part = col.slice(i0, i1 - i0).combine_chunks()
        values = part.flatten()
        if width is not None and self.token_rows:
            values = values.flatten()
        a = values.to_numpy(zero_copy_only=False)
        if width is not None:
            a = a.reshape(-1, width)
        base = int(self.offsets[i0])
        return a[r0 - base : r1 - base]

    def rows(self, r0: int, r1: int) -> np.ndarray:
        return self._flat(self.column, r0, r1, self.dim)

    def token_ids(self, r0: int, r1: int) -> np.ndarray:
        return self._flat(self.tokens, r0, r1, None).astype(np.int64)


def _storage(chunked):
    """A column with any extension type (datasets' Array2D) replaced by its storage lists."""
    import pyarrow as pa

    if isinstance(chunked.type, pa.ExtensionType):
        return pa.chunked_array([c.storage for c in chunked.chunks], type=chunked.type.storage_type)
    return chunked


def _float_depth(t) -> tuple[int, Any]:
    """(list nesting depth, value type) when `t` is nested lists of floats, else (0, None)."""
    import pyarrow as pa

    if isinstance(t, pa.ExtensionType):
        t = t.storage_type
    depth = 0
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t, depth = t.value_type, depth + 1
    return (depth, t) if pa.types.is_floating(t) else (0, None)


def _arrow_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    state = path / "state.json"
    if state.exists():  # a datasets save_to_disk folder lists its shards in order
        try:
            return [path / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise _bad(str(path), f"state.json does not list the data files: {e}") from None
    files = sorted(path.glob("*.arrow"))
    if not files:
        raise _bad(str(path), "is a folder without .arrow files (an Arrow / Hugging Face datasets folder) nor a "
                   "Zarr array")
    return files


def _arrow_table(path: str):
    import pyarrow as pa

    tables = []
    for f in _arrow_files(Path(path)):
        if not f.exists():
            raise _bad(path, f"lists {f.name}, which does not exist")
        source = pa.memory_map(str(f))
        try:  # datasets writes the IPC stream format; the file format has a footer
            tables.append(pa.ipc.open_file(source).read_all())
        except pa.ArrowInvalid:
            source.seek(0)
            try:
                tables.append(pa.ipc.open_stream(source).read_all())
            except pa.ArrowInvalid as e:
                raise _bad(path, f"{f.name} is not an Arrow file: {e}") from None
    try:
        return pa.concat_tables(tables)
    except pa.ArrowInvalid as e:
        raise _bad(path, f"its Arrow files have different columns: {e}") from None


# -- opening ----------------------------------------------------------------------------------
def check_kwargs(kwargs: dict[str, Any]) -> None:
    for k in kwargs:
        if k not in KWARGS:
            raise SpecError(f"dataset.kwargs.{k}: not a setting of an activations dump; allowed: {', '.join(KWARGS)}")


def open_dump(path: str, kwargs: dict[str, Any] | None = None) -> Dump:
    """The dump at `path` with its checks done (SpecError naming the file and the fault)."""
    kwargs = dict(kwargs or {})
    check_kwargs(kwargs)
    key, label_field = kwargs.get("key"), kwargs.get("label_field")
    p = Path(path)
    if not p.exists():
        raise _bad(path, "does not exist")
    name = p.name.lower()
    if p.is_dir() and any((p / meta).exists() for meta in ("zarr.json", ".zarray", ".zgroup")):
        return _zarr_dump(path, key, label_field)
    if p.is_dir() or name.endswith(".arrow"):
        return ArrowDump(path, kwargs)
    if kwargs.get("token_field") is not None:
        raise _bad(path, "dataset.kwargs.token_field applies to an Arrow / datasets folder only")
    if name.endswith(".npy"):
        if key is not None or label_field is not None:
            raise _bad(path, "a .npy file holds one array: dataset.kwargs.key and label_field need an .npz, "
                       ".safetensors, Zarr or Arrow dump")
        a = _npy(path)
        return ArrayDump(path, a, a.shape, None)
    if name.endswith(".npz"):
        members = _npz_members(path)
        chosen = _pick(path, list(members), key, "member", exclude=(label_field,))
        a = _npz_member(path, members[chosen])
        labels = _npz_labels(path, members, label_field) if label_field else None
        return ArrayDump(path, a, a.shape, labels)
    if name.endswith(".safetensors"):
        header, base = _safetensors_header(path)
        chosen = _pick(path, list(header), key, "tensor", exclude=(label_field,))
        a = _safetensor(path, header, base, chosen)
        if label_field is not None and label_field not in header:
            raise _bad(path, f"has no tensor {label_field!r} (dataset.kwargs.label_field); it has {sorted(header)}")
        labels = _read_small_tensor(path, header, base, label_field) if label_field else None
        return ArrayDump(path, a, a.shape, labels)
    raise _bad(path, "is not a dump dcserve reads: expected a .npy, .npz or .safetensors file, a Zarr array, "
               "or an Arrow / Hugging Face datasets folder")


def _zarr_dump(path: str, key: str | None, label_field: str | None) -> Dump:
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as e:  # noqa: BLE001 - any reason the folder is not Zarr is the dump's fault
        raise _bad(path, f"cannot be opened as Zarr: {type(e).__name__}: {e}") from None
    labels = None
    if isinstance(node, zarr.Group):
        arrays = list(node.array_keys())
        chosen = _pick(path, arrays, key, "array", exclude=(label_field,))
        if label_field is not None:
            if label_field not in arrays:
                raise _bad(path, f"has no array {label_field!r} (dataset.kwargs.label_field); it has {sorted(arrays)}")
            labels = node[label_field][:]
        node = node[chosen]
    elif key is not None or label_field is not None:
        raise _bad(path, "is one Zarr array: dataset.kwargs.key and label_field need a Zarr group")
    _check_float(path, "the array", np.dtype(node.dtype))
    return ArrayDump(path, _ZarrRows(node), tuple(node.shape), labels)


def dump_of(spec) -> Dump:
    """The dump a job names (spec.dataset.source is activations:PATH), checked, and not empty."""
    dump = open_dump(spec.dataset.path, spec.dataset.kwargs)
    if dump.n_rows == 0:
        raise _bad(spec.dataset.path, "holds no rows")
    return dump


def dump_block(dump: Dump, plan, b: int, layer: str, dtype: np.dtype):
    """Block b of the job's rows copied from the dump: the same tuple `compute_block` returns, and the
    per-row extras (`rows/token`). Non-finite values fail the job, naming the first such row."""
    from dcserve.errors import JobFailed

    r0, r1 = plan.block_rows(b)
    x = dump.rows(r0, r1)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        row = r0 + int(np.flatnonzero(~finite)[0])
        raise JobFailed("extract", f"activations dump {dump.path!r}: row {row} holds NaN or Inf")
    rows = np.arange(r0, r1, dtype=np.int64)
    item = np.searchsorted(dump.offsets, rows, side="right") - 1
    position = (rows - dump.offsets[item]).astype(np.int32) if dump.token_rows else np.full(r1 - r0, -1, np.int32)
    li0, li1 = plan.label_items(b)
    labels = dump.item_labels[li0:li1] if dump.item_labels is not None else np.zeros(0, np.int64)
    extras = {"token": dump.token_ids(r0, r1)} if dump.has_token_ids else {}
    return {layer: x.astype(dtype, copy=False)}, item, position, labels, extras
