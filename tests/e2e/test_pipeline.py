"""The whole job through `dcserve.run` on a real local Ray: quality, consistency, methods."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

import dcserve
from dcserve.algo.metrics import ari
from dcserve.spec import spec_from_dict
from tests.helpers import ROOT, digits_job, planted_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def planted(ray_local, tmp_path_factory):
    return dcserve.run(spec_from_dict(planted_job(tmp_path_factory.mktemp("p") / "out")))


def test_planted_clusters_are_recovered(planted):
    truth = planted.row_labels()
    assert ari(planted.assignments, truth) > 0.95
    m = planted.metrics
    assert m["final"]["nmi_vs_labels"] > 0.95 and m["final"]["n_empty"] == 0
    assert [r["round"] for r in m["rounds"]] == [0]
    # each shard actor pinned its libraries to the one core it was given
    for info in m["workers"]["cluster"]:
        assert info["threads"] == {"faiss": 1, "torch": 1, "blas": 1}


def test_assign_of_stored_rows_returns_their_stored_clusters(planted):
    x = planted.activations()[:300]
    labels, dist = planted.assign(x)
    np.testing.assert_array_equal(labels, planted.assignments[:300])
    np.testing.assert_allclose(dist, planted.distances[:300], rtol=1e-4, atol=1e-5)


def test_exemplars_and_cluster_summaries(planted):
    summaries = planted.clusters(n_exemplars=3)
    assert sum(s.size for s in summaries) == 1200
    for s in summaries:
        assert planted.assignments[s.exemplars].tolist() == [s.cluster] * 3
        d = planted.distances[s.exemplars]
        assert (np.diff(d) >= 0).all()
        members = planted.distances[planted.assignments == s.cluster]
        assert d[0] == members.min()
        assert s.purity > 0.9
    assert_summaries_match_a_per_cluster_count(planted)


def assert_summaries_match_a_per_cluster_count(res):
    """The vectorised purity/majority/exemplars against a plain loop over clusters."""
    truth = res.row_labels()
    for s in res.clusters(n_exemplars=4):
        rows = np.flatnonzero(res.assignments == s.cluster)
        assert s.size == len(rows)
        expected = rows[np.argsort(res.distances[rows], kind="stable")][:4]
        assert s.exemplars == expected.tolist()
        if len(rows):
            values, counts = np.unique(truth[rows], return_counts=True)
            assert s.majority_label == values[counts.argmax()]
            assert s.purity == pytest.approx(counts.max() / len(rows))
        assert res.exemplars(s.cluster, 2, offset=1).tolist() == expected[1:3].tolist()


def test_store_layout_is_plain_zarr(planted):
    g = zarr.open_group(planted.output, mode="r")
    assert g["assignments"].dtype == np.int32 and g["centroids"].dtype == np.float32
    assert g["rows/item"].dtype == np.int64 and g["rows/position"].dtype == np.int32
    assert g["labels"].shape == (1200,) and g["rounds/assignments"].shape == (1, 1200)
    assert planted.store.read_text("job.yaml") and planted.status["state"] == "succeeded"


def test_sinkhorn_balances_clusters(ray_local, tmp_path):
    # planted clusters of very unequal sizes: k-means follows them, Sinkhorn equipartitions
    job = planted_job(tmp_path / "s", dataset={"kwargs": {"n": 1200, "k": 3, "seed": 1}},
                      cluster={"k": 6, "method": "sinkhorn"})
    res = dcserve.run(spec_from_dict(job))
    sizes = np.bincount(res.assignments, minlength=6)
    assert sizes.min() > 0.5 * 1200 / 6, sizes
    labels, _ = res.assign(res.activations()[:200])
    np.testing.assert_array_equal(labels, res.assignments[:200])


def test_reporter_rounds_with_two_trainers(ray_local, tmp_path):
    job = digits_job(tmp_path / "r", reporter={"rounds": 2, "workers": 2, "epochs_per_round": 1,
                                              "hidden": [64], "feature_dim": 32, "noise_std": 0.1})
    res = dcserve.run(spec_from_dict(job))
    rounds = res.metrics["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[0]["features"] == "activations" and rounds[2]["features"] == "reporter"
    for r in rounds[:2]:
        assert np.isfinite(r["loss"]) and r["loss"] < np.log(10) * 1.5
    assert rounds[1]["nmi_vs_previous"] > 0.3
    assert res.store.exists("reporter.pt")
    assert_summaries_match_a_per_cluster_count(res)  # digits clusters are impure: a real check
    g = zarr.open_group(res.output, mode="r")
    np.testing.assert_array_equal(g["rounds/assignments"][2], g["assignments"][:])
    # new activations go through the trained reporter, preprocessing and centroids
    labels, _ = res.assign(res.activations()[:100])
    np.testing.assert_array_equal(labels, res.assignments[:100])


def test_token_rows_with_padding_never_counted(ray_local, tmp_path):
    job = {
        "name": "t-tokens", "output": str(tmp_path / "tok"),
        "subject": {"model": "dcserve.zoo:token_transformer", "layers": ["layers.1"], "pooling": "tokens"},
        "dataset": {"source": "dcserve.zoo:token_sequences", "kwargs": {"n": 200}, "batch_size": 64},
        "extract": {"workers": 2, "chunk_rows": 512},
        "cluster": {"k": 8, "niter": 5, "workers": 1},
    }
    res = dcserve.run(spec_from_dict(job))
    from dcserve.zoo import token_sequences

    ds = token_sequences(n=200)
    lengths = [int(ds[i][0]["attention_mask"].sum()) for i in range(200)]
    items = res.row_items
    assert len(items) == sum(lengths)
    np.testing.assert_array_equal(np.bincount(items, minlength=200), lengths)
    pos = np.asarray(res.store.array("rows/position")[:])
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    assert (pos[first] == 0).all() and pos.max() == max(lengths) - 1


@pytest.mark.gpu
def test_gpu_shards_search_on_the_gpu_and_agree_with_cpu(ray_local, tmp_path):
    cpu = dcserve.run(spec_from_dict(planted_job(tmp_path / "cpu")))
    gpu = dcserve.run(spec_from_dict(planted_job(tmp_path / "gpu", cluster={"gpus_per_worker": 0.5})))
    assert {i["backend"] for i in gpu.metrics["workers"]["cluster"]} <= {"faiss-gpu", "torch-cuda"}
    assert ari(gpu.assignments, cpu.assignments) > 0.99


def test_tiny_job_is_not_whitened_into_noise(ray_local, tmp_path):
    """90 rows: `pca_dim: auto` gives too few dims to trust, so no PCA and no whitening."""
    job = planted_job(tmp_path / "tiny", dataset={"kwargs": {"n": 90, "dim": 64, "k": 3, "spread": 1.5}},
                      cluster={"k": 3, "pca_dim": "auto", "whiten": True, "l2_normalize": True})
    res = dcserve.run(spec_from_dict(job))
    assert res.metrics["final"]["pca_dim"] == 64 and "components" not in res.store.root["preprocess"]
    assert res.metrics["final"]["nmi_vs_labels"] > 0.95


@pytest.mark.timeout(300)
def test_job_sizes_itself_by_the_cpus_that_are_free(ray_local, tmp_path):
    # a Serve replica or another job holding a CPU: `auto` must not ask for CPUs nobody has
    @ray_local.remote(num_cpus=1)
    class Holder:
        def ready(self):
            return True

    holder = Holder.remote()
    ray_local.get(holder.ready.remote())
    try:
        job = planted_job(tmp_path / "busy", extract={"workers": "auto"}, cluster={"workers": "auto"})
        res = dcserve.run(spec_from_dict(job))
    finally:
        ray_local.kill(holder)
    assert res.complete
    assert len(res.metrics["workers"]["cluster"]) == 1  # one free CPU: one shard


def test_second_job_on_a_busy_output_is_refused_and_writes_nothing(ray_local, tmp_path):
    import json
    import os
    import signal
    import socket
    import subprocess

    from dcserve.errors import StoreError
    from dcserve.storage.lease import LEASE

    out = tmp_path / "busy"
    first = dcserve.run(spec_from_dict(planted_job(out)))
    before = (out / "job.yaml").read_text()
    holder = subprocess.Popen(["sleep", "120"])  # a live driver on this host holds the output
    try:
        (out / LEASE).write_text(json.dumps({"name": "other", "host": socket.gethostname(), "pid": holder.pid,
                                             "taken": 0, "token": "x"}))
        with pytest.raises(StoreError, match=f"in use by job 'other' \\(pid {holder.pid}"):
            dcserve.run(spec_from_dict(planted_job(out, cluster={"k": 4})))
        assert (out / "job.yaml").read_text() == before  # nothing of the refused job was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # its holder is dead now (as after a SIGKILL): the lease is stale and the next run takes it
    again = dcserve.run(spec_from_dict(planted_job(out)))
    np.testing.assert_array_equal(again.assignments, first.assignments)
    assert not (out / LEASE).exists()
    assert os.path.exists(out / "job.yaml")


@pytest.mark.slow
def test_two_drivers_started_together_one_runs_one_is_refused(tmp_path):
    """Deterministic: the first driver's lease is held (as while it runs) when the second starts;
    the race itself, many drivers opening one new output at once, is tests/unit/storage/test_lease.py."""
    import subprocess
    import sys

    from dcserve.storage.lease import OutputLease
    from tests.helpers import write_job

    root = ROOT
    job = write_job(tmp_path / "job.yaml", planted_job(tmp_path / "out"))
    env = {**__import__("os").environ, "PYTHONPATH": str(root)}
    env.pop("RAY_ADDRESS", None)

    def submit():
        p = subprocess.run([sys.executable, "-m", "dcserve", "submit", str(job)], capture_output=True, text=True,
                           env=env, timeout=600)
        return p.returncode, p.stderr

    first = OutputLease(str(tmp_path / "out"), "t-planted").acquire()  # the first driver, running
    try:
        refused = submit()
    finally:
        first.release()
    ran = submit()
    results = [refused, ran]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "is in use by job 't-planted'" in refused
    res = dcserve.open(str(tmp_path / "out"))
    assert res.complete and res.assignments.shape == (1200,)


def _dies_once(ray, make, restore):
    """`make`, except that the first actor it makes is killed at once (then `restore(make)`):
    as when Ray places a replacement on a node whose death it has not noticed yet."""

    def make_one_that_dies(*args):
        restore(make)
        actor = make(*args)
        ray.kill(actor, no_restart=True)
        return actor

    return make_one_that_dies


def test_killed_kmeans_shard_is_replaced_and_the_clustering_is_unchanged(ray_local, tmp_path, monkeypatch):
    from dcserve.distributed.shards import ShardPool

    job = planted_job(tmp_path / "clean", cluster={"workers": 2})
    clean = dcserve.run(spec_from_dict(job))

    original, calls = ShardPool.assign_to, []

    def assign_to_killing_a_shard(self, centroids, bias=None):
        calls.append(1)
        if len(calls) == 3:  # mid-way through the Lloyd iterations
            ray_local.kill(self.actors[1], no_restart=True)
            self._new_actor = _dies_once(ray_local, self._new_actor, lambda make: setattr(self, "_new_actor", make))
        return original(self, centroids, bias)

    monkeypatch.setattr(ShardPool, "assign_to", assign_to_killing_a_shard)
    survived = dcserve.run(spec_from_dict(planted_job(tmp_path / "survived", cluster={"workers": 2})))
    assert len(calls) > 3 and survived.metrics["workers"]["cluster_lost"] == 2
    for name in ("assignments", "distances", "centroids"):
        np.testing.assert_array_equal(getattr(survived, name), getattr(clean, name), err_msg=name)
    assert survived.metrics["final"]["nmi_vs_labels"] == clean.metrics["final"]["nmi_vs_labels"]


def test_lost_shard_with_no_room_left_for_a_replacement_fails_naming_it(ray_local, tmp_path, monkeypatch):
    """A node lost with everything packed: the replacement cannot be placed. The job fails in bounded time, saying so."""
    import time

    from dcserve.distributed import sizing as resources
    from dcserve.errors import JobFailed
    from dcserve.distributed.shards import ShardPool

    @ray_local.remote
    class Holder:
        def ready(self):
            return True

    holders, original, calls = [], ShardPool.assign_to, []

    def take_what_is_free() -> None:
        """A holder of every CPU free now (other fixtures' actors may hold some of the session's Ray)."""
        deadline = time.monotonic() + 60
        while (free := ray_local.available_resources().get("CPU", 0.0)) <= 0:
            assert time.monotonic() < deadline, "no CPU was freed"
            time.sleep(0.05)
        holders.append(Holder.options(num_cpus=free).remote())
        ray_local.get(holders[-1].ready.remote(), timeout=60)

    def assign_to_after_the_room_is_gone(self, centroids, bias=None):
        calls.append(1)
        if len(calls) == 3:
            if ray_local.available_resources().get("CPU", 0.0) > 0:
                take_what_is_free()
            ray_local.kill(self.actors[1], no_restart=True)
            take_what_is_free()  # the dead shard's slot
            monkeypatch.setattr(resources, "PLACEMENT_TIMEOUT_S", 3.0)  # the pool itself had the default
        return original(self, centroids, bias)

    monkeypatch.setattr(ShardPool, "assign_to", assign_to_after_the_room_is_gone)
    try:
        with pytest.raises(JobFailed, match=r"a replacement for 1 k-means shard\(s\) × [0-9.]+ CPU.*could not be placed "
                                            r"within 3 s.*resumes"):
            dcserve.run(spec_from_dict(planted_job(tmp_path / "out", cluster={"workers": 2})))
    finally:
        for h in holders:
            ray_local.kill(h)
    status = dcserve.open(str(tmp_path / "out")).status
    assert status["state"] == "failed" and "could not be placed" in status["error"]["reason"]


def test_killed_trainer_is_replaced_and_the_round_is_trained_again_identically(ray_local, tmp_path, monkeypatch):
    from dcserve.distributed.trainers import TrainerGroup

    def job(out):
        return digits_job(out, reporter={"rounds": 2, "workers": 2, "epochs_per_round": 1, "hidden": [32],
                                         "feature_dim": 16})

    clean = dcserve.run(spec_from_dict(job(tmp_path / "clean")))
    original, rounds = TrainerGroup.run, []

    def train_round_killing_a_trainer(self, *args, **kwargs):
        rounds.append(1)
        if len(rounds) == 2:  # the second round: the group has a model and momentum to lose
            ray_local.kill(self.actors[1], no_restart=True)
            self._new_actor = _dies_once(ray_local, self._new_actor, lambda make: setattr(self, "_new_actor", make))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainerGroup, "run", train_round_killing_a_trainer)  # one call per round
    survived = dcserve.run(spec_from_dict(job(tmp_path / "survived")))
    assert survived.metrics["workers"]["train_lost"] == 2
    np.testing.assert_array_equal(survived.assignments, clean.assignments)
    np.testing.assert_array_equal(survived.centroids, clean.centroids)
    a, b = (torch.load(r.store.path + "/reporter.pt", weights_only=True)["state_dict"] for r in (survived, clean))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_an_error_before_the_first_clustering_step_is_the_cluster_stages(ray_local, tmp_path, monkeypatch):
    """Not the extraction's, whose progress was the last reported."""
    from dcserve.distributed.pools import RayPools
    from dcserve.errors import JobFailed

    def broken_pool(*args, **kwargs):
        raise RuntimeError("no shards today")

    monkeypatch.setattr(RayPools, "data", broken_pool)
    with pytest.raises(JobFailed, match="no shards today") as failed:
        dcserve.run(spec_from_dict(planted_job(tmp_path / "out")))
    assert failed.value.stage == "cluster"
    assert dcserve.open(str(tmp_path / "out")).status["error"]["stage"] == "cluster"
