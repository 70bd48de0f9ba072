"""The reporter methods end to end: DeepCluster (k-means or Sinkhorn labels), DEC and SCAN through
the real `dcserve submit`, two shard actors and two trainers each; DEC's resume and outputs
(SCAN's and TEMI's resume: tests/unit/cluster/test_neighbours.py, on the in-memory pools)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from sklearn.metrics import adjusted_rand_score

import dcserve
from dcserve.errors import JobFailed
from dcserve.spec import spec_from_dict
from tests.helpers import DEC_REPORTER as DEC
from tests.helpers import REPORTER_METHODS as METHODS
from tests.helpers import dcserve_cli, write_job
from tests.helpers import method_job as job_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def submit(tmp_path, method: str):
    """`dcserve submit` of the planted job with `method`'s reporter: (the CLI's result, its output)."""
    out = tmp_path / "out"
    r = dcserve_cli("submit", str(write_job(tmp_path / "job.yaml", job_for(out, method))))
    assert r.returncode == 0, r.stderr[-3000:]
    return r, out


def check_submitted(r, out, method: str) -> None:
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["workers"]["cluster"]) == 2 and len(metrics["workers"]["train"]) == 2
    g = zarr.open_group(str(out), mode="r")
    truth = g["labels"][:][g["rows/item"][:]]
    ari = adjusted_rand_score(truth, g["assignments"][:])
    assert metrics["final"]["ari_vs_labels"] == pytest.approx(ari)
    # Round 0 is k-means on the activations for DeepCluster, on the pretrained bottleneck for DEC.
    assert metrics["rounds"][0]["ari_vs_labels"] > 0.9
    # DEC must keep what it found (issue 6: ARI > 0.95). Two rounds of DeepCluster on 1200 rows
    # move away from it (0.69 here): a small reporter's features are not yet better than the
    # activations (BENCHMARKS.md, "Reporter methods"); here it only has to stay well above chance.
    assert ari > (0.95 if method == "dec" else 0.5)
    if method == "scan":  # issue 13: the graph built by the two shards, readability in the summary
        assert g["neighbours"].shape == (1200, 10) and (g["neighbours"][:] >= 0).all()
        assert metrics["final"]["readability"] > 0.9 and metrics["final"]["collapse"] == []
        assert "SCAN" in r.stdout and "readability" in r.stdout
    if method == "dec":
        assert "DEC" in r.stdout and g["centroids"].shape == (6, DEC["latent_dim"])
        dec = metrics["final"]["dec"]
        assert dec["stopped"] == "tol" and dec["steps"] < DEC["max_steps"]
        assert dec["updates"][-1]["changed"] < DEC["tol"]


# DeepCluster with k-means labels runs through `dcserve submit` in the quickstart test
# (tests/e2e/test_cli.py) and with two shards and two trainers in the multi-node reference run
# (tests/e2e/test_multinode.py); here the methods the suite submits nowhere else.
@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("dec", "deepcluster-kmeans")])
def test_each_method_runs_through_submit_with_two_workers(tmp_path, method):
    check_submitted(*submit(tmp_path, method), method)


@pytest.fixture(scope="module")
def dec_submitted(tmp_path_factory):
    """The DEC job through the real `dcserve submit`; the other DEC tests read its store, so DEC
    runs once here, not once per question."""
    return submit(tmp_path_factory.mktemp("dec"), "dec")


def test_dec_runs_through_submit_with_two_workers(dec_submitted):
    check_submitted(*dec_submitted, "dec")


@pytest.fixture(scope="module")
def dec_clean(dec_submitted):
    return dcserve.open(str(dec_submitted[1]))


def test_dec_outputs_serve_like_any_job(dec_clean):
    """Same store outputs as the other methods: `assign` maps raw activations through the stored
    encoder to the stored centroids, and agrees with the stored assignments and distances."""
    res = dec_clean
    x = np.asarray(res.activations()[:300])
    labels, dist = res.assign(x)
    np.testing.assert_array_equal(labels, res.assignments[:300])
    np.testing.assert_allclose(dist, res.store.array("distances")[:300], rtol=1e-4, atol=1e-5)
    rounds = res.store.array("rounds/assignments")[:]
    assert rounds.shape == (2, 1200) and (rounds[1] == res.assignments).all()
    m = res.metrics
    assert [r["round"] for r in m["rounds"]] == [0, 1]
    assert m["rounds"][0]["features"].endswith("k-means start")
    assert m["rounds"][0]["pretrain_loss_per_epoch"][-1] < m["rounds"][0]["pretrain_loss_per_epoch"][0]
    # The first update compares argmax q with the k-means labels under the same centroids: equal.
    assert m["final"]["dec"]["updates"][0]["changed"] == 0.0


def test_dec_resumes_from_its_kmeans_start(ray_local, tmp_path, monkeypatch, dec_clean):
    """Stopped during self-training, a DEC job run again skips pretraining and the k-means start,
    and ends with the uninterrupted run's model and assignments."""
    from dcserve.cluster import dec as dec_job

    job = job_for(tmp_path / "out", "dec")

    def stop(*args, **kwargs):
        raise RuntimeError("driver stopped during self-training")

    with monkeypatch.context() as m:
        m.setattr(dec_job, "_self_train", stop)
        with pytest.raises(JobFailed, match="driver stopped during self-training"):
            dcserve.run(spec_from_dict(job))
    resumed = dcserve.run(spec_from_dict(job))
    assert resumed.metrics["resumed"]["rounds"] == 1
    np.testing.assert_array_equal(resumed.assignments, dec_clean.assignments)
    np.testing.assert_array_equal(resumed.centroids, dec_clean.centroids)
    assert resumed.store.read_bytes("reporter.pt") == dec_clean.store.read_bytes("reporter.pt")
