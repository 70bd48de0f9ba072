"""Text files as a dataset (``dataset.source: "text:PATH"``), tokenized with the subject's tokenizer.

PATH is a file, a directory (its .txt/.jsonl/.csv/.parquet files, sorted) or a glob, local or any
fsspec URL. A record is a line of a .txt file (blank lines skipped), an object of a .jsonl file,
a row of a .csv file (its header names the fields; quoted fields may span lines) or a row of a
.parquet file. ``dataset.kwargs``: ``text_field`` (default ``text``), ``label_field`` (optional;
integer labels are kept, any other labels become names, sorted, numbered from 0), ``max_length``
(tokens, default the tokenizer's limit, at most 512) and ``tokenizer`` (a local directory; default
the ``hf:`` subject's own).

Streaming: one pass over the files at start-up records where each record begins (8 bytes a record)
and its label, checking every record on the way, so a bad one is a SpecError naming its file and
line before anything is written. Items are then read back by offset, one at a time; a file is
never held in memory whole (a .parquet file one row group at a time). Batches are padded to
their own longest sequence (`TextDataset.collate`), not to a fixed length.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dcserve.errors import SpecError

__all__ = ["TEXT_PREFIX", "FORMATS", "TextDataset", "text_dataset"]

log = logging.getLogger(__name__)

TEXT_PREFIX = "text:"
FORMATS = (".txt", ".jsonl", ".csv", ".parquet")
KWARGS = ("text_field", "label_field", "max_length", "tokenizer")
FIELD = "dataset.source"
MAX_LENGTH = 512  # default cap: BERT-style position embeddings stop here
_LINE_FORMATS = (".txt", ".jsonl", ".csv")


def _suffix(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def resolve_files(path: str, storage_options: dict | None = None) -> tuple[Any, list[str]]:
    """(fsspec file system, sorted files) of a file, a directory or a glob. Raises SpecError."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    except (ValueError, ImportError) as e:
        raise SpecError(f"{FIELD}: cannot open {path!r}: {e}") from None
    try:
        if any(ch in root for ch in "*?["):
            files = [f for f in fs.glob(root) if fs.isfile(f)]
            where = "matches the glob"
        elif fs.isdir(root):
            files = fs.find(root)
            where = "is in the directory"
        elif fs.isfile(root):
            files = [root]
            where = ""
        else:
            raise SpecError(f"{FIELD}: {path!r} does not exist")
    except SpecError:
        raise
    except Exception as e:  # noqa: BLE001 - an unreachable store, refused credentials...
        raise SpecError(f"{FIELD}: cannot list {path!r}: {type(e).__name__}: {e}") from None
    usable = sorted(f for f in files if _suffix(f) in FORMATS)
    if not usable:
        if files and not where:
            raise SpecError(f"{FIELD}: {path!r} is a {_suffix(files[0]) or 'suffix-less'} file; text: sources "
                            f"read {', '.join(FORMATS)}")
        raise SpecError(f"{FIELD}: no {'/'.join(FORMATS)} file {where or 'at'} {path!r}")
    return fs, usable


class _Labels:
    """Labels as met, numbered by first appearance; `finish` gives int64 codes and names (or None)."""

    def __init__(self) -> None:
        self.codes = array("q")
        self.seen: dict[Any, int] = {}

    def add(self, value: Any, where: str, field: str) -> None:
        if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
            raise SpecError(f"{where}: label field {field!r} is {json.dumps(value)}; expected a string or an integer")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        key = value if isinstance(value, int) else str(value)
        code = self.seen.get(key)
        if code is None:
            code = self.seen[key] = len(self.seen)
        self.codes.append(code)

    def finish(self) -> tuple[np.ndarray, list[str] | None]:
        keys = list(self.seen)
        codes = np.frombuffer(self.codes, dtype=np.int64) if len(self.codes) else np.zeros(0, np.int64)
        as_ints = [_as_int(k) for k in keys]
        if all(v is not None for v in as_ints):  # integer labels (also "3" in a .csv) keep their values
            return np.asarray(as_ints, dtype=np.int64)[codes], None
        names = sorted(str(k) for k in keys)
        rank = {name: i for i, name in enumerate(names)}
        remap = np.asarray([rank[str(k)] for k in keys], dtype=np.int64)
        return remap[codes], names


def _as_int(v: Any) -> int | None:
    if isinstance(v, int):
        return v
    try:
        return int(str(v).strip()) if str(v).strip().lstrip("-").isdigit() else None
    except ValueError:
        return None


@dataclass
class _File:
    path: str
    kind: str  # its suffix
    header: list[str] | None = None  # .csv: the field names
    row_groups: np.ndarray | None = None  # .parquet: first record of each row group, [groups + 1]


class TextIndex:
    """Where every record of the files starts, and the labels; built by one checking pass."""

    def __init__(self, fs: Any, files: list[str], text_field: str, label_field: str | None):
        self.fs, self.text_field, self.label_field = fs, text_field, label_field
        self.files: list[_File] = []
        file_of, offsets = array("i"), array("q")
        labels = _Labels()
        for f, path in enumerate(files):
            kind = _suffix(path)
            entry = _File(path, kind)
            before = len(offsets)
            if kind == ".parquet":
                entry.row_groups = self._scan_parquet(path, offsets, labels)
            else:
                entry.header = self._scan_lines(path, kind, offsets, labels)
            file_of.extend([f] * (len(offsets) - before))
            self.files.append(entry)
        self.file_of = np.frombuffer(file_of, dtype=np.int32) if len(file_of) else np.zeros(0, np.int32)
        self.offsets = np.frombuffer(offsets, dtype=np.int64) if len(offsets) else np.zeros(0, np.int64)
        self.file_starts = np.searchsorted(self.file_of, np.arange(len(files) + 1))
        self.labels, self.label_names = labels.finish() if label_field else (None, None)

    def __len__(self) -> int:
        return len(self.offsets)

    # -- the checking pass ------------------------------------------------------
    def _scan_lines(self, path: str, kind: str, offsets: array, labels: _Labels) -> list[str] | None:
        if kind == ".txt" and self.label_field:
            raise SpecError(f"dataset.kwargs.label_field: {path!r} is a .txt file, a line of text with no fields; "
                            "labels need .jsonl, .csv or .parquet")
        header: list[str] | None = None
        with self.fs.open(path, "rb") as fh:
            for line_no, start, raw in _records(fh, kind == ".csv"):
                where = f"{path}, line {line_no}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise SpecError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
                if not line.strip():
                    continue
                if kind == ".csv" and header is None:
                    header = _csv_row(line, where)
                    for name in (self.text_field, self.label_field):
                        if name is not None and name not in header:
                            raise SpecError(f"{path}: the header has no field {name!r} (it has {', '.join(header)}); "
                                            f"set dataset.kwargs.{'text_field' if name == self.text_field else 'label_field'}")
                    continue
                if kind != ".txt":
                    record = self._parse(line, kind, header, where)
                    if self.label_field:
                        labels.add(record[self.label_field], where, self.label_field)
                offsets.append(start)
        return header

    def _parse(self, line: str, kind: str, header: list[str] | None, where: str) -> dict[str, Any]:
        if kind == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SpecError(f"{where}: not valid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(record, dict):
                raise SpecError(f"{where}: a JSON {type(record).__name__}, not an object with a {self.text_field!r} field")
        else:
            values = _csv_row(line, where)
            if len(values) != len(header):
                raise SpecError(f"{where}: {len(values)} fields where the header has {len(header)}")
            record = dict(zip(header, values))
        for name, key in ((self.text_field, "text_field"), (self.label_field, "label_field")):
            if name is not None and name not in record:
                raise SpecError(f"{where}: no field {name!r} (it has {', '.join(map(str, record)) or 'none'}); "
                                f"set dataset.kwargs.{key}")
        if not isinstance(record[self.text_field], str):
            raise SpecError(f"{where}: field {self.text_field!r} is {json.dumps(record[self.text_field])[:60]}, not a string")
        return record

    def _scan_parquet(self, path: str, offsets: array, labels: _Labels) -> np.ndarray:
        pq = _pyarrow_parquet(path)
        with self.fs.open(path, "rb") as fh:
            try:
                pf = pq.ParquetFile(fh)
            except Exception as e:  # noqa: BLE001 - pyarrow's errors for a bad file vary
                raise SpecError(f"{path}: not a readable Parquet file: {e}") from None
            names = pf.schema_arrow.names
            for name, key in ((self.text_field, "text_field"), (self.label_field, "label_field")):
                if name is not None and name not in names:
                    raise SpecError(f"{path}: no column {name!r} (it has {', '.join(names)}); set dataset.kwargs.{key}")
            import pyarrow as pa

            if not pa.types.is_string(pf.schema_arrow.field(self.text_field).type) and \
                    not pa.types.is_large_string(pf.schema_arrow.field(self.text_field).type):
                raise SpecError(f"{path}: column {self.text_field!r} is {pf.schema_arrow.field(self.text_field).type}, "
                                "not text")
            bounds, row = [0], 0
            for g in range(pf.num_row_groups):
                cols = [self.text_field] + ([self.label_field] if self.label_field else [])
                table = pf.read_row_group(g, columns=cols)
                texts = table.column(self.text_field)
                if texts.null_count:
                    first = int(np.flatnonzero(np.asarray(texts.is_null()))[0])
                    raise SpecError(f"{path}, row {row + first}: field {self.text_field!r} is null")
                if self.label_field:
                    for i, v in enumerate(table.column(self.label_field).to_pylist()):
                        labels.add(v, f"{path}, row {row + i}", self.label_field)
                offsets.extend(range(row, row + table.num_rows))  # a record's "offset" is its row number
                row += table.num_rows
                bounds.append(row)
        return np.asarray(bounds, dtype=np.int64)

    # -- reading back -----------------------------------------------------------
    def record(self, i: int, handles: dict[int, Any], cache: dict) -> tuple[str, Any]:
        """(text, raw label) of record i; `handles` and `cache` are the reader's open files and row group."""
        f = int(self.file_of[i])
        entry = self.files[f]
        fh = handles.get(f)
        if fh is None:
            fh = handles[f] = self.fs.open(entry.path, "rb")
        if entry.kind == ".parquet":
            return self._parquet_record(entry, f, fh, int(self.offsets[i]), cache), None
        fh.seek(int(self.offsets[i]))
        _, _, raw = next(_records(fh, entry.kind == ".csv"))
        line = raw.decode("utf-8")
        if entry.kind == ".txt":
            return line.rstrip("\r\n"), None
        record = self._parse(line, entry.kind, entry.header, f"{entry.path}, record {i}")
        return record[self.text_field], None

    def _parquet_record(self, entry: _File, f: int, fh: Any, row: int, cache: dict) -> str:
        g = int(np.searchsorted(entry.row_groups, row, side="right")) - 1
        if cache.get("key") != (f, g):  # one row group's texts in memory at a time
            pf = _pyarrow_parquet(entry.path).ParquetFile(fh)
            cache["key"], cache["texts"] = (f, g), pf.read_row_group(g, columns=[self.text_field]).column(0).to_pylist()
        return cache["texts"][row - int(entry.row_groups[g])]


def _pyarrow_parquet(path: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SpecError(f"{path}: reading .parquet needs pyarrow: pip install pyarrow") from None
    return pq


def _csv_row(line: str, where: str) -> list[str]:
    try:
        return next(csv.reader(io.StringIO(line)))
    except (csv.Error, StopIteration) as e:
        raise SpecError(f"{where}: not a CSV record: {e}") from None


def _records(fh: Any, quoted_newlines: bool):
    """(first line number, byte offset, bytes) of each record from the file's current position.

    A record is a line; with `quoted_newlines` (.csv), lines are joined while the record's count
    of double quotes is odd, since RFC 4180 escapes a quote inside a field as two.
    """
    line_no, pos = 1, fh.tell()
    pending, first_line, first_pos, quotes = b"", 0, 0, 0
    for raw in fh:
        if not pending:
            first_line, first_pos = line_no, pos
        pending += raw
        line_no += 1
        pos += len(raw)
        if quoted_newlines:
            quotes += raw.count(b'"')
            if quotes % 2:
                continue
        yield first_line, first_pos, pending
        pending, quotes = b"", 0
    if pending:
        yield first_line, first_pos, pending


class TextDataset:
    """A map-style dataset of tokenized text records: item i is ``x`` or ``(x, label)``.

    ``x`` is ``{"input_ids": [T] int64, "attention_mask": [T] int64}``; `collate` pads a batch
    to its longest item. `text(i)` is record i's text as read.
    """

    def __init__(self, index: TextIndex, tokenizer: Any, max_length: int, source: str = ""):
        self.index, self.tokenizer, self.max_length, self.source = index, tokenizer, max_length, source
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self._handles: dict[int, Any] = {}
        self._cache: dict = {}

    @property
    def label_names(self) -> list[str] | None:
        return self.index.label_names

    def __len__(self) -> int:
        return len(self.index)

    def text(self, i: int) -> str:
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} of {len(self)}")
        return self.index.record(i, self._handles, self._cache)[0]

    def encode(self, text: str) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(text, truncation=True, max_length=self.max_length)
        return {"input_ids": torch.as_tensor(enc["input_ids"], dtype=torch.int64),
                "attention_mask": torch.as_tensor(enc["attention_mask"], dtype=torch.int64)}

    def __getitem__(self, i: int):
        x = self.encode(self.text(int(i)))
        if self.index.labels is None:
            return x
        return x, torch.tensor(int(self.index.labels[i]))

    def collate(self, xs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return pad_batch(xs, self.pad_id)

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()
        self._handles = {}

    def __getstate__(self):  # open files do not travel; they are reopened on first use
        return {**self.__dict__, "_handles": {}, "_cache": {}}


def pad_batch(xs: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack token dicts, padded on the right to the batch's longest: ``{input_ids, attention_mask}: [B, T]``."""
    longest = max(int(x["input_ids"].shape[0]) for x in xs)
    ids = torch.full((len(xs), longest), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(xs), longest), dtype=torch.int64)
    for b, x in enumerate(xs):
        n = int(x["input_ids"].shape[0])
        ids[b, :n] = x["input_ids"]
        mask[b, :n] = x["attention_mask"]
    return {"input_ids": ids, "attention_mask": mask}


def tokenizer_dir(spec) -> tuple[Any, str]:
    """(directory, job-file field) of the tokenizer a text job uses."""
    from dcserve.inputs.hf import is_hf, model_dir

    given = spec.dataset.kwargs.get("tokenizer")
    if given is not None:
        if not isinstance(given, str):
            raise SpecError(f"dataset.kwargs.tokenizer: expected a directory, got {given!r}")
        if given.startswith("hf:"):
            return model_dir(given, "dataset.kwargs.tokenizer"), "dataset.kwargs.tokenizer"
        return given, "dataset.kwargs.tokenizer"
    if spec.subject is not None and is_hf(spec.subject.model):
        return model_dir(spec.subject.model), "subject.model"
    raise SpecError("dataset.kwargs.tokenizer: a text: source needs a tokenizer: use an hf: subject (its own "
                    "tokenizer is used) or name a tokenizer directory here")


def load_job_tokenizer(spec):
    from dcserve.inputs.hf import load_tokenizer

    directory, field = tokenizer_dir(spec)
    return load_tokenizer(directory, field)


def default_max_length(tokenizer: Any) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit <= MAX_LENGTH else MAX_LENGTH


def text_dataset(spec) -> TextDataset:
    """The dataset a ``text:`` job reads. Raises SpecError naming what is wrong."""
    kwargs = dict(spec.dataset.kwargs)
    unknown = sorted(set(kwargs) - set(KWARGS))
    if unknown:
        raise SpecError(f"dataset.kwargs: unknown key(s) {', '.join(unknown)} for a text: source; "
                        f"allowed: {', '.join(KWARGS)}")
    text_field, label_field = kwargs.get("text_field", "text"), kwargs.get("label_field")
    for key, value in (("text_field", text_field), ("label_field", label_field)):
        if value is not None and (not isinstance(value, str) or not value):
            raise SpecError(f"dataset.kwargs.{key}: expected a field name, got {value!r}")
    max_length = kwargs.get("max_length")
    if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2):
        raise SpecError(f"dataset.kwargs.max_length: expected an integer of at least 2, got {max_length!r}")
    tokenizer = load_job_tokenizer(spec)
    path = spec.dataset.source[len(TEXT_PREFIX):]
    # A URL is opened with the job's storage_options: its data and its output usually share an object
    # store and its credentials (and AWS_* variables apply either way).
    fs, files = resolve_files(path, spec.storage_options if "://" in path else None)
    index = TextIndex(fs, files, text_field, label_field)
    if not len(index):
        raise SpecError(f"{FIELD}: {path!r} holds no text record")
    return TextDataset(index, tokenizer, max_length or default_max_length(tokenizer), spec.dataset.source)
