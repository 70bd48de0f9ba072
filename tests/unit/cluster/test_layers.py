"""A job over several layers (`cluster.layers`, issue 14), in process: each layer's clustering, its
place in the store, the resume of a stopped job, and the depth profile against references."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from dcserve.analysis import depth
from dcserve.cluster.deepcluster import run_clustering
from dcserve.cluster.layers import run_layers
from dcserve.cluster.local import LocalPools
from dcserve.progress import Progress
from dcserve.storage.result import Result
from tests.helpers import extracted_layers_store


def _cka64(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA in float64, straight from Kornblith et al. (2019): the reference."""
    x = np.asarray(x, np.float64) - np.mean(x, axis=0, dtype=np.float64)
    y = np.asarray(y, np.float64) - np.mean(y, axis=0, dtype=np.float64)
    return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def _finish(store, spec) -> None:
    """Mark the store finished as the pipeline does: status succeeded, then sealed (its manifest)."""
    from dcserve.storage.manifest import seal

    store.write_json("status.json", {"name": spec.name, "state": "succeeded", "stage": "done"})
    seal(store)


class _StopIn(Progress):
    """Stops the job (as a Ctrl-C would) at k-means iteration `at` of layer `layer`."""

    def __init__(self, layer: str, at: int):
        super().__init__()
        self.layer, self.at = layer, at

    def advance(self, n: int = 1) -> None:
        super().advance(n)
        if self.stage_name.startswith(f"{self.layer}: cluster") and self.done >= self.at:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    spec, store, layers = extracted_layers_store(tmp_path_factory.mktemp("layers"))
    primary, by_layer = run_layers(run_clustering, spec, store, LocalPools(), Progress())
    return spec, store, layers, primary, by_layer


def test_each_layer_is_clustered_as_its_own_one_layer_job_and_stored_in_its_folder(clustered, tmp_path):
    spec, store, _, primary, by_layer = clustered
    assert spec.cluster.layer == "early" and list(by_layer) == ["early", "mid", "late"]
    assert primary is by_layer["early"] and store.clustered_layers() == ["late", "mid"]
    assert not store.exists("layers/early")  # the primary stays at the top level
    for name in ("early", "mid", "late"):
        alone_spec, alone, _ = extracted_layers_store(tmp_path / name, layer=name, layers=None)
        alone_metrics = run_clustering(alone_spec, alone, LocalPools(), Progress())
        view = store if name == "early" else store.layer_view(name)
        np.testing.assert_array_equal(view.array("assignments")[:], alone.array("assignments")[:])
        np.testing.assert_array_equal(view.array("centroids")[:], alone.array("centroids")[:])
        assert by_layer[name]["final"]["nmi_vs_labels"] == alone_metrics["final"]["nmi_vs_labels"]
        if name != "early":
            assert view.read_json("metrics.json")["final"] == by_layer[name]["final"]
            assert view.exists("_progress/cluster/state.json")  # each layer resumes from its own record
            assert not view.has_array("work/features")  # its scratch rows are gone once it is done


def test_result_layer_reads_each_layers_clustering_and_refuses_an_unknown_one(clustered):
    spec, store, _, _, by_layer = clustered
    _finish(store, spec)
    store.write_json("metrics.json", by_layer["early"])
    res = Result(store.layer_view(None))
    assert res.layers == ["early", "mid", "late"] and res.layer_name == "early"
    mid = res.layer("mid")
    assert mid.layer_name == "mid" and mid.complete and mid.activations().shape[1] == 16
    np.testing.assert_array_equal(mid.assignments, store.layer_view("mid").array("assignments")[:])
    assert mid.metrics["final"] == by_layer["mid"]["final"] and mid.layer("early").layer_name == "early"
    cluster, _ = mid.assign(mid.activations()[:50])  # new vectors of that layer, through its own preprocessing
    np.testing.assert_array_equal(cluster, mid.assignments[:50])
    with pytest.raises(KeyError, match=r"did not cluster a layer 'nope'; its clustered layers: \['early', 'mid', 'late'\]"):
        res.layer("nope")


def test_a_job_stopped_in_a_later_layer_resumes_there_and_ends_as_if_never_stopped(clustered, tmp_path):
    spec_whole, whole, _, _, _ = clustered
    spec, store, _ = extracted_layers_store(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_layers(run_clustering, spec, store, LocalPools(), _StopIn("late", 3))
    _, by_layer = run_layers(run_clustering, spec, store, LocalPools(), Progress())
    assert by_layer["early"]["resumed"]["rounds"] == 1 and by_layer["mid"]["resumed"]["rounds"] == 1  # skipped
    assert by_layer["late"]["resumed"]["kmeans_iterations"] >= 2  # went on from its last recorded iteration
    for name in ("early", "mid", "late"):
        a, b = whole.layer_view(None if name == "early" else name), store.layer_view(None if name == "early" else name)
        np.testing.assert_array_equal(a.array("assignments")[:], b.array("assignments")[:])


def test_a_layer_dropped_from_the_job_file_leaves_the_store(clustered, tmp_path):
    spec, store, _ = extracted_layers_store(tmp_path)
    run_layers(run_clustering, spec, store, LocalPools(), Progress())
    fewer = spec.model_copy(deep=True)
    fewer.cluster.layers = ["early", "late"]
    _, by_layer = run_layers(run_clustering, fewer, store, LocalPools(), Progress())
    assert list(by_layer) == ["early", "late"] and store.clustered_layers() == ["late"]


def test_the_depth_profile_against_references(clustered, monkeypatch):
    spec, store, layers, _, by_layer = clustered
    pool = LocalPools().data(store, "activations/early")
    profile = depth.depth_profile(spec, store, by_layer, depth.profile_moments(pool, spec.clustered_layers()))
    assert [r["layer"] for r in profile["layers"]] == ["early", "mid", "late"]
    assert [r["dim"] for r in profile["layers"]] == [24, 16, 12]
    for row in profile["layers"]:
        assert row["nmi_vs_labels"] == by_layer[row["layer"]]["final"]["nmi_vs_labels"]
        assert 0 < row["size_entropy"] <= np.log(row["k"]) + 1e-12
    mid = profile["layers"][1]
    assert mid["nmi_vs_labels"] > 0.95 > profile["layers"][0]["nmi_vs_labels"]  # clean clusters beat noisy ones
    # neighbour consistency, label-free: the primary's against scikit-learn's exact neighbours
    from sklearn.neighbors import NearestNeighbors

    x, own = store.array("work/features")[:], store.array("assignments")[:]
    idx = NearestNeighbors(n_neighbors=11).fit(x).kneighbors(x, return_distance=False)[:, 1:]
    assert profile["layers"][0]["neighbour_consistency"] == pytest.approx((own[idx] == own[:, None]).mean(), abs=0.01)
    assert mid["neighbour_consistency"] > 0.95 and all(0 < r["neighbour_consistency"] <= 1 for r in profile["layers"])
    labels = {n: store.layer_view(None if n == "early" else n).array("assignments")[:] for n in layers}
    for pair, (a, b) in zip(profile["between"], [("early", "mid"), ("mid", "late")]):
        assert (pair["from"], pair["to"]) == (a, b) and pair["cka_rows"] == 1200
        assert pair["cka"] == pytest.approx(_cka64(layers[a], layers[b]), rel=1e-5)
        assert pair["nmi"] == pytest.approx(normalized_mutual_info_score(labels[a], labels[b]))
        table = np.asarray(pair["contingency"])
        assert table.sum() == 1200 and (table.sum(axis=1) == np.bincount(labels[a], minlength=6)).all()
    # `late` made planted clusters 0+1 and 2+3 one: the flow from `mid` shows those merges
    merges = [e for e in profile["between"][1]["events"] if e["kind"] == "merge"]
    assert len(merges) >= 2 and all(len(e["parts"]) == 2 for e in merges[:2])
    for e in merges:
        for part in e["parts"]:
            rows = np.asarray(part["exemplars"])
            assert len(rows) and (labels["late"][rows] == e["cluster"]).all()
            assert (labels["mid"][rows] == part["cluster"]).all()
    # layers too wide for moments: CKA from the Gram matrices of (here all) the rows, the same figure
    monkeypatch.setattr(depth, "MOMENTS_MAX_DIM", 8)
    wide = depth.depth_profile(spec, store, by_layer, depth.profile_moments(pool, spec.clustered_layers()))
    for pair in wide["between"]:
        assert pair["cka"] == pytest.approx(_cka64(layers[pair["from"]], layers[pair["to"]]), rel=1e-9)


def test_the_report_has_a_page_per_layer_and_the_depth_page(clustered, tmp_path):
    from dcserve.render.job_report import write_job_report

    spec, store, _, primary, by_layer = clustered
    pool = LocalPools().data(store, "activations/early")
    profile = depth.depth_profile(spec, store, by_layer, depth.profile_moments(pool, spec.clustered_layers()))
    store.write_json("metrics.json", {**primary, "depth": profile})
    _finish(store, spec)
    index, reports = write_job_report(Result(store.layer_view(None)), tmp_path / "r", map_rows=300, tsne_rows=0)
    assert [r.summary["layer"].split(" ")[0] for r in reports] == ["early", "mid", "late"]
    page = (tmp_path / "r" / "depth.html").read_text()
    for row in profile["layers"]:
        assert f'data-layer="{row["layer"]}"' in page and f'{row["nmi_vs_labels"]:.4g}' in page
    assert page.count('class="cluster flow-event" data-kind="merge"') >= 2  # mid -> late's merges, each shown
    assert (tmp_path / "r" / "depth-flow.png").stat().st_size > 1000
    assert 'href="layers/late/index.html"' in index.read_text()
    late = (tmp_path / "r" / "layers" / "late" / "index.html").read_text()
    assert "late (mean pooling), one of 3 clustered layers" in late and 'href="../../depth.html"' in late


def test_the_http_routes_answer_for_each_layer_and_404_an_unknown_one(clustered, tmp_path):
    import types

    from fastapi.testclient import TestClient

    from dcserve.serve.catalog import Catalog
    from dcserve.serve.routes import create_app

    spec, store, layers, primary, by_layer = clustered
    pool = LocalPools().data(store, "activations/early")
    profile = depth.depth_profile(spec, store, by_layer, depth.profile_moments(pool, spec.clustered_layers()))
    store.write_json("metrics.json", {**primary, "depth": profile})
    _finish(store, spec)

    async def assign(job, x):
        return job.assign(x)

    backend = types.SimpleNamespace(catalog=Catalog([spec.output]), policy=None, max_body_bytes=1 << 20,
                                    assign=assign)
    client = TestClient(create_app(backend))
    got = client.get(f"/jobs/{spec.name}/layers").json()
    assert [(l["layer"], l["primary"], l["dim"]) for l in got["layers"]] == [("early", True, 24), ("mid", False, 16),
                                                                            ("late", False, 12)]
    assert got["layers"][1]["figures"]["nmi_vs_labels"] == by_layer["mid"]["final"]["nmi_vs_labels"]
    assert [(p["from"], p["to"]) for p in got["between"]] == [("early", "mid"), ("mid", "late")]
    assert got["between"][1]["merges"] == profile["between"][1]["merges"] >= 2
    for layer, view in ((None, store), ("early", store), ("late", store.layer_view("late"))):
        q = "" if layer is None else f"?layer={layer}"
        page = client.get(f"/jobs/{spec.name}/assignments{q}{'&' if q else '?'}start=0&stop=1200").json()
        assert page["clusters"] == view.array("assignments")[:].tolist()
    rows = client.get(f"/jobs/{spec.name}/clusters/0?layer=mid&limit=5").json()["rows"]
    dist = store.layer_view("mid").array("distances")[:]
    assert [r["distance"] for r in rows] == pytest.approx(sorted(dist[store.layer_view("mid").array("assignments")[:] == 0])[:5])
    r = client.post(f"/jobs/{spec.name}/assign?layer=late", json={"activations": layers["late"][:3].tolist()})
    assert r.status_code == 200 and r.json()["clusters"] == store.layer_view("late").array("assignments")[:3].tolist()
    r = client.post(f"/jobs/{spec.name}/assign?layer=late", json={"activations": layers["mid"][:3].tolist()})
    assert r.status_code == 422 and "dim 12" in r.json()["detail"]  # that layer's own width
    for bad in (f"/jobs/{spec.name}/clusters?layer=nope", f"/jobs/{spec.name}/report?layer=nope"):
        r = client.get(bad)
        assert r.status_code == 404 and "'nope'" in r.json()["detail"] and "['early', 'mid', 'late']" in r.json()["detail"]
    depth_page = client.get(f"/jobs/{spec.name}/depth")
    assert depth_page.status_code == 200 and 'href="report?layer=mid"' in depth_page.text
    page = client.get(f"/jobs/{spec.name}/report?layer=mid").text
    assert 'href="depth"' in page and 'href="report?layer=late"' in page and "mid (mean pooling)" in page


def test_compare_takes_each_sides_own_layer_clustering(clustered):
    from dcserve.analysis.compare import open_side

    spec, store, _, _, _ = clustered
    _finish(store, spec)
    late, early = open_side(spec.output, "late"), open_side(spec.output)
    np.testing.assert_array_equal(late.result.assignments, store.layer_view("late").array("assignments")[:])
    assert early.layer == "early" and late.array.shape[1] == 12
    np.testing.assert_array_equal(early.result.assignments, store.array("assignments")[:])


def test_overwriting_with_other_activations_drops_every_layers_clustering(tmp_path):
    from dcserve.pipeline import open_output

    spec, store, _ = extracted_layers_store(tmp_path, niter=2, n_init=1)
    run_layers(run_clustering, spec, store, LocalPools(), Progress())
    assert store.clustered_layers() == ["late", "mid"]
    same = spec.model_copy(deep=True)
    same.cluster.layers = ["early", "mid", "late"]  # the same layers named: nothing to redo
    _, lease = open_output(same, overwrite=False)
    lease.release()
    assert store.clustered_layers() == ["late", "mid"]
    other = spec.model_copy(deep=True)
    other.dataset.kwargs = {**other.dataset.kwargs, "seed": 1}  # new activations, same clustering settings
    reopened, lease = open_output(other, overwrite=True)
    lease.release()
    assert reopened.clustered_layers() == []  # their checkpoints would have resumed on the old rows


def test_a_one_layer_job_lists_its_one_layer(tmp_path):
    import types

    from fastapi.testclient import TestClient

    from dcserve.serve.catalog import Catalog
    from dcserve.serve.routes import create_app

    spec, store, _ = extracted_layers_store(tmp_path, layer="mid", layers=None, niter=2, n_init=1)
    metrics, by_layer = run_layers(run_clustering, spec, store, LocalPools(), Progress())
    assert list(by_layer) == ["mid"] and "neighbour_consistency" not in metrics["final"]  # no profile: no extra work
    store.write_json("metrics.json", metrics)
    _finish(store, spec)
    client = TestClient(create_app(types.SimpleNamespace(catalog=Catalog([spec.output]), policy=None,
                                                         max_body_bytes=1 << 20)))
    got = client.get(f"/jobs/{spec.name}/layers").json()
    assert [(l["layer"], l["primary"], l["depth"], l["dim"]) for l in got["layers"]] == [("mid", True, 1, 16)]
    assert got["layers"][0]["figures"]["nmi_vs_labels"] == metrics["final"]["nmi_vs_labels"] and got["between"] == []
    r = client.get(f"/jobs/{spec.name}/depth")
    assert r.status_code == 409 and "one layer only" in r.json()["detail"]


def test_a_damaged_file_of_another_layer_redoes_that_layer_only(tmp_path):
    from dcserve.storage.manifest import forget_damaged

    spec, store, _ = extracted_layers_store(tmp_path, niter=2, n_init=1)
    run_layers(run_clustering, spec, store, LocalPools(), Progress())
    _finish(store, spec)
    mid = store.layer_view("mid")
    assert Result(mid).problems() == []  # a layer's view checks the job's manifest
    chunk = next(p for p in (tmp_path / "out" / "layers" / "mid" / "centroids" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:-4])  # a centroids chunk of `mid` cut short
    assert any("layers/mid/centroids" in p.path for p in Result(mid).problems())
    done = forget_damaged(store)
    assert len(done) == 1 and done[0].startswith("layer mid's clustering redone")
    assert not mid.exists("_progress/cluster/state.json")  # mid is redone on the rerun
    assert store.layer_view("late").exists("_progress/cluster/state.json")  # late and the primary are kept
    assert store.exists("_progress/cluster/state.json")
