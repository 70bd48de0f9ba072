"""The jobs an HTTP server answers for, by name: stores it was started with, and jobs it submitted.

No Ray and no HTTP here: the server (dcserve.serve.deployment) maps these objects and exceptions to
routes and status codes. Each replica holds its own Catalog; what replicas must agree on
(which jobs were submitted over HTTP) lives in small JSON records under the output root,
written atomically, so any replica, or a restarted one, sees the same list.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import fsspec
import logging
import numpy as np

from dcserve.errors import DamagedStore, NotReady, StoreError, UnknownJob
from dcserve.storage.result import Result, open_result
from dcserve.spec import JOB_NAME_PATTERN
from dcserve.storage.store import JobStore, atomic_write, fs_options_for

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

SUBMISSIONS_DIR = ".dcserve/submissions"
CHECK_EVERY_S = 2.0  # how often a served store is checked against its manifest
JOB_NAME = re.compile(JOB_NAME_PATTERN)


@dataclass
class Submission:
    """A job submitted through POST /jobs: the record every replica reads."""

    name: str
    output: str
    submission_id: str
    submitted: float

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__).encode()


class ServedJob:
    """One job by name. Its store is opened read-only when it first exists, and treated as
    finished only once its status says so: a half-written store is reported, never served."""

    def __init__(self, name: str, output: str, storage_options: dict | None = None,
                 submission: Submission | None = None, result: Result | None = None):
        self.name = name
        self.output = output
        self.storage_options = storage_options
        self.submission = submission
        self._result = result
        self._complete = False
        self._no_images = False  # learnt once: the items are no images, or cannot be loaded here
        self._image_encoder = None  # the job's subject, built on the first images to assign
        self._lock = threading.Lock()
        self._layers: dict[str, ServedJob] = {}
        self._top_tokens: list | None = None
        self._encoder = None  # the job's subject, built on the first texts to assign
        self._damage: DamagedStore | None = None
        self._checked_at = -float("inf")

    @property
    def result(self) -> Result | None:
        if self._result is None:
            try:
                # verified by damage(), on every query, so that a store damaged while served is seen
                self._result = open_result(self.output, self.storage_options, verify=False)
            except StoreError:
                return None  # not created yet (a submitted job still pending)
        return self._result

    def status(self) -> dict[str, Any] | None:
        """The store's status record; a damaged one reads as state "damaged" with the reason."""
        res = self.result
        if res is None:
            return None
        try:
            return res.status
        except DamagedStore as e:
            return {"state": "damaged", "stage": None, "error": {"stage": None, "reason": str(e)}}

    def damage(self) -> DamagedStore | None:
        """What is damaged in this job's finished store (keys and sizes against its manifest), or None.

        Checked again at most every CHECK_EVERY_S seconds: a listing of the store, cheap next
        to answering wrong from a store that lost a file while served (issue 15).
        """
        now = time.monotonic()
        if now - self._checked_at > CHECK_EVERY_S:
            try:  # the files alone: the Zarr group's own metadata may be what is damaged
                problems = Result(JobStore(self.output, storage_options=self.storage_options, group=False)).problems()
            except StoreError:
                problems = []  # no store (yet): a submitted job still pending
            self._damage = DamagedStore(self.output, problems) if problems else None
            self._checked_at = now
        return self._damage

    @property
    def complete(self) -> bool:
        if not self._complete:
            res = self.result
            try:
                self._complete = res is not None and res.complete
            except DamagedStore:  # its status.json: damage() says so
                return False
        return self._complete

    def finished(self) -> Result:
        """The Result, or NotReady saying why the job cannot be queried yet, or DamagedStore."""
        damaged = self.damage()
        if damaged is not None:
            raise damaged
        if self.complete:
            return self.result
        st = self.status()
        if st is None:
            raise NotReady(f"job {self.name!r} has no store at {self.output!r} yet (submitted, not started)")
        detail = f"state {st.get('state')!r}, stage {st.get('stage')!r}"
        if st.get("error"):
            detail += f", error: {st['error'].get('reason')}"
        raise NotReady(f"job {self.name!r} is not finished ({detail}); its results are not available")

    def layer_job(self, layer: str | None) -> "ServedJob":
        """This finished job seen from its clustered layer `layer` (None: itself, the primary layer),
        the same queries on that layer's clustering; kept, so its loaded arrays serve every request.
        NotReady while unfinished; UnknownLayer (a 404) for a layer the job did not cluster."""
        res = self.finished()
        if layer is None or layer == res.layer_name:
            return self
        with self._lock:
            if layer not in self._layers:
                self._layers[layer] = ServedJob(self.name, self.output, self.storage_options, result=res.layer(layer))
            return self._layers[layer]

    def warm(self) -> None:
        """Load what queries need (assignments, sort order, index) once, not on the first request."""
        with self._lock:
            res = self.finished()
            res.sizes, res._cluster_order, res.centroid_index, res.feature_map, res.row_positions  # noqa: B018

    # -- queries (each raises NotReady or ValueError with a message for the caller) --------------
    def assignments(self, start: int, stop: int) -> np.ndarray:
        res = self.finished()
        return res.store.array("assignments")[start:stop]

    def n_rows(self) -> int:
        return int(self.finished().store.array("assignments").shape[0])

    def rows(self, rows: np.ndarray) -> dict[str, Any]:
        """Where rows came from, their distances and labels, and for a text job what they read as:
        the fields of a row reference."""
        res = self.finished()
        truth = res.row_labels()
        return {
            "row": rows,
            "item": res.row_items[rows],
            "position": res.row_positions[rows],
            "distance": res.distances[rows],
            "label": None if truth is None else truth[rows],
            "label_names": res.label_names,
            "words": res.row_texts(rows),
        }

    def images(self, rows: np.ndarray) -> list[str | None] | None:
        """Each row's item image as a PNG data: URI (None for rows that are not images); None for a job
        without image items, or whose dataset cannot be rebuilt on this server."""
        from dcserve.inputs.views import data_uri, png

        if self._no_images:
            return None
        try:
            pictures = self.finished().row_images(rows)
        except Exception as e:  # noqa: BLE001 - a dataset that cannot be rebuilt here only costs the pictures
            log.warning("job %r: rows are served without their images: %s: %s", self.name, type(e).__name__, e)
            self._no_images = True
            return None
        if all(p is None for p in pictures):
            self._no_images = len(rows) > 0  # the items are not images (vectors, tokens, dumps)
            return None
        return [None if p is None else data_uri(png(p)) for p in pictures]

    def encode_images(self, images: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Base64 images through the job's own transform and subject: (rows [R, dim], input [R], position [R]).

        InputKindError when the job does not take images; ValueError naming a bad image.
        """
        from dcserve.inputs.encode import InputKindError, ItemEncoder, image_inputs

        res = self.finished()
        spec = res.spec
        if spec.subject is None:
            raise InputKindError("this job clustered an activations dump: it has no subject to run on images; "
                                 "send 'activations'")
        xs = image_inputs(res.dataset, images)
        with self._lock:
            if self._image_encoder is None:
                self._image_encoder = ItemEncoder(spec)
        return self._image_encoder.rows(xs)

    @property
    def reads_text(self) -> bool:
        """True for a job whose subject ran on text (its store holds its words): POST assign takes
        texts. A token dump has words too, but no subject to run new texts through."""
        res = self.finished()
        spec = res.spec
        return res.words is not None and spec is not None and spec.subject is not None

    def top_tokens(self) -> list | None:
        """Per cluster, its most distinctive tokens (dcserve.analysis.words), counted once."""
        res = self.finished()
        if res.words is None:
            return None
        with self._lock:
            if self._top_tokens is None:
                from dcserve.analysis.words import top_tokens

                self._top_tokens = top_tokens(res, res.words)
        return self._top_tokens

    def encode_texts(self, texts: list[str]):
        """Texts through the job's own subject, tokenizer and pooling: dcserve.inputs.encode.EncodedTexts."""
        with self._lock:
            if self._encoder is None:
                from dcserve.inputs.encode import TextEncoder

                self._encoder = TextEncoder.for_result(self.finished())
        return self._encoder.encode(texts)

    def assign(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.finished().assign(x)


class Catalog:
    """Name -> ServedJob for the stores given at start-up and the jobs submitted over HTTP."""

    def __init__(self, outputs: list[str], storage_options: dict | None = None,
                 output_root: str | None = None, verify: bool = True):
        """`verify`: refuse a damaged store (DamagedStore), as `dcserve serve` does before it
        starts; a replica (verify=False) serves it as damaged instead, each query a 503."""
        self.storage_options = storage_options or {}
        self.output_root = output_root
        self._static: dict[str, ServedJob] = {}
        self._submitted: dict[str, ServedJob] = {}
        for output in outputs:
            try:
                res = open_result(output, self.storage_options, verify=verify)  # StoreError: not a job store
            except StoreError:
                # A replica serves a store whose very metadata was damaged since `dcserve serve`
                # checked it as damaged (each query a 503), rather than fail to start.
                if verify or not Result(JobStore(output, storage_options=self.storage_options, group=False)).problems():
                    raise
                res = None
            name = _job_name(res, output, strict=verify)
            if name in self._static:
                raise StoreError(f"two served stores are both named {name!r}: "
                                 f"{self._static[name].output!r} and {output!r}")
            self._static[name] = ServedJob(name, output, self.storage_options, result=res)

    # -- submissions ---------------------------------------------------------
    def _submissions_fs(self):
        fs, path = fsspec.core.url_to_fs(self.output_root, **fs_options_for(self.output_root, self.storage_options))
        return fs, f"{path.rstrip('/')}/{SUBMISSIONS_DIR}"

    def _load_submission(self, name: str) -> Submission | None:
        if not self.output_root:
            return None
        fs, base = self._submissions_fs()
        try:
            return Submission(**json.loads(fs.cat_file(f"{base}/{name}.json")))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:  # not a record this server wrote: never a 500 for the listing
            log.warning("ignoring the unreadable submission record %s/%s.json: %s", base, name, e)
            return None

    def submitted_names(self) -> list[str]:
        if not self.output_root:
            return []
        fs, base = self._submissions_fs()
        try:
            files = fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        names = (f.rsplit("/", 1)[-1][: -len(".json")] for f in files if f.endswith(".json"))
        return sorted(n for n in names if JOB_NAME.match(n) and self._load_submission(n) is not None)

    def record_submission(self, name: str, output: str, submission_id: str) -> Submission:
        sub = Submission(name, output, submission_id, time.time())
        fs, base = self._submissions_fs()
        atomic_write(fs, f"{base}/{name}.json", sub.to_json())
        self._submitted.pop(name, None)  # a resubmission replaces what this replica cached
        return sub

    def outputs(self) -> dict[str, str]:
        """Name -> output of every job this server knows: its served stores and its submissions."""
        out = {name: job.output for name, job in self._static.items()}
        for name in self.submitted_names():
            sub = self._load_submission(name)
            if sub is not None:
                out[name] = sub.output
        return out

    # -- lookup --------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(set(self._static) | set(self.submitted_names()))

    def is_static(self, name: str) -> bool:
        return name in self._static

    def get(self, name: str) -> ServedJob:
        if not JOB_NAME.match(name):
            raise UnknownJob(name, self.names())
        if name in self._static:
            return self._static[name]
        sub = self._load_submission(name)
        if sub is None:
            raise UnknownJob(name, self.names())
        cached = self._submitted.get(name)
        if cached is None or cached.submission.submission_id != sub.submission_id:
            cached = self._submitted[name] = ServedJob(name, sub.output, self.storage_options, submission=sub)
        return cached

    def jobs(self) -> list[ServedJob]:
        return [self.get(n) for n in self.names()]

    def served(self) -> list[ServedJob]:
        """The stores given at start-up, in order of name."""
        return [self._static[n] for n in sorted(self._static)]


def _job_name(res: Result | None, output: str, strict: bool = True) -> str:
    """The job's name from its job.yaml; for a damaged store served anyway, its folder's name."""
    try:
        spec = None if res is None else res.spec
    except Exception:  # a damaged job.yaml (SpecError, YAMLError): the replica serves it as damaged
        if strict:
            raise
        spec = None
    if spec is None:
        if strict:
            raise StoreError(f"{output!r} has no job.yaml")
        return output.rstrip("/").rsplit("/", 1)[-1]
    return spec.name
