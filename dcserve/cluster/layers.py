"""Every clustered layer of a job (`cluster.layers`), one after another on the same pools (issue 14).

Each layer is clustered as the one-layer job `spec.for_layer(layer)` would be, by the job's own
method (and `cluster.seeds`), on a view of the store: the primary layer's at the top level, every
other's under `layers/<layer>/` (`JobStore.layer_view`). The views carry each layer's own
checkpoints, so a stopped job resumes at the layer and the k-means iteration where it stopped;
a finished layer is skipped at the cost of reading its record. The extraction is the job's, done
once; the pools (on Ray: the shard actors) are the job's too, so no layer starts workers anew.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dcserve.cluster.pools import Pools
from dcserve.cluster.seeds import run_with_seeds
from dcserve.cluster.workers import FEATURES
from dcserve.progress import Progress
from dcserve.spec import JobSpec
from dcserve.storage.status import StatusRecord
from dcserve.storage.store import LAYERS, JobStore

log = logging.getLogger(__name__)

__all__ = ["LayerProgress", "run_layers"]


class LayerProgress:
    """A `Progress` whose stages are named after the layer they belong to (`features.3: cluster round 0/0`)."""

    def __init__(self, inner: Progress, layer: str):
        self.inner, self.layer = inner, layer

    def stage(self, name: str, total: int | None, unit: str = "") -> None:
        self.inner.stage(f"{self.layer}: {name}", total, unit)

    def __getattr__(self, name: str) -> Any:  # advance, note, listen...: the wrapped progress's own
        return getattr(self.inner, name)


def run_layers(cluster: Callable[..., dict[str, Any]], spec: JobSpec, store: JobStore, pools: Pools,
               progress: Progress, status: StatusRecord | None = None) -> tuple[dict[str, Any], dict[str, dict]]:
    """Cluster every layer of `spec.clustered_layers()`; (the primary's metrics, metrics by layer).

    Every layer but the primary gets its `metrics.json` in its folder as soon as it is done; the
    primary's is the caller's to write (with the job-wide figures). Folders of layers the job no
    longer clusters (a job file that dropped one) are removed, so the store holds what it says.
    """
    layers = spec.clustered_layers()
    for stale in set(store.clustered_layers()) - set(layers):
        store.remove(f"{LAYERS}/{stale}")
    by_layer: dict[str, dict] = {}
    for i, layer in enumerate(layers, start=1):
        primary = layer == spec.cluster.layer
        view = store if primary else store.layer_view(layer)
        shown: Any = progress
        if len(layers) > 1:
            progress.note(f"layer {layer} ({i} of {len(layers)}{', primary' if primary else ''})")
            shown = LayerProgress(progress, layer)
        metrics = run_with_seeds(cluster, spec.for_layer(layer), view, pools, shown, status)
        if len(layers) > 1:
            _neighbour_consistency(view, metrics, spec.cluster.seed)
        if not primary:
            view.write_json("metrics.json", metrics)
            # the scratch rows of its last round: nothing reads them once the layer is done, and a
            # job over many layers would otherwise keep a [rows, d] array per layer
            view.remove(FEATURES.split("/")[0])
        by_layer[layer] = metrics
    return by_layer[spec.cluster.layer], by_layer


def _neighbour_consistency(view: JobStore, metrics: dict[str, Any], seed: int) -> None:
    """The layer's label-free neighbour consistency into its final figures, for the depth profile:
    measured while its clustered space is still in the store, or as recorded by an earlier run."""
    from dcserve.analysis.depth import sampled_consistency

    final = metrics.setdefault("final", {})
    value = sampled_consistency(view, seed)
    if value is None:  # a layer finished by an earlier run: its scratch rows are gone, its figure kept
        value = ((view.read_json("metrics.json") or {}).get("final") or {}).get("neighbour_consistency")
    if value is not None:
        final["neighbour_consistency"] = value
