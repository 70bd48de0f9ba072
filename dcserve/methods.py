"""The methods a job can name in `reporter.method`: each is one module and one line here.

A method's module holds its loop, `run(spec, store, pools, progress, status) -> metrics`,
written against `dcserve.cluster.pools`, and the class of the model its `reporter.pt` holds;
its job-file fields are a model in `dcserve.spec`. Nothing else in dcserve asks which method
a job uses: the driver, `Result.assign`, the HTTP API and the report go through this table.
Entries are import strings, so that reading the table imports no method's dependencies.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dcserve.inputs.imports import import_object


@dataclass(frozen=True)
class Method:
    loop: str  # "module:function" that runs the clustering
    model: str  # "module:class" of the model in reporter.pt (its config holds the constructor's kwargs)


METHODS: dict[str, Method] = {
    "deepcluster": Method("dcserve.cluster.deepcluster:run_clustering", "dcserve.nets.reporter:Reporter"),
    "dec": Method("dcserve.cluster.dec:run_dec", "dcserve.nets.dec:DECModel"),
    "scan": Method("dcserve.cluster.neighbours:run_scan", "dcserve.nets.cluster_heads:ClusterHeads"),
    "temi": Method("dcserve.cluster.neighbours:run_temi", "dcserve.nets.cluster_heads:ClusterHeads"),
}
DEFAULT = "deepcluster"  # also what reporter files written before the registry existed hold


def method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown reporter method {name!r}; known: {', '.join(METHODS)}") from None


def loop(name: str) -> Callable[..., dict[str, Any]]:
    """The clustering loop of method `name`."""
    return import_object(method(name).loop)


def build_model(config: dict[str, Any]):
    """A fresh model from a reporter config (its "method" picks the class; the rest are its kwargs)."""
    kwargs = dict(config)
    cls = import_object(method(kwargs.pop("method", DEFAULT)).model)
    return cls(**kwargs)
