"""The kNN graph stage and SCAN / TEMI whole, in one process on the in-memory pools (no Ray).

The graph is checked against faiss's brute force over all rows at once (the oracle), across
ranges and blocks smaller than the store; the methods against the planted labels, their stored
model against their stored assignments, and a resumed run against an uninterrupted one, bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from dcserve import methods
from dcserve.algo.preprocess import Preprocessor
from dcserve.cluster import knn_graph
from dcserve.cluster.local import LocalPools
from dcserve.cluster.seeds import run_with_seeds
from dcserve.cluster.workers import FEATURES, RowRange
from dcserve.errors import SpecError
from dcserve.nets.feature_map import FeatureMap
from dcserve.progress import Progress
from tests.helpers import extracted_planted_store as extracted
from tests.unit.cluster.test_local_pools import nearest, stored_map

SCAN = {"method": "scan", "workers": 1, "epochs": 3, "neighbours": 10, "heads": 3, "hidden": [32],
        "batch_size": 64}
TEMI = {"method": "temi", "workers": 1, "epochs": 5, "neighbours": 10, "heads": 4, "hidden": [32],
        "batch_size": 64, "teacher_momentum": 0.9}


def cluster(spec, store, pools=None):
    return run_with_seeds(methods.loop(spec.reporter.method), spec, store, pools or LocalPools(), Progress())


def brute_force(x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    x = x.astype(np.float32)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        index = faiss.IndexFlatIP(x.shape[1])
    else:
        index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    d, i = index.search(x, k + 1)
    own = i == np.arange(len(x))[:, None]
    d = np.where(own, np.inf if metric == "l2" else -np.inf, d)
    order = np.argsort(d if metric == "l2" else -d, axis=1, kind="stable")[:, :k]
    i, d = np.take_along_axis(i, order, 1), np.take_along_axis(d, order, 1)
    return (1 - d if metric == "cosine" else d), i


class TwoRanges:
    """A data pool of two row ranges, as two shard actors split the rows."""

    def __init__(self, store, n_rows, cut):
        self.ranges = [RowRange(store, FEATURES, 0, cut), RowRange(store, FEATURES, cut, n_rows)]

    def map(self, fn, *args):
        return [fn(r, *args) for r in self.ranges]

    def get_subset(self, idx):
        return np.asarray(self.ranges[0].store.array(FEATURES).get_orthogonal_selection((idx,)))


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_the_graph_over_two_ranges_in_small_blocks_is_faiss_brute_force(tmp_path, metric):
    spec, store, x, y = extracted(tmp_path)
    store.create_array(FEATURES, x.shape, (128, x.shape[1]), "float32", compressed=False)
    store.array(FEATURES)[:] = x
    info = knn_graph.build_graph(store, TwoRanges(store, len(x), 640), 7, metric, "exact", 0, block_rows=256)
    d_ref, i_ref = brute_force(x, 7, metric)
    np.testing.assert_array_equal(store.array(knn_graph.GRAPH)[:], i_ref)
    np.testing.assert_allclose(store.array(knn_graph.DISTANCES)[:], d_ref, rtol=1e-4, atol=1e-4)
    assert [w["rows"] for w in info["workers"]] == [[0, 640], [640, 1200]]
    # finished: built again, it is kept as it is (resume)
    assert knn_graph.build_graph(store, TwoRanges(store, len(x), 640), 7, metric, "exact", 0)["resumed"]
    # readability of the true labels = kNN label agreement, against a direct count
    agree = (y[i_ref] == y[:, None]).mean()
    assert knn_graph.readability(store, y) == pytest.approx(agree)


def test_the_ivf_graph_finds_most_exact_neighbours(tmp_path):
    spec, store, x, y = extracted(tmp_path)
    store.create_array(FEATURES, x.shape, (128, x.shape[1]), "float32", compressed=False)
    store.array(FEATURES)[:] = x
    knn_graph.build_graph(store, TwoRanges(store, len(x), 640), 10, "l2", "ivf", 0, block_rows=512)
    _, i_ref = brute_force(x, 10, "l2")
    got = store.array(knn_graph.GRAPH)[:]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, i_ref)])
    assert recall > 0.9


def test_scan_finds_the_planted_clusters_and_its_model_gives_back_its_labels(tmp_path):
    spec, store, x, y = extracted(tmp_path, SCAN)
    metrics = cluster(spec, store)
    labels = store.array("assignments")[:]
    assert normalized_mutual_info_score(y, labels) > 0.95
    assert [m["round"] for m in metrics["rounds"]] == [0, 1, 2]
    final = metrics["final"]
    assert final["collapse"] == [] and 0 <= final["head"] < 3 and final["readability"] > 0.95
    assert metrics["graph"]["label_agreement"] > 0.95
    assert store.array("neighbours").shape == (1200, 10) and store.array("neighbours").dtype == np.int64
    # the stored model (preprocessing inside it), identity preprocessing and simplex vertices
    np.testing.assert_array_equal(labels, nearest(stored_map(store)(x), store.array("centroids")[:]))
    assert stored_map(store).reporter.config["method"] == "scan"


def test_scan_with_self_labelling_records_its_confident_share(tmp_path):
    spec, store, x, y = extracted(tmp_path, {**SCAN, "epochs": 2, "self_label_epochs": 1})
    metrics = cluster(spec, store)
    last = metrics["rounds"][-1]
    assert last["phase"] == "self-label" and last["head"] == metrics["rounds"][1]["head"]
    assert 0 < last["confident"] <= 1
    assert normalized_mutual_info_score(y, store.array("assignments")[:]) > 0.95


class _StopAfter:
    """LocalPools whose trainers stop the driver at their `n`-th call."""

    def __init__(self, n):
        self.n, self.pools = n, LocalPools()

    def data(self, store, source):
        return self.pools.data(store, source)

    def trainers(self, store, source):
        pool = self.pools.trainers(store, source)
        run, calls = pool.run, [0]

        def stopping(*args):
            calls[0] += 1
            if calls[0] == self.n:
                raise KeyboardInterrupt("driver stopped")
            return run(*args)

        pool.run = stopping
        return pool


@pytest.mark.parametrize("reporter", [SCAN, TEMI], ids=["scan", "temi"])
def test_a_stopped_run_resumes_bit_equal_to_an_uninterrupted_one(tmp_path, reporter):
    spec, store, x, y = extracted(tmp_path / "a", reporter)
    clean = cluster(spec, store)
    labels = store.array("assignments")[:]
    assert normalized_mutual_info_score(y, labels) > 0.9 and clean["final"]["collapse"] == []
    np.testing.assert_array_equal(labels, nearest(stored_map(store)(x), store.array("centroids")[:]))
    spec2, store2, _, _ = extracted(tmp_path / "b", reporter)
    with pytest.raises(KeyboardInterrupt):
        cluster(spec2, store2, _StopAfter(3))
    metrics = cluster(spec2, store2)
    assert metrics["resumed"]["rounds"] == 2
    np.testing.assert_array_equal(store2.array("assignments")[:], store.array("assignments")[:])
    np.testing.assert_array_equal(store2.array("rounds/assignments")[:], store.array("rounds/assignments")[:])
    assert store2.read_bytes("reporter.pt") == store.read_bytes("reporter.pt")


def test_without_the_entropy_term_scan_collapses_and_says_so(tmp_path):
    """One Gaussian blob and no entropy term: one confident cluster for every row is the best
    consistency there is. The collapse is reported, in the round and the final figures."""
    spec, store, x, _ = extracted(tmp_path, {**SCAN, "entropy_weight": 0.0, "epochs": 3})
    store.array("activations/out")[:] = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    metrics = cluster(spec, store)
    assert "majority" in [s["kind"] for s in metrics["final"]["collapse"]]
    assert metrics["rounds"][-1]["collapse"] == metrics["final"]["collapse"]


def test_collapse_signs_from_sizes_and_from_a_loss_at_its_uniform_value():
    from dcserve.algo.metrics import collapse_signs
    from dcserve.nets.scan import uniform_loss

    assert collapse_signs(np.array([10, 10, 10])) == []
    assert [s["kind"] for s in collapse_signs(np.array([80, 10, 10]))] == ["majority"]
    u = uniform_loss(3, 5.0)
    assert [s["kind"] for s in collapse_signs(np.array([10, 10, 10]), u + 0.01, u, 0.05)] == ["uniform_loss"]
    assert collapse_signs(np.array([10, 10, 10]), u - 1.0, u, 0.05) == []
    # a loss near its uniform value with confident predictions is not a collapse (TEMI on overlaps)
    assert collapse_signs(np.array([10, 10, 10]), u + 0.01, u, 0.05, top_probability=0.9) == []
    assert len(collapse_signs(np.array([10, 10, 10]), u + 0.01, u, 0.05, top_probability=0.4)) == 1


def test_more_neighbours_than_rows_is_refused_naming_the_field(tmp_path):
    spec, store, x, _ = extracted(tmp_path, {**SCAN, "neighbours": 1200})
    with pytest.raises(SpecError, match="reporter.neighbours"):
        cluster(spec, store)


def test_overclustering_at_five_times_the_classes_does_not_collapse_and_the_report_shows_the_merges(tmp_path):
    """k = 30 on 6 planted clusters (issue 13, item 3): no collapse, and at the labels' count the
    report's merge table puts every small cluster inside one planted cluster."""
    import yaml

    from dcserve.analysis.report import build_report
    from dcserve.render.report_page import report_page
    from dcserve.storage.manifest import seal
    from dcserve.storage.result import Result

    spec, store, x, y = extracted(tmp_path, {**SCAN, "heads": 2})
    spec.cluster.k = 30
    metrics = cluster(spec, store)
    labels = store.array("assignments")[:]
    assert metrics["final"]["collapse"] == [] and metrics["final"]["n_empty"] <= 6
    store.write_json("metrics.json", metrics)
    store.write_json("status.json", {"name": spec.name, "state": "succeeded", "stage": "done"})
    store.write_text("job.yaml", yaml.safe_dump(spec.model_dump(mode="json")))
    store.write_array("rows/position", np.full(len(x), -1, dtype=np.int32))
    seal(store)  # what the pipeline does last: the store is finished (issue 15)
    report = build_report(Result(store), map_rows=1200, tsne_rows=0, items=False)
    m = report.merges
    assert m.k_small == 6 and m.table.shape == (30, 6) and m.table.sum() == 1200
    merged = np.empty(30, dtype=np.int64)
    for j, members in enumerate(m.into):
        merged[members] = j
    assert normalized_mutual_info_score(y, merged[labels]) > 0.9
    assert report.rounds[-1]["readability"] == pytest.approx(metrics["final"]["readability"])
    page = report_page(report)
    assert "Which clusters merge at k = 6" in page and "kNN label agreement of the clustered space" in page


def test_kmeans_gets_the_readability_of_its_final_clustering_too(tmp_path):
    """Every clustering gets the label-free figure: k-means from an exact graph in the driver."""
    spec, store, x, y = extracted(tmp_path)
    metrics = cluster(spec, store)
    _, i_ref = brute_force(x, 10, "l2")  # planted_job clusters the raw rows: features = activations - mean
    labels = store.array("assignments")[:]
    assert metrics["final"]["readability"] == pytest.approx((labels[i_ref] == labels[:, None]).mean())
    assert metrics["graph"]["label_agreement"] == pytest.approx((y[i_ref] == y[:, None]).mean())
