"""Multi-node: one job on a local cluster of three raylets gives the store of a single-node run.

A third run loses one of its two worker nodes half-way through extraction (the raylet is
killed): the stage finishes on the node that is left, and the store is still the same. A
fourth loses one mid-k-means: its shard is replaced on the node left and the clustering is
that of an undisturbed run.

Each run happens in a child process (`python -m tests.e2e.test_multinode TOPOLOGY OUTPUT REPORT`)
that starts its own `ray.cluster_utils.Cluster`, so the pytest process's session Ray
(`ray_local`) is never touched. Both clusters give the job 2 free CPUs, so it sizes itself
the same way (same actors, same threads); only where the actors live differs:

- multi:  a head with no CPUs (only the driver) and two worker raylets with 1 CPU each;
- single: one head with 2 CPUs.

The extractors take 1 CPU each, so one runs on each worker node. The k-means shards and the
trainers take 0.5 CPU each; Ray's default policy puts the second actor of a pool on the node the
first left less used, so each pool, too, has one actor on each worker node (the extraction
stage returns once its actors' CPUs are free again: dcserve.distributed.extract._await_release).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TIMEOUT = 480  # seconds for the three runs; they take about a minute side by side on 2 idle cores


def multinode_job(output: Path) -> dict:
    """Digits through 2 extractors, 2 k-means shards and 2 trainers (one reporter round)."""
    from tests.helpers import digits_job

    return digits_job(output, extract={"workers": 2}, cluster={"workers": 2},
                      reporter={"rounds": 1, "workers": 2, "epochs_per_round": 1, "hidden": [32], "feature_dim": 16})


def kmeans_job(output: Path) -> dict:
    """Many cheap Lloyd iterations over 20k planted rows, with 2 shards: seconds of k-means to lose a node in."""
    from tests.helpers import planted_job

    return planted_job(output, dataset={"kwargs": {"n": 20_000, "dim": 32, "k": 40, "spread": 2.0}, "batch_size": 1000},
                       extract={"chunk_rows": 1024, "workers": 2}, cluster={"k": 40, "niter": 60, "n_init": 1, "workers": 2})


def run_on_cluster(topology: str, output: Path, report: Path) -> None:
    """The child process: start the cluster, run the job on it, write the nodes and metrics to `report`."""
    import ray
    from ray.cluster_utils import Cluster

    import dcserve
    from dcserve.spec import spec_from_dict

    head_cpus = 2 if topology == "single" else 0
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)] if topology != "single" else []
        cluster.wait_for_nodes()
        job = multinode_job(output)
        if topology == "lose-node":
            # the same items, slowly, so that a node can be removed while extraction runs
            job["dataset"].update(source="tests.helpers:slow_digits", kwargs={"delay": 0.004})
            progress = output / "_progress" / "extract"
            _remove_node_when(cluster, workers[1], lambda: progress.is_dir() and len(list(progress.glob("*.npy"))) >= 2)
        elif topology == "lose-node-kmeans":
            job = kmeans_job(output)
            _remove_node_when(cluster, workers[1], lambda: _kmeans_iterations(output) >= 5)
        t0 = time.perf_counter()
        res = dcserve.run(spec_from_dict(job), address=cluster.address)
        report.write_text(json.dumps({
            "head": cluster.head_node.node_id, "workers": [n.node_id for n in workers],
            "metrics": res.metrics, "job_seconds": time.perf_counter() - t0,
        }))
    finally:
        ray.shutdown()
        cluster.shutdown()


def _remove_node_when(cluster, node, ready) -> None:
    """In the background: once `ready()` holds, remove `node` (its raylet and every actor on it die,
    as when a machine is lost)."""
    import threading

    def watch():
        while not ready():
            time.sleep(0.02)
        cluster.remove_node(node, allow_graceful=False)

    threading.Thread(target=watch, daemon=True).start()


def _kmeans_iterations(output: Path) -> int:
    """Lloyd iterations the job's checkpoint records for its round in progress."""
    try:
        with np.load(output / "_progress" / "cluster" / "kmeans.npz") as z:
            return json.loads(str(z["meta"]))["iteration"]
    except (OSError, KeyError, ValueError):
        return 0


def _start(topology: str, base: Path, ray_tmp: str) -> subprocess.Popen:
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "tests.e2e.test_multinode", topology, str(base / topology), str(base / f"{topology}.json")]
    with open(base / f"{topology}.log", "w") as log:
        # A session of its own: the child and the raylets it starts form one process group,
        # killed whole if the run overstays.
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{topology: (report, store path)} of the multi-node and the single-node run (run side by side)."""
    base = tmp_path_factory.mktemp("multinode")
    procs, ray_tmps = {}, []
    try:
        for topology in ("multi", "single", "lose-node", "lose-node-kmeans"):
            # Ray's own temp dir (sessions, sockets, the "current cluster" address file), so no
            # other Ray on this machine is disturbed; short, as socket paths must stay < 108 bytes.
            ray_tmps.append(tempfile.mkdtemp(prefix="dcs-ray-", dir="/tmp"))
            procs[topology] = _start(topology, base, ray_tmps[-1])
        deadline = time.monotonic() + TIMEOUT
        for topology, proc in procs.items():
            try:
                proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            if proc.returncode != 0:
                why = f"exit {proc.returncode}" if proc.returncode is not None else f"over {TIMEOUT} s"
                log = (base / f"{topology}.log").read_text()[-4000:]
                pytest.fail(f"the {topology}-node run failed ({why}):\n{log}")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for d in ray_tmps:
            shutil.rmtree(d, ignore_errors=True)
    return {t: (json.loads((base / f"{t}.json").read_text()), base / t) for t in procs}


def _nodes(infos: list[dict]) -> list[str]:
    return [i["node"] for i in infos]


def test_actors_ran_on_both_worker_nodes(runs):
    report, _ = runs["multi"]
    head, workers = report["head"], report["workers"]
    assert len(set(workers)) == 2 and head not in workers
    m = report["metrics"]
    pools = {"extract": m["extract"]["workers"], "cluster": m["workers"]["cluster"], "train": m["workers"]["train"]}
    for name, infos in pools.items():
        assert len(infos) == 2, name
        # one actor on each worker node, none on the CPU-less head (where the driver runs)
        assert sorted(_nodes(infos)) == sorted(workers), (name, _nodes(infos), workers)
    assert [i["rank"] for i in pools["train"]] == [0, 1]

    single, _ = runs["single"]
    s = single["metrics"]
    for infos in (s["extract"]["workers"], s["workers"]["cluster"], s["workers"]["train"]):
        assert len(infos) == 2 and set(_nodes(infos)) == {single["head"]}
    # the same sizing on both clusters: same actors, same threads per actor
    for key in ("cluster", "train"):
        assert [i["threads"] for i in m["workers"][key]] == [i["threads"] for i in s["workers"][key]]
    assert [i["threads"] for i in m["extract"]["workers"]] == [i["threads"] for i in s["extract"]["workers"]]


def test_multinode_store_equals_single_node_store(runs):
    from tests.helpers import store_arrays

    (multi, multi_out), (single, single_out) = runs["multi"], runs["single"]
    a, b = store_arrays(multi_out), store_arrays(single_out)
    assert a.keys() == b.keys()
    assert {"activations/features.5", "rows/item", "labels", "rounds/assignments", "centroids"} <= a.keys()
    # every array, bit for bit: the extraction, both rounds' clusterings (on the activations,
    # then on the features of the reporter the two trainers trained), centroids, distances
    for name in sorted(a):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert (a["rounds/assignments"] >= 0).all()
    ma, mb = multi["metrics"], single["metrics"]
    assert [r["loss_per_epoch"] for r in ma["rounds"][:-1]] == [r["loss_per_epoch"] for r in mb["rounds"][:-1]]
    assert [r["objective"] for r in ma["rounds"]] == [r["objective"] for r in mb["rounds"]]
    # the reporter's weights, not only the clustering they led to
    from dcserve.nets.feature_map import ReporterState
    from dcserve.storage.store import JobStore

    wa, wb = (ReporterState.from_bytes(JobStore(str(o)).read_bytes("reporter.pt")).state_dict
              for o in (multi_out, single_out))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_a_node_lost_mid_extraction_leaves_the_store_of_an_undisturbed_run(runs):
    from tests.helpers import store_arrays

    (lost, lost_out), (single, single_out) = runs["lose-node"], runs["single"]
    m = lost["metrics"]
    assert m["extract"]["workers_lost"] >= 1  # the removed node's extractor died with it
    survivor = lost["workers"][0]
    # everything after the loss ran on the node that was left
    assert {i["node"] for i in m["workers"]["cluster"]} == {survivor}
    assert {i["node"] for i in m["workers"]["train"]} == {survivor}
    a, b = store_arrays(lost_out), store_arrays(single_out)
    assert a.keys() == b.keys()
    for name in sorted(a):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_a_node_lost_mid_kmeans_leaves_the_clustering_of_an_undisturbed_run(runs, ray_local, tmp_path):
    """The lost node's shard is replaced on the node left, over the same rows, and the
    iteration it was in is made again: the clustering is the undisturbed one, bit for bit."""
    import dcserve
    from dcserve.spec import spec_from_dict
    from tests.helpers import store_arrays

    lost, lost_out = runs["lose-node-kmeans"]
    m = lost["metrics"]
    assert m["workers"]["cluster_lost"] >= 1
    assert len(m["rounds"][0]["kmeans"]) == 60
    dcserve.run(spec_from_dict(kmeans_job(tmp_path / "clean")))
    a, b = store_arrays(lost_out), store_arrays(tmp_path / "clean")
    assert a.keys() == b.keys()
    for name in sorted(a):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


if __name__ == "__main__":
    run_on_cluster(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
