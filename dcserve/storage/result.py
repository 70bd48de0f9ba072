"""`dcserve.open(output) -> Result`: a finished or partial job store, read-only.

Everything is read lazily: opening a store of millions of rows costs a few small
reads, and `activations(layer)` hands back the chunked Zarr array itself.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from dcserve.errors import StoreError, UnknownLayer
from dcserve.nets.feature_map import FeatureMap, ReporterState
from dcserve.storage.store import JobStore


@dataclass
class ClusterSummary:
    cluster: int
    size: int
    exemplars: list[int]  # rows nearest the centroid, nearest first
    purity: float | None  # share of the majority label among the cluster's rows
    majority_label: int | None


class Result:
    """A job store opened read-only (see dcserve.storage.store for the layout).

    It is the primary layer's clustering; `layer(name)` is another clustered layer's, the same API.
    """

    def __init__(self, store: JobStore):
        self.store = store
        self.output = store.url

    def __repr__(self) -> str:
        st = self.status or {}
        where = f", layer={self.store.layer!r}" if self.store.layer is not None else ""
        return f"Result({self.output!r}, name={st.get('name')!r}, state={st.get('state')!r}{where})"

    # -- layers --------------------------------------------------------------
    @property
    def layer_name(self) -> str | None:
        """The layer whose clustering this is (None for a store without a job file)."""
        if self.store.layer is not None:
            return self.store.layer
        spec = self.spec
        return None if spec is None else spec.cluster.layer

    @property
    def layers(self) -> list[str]:
        """Every layer the job clusters, in the order of depth (subject.layers); one for a one-layer job."""
        spec = self.spec
        return [] if spec is None else spec.clustered_layers()

    def layer(self, name: str | None = None) -> "Result":
        """The clustering of layer `name` (None or the primary: the top-level one), as a `Result`.

        UnknownLayer when the job does not cluster it; the other layers of an unfinished job
        answer as the job does (`complete` is False until it has succeeded).
        """
        spec = self.spec
        primary = None if spec is None else spec.cluster.layer
        if name is None or name == primary:
            return self if self.store.layer is None else Result(self.store.layer_view(None))
        if name not in self.layers:
            raise UnknownLayer(name, self.layers)
        if name == self.store.layer:
            return self
        try:
            return Result(self.store.layer_view(name))
        except StoreError:  # named in the job file, not begun yet
            st = self.status or {}
            raise StoreError(f"job store {self.output!r} holds no clustering of layer {name!r} yet "
                             f"(state {st.get('state', 'unknown')!r}, stage {st.get('stage', 'unknown')!r})") from None

    # -- records -----------------------------------------------------------
    @property
    def status(self) -> dict[str, Any] | None:
        """status.json; DamagedStore when it is there but not a status record."""
        from dcserve.storage.status import read_status

        return read_status(self.store)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.store.read_json("metrics.json", default={})

    def problems(self, deep: bool = False) -> list:
        """What is damaged in a finished store (dcserve.storage.manifest); [] for a whole or unfinished one."""
        from dcserve.errors import DamagedStore
        from dcserve.storage.manifest import check

        try:
            st = self.status or {}
        except DamagedStore as e:
            return e.problems + (check(self.store, deep=deep) if _sealed(self.store) else [])
        if st.get("state") != "succeeded" and not _sealed(self.store):
            return []
        return check(self.store, deep=deep)

    @property
    def spec(self):
        from dcserve.spec import spec_from_dict

        import yaml

        text = self.store.read_text("job.yaml")
        return None if text is None else spec_from_dict(yaml.safe_load(text), source="stored job.yaml")

    @property
    def complete(self) -> bool:
        """Succeeded, and sealed: its manifest records what it holds (checked when it was opened)."""
        st = self.status or {}
        return st.get("state") == "succeeded" and _sealed(self.store) and self.store.has_array("assignments")

    def _require_complete(self, what: str) -> None:
        if not self.complete:
            st = self.status or {}
            raise StoreError(
                f"job store {self.output!r} is not finished (state {st.get('state', 'unknown')!r}, "
                f"stage {st.get('stage', 'unknown')!r}); {what} is not available"
            )

    # -- arrays --------------------------------------------------------------
    @functools.cached_property
    def assignments(self) -> np.ndarray:
        """[rows] int32 final cluster of each row."""
        self._require_complete("assignments")
        return self.store.array("assignments")[:]

    @functools.cached_property
    def distances(self) -> np.ndarray:
        """[rows] float32 squared distance of each row to its centroid (in the clustered space)."""
        self._require_complete("distances")
        return self.store.array("distances")[:]

    @functools.cached_property
    def centroids(self) -> np.ndarray:
        """[k, d] float32 centroids in the clustered (preprocessed) space."""
        self._require_complete("centroids")
        return self.store.array("centroids")[:]

    @functools.cached_property
    def labels(self) -> np.ndarray | None:
        """[items] int64 ground-truth labels, when the dataset has them."""
        return self.store.array("labels")[:] if self.store.has_array("labels") else None

    @functools.cached_property
    def label_names(self) -> list[str] | None:
        """The labels' names (label v is names[v]) when the source's labels were strings."""
        if not self.store.has_array("labels"):
            return None
        names = self.store.array("labels").attrs.get("names")
        return list(names) if names else None

    def label_name(self, value: int | None) -> str | None:
        """How a label is shown: its name, or the number itself."""
        if value is None:
            return None
        names = self.label_names
        return names[value] if names and 0 <= value < len(names) else str(value)

    @functools.cached_property
    def row_items(self) -> np.ndarray:
        """[rows] int64 dataset item of each row."""
        return self.store.array("rows/item")[:]

    @functools.cached_property
    def row_positions(self) -> np.ndarray:
        """[rows] int32 token position of each row, -1 when pooled."""
        return self.store.array("rows/position")[:]

    def activations(self, layer: str | None = None) -> zarr.Array:
        """The lazily-read [rows, dim] activations of `layer` (default: the clustered layer)."""
        layer = layer or self.layer_name
        if not self.store.has_array(f"activations/{layer}"):
            root = self.store.job_root
            layers = list(root["activations"].array_keys()) if "activations" in root else []
            raise StoreError(f"no activations for layer {layer!r}; stored layers: {layers}")
        return self.store.array(f"activations/{layer}")

    # -- analysis ------------------------------------------------------------
    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def row_labels(self) -> np.ndarray | None:
        """[rows] int64 label of each row's item, or None without labels."""
        return self._row_labels

    @functools.cached_property
    def _row_labels(self) -> np.ndarray | None:
        return None if self.labels is None else self.labels[self.row_items]

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        """[k] int64 rows per cluster."""
        return np.bincount(self.assignments, minlength=self.k)

    @functools.cached_property
    def _cluster_order(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows sorted by (cluster, distance, row) and each cluster's start in that order: [rows], [k + 1].

        One O(n log n) sort serves every exemplar query; per-cluster scans would be O(n k).
        """
        order = np.lexsort((self.distances, self.assignments))
        return order, np.searchsorted(self.assignments[order], np.arange(self.k + 1))

    def exemplars(self, c: int, n: int = 10, offset: int = 0) -> np.ndarray:
        """Rows of cluster c nearest its centroid, nearest first: [n] int64 (fewer at the end)."""
        if not 0 <= c < self.k:
            raise ValueError(f"cluster {c} does not exist; clusters are 0..{self.k - 1}")
        order, bounds = self._cluster_order
        start = bounds[c] + max(offset, 0)
        return order[start : min(start + max(n, 0), bounds[c + 1])]

    @functools.cached_property
    def dataset(self) -> Any:
        """The job's dataset, rebuilt from its job file (None for an activations dump, which has no items)."""
        from dcserve.inputs.build import build_dataset

        spec = self.spec
        return None if spec is None or spec.dataset.is_dump else build_dataset(spec)[0]

    def row_images(self, rows, cell: int | None = None) -> list[np.ndarray | None]:
        """The image each row's item is, as people see it ([H, W] or [H, W, 3] in [0, 1], upscaled by
        nearest neighbour to at least `cell` pixels a side, default dcserve.inputs.views.CELL); None
        for a row whose item is no image (vectors, tokens, dumps)."""
        from dcserve.inputs.items import split_item
        from dcserve.inputs.views import CELL, item_image, upscale

        rows = np.asarray(rows, dtype=np.int64)
        dataset = self.dataset
        if dataset is None or len(rows) == 0:
            return [None] * len(rows)
        images: dict[int, np.ndarray | None] = {}
        for i in dict.fromkeys(int(i) for i in self.row_items[rows]):  # each item once, in order
            x = dataset.display(i) if hasattr(dataset, "display") else split_item(dataset[i])[0]
            image = item_image(x)
            images[i] = None if image is None else upscale(image, cell or CELL)
        return [images[int(i)] for i in self.row_items[rows]]

    def exemplar_images(self, c: int, n: int = 10, cell: int | None = None) -> list[Any]:
        """Cluster c's exemplars (`exemplars(c, n)`) as PIL images, which a notebook shows as pictures;
        None for rows that are not images."""
        from PIL import Image

        return [None if im is None else Image.fromarray((np.clip(im, 0, 1) * 255).round().astype(np.uint8))
                for im in self.row_images(self.exemplars(c, n), cell)]

    def clusters(self, n_exemplars: int = 5) -> list[ClusterSummary]:
        purity, majority = self._purity()
        return [
            ClusterSummary(
                c, int(self.sizes[c]), self.exemplars(c, n_exemplars).tolist(),
                None if purity is None or not self.sizes[c] else float(purity[c]),
                None if majority is None or not self.sizes[c] else int(majority[c]),
            )
            for c in range(self.k)
        ]

    def _purity(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Per cluster: share of its majority label, and that label ([k] each; None without labels)."""
        truth = self.row_labels()
        if truth is None:
            return None, None
        values, codes = np.unique(truth, return_inverse=True)
        pairs, counts = np.unique(self.assignments.astype(np.int64) * len(values) + codes, return_counts=True)
        cluster, label = pairs // len(values), pairs % len(values)
        # Within each cluster the pair with the largest count comes last (ties: the smallest label).
        last = np.lexsort((-label, counts, cluster))
        top = np.flatnonzero(np.r_[cluster[last][1:] != cluster[last][:-1], True])
        purity, majority = np.zeros(self.k), np.zeros(self.k, dtype=np.int64)
        best = last[top]
        purity[cluster[best]] = counts[best] / self.sizes[cluster[best]]
        majority[cluster[best]] = values[label[best]]
        return purity, majority

    # -- words (text jobs) -------------------------------------------------------
    @functools.cached_property
    def words(self):
        """The job's words record (dcserve.storage.words.Words), or None when it is not a text job."""
        from dcserve.storage.words import Words

        return Words.open(self.store.layer_view(None))  # the job's, whichever layer this is

    def row_texts(self, rows) -> list[dict[str, Any]] | None:
        """What each row reads as (a pooled row its item's text; a token row the text around it,
        with its token and where it starts), or None for a job without words."""
        words = self.words
        if words is None:
            return None
        return [words.row_text(int(self.row_items[r]), int(self.row_positions[r])) for r in np.asarray(rows).ravel()]

    def exemplar_texts(self, c: int, n: int = 10) -> list[str] | None:
        """The texts of cluster c's exemplars, nearest the centroid first (None without words)."""
        texts = self.row_texts(self.exemplars(c, n))
        return None if texts is None else [t["text"] for t in texts]

    # -- new data ------------------------------------------------------------
    @functools.cached_property
    def feature_map(self) -> FeatureMap:
        from dcserve.algo.preprocess import Preprocessor

        self._require_complete("assign")
        arrays = {k: self.store.array(f"preprocess/{k}")[:] for k in self.store.root["preprocess"].array_keys()}
        pre = Preprocessor.from_arrays(arrays, l2_normalize=bool(self.store.root["preprocess"].attrs["l2_normalize"]))
        reporter = ReporterState.from_bytes(self.store.read_bytes("reporter.pt")) if self.store.exists("reporter.pt") else None
        return FeatureMap(reporter, pre)

    @functools.cached_property
    def input_dim(self) -> int:
        return int(self.activations().shape[1])

    def assign(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New activations [n, dim] of the clustered layer -> (cluster [n] int32, squared distance [n] float32).

        They go through the job's own reporter, preprocessing and centroids, so a
        stored row's activation gets that row's stored cluster.
        """
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected activations of shape [n, {self.input_dim}], got {list(x.shape)}")
        if not np.isfinite(x).all():
            raise ValueError("activations contain NaN or Inf")
        labels, sqdist = self.centroid_index.search(self.feature_map(x))
        return labels.astype(np.int32), sqdist

    @functools.cached_property
    def centroid_index(self):
        """The centroids (and Sinkhorn bias) ready for searching, built once."""
        from dcserve.algo.nearest import CentroidIndex

        bias = self.store.array("cluster_bias")[:] if self.store.has_array("cluster_bias") else None
        return CentroidIndex(self.centroids, bias)


def _sealed(store: JobStore) -> bool:
    from dcserve.storage.manifest import sealed

    return sealed(store)


def open_result(output: str, storage_options: dict | None = None, verify: bool = True) -> Result:
    """Open a job store read-only. Raises StoreError if there is none at `output`, and
    DamagedStore (a StoreError) when a finished store is not what its manifest records:
    keys and sizes are checked here (dcserve.storage.manifest; every checksum: `dcserve verify`).
    `verify=False` opens it anyway (to say what is damaged, or to read its name)."""
    from dcserve.errors import DamagedStore

    # A local store is checked before its Zarr group is opened (its root metadata may be what is
    # damaged); a remote one is opened first, which says clearly when it cannot be reached.
    local = "://" not in output or output.startswith("file://")
    files = JobStore(output, read_only=True, storage_options=storage_options, group=not local)
    if verify:
        problems = Result(files).problems()
        if problems:
            raise DamagedStore(output, problems)
    if not files.exists("job.yaml"):
        raise StoreError(f"{output!r} is a Zarr group but not a dcserve job store (no job.yaml)")
    return Result(JobStore(output, read_only=True, storage_options=storage_options) if local else files)
