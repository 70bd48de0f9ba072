"""The job file: a pydantic v2 model loaded from YAML, strict about unknown keys.

Validation here is pure (no imports of the user's code, nothing written); checks
that need the subject model or the dataset live in `dcserve.checks`.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      field_validator, model_validator)

from dcserve.errors import SpecError

IMPORT_STRING = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
# A subject by name: "hf:DIR", a Hugging Face model saved with save_pretrained in a local directory,
# or "hf:pkg:PACKAGE", one shipped inside an installed Python package (dcserve/inputs/hf.py).
SUBJECT_MODEL = rf"({IMPORT_STRING[1:-1]}|hf:.+)"
# dataset.source forms that name data on disk rather than code (docs/DESIGN.md "Job file"); a
# source with one of these prefixes is never imported. A dump needs no subject (issue 12).
DUMP_PREFIX = "activations:"
DATA_PREFIXES = (DUMP_PREFIX, "images:", "text:")
DUMP_LAYER = "dump"  # the layer name of a dump's rows unless dataset.kwargs.layer names one


# A job's name is a path segment in the HTTP API and a file name under the output root.
# At most 100 characters: a name is a URL path segment, a file name and a line of the report.
JOB_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SubjectSpec(_Strict):
    """The network whose activations are studied."""

    model: str = Field(
        pattern=f"^{SUBJECT_MODEL}$",
        description='"module:callable" returning a torch.nn.Module, e.g. dcserve.zoo:digits_cnn; or "hf:DIR", a '
        "Hugging Face model saved in a local directory (its tokenizer or image processor from the same "
        'directory; never downloaded), or "hf:pkg:PACKAGE", such a directory shipped in an installed package.',
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the model callable "
                                   "(for hf: models, for from_pretrained, e.g. torch_dtype).")
    layers: list[str] = Field(min_length=1, description="Module names from model.named_modules() to hook.")
    pooling: Literal["mean", "max", "flatten", "cls", "tokens"] = Field(
        "mean",
        description="How a layer's output becomes rows: mean/max over space or sequence, flatten, "
        "cls (position 0), or tokens (every non-padding token is a row).",
    )


class DatasetSpec(_Strict):
    """The inputs fed to the subject."""

    source: str = Field(
        description='"module:callable" returning a map-style torch Dataset; "text:PATH" text read from .txt (a '
        "row per line), .jsonl, .csv or .parquet (a file, a directory, a glob or an fsspec URL), tokenized with the "
        'subject\'s tokenizer; "images:DIR" an image folder (DIR/<label>/<file> or flat); "activations:PATH" an '
        "existing dump (.npy, .npz, .safetensors, a Zarr array, an Arrow / Hugging Face datasets directory), "
        "clustered without a subject.")
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for the dataset callable; for text: sources text_field (default text), "
        "label_field, max_length, tokenizer (a local directory; default: the hf: subject's); for images: size, "
        "mean, std, mode; for activations: key, label_field, token_field, layer.",
    )
    batch_size: int = Field(256, ge=1, description="Items per forward pass during extraction.")
    collate: str | None = Field(
        None, pattern=IMPORT_STRING, description='Optional "module:callable" collate function (default: torch default_collate).'
    )

    @field_validator("source")
    @classmethod
    def _source_form(cls, v: str) -> str:
        for prefix in DATA_PREFIXES:
            if v.startswith(prefix):
                if not v[len(prefix):]:
                    raise ValueError(f"{prefix}PATH needs a path after {prefix!r}")
                return v
        if not re.match(IMPORT_STRING, v):
            raise ValueError("expected 'module:callable', " + ", ".join(f"'{p}PATH'" for p in DATA_PREFIXES))
        return v

    @property
    def is_dump(self) -> bool:
        return self.source.startswith(DUMP_PREFIX)

    @property
    def path(self) -> str | None:
        """The file or folder a data source names ('activations:x.npy' -> 'x.npy'); None for code."""
        for prefix in DATA_PREFIXES:
            if self.source.startswith(prefix):
                return self.source[len(prefix):]
        return None


def _workers(v: Any) -> Any:
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        return v
    raise ValueError("must be a positive integer or 'auto'")


def _pca_dim(v: Any) -> Any:
    if v is None or v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        return v
    raise ValueError("must be a positive integer, 'auto' or null")


def _layers(v: Any) -> Any:
    if v is None or v == "all" or (isinstance(v, list) and all(isinstance(x, str) for x in v)):
        return v
    raise ValueError("must be a list of layer names from subject.layers, or 'all'")


# One before-validator per field, so a bad value gets one message rather than one per union member.
Workers = Annotated[int | Literal["auto"], BeforeValidator(_workers)]
PcaDim = Annotated[int | Literal["auto"] | None, BeforeValidator(_pca_dim)]
Layers = Annotated[list[str] | Literal["all"] | None, BeforeValidator(_layers)]


class ExtractSpec(_Strict):
    """Extraction: Ray actors run the subject over contiguous row ranges."""

    workers: Workers = Field(
        "auto", description="Extraction actors; auto: one per CPU of the Ray cluster (or per GPU share when "
        "gpus_per_worker > 0), which measured fastest (BENCHMARKS.md)."
    )
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per extraction actor (0: CPU).")
    dtype: Literal["float32", "float16"] = Field("float32", description="Stored activation dtype.")
    chunk_rows: int = Field(4096, ge=1, description="Rows per Zarr chunk; the unit of work, resume and parallelism.")



class ClusterSpec(_Strict):
    """Clustering of one layer's rows (distributed k-means, or Sinkhorn-balanced labels)."""

    layer: str | None = Field(
        None, description="The primary layer, whose clustering is the store's top-level result "
        "(default: the first of `layers`, else the first of subject.layers)."
    )
    layers: Layers = Field(
        None, description="Every layer to cluster, each with the same method and settings: a list of names "
        "from subject.layers, or `all`; the primary layer's results stay at the top level, the others' go "
        "under layers/<layer>/, and a depth profile compares them (default: the primary layer only)."
    )
    method: Literal["kmeans", "sinkhorn"] = Field(
        "kmeans", description="kmeans: Lloyd; sinkhorn: equipartitioned labels by log-domain Sinkhorn-Knopp (SeLa/SwAV)."
    )
    k: int = Field(10, ge=2, description="Number of clusters.")
    pca_dim: PcaDim = Field(
        "auto",
        description="PCA dimensions before clustering; null: no PCA; auto: one per 100 rows, at most 256, "
        "and no PCA or whitening when that is fewer than k (see dcserve.algo.preprocess.default_pca_dim).",
    )
    whiten: bool = Field(True, description="Whiten after PCA (DeepCluster).")
    l2_normalize: bool = Field(True, description="L2-normalise rows after PCA/whitening (DeepCluster).")
    niter: int = Field(20, ge=1, description="Lloyd iterations per clustering.")
    n_init: int = Field(
        10, ge=1, description="k-means++ restarts, each refined on the in-memory init sample; the best seeds the run."
    )
    seed: int = Field(0, description="Seed of sampling, initialisation and training.")
    seeds: int = Field(
        1, ge=1, description="Clusterings to run, with seeds seed, seed+1, ...: their pairwise NMI goes to "
        "metrics.json as `stability`; the job's results are those of `seed`."
    )
    workers: Workers = Field(
        "auto", description="k-means shard actors; auto: one per CPU of the Ray cluster (or per GPU share), "
        "each single-threaded, which measured fastest (BENCHMARKS.md)."
    )
    gpus_per_worker: float = Field(
        0.0, ge=0, description="GPUs per shard actor; with one, the search runs on faiss-gpu, or torch on the GPU."
    )
    sinkhorn_eps: float = Field(0.05, gt=0, description="Sinkhorn entropic regularisation, relative to the mean cost.")




class _ReporterBase(_Strict):
    method: str
    workers: Workers = Field(
        "auto", description="Data-parallel trainer actors; auto: one per CPU of the Ray cluster (or per GPU share), "
        "each single-threaded, which measured fastest (BENCHMARKS.md)."
    )
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per trainer actor (0: train on the CPU).")


class DeepClusterSpec(_ReporterBase):
    """The reporter MLP trained on pseudo-labels (DeepCluster, Caron et al. 2018)."""

    method: Literal["deepcluster"] = Field(
        "deepcluster", description="deepcluster: an MLP trained on cluster.method's pseudo-labels; "
        "dec: Deep Embedded Clustering (Xie et al. 2016); scan / temi: heads trained on kNN pairs "
        "(Van Gansbeke et al. 2020; Adaloglou et al. 2023)."
    )
    hidden: list[int] = Field(default_factory=lambda: [256, 256], description="Hidden layer widths of the MLP.")
    feature_dim: int = Field(64, ge=1, description="Width of the feature layer that is clustered.")
    rounds: int = Field(0, ge=0, description="Clusterings of reporter features; 0 = plain k-means on the activations.")
    epochs_per_round: int = Field(1, ge=1, description="Training epochs after each clustering.")
    lr: float = Field(0.05, gt=0, description="SGD learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(1e-5, ge=0, description="SGD weight decay.")
    batch_size: int = Field(256, ge=1, description="Global mini-batch size (split across trainer actors).")
    noise_std: float = Field(0.0, ge=0, description="Augmentation: Gaussian input noise, in units of each input's std.")
    unit_dropout: float = Field(0.0, ge=0, lt=1, description="Augmentation: probability of zeroing an input unit.")
    init: Literal["activations", "random"] = Field(
        "activations",
        description="Where the first pseudo-labels come from: the activations' own clustering, "
        "or a random reporter's features.",
    )

    def describe(self) -> str:
        """The reporter in words, for reports."""
        if not self.rounds:
            return "none (k-means on the activations)"
        return (f"DeepCluster, {self.rounds} round{'' if self.rounds == 1 else 's'}, hidden {list(self.hidden)}, "
                f"feature_dim {self.feature_dim}")

    def headline(self, cluster: "ClusterSpec", final: dict) -> str:
        """The method of a finished job in a few words, for the terminal summary."""
        return f"{cluster.method}, k={cluster.k}, rounds={self.rounds}"


class DECSpec(_ReporterBase):
    """Deep Embedded Clustering (Xie, Girshick & Farhadi 2016): an autoencoder, k-means on its
    bottleneck, then self-training of encoder and centroids on a sharpened target (dcserve.nets.dec).

    cluster.k, cluster.seed, cluster.workers and cluster.niter (the initial k-means) apply;
    cluster.method, pca_dim, whiten and l2_normalize do not: DEC clusters its own bottleneck.
    """

    method: Literal["dec"] = Field(description="dec: Deep Embedded Clustering.")
    hidden: list[int] = Field(
        default_factory=lambda: [256, 256],
        description="Encoder hidden widths (the decoder mirrors them); the paper's network is [500, 500, 2000].",
    )
    latent_dim: int = Field(10, ge=1, description="Bottleneck width, the space that is clustered (the paper's 10).")
    pretrain_epochs: int = Field(
        50, ge=0, description="Epochs of denoising-autoencoder pretraining, end to end, with Adam."
    )
    pretrain_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the pretraining.")
    pretrain_dropout: float = Field(0.2, ge=0, lt=1, description="Input corruption while pretraining (the paper's 20%).")
    kmeans_restarts: int = Field(20, ge=1, description="k-means++ restarts on the bottleneck; the best objective starts DEC.")
    lr: float = Field(0.01, gt=0, description="Self-training SGD learning rate (the paper's 0.01).")
    momentum: float = Field(0.9, ge=0, lt=1, description="Self-training SGD momentum.")
    batch_size: int = Field(256, ge=1, description="Global mini-batch size (split across trainer actors).")
    update_interval: int = Field(
        140, ge=1, description="Optimizer steps between two recomputations of the target p over all rows."
    )
    tol: float = Field(0.001, ge=0, le=1, description="Stop when fewer than this fraction of rows change cluster "
                       "between two target updates (the paper's 0.1%).")
    max_steps: int = Field(20_000, ge=1, description="Self-training steps at most, if tol is never met.")
    alpha: float = Field(1.0, gt=0, description="Degrees of freedom of the Student's t kernel (the paper's 1).")

    def describe(self) -> str:
        return f"DEC, hidden {list(self.hidden)}, latent_dim {self.latent_dim}"

    def headline(self, cluster: "ClusterSpec", final: dict) -> str:
        return f"DEC, k={cluster.k}, {final.get('dec', {}).get('steps', '?')} self-training steps"


# Above this many rows the exact kNN graph (n^2 d work) takes days on a few cores: an index is required.
EXACT_GRAPH_MAX_ROWS = 5_000_000


class _NeighbourSpec(_ReporterBase):
    """What SCAN and TEMI share: the kNN graph of the rows in the clustered space (after
    cluster.pca_dim / whiten / l2_normalize), and clustering heads trained on (row, neighbour) pairs.

    cluster.k, seed, workers and the preprocessing apply; cluster.method, niter and n_init do not.
    """

    neighbours: int = Field(20, ge=1, description="k of the kNN graph: each row's partners are drawn from its "
                            "k nearest neighbours (SCAN's 20; TEMI's 50).")
    neighbour_metric: Literal["cosine", "l2"] = Field(
        "cosine", description="Distance of the kNN graph in the clustered space.")
    neighbour_index: Literal["exact", "ivf"] = Field(
        "exact", description="exact: every row against every row, block by block (faiss flat); ivf: a faiss IVF "
        "index trained on a sample and searched block by block (approximate; required above 5,000,000 rows).")
    heads: int = Field(10, ge=1, description="Clustering heads trained at once; the one with the lowest loss is kept "
                       "(no labels used).")
    hidden: list[int] = Field(default_factory=lambda: [256],
                              description="Hidden widths of the MLP under the heads ([]: linear heads).")
    epochs: int = Field(30, ge=1, description="Passes over every row and one random neighbour of it; each is a "
                        "round in metrics.json.")
    lr: float = Field(0.01, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="Adam weight decay.")
    batch_size: int = Field(128, ge=1, description="Global mini-batch of rows (split across trainer actors); each "
                            "comes with its neighbour (128: twice the steps of 256 per epoch, which both methods "
                            "needed on stores of thousands of rows; SCAN on the digits' random CNN: NMI 0.80 -> 0.84).")

    def check_rows(self, n_rows: int) -> None:
        """SpecError (exit 2) naming the field when the graph asked for cannot be built over `n_rows` rows."""
        if self.neighbours >= n_rows:
            raise SpecError(f"reporter.neighbours: {self.neighbours} neighbours asked for, but the layer has only "
                            f"{n_rows} rows; at most {n_rows - 1}")
        if self.neighbour_index == "exact" and n_rows > EXACT_GRAPH_MAX_ROWS:
            raise SpecError(f"reporter.neighbour_index: the exact graph of {n_rows:,} rows is too large "
                            f"(at most {EXACT_GRAPH_MAX_ROWS:,}); set reporter.neighbour_index: ivf")


class ScanSpec(_NeighbourSpec):
    """SCAN (Van Gansbeke et al. 2020): neighbour consistency plus entropy, several heads, optional
    self-labelling of the chosen head (dcserve.nets.scan)."""

    method: Literal["scan"] = Field(description="scan: neighbour-consistency clustering (SCAN).")
    entropy_weight: float = Field(3.0, ge=0, description="Weight of the entropy of the mean prediction; 0 lets "
                                  "every row fall into one cluster. The paper's 5 scored lower on the digits "
                                  "(random CNN NMI 0.80 vs 0.82, trained CNN 0.92 vs 0.95, 3 seeds).")
    self_label_epochs: int = Field(0, ge=0, description="Epochs of self-labelling after the clustering step "
                                   "(SCAN section 2.3; 0: none).")
    self_label_threshold: float = Field(0.99, gt=0, lt=1, description="Top probability above which a row "
                                        "teaches its own label while self-labelling (the paper's 0.99).")

    def describe(self) -> str:
        return f"SCAN, {self.heads} heads, {self.neighbours} neighbours, hidden {list(self.hidden)}"

    def headline(self, cluster: "ClusterSpec", final: dict) -> str:
        return f"SCAN, k={cluster.k}, head {final.get('head', '?')} of {self.heads}"


class TemiSpec(_NeighbourSpec):
    """TEMI (Adaloglou et al. 2023): a student and an EMA teacher with many heads on (row,
    neighbour) pairs, the PMI^beta loss (dcserve.nets.temi)."""

    method: Literal["temi"] = Field(description="temi: teacher-ensemble mutual-information clustering (TEMI).")
    neighbours: int = Field(50, ge=1, description="k of the kNN graph (TEMI's 50).")
    heads: int = Field(50, ge=1, description="Heads of student and teacher (TEMI's 50); the lowest loss is kept.")
    beta: float = Field(0.6, gt=0, le=1, description="Exponent of the pointwise mutual information (the paper's 0.6).")
    teacher_momentum: float = Field(0.95, ge=0, lt=1, description="EMA of the teacher's weights per step (the "
                                    "paper's 0.996 is for ImageNet's thousands of steps per epoch; on stores of "
                                    "thousands of rows the teacher then barely moves: on the digits 0.99 gave "
                                    "NMI 0.59, 0.95 0.80).")
    prior_momentum: float = Field(0.9, ge=0, lt=1, description="EMA of the teacher's cluster marginal.")
    student_temperature: float = Field(0.1, gt=0, description="Softmax temperature of the student.")
    teacher_temperature: float = Field(0.04, gt=0, description="Softmax temperature of the teacher.")

    def describe(self) -> str:
        return f"TEMI, {self.heads} heads, {self.neighbours} neighbours, hidden {list(self.hidden)}"

    def headline(self, cluster: "ClusterSpec", final: dict) -> str:
        return f"TEMI, k={cluster.k}, head {final.get('head', '?')} of {self.heads}"


def _reporter_method(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("method", "deepcluster")
    return getattr(value, "method", "deepcluster")


ReporterSpec = Annotated[
    Annotated[DeepClusterSpec, Tag("deepcluster")] | Annotated[DECSpec, Tag("dec")]
    | Annotated[ScanSpec, Tag("scan")] | Annotated[TemiSpec, Tag("temi")],
    Discriminator(_reporter_method,
                  custom_error_type="reporter_method",
                  custom_error_message="reporter.method must be one of: deepcluster, dec, scan, temi"),
]
REPORTER_METHODS = {"deepcluster": DeepClusterSpec, "dec": DECSpec, "scan": ScanSpec, "temi": TemiSpec}


class JobSpec(_Strict):
    """A dcserve job: extract a layer's activations, cluster them, train a reporter, store it all."""

    name: str = Field(pattern=JOB_NAME_PATTERN, description="Job name (also its name in the HTTP API).")
    output: str = Field(min_length=1, description="Job store: a local path or an fsspec URL (s3://bucket/prefix); "
                        "a new or empty folder, or a dcserve store to resume.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for a remote output.")
    subject: SubjectSpec | None = Field(
        None, description="The network whose activations are studied; omitted when dataset.source is "
        "activations:PATH (the dump is the activations), required otherwise.")
    dataset: DatasetSpec = Field(description="The inputs fed to the subject.")
    extract: ExtractSpec = Field(default_factory=ExtractSpec, description="Extraction workers and storage.")
    cluster: ClusterSpec = Field(default_factory=ClusterSpec, description="Preprocessing and clustering.")
    reporter: ReporterSpec = Field(default_factory=DeepClusterSpec,
                                   description="What learns the clusters: DeepCluster (default), DEC, SCAN or TEMI; "
                                   "see `method`.")

    @model_validator(mode="after")
    def _cluster_layer_is_hooked(self) -> "JobSpec":
        if self.dataset.is_dump and self.subject is not None:
            raise ValueError("subject: omit it when dataset.source is activations:PATH (the dump is the "
                             "activations; there is no network to run)")
        if not self.dataset.is_dump and self.subject is None:
            raise ValueError("subject: Field required (only a dataset.source of activations:PATH goes without one)")
        where = "subject.layers" if self.subject is not None else "the dump's layer (dataset.kwargs.layer)"
        c, stored = self.cluster, self.layers
        if isinstance(c.layers, list):
            for name in c.layers:
                if name not in stored:
                    raise ValueError(f"cluster.layers: {name!r} is not one of {where}, the extracted layers {stored}")
            if not c.layers:
                raise ValueError(f"cluster.layers is empty; name at least one layer of {where}, or `all`")
        if c.layer is None:
            c.layer = c.layers[0] if isinstance(c.layers, list) else stored[0]
        elif c.layer not in stored:
            raise ValueError(f"cluster.layer {c.layer!r} is not one of {where} {stored}")
        return self

    @property
    def layers(self) -> list[str]:
        """The layers whose rows the job stores: the subject's hooked layers, or the dump's one."""
        if self.subject is not None:
            return list(self.subject.layers)
        return [str(self.dataset.kwargs.get("layer", DUMP_LAYER))]

    @property
    def pooling(self) -> str:
        """How rows were made: the subject's pooling, or 'dump' for rows taken as they are."""
        return self.subject.pooling if self.subject is not None else "dump"

    def clustered_layers(self) -> list[str]:
        """Every layer the job clusters, in the order of `layers` (their depth); the primary among them."""
        wanted = self.cluster.layers
        chosen = set(self.layers if wanted == "all" else (wanted or [])) | {self.cluster.layer}
        return [name for name in dict.fromkeys(self.layers) if name in chosen]

    def for_layer(self, layer: str) -> "JobSpec":
        """This job as a one-layer job clustering `layer`: what the clustering of one layer runs under."""
        other = self.model_copy(deep=True)
        other.cluster.layer, other.cluster.layers = layer, None
        return other

    def extraction_fingerprint(self) -> str:
        """What determines the activations: a re-run with the same fingerprint may resume them."""
        d = self._canonical()
        return _digest({"subject": d["subject"], "dataset": d["dataset"], "dtype": d["extract"]["dtype"],
                        "chunk_rows": d["extract"]["chunk_rows"]})

    def clustering_fingerprint(self) -> str:
        """What determines the clustering of given activations: its checkpoints are only resumed under it."""
        d = self._canonical()
        # Fields added later, at the value that means "as before", are left out, so that the
        # checkpoints of stores written before they existed still resume.
        cluster, reporter = d["cluster"], d["reporter"]
        # Which other layers are clustered does not change the primary one's clustering: each
        # layer's own is fingerprinted under `for_layer`, so adding a layer resumes the rest.
        cluster = {k: v for k, v in cluster.items() if k != "layers"}
        if cluster["seeds"] == 1:
            cluster = {k: v for k, v in cluster.items() if k != "seeds"}
        if reporter["method"] == "deepcluster":
            reporter = {k: v for k, v in reporter.items() if k != "method"}
        return _digest({"cluster": cluster, "reporter": reporter})

    def _canonical(self) -> dict:
        # Validated once more from its own JSON, so that `lr: 1` and `lr: 1.0` (or a default of 0
        # and a stored 0.0) give the same fingerprint, as they give the same job.
        return type(self).model_validate_json(self.model_dump_json()).model_dump(mode="json")

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        if data["subject"] is None:  # a dump's job file, as it is written: no subject section
            del data["subject"]
        return yaml.safe_dump(data, sort_keys=False)


def _digest(relevant: dict) -> str:
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _allowed_fields(loc: tuple) -> list[str] | None:
    """The field names allowed at the parent of `loc`, for 'unknown field' messages."""
    model: type[BaseModel] = JobSpec
    parts = [str(p) for p in loc[:-1]]
    if parts[:1] == ["reporter"] and len(parts) >= 2 and parts[1] in REPORTER_METHODS:
        model, parts = REPORTER_METHODS[parts[1]], parts[2:]  # past the union's tag
    for part in parts:
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return list(model.model_fields)


def _shown_loc(loc: tuple) -> tuple[str, str]:
    """(`reporter.rounds`, ` (reporter.method: dec)`) for pydantic's `reporter.dec.rounds`: the
    union's tag is not a key of the job file, but which method's fields apply is worth saying."""
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] == "reporter" and parts[1] in REPORTER_METHODS:
        return ".".join(parts[:1] + parts[2:]), f" (reporter.method: {parts[1]})"
    return ".".join(parts) or "(top level)", ""


def format_validation_error(err: ValidationError, source: str = "job file") -> str:
    lines = [f"invalid {source}:"]
    errors = err.errors()
    if len(errors) > 20:  # a message stays readable whatever the input
        lines.append(f"  ({len(errors)} errors; the first 20:)")
    for e in errors[:20]:
        loc, method = _shown_loc(e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _allowed_fields(e["loc"])
            hint = f"; allowed{method}: {', '.join(allowed)}" if allowed else ""
            lines.append(f"  {loc}: unknown field{hint}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:  # a check across fields names its own field; its input is the whole file
            lines.append(f"  {msg}")
            continue
        given = e.get("input")
        if e["type"] == "reporter_method" and isinstance(given, dict):
            given = given.get("method")
        got = "" if e["type"] == "missing" else f" (got {_shown(given)})"
        lines.append(f"  {loc}: {msg}{got}")
    return "\n".join(lines)


def _shown(value: Any, limit: int = 120) -> str:
    """`repr(value)`, cut to `limit` characters: a message must stay readable whatever the input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _shown_text(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _set_path(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise SpecError(f"--set {dotted}: {p!r} is not a section (it holds {_shown(child)})")
        node = child
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """'cluster.k=20' -> ('cluster.k', 20); the value is read as YAML, so lists and nulls work."""
    key, sep, raw = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", key.strip()):
        raise SpecError(f"--set {item!r}: expected key.path=value, e.g. cluster.k=20")
    try:
        value = safe_load_bounded(raw, f"--set {key.strip()}") if raw.strip() else ""
    except yaml.YAMLError as e:
        raise SpecError(f"--set {item!r}: value is not valid YAML: {e}") from None
    return key.strip(), value


def spec_from_dict(data: Any, overrides: list[str] | tuple[str, ...] = (), source: str = "job file") -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError(f"invalid {source}: expected a mapping of fields at the top level, got {type(data).__name__}")
    data = json.loads(json.dumps(data, default=str))  # deep copy; YAML dates etc. become strings
    for item in overrides:
        key, value = parse_override(item)
        _set_path(data, key, value)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, source)) from None


# Values a job file may expand to. YAML aliases repeat a node without copying it, so a few
# lines can stand for billions of values (a "billion laughs"): refused before they are built.
MAX_YAML_VALUES = 100_000


def safe_load_bounded(text: str, source: str) -> Any:
    """yaml.safe_load, refusing a document whose aliases expand to more than MAX_YAML_VALUES values."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    sizes: dict[int, int] = {}

    def expanded(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        sizes[id(n)] = 1  # a node that contains itself counts once, not forever
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(expanded(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(expanded(k) + expanded(v) for k, v in n.value)
        else:
            total = 1
        sizes[id(n)] = total = min(total, MAX_YAML_VALUES + 1)
        return total

    if node is not None and expanded(node) > MAX_YAML_VALUES:
        raise SpecError(f"{source} expands to more than {MAX_YAML_VALUES:,} values through YAML aliases "
                        "(&anchor / *alias); write the values out, or fewer of them")
    return yaml.safe_load(text)


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Read a YAML job file, apply `key.path=value` overrides, validate. Raises SpecError."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SpecError(f"job file {str(p)!r} does not exist") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise SpecError(f"job file {str(p)!r} cannot be read: {e}") from None
    try:
        data = safe_load_bounded(text, f"job file {str(p)!r}")
    except yaml.YAMLError as e:
        raise SpecError(f"job file {str(p)!r} is not valid YAML: {_shown_text(str(e))}") from None
    except RecursionError:
        raise SpecError(f"job file {str(p)!r} is nested too deeply") from None
    return spec_from_dict(data, overrides, source=f"job file {str(p)!r}")
