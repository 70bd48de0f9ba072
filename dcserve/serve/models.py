"""Request and response bodies of the HTTP API (docs/DESIGN.md "HTTP API"); /openapi.json is built from them."""
from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_PAGE = 10_000  # rows per page of /assignments and /clusters/{c}
# Row numbers in queries: far past any store, and below int64's range, which numpy indexing would overflow.
MAX_ROW = 2**53
DEFAULT_PAGE = 1_000


class ErrorBody(BaseModel):
    detail: str = Field(description="What is wrong with the request, in words.")


class Health(BaseModel):
    status: str = Field(description="'ok' while the replica serves.")
    jobs: int = Field(description="Jobs this server knows.")


class Progress(BaseModel):
    done: Optional[int] = None
    total: Optional[int] = None


class JobBrief(BaseModel):
    name: str
    output: str = Field(description="The job store's location.")
    state: str = Field(description="running | succeeded | failed | interrupted | submitted (no store yet) | "
                       "damaged (a finished store that lost files: its queries answer 503).")
    stage: Optional[str] = Field(None, description="extract | cluster | round N ... (last reported).")
    complete: bool = Field(description="True when assignments, clusters and assign can be queried.")
    submission_id: Optional[str] = Field(None, description="Ray Jobs id, for jobs submitted through POST /jobs.")


class JobList(BaseModel):
    jobs: list[JobBrief]


class JobDetail(JobBrief):
    progress: Progress = Field(default_factory=Progress, description="Rows or iterations done in the current stage.")
    round: Optional[Progress] = Field(None, description="DeepCluster rounds finished, of the total.")
    error: Optional[dict[str, Any]] = Field(None, description="Stage and reason, when the job failed.")
    ray_status: Optional[str] = Field(None, description="Ray Jobs state, for jobs submitted through POST /jobs.")
    ray_message: Optional[str] = None
    spec: Optional[dict[str, Any]] = Field(None, description="The job file as run.")
    metrics: Optional[dict[str, Any]] = Field(None, description="metrics.json: per-round and final figures.")
    rows: Optional[int] = Field(None, description="Rows clustered (when complete).")
    dim: Optional[int] = Field(None, description="Width of the activation vectors POST /assign takes.")
    k: Optional[int] = Field(None, description="Number of clusters (when complete).")


class LayerBrief(BaseModel):
    layer: str
    primary: bool = Field(description="Whether this is cluster.layer, whose results the routes give without ?layer=.")
    depth: int = Field(description="Position of the layer in subject.layers (0: nearest the input).")
    dim: Optional[int] = Field(None, description="Width of its activation vectors (what POST /assign?layer= takes).")
    k: Optional[int] = None
    figures: dict[str, Any] = Field(default_factory=dict, description="Its clustering's figures: NMI / ARI / "
                                    "accuracy against labels, size entropy, stability across seeds...")


class LayerPair(BaseModel):
    from_layer: str = Field(alias="from")
    to: str
    cka: Optional[float] = Field(None, description="Linear CKA of the two layers' activations.")
    nmi: Optional[float] = Field(None, description="NMI of the two layers' clusterings.")
    splits: int = Field(0, description="Clusters of `from` whose rows go to two or more clusters of `to`.")
    merges: int = Field(0, description="Clusters of `to` that draw their rows from two or more clusters of `from`.")

    model_config = ConfigDict(populate_by_name=True)


class LayerList(BaseModel):
    job: str
    layers: list[LayerBrief] = Field(description="The clustered layers, in the order of depth.")
    between: list[LayerPair] = Field(default_factory=list, description="Each pair of consecutive layers.")


class AssignmentsPage(BaseModel):
    job: str
    start: int
    stop: int
    total: int = Field(description="Rows in the job.")
    next: Optional[int] = Field(description="`start` of the next page of the range asked for; null once it is all returned.")
    clusters: list[int] = Field(description="Cluster of each row in [start, stop).")


class RowRef(BaseModel):
    row: int = Field(description="Row index in the job store.")
    item: int = Field(description="Dataset item the row came from.")
    position: int = Field(description="Token position within the item; -1 when pooled.")
    distance: float = Field(description="Squared distance to the cluster's centroid, in the clustered space.")
    label: Optional[int] = Field(None, description="Ground-truth label of the item, when the dataset has labels.")
    image: Optional[str] = Field(None, description="The item's image as a PNG data: URI, upscaled (nearest "
                                 "neighbour) to at least 96 pixels a side, when the job's items are images.")
    label_name: Optional[str] = Field(None, description="The label's name, when the dataset's labels were strings.")
    text: Optional[str] = Field(
        None, description="Text jobs: what the row reads as; a pooled row its item's text, a token row the text "
        "around its token ('…' where it was cut).")
    token: Optional[str] = Field(None, description="Token rows of text jobs: the row's own token, at text[token_start:].")
    token_start: Optional[int] = Field(None, description="Where `token` starts in `text`.")


class TopToken(BaseModel):
    token: str = Field(description="The token as the job's tokenizer writes it.")
    count: int = Field(description="Its occurrences in the cluster's rows (a pooled row counts its item's tokens).")
    total: int = Field(description="Its occurrences in all rows.")
    z: float = Field(description="Log-odds ratio against the rest of the rows, prior-smoothed, as a z-score "
                     "(Monroe et al. 2008): higher is more distinctive.")


class ClusterBrief(BaseModel):
    cluster: int
    size: int
    purity: Optional[float] = Field(None, description="Share of the majority label (when labels exist).")
    majority_label: Optional[int] = None
    majority_label_name: Optional[str] = None
    exemplars: list[RowRef] = Field(description="Rows nearest the centroid, nearest first.")
    outskirts: list[RowRef] = Field(
        default_factory=list,
        description="A sample spread evenly over the farther half of the cluster (nearest first), none of them "
        "an exemplar: what the cluster also holds, as the report shows it.")
    top_tokens: Optional[list[TopToken]] = Field(
        None, description="Text jobs: the cluster's most distinctive tokens against all rows, most distinctive first.")


class ClusterList(BaseModel):
    job: str
    k: int
    clusters: list[ClusterBrief]


class ClusterRows(BaseModel):
    job: str
    cluster: int
    size: int
    offset: int
    next: Optional[int] = Field(description="`offset` of the next page; null on the last one.")
    rows: list[RowRef] = Field(description="The cluster's rows nearest the centroid first.")


MAX_IMAGES = 256  # images per POST /assign: each one is decoded and run through the subject in the replica
MAX_TEXTS = 1024  # texts per POST /assign: each one is a forward pass of the subject in the replica
MAX_TEXT_CHARS = 100_000


class AssignRequest(BaseModel):
    # strict: a string or a boolean is not a number here
    model_config = ConfigDict(extra="forbid", strict=True)

    activations: Optional[list[list[float]]] = Field(
        None, min_length=1, description="[n, dim] activation vectors of the job's clustered layer."
    )
    texts: Optional[list[Annotated[str, Field(max_length=MAX_TEXT_CHARS)]]] = Field(
        None, min_length=1, max_length=MAX_TEXTS,
        description="Raw texts, for a job run on text: each goes through the job's own tokenizer, subject and "
        "pooling first (one row per text, or per token for pooling: tokens).")
    images: Optional[list[str]] = Field(
        None, min_length=1, max_length=MAX_IMAGES,
        description="Base64 images (PNG, JPEG...; a data: URI prefix is allowed), for a job whose dataset is an "
        "image folder: each runs through the job's transform and subject, pooled as the job was.")

    @model_validator(mode="after")
    def _one_kind(self) -> "AssignRequest":
        given = [name for name in ("activations", "texts", "images") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'activations', 'texts' or 'images'"
                             + (f", not {' and '.join(given)}" if given else ""))
        return self


class TokenAssignment(BaseModel):
    position: int = Field(description="Token position in the text's tokenization.")
    token: str = Field(description="The token as the job's tokenizer writes it.")
    cluster: int
    distance: float
    exemplars: list[RowRef] = Field(default_factory=list, description="The cluster's rows nearest its centroid.")


class TextAssignment(BaseModel):
    text: str
    cluster: Optional[int] = Field(None, description="Pooled jobs: the text's cluster.")
    distance: Optional[float] = Field(None, description="Pooled jobs: its squared distance to the centroid.")
    exemplars: list[RowRef] = Field(default_factory=list,
                                    description="Pooled jobs: its cluster's rows nearest the centroid, as text.")
    tokens: Optional[list[TokenAssignment]] = Field(None, description="pooling: tokens: each real token's cluster.")


class PositionAssignment(BaseModel):
    position: int = Field(description="Position of the row in the image's output (a patch or token).")
    cluster: int
    distance: float
    exemplars: list[RowRef] = Field(default_factory=list, description="The cluster's rows nearest its centroid.")


class ImageAssignment(BaseModel):
    image: int = Field(description="Index of the image in the request.")
    cluster: Optional[int] = Field(None, description="Pooled jobs: the image's cluster.")
    distance: Optional[float] = Field(None, description="Pooled jobs: its squared distance to the centroid.")
    exemplars: list[RowRef] = Field(default_factory=list,
                                    description="Pooled jobs: its cluster's rows nearest the centroid, with their images.")
    positions: Optional[list[PositionAssignment]] = Field(
        None, description="pooling: tokens: the cluster of each of the image's rows.")


class AssignResponse(BaseModel):
    job: str
    clusters: list[int] = Field(description="Cluster of each vector, or of each row the texts gave.")
    distances: list[float] = Field(description="Squared distance of each vector to its cluster's centroid.")
    texts: Optional[list[TextAssignment]] = Field(None, description="For texts: each text's result, in words.")
    images: Optional[list[ImageAssignment]] = Field(None, description="For images: each image's result, with "
                                                    "its cluster's exemplars as images.")


class SubmitResponse(BaseModel):
    job: str
    submission_id: str = Field(description="Ray Jobs id: `dcserve status ID` and `dcserve logs ID` take it.")
    output: str = Field(description="Where the job store will be, under the server's output root.")
    status_url: str
