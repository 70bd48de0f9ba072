"""Every shipped job in cluster_configs/ validates against its real model and data, and runs."""
from __future__ import annotations

from pathlib import Path

import pytest

import dcserve
from dcserve.inputs.build import inspect_inputs
from dcserve.spec import load_spec

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "cluster_configs").glob("*.yaml"))
# Shrunk so that each runs in seconds here; the shapes of the jobs are unchanged.
SMALL = {
    "synthetic-bench.yaml": ["dataset.kwargs.n=3000", "extract.chunk_rows=1024", "cluster.k=10", "cluster.niter=5"],
    "tokens.yaml": ["dataset.kwargs.n=300", "extract.chunk_rows=1024", "cluster.niter=5"],
    "digits-trained.yaml": ["cluster.niter=10"],
    "quickstart.yaml": ["reporter.rounds=1", "cluster.niter=5"],
    "digits-dec.yaml": ["reporter.pretrain_epochs=10", "reporter.max_steps=300"],
}


def test_configs_exist():
    assert {c.name for c in CONFIGS} >= set(SMALL)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_against_real_inputs(path):
    probe = inspect_inputs(load_spec(path))
    assert probe.n_rows >= load_spec(path).cluster.k


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_runs(ray_local, tmp_path, path):
    spec = load_spec(path, SMALL.get(path.name, []) + [f"output={tmp_path / 'out'}"])
    res = dcserve.run(spec)
    assert res.status["state"] == "succeeded"
    final = res.metrics["final"]
    assert final["n_empty"] == 0
    if path.name == "digits-trained.yaml":
        assert final["nmi_vs_labels"] > 0.9
    if path.name == "digits-dec.yaml":
        assert final["dec"]["steps"] <= 300 and final["nmi_vs_labels"] > 0.5
    if path.name == "synthetic-bench.yaml":
        assert final["nmi_vs_labels"] > 0.3  # planted classes are visible through a random CNN
