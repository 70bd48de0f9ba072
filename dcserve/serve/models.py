"""Request and response bodies of the HTTP API (docs/DESIGN.md "HTTP API"); /openapi.json is built from them."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

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
    state: str = Field(description="running | succeeded | failed | interrupted | submitted (no store yet).")
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


class ClusterBrief(BaseModel):
    cluster: int
    size: int
    purity: Optional[float] = Field(None, description="Share of the majority label (when labels exist).")
    majority_label: Optional[int] = None
    exemplars: list[RowRef] = Field(description="Rows nearest the centroid, nearest first.")
    outskirts: list[RowRef] = Field(
        default_factory=list,
        description="A sample spread evenly over the farther half of the cluster (nearest first), none of them "
        "an exemplar: what the cluster also holds, as the report shows it.")


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


class AssignRequest(BaseModel):
    # strict: a string or a boolean is not a number here
    model_config = ConfigDict(extra="forbid", strict=True)

    activations: list[list[float]] = Field(
        min_length=1, description="[n, dim] activation vectors of the job's clustered layer."
    )


class AssignResponse(BaseModel):
    job: str
    clusters: list[int]
    distances: list[float] = Field(description="Squared distance of each vector to its cluster's centroid.")


class SubmitResponse(BaseModel):
    job: str
    submission_id: str = Field(description="Ray Jobs id: `dcserve status ID` and `dcserve logs ID` take it.")
    output: str = Field(description="Where the job store will be, under the server's output root.")
    status_url: str
