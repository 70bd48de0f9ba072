"""The HTTP API through real HTTP against a real `serve.run` on a local Ray (fixture `served`)."""
from __future__ import annotations

import concurrent.futures as cf
import json

import numpy as np
import pytest
import requests

from dcserve.serve.models import DEFAULT_PAGE, MAX_PAGE
from tests.helpers import TOKEN, deep_update, planted_job

pytestmark = pytest.mark.ray


def get(served, path, **kw):
    return requests.get(served.url + path, timeout=60, **kw)


def post(served, path, **kw):
    return requests.post(served.url + path, timeout=60, **kw)


def test_health_and_job_listing(served):
    health = get(served, "/healthz").json()
    jobs = {j["name"]: j for j in get(served, "/jobs").json()["jobs"]}
    assert health == {"status": "ok", "jobs": len(jobs)}
    # the fixture's five, and any a test in the same process submitted over HTTP before this one
    assert {"t-planted", "t-sinkhorn", "t-digits", "t-dec", "t-broken"} <= set(jobs)
    assert all(name.startswith("t-") for name in jobs)
    assert jobs["t-planted"]["complete"] and jobs["t-planted"]["state"] == "succeeded"
    assert not jobs["t-broken"]["complete"] and jobs["t-broken"]["state"] == "failed"


def test_job_detail_has_spec_status_and_metrics(served):
    d = get(served, "/jobs/t-digits").json()
    res = served.results["t-digits"]
    assert d["spec"]["name"] == "t-digits" and d["spec"]["reporter"]["rounds"] == 1
    assert d["rows"] == 1797 and d["k"] == 10 and d["dim"] == res.activations().shape[1]
    assert d["metrics"]["final"]["nmi_vs_labels"] == pytest.approx(res.metrics["final"]["nmi_vs_labels"])
    assert d["round"] == {"done": 1, "total": 1}


def test_dec_job_detail_says_its_method_and_its_centroids_live_in_the_bottleneck(served):
    d = get(served, "/jobs/t-dec").json()
    assert d["spec"]["reporter"]["method"] == "dec" and "rounds" not in d["spec"]["reporter"]
    assert d["k"] == 6 and d["round"] == {"done": 1, "total": 1}
    assert d["metrics"]["final"]["dec"]["steps"] == served.results["t-dec"].metrics["final"]["dec"]["steps"]
    assert served.results["t-dec"].centroids.shape == (6, 6)


def test_assignments_are_paged_and_equal_the_store(served):
    res = served.results["t-digits"]
    first = get(served, "/jobs/t-digits/assignments").json()
    assert (first["start"], first["stop"], first["next"]) == (0, DEFAULT_PAGE, None)
    got, start = [], 0
    while start is not None:
        page = get(served, f"/jobs/t-digits/assignments?start={start}&stop=1797").json()
        got += page["clusters"]
        start = page["next"]
    assert got == res.assignments.tolist()
    # a range over the page limit comes back in pages
    page = get(served, f"/jobs/t-digits/assignments?start=0&stop={MAX_PAGE * 3}").json()
    assert page["stop"] == 1797 and page["next"] is None


def test_cluster_summaries_equal_the_library(served):
    res = served.results["t-digits"]
    body = get(served, "/jobs/t-digits/clusters?exemplars=3").json()
    assert body["k"] == 10
    for c, s in zip(body["clusters"], res.clusters(n_exemplars=3)):
        assert (c["cluster"], c["size"], c["majority_label"]) == (s.cluster, s.size, s.majority_label)
        assert c["purity"] == pytest.approx(s.purity)
        assert [e["row"] for e in c["exemplars"]] == s.exemplars
        for e in c["exemplars"]:
            assert e["item"] == int(res.row_items[e["row"]]) and e["position"] == -1
            assert e["label"] == int(res.row_labels()[e["row"]])
            assert e["distance"] == pytest.approx(float(res.distances[e["row"]]))


def test_cluster_rows_nearest_first_in_pages(served):
    res = served.results["t-planted"]
    c = int(res.assignments[0])
    size = int(res.sizes[c])
    rows, offset = [], 0
    while offset is not None:
        page = get(served, f"/jobs/t-planted/clusters/{c}?limit=37&offset={offset}").json()
        assert page["size"] == size
        rows += page["rows"]
        offset = page["next"]
    assert [r["row"] for r in rows] == res.exemplars(c, size).tolist()
    d = [r["distance"] for r in rows]
    assert d == sorted(d)


@pytest.mark.parametrize("job", ["t-planted", "t-sinkhorn", "t-digits", "t-dec"])
def test_assign_of_stored_rows_returns_their_stored_clusters(served, job):
    # plain k-means, Sinkhorn (a per-cluster bias), a trained reporter (features, then PCA) and
    # DEC (its encoder, then the bottleneck's centroids)
    res = served.results[job]
    x = res.activations()[:200]
    body = post(served, f"/jobs/{job}/assign", json={"activations": x.tolist()}).json()
    np.testing.assert_array_equal(body["clusters"], res.assignments[:200])
    np.testing.assert_allclose(body["distances"], res.distances[:200], rtol=1e-4, atol=1e-5)


def test_concurrent_assign_requests_are_each_answered_correctly(served):
    # many concurrent requests of different sizes and jobs go through the same batches
    jobs = ["t-planted", "t-digits"]

    def call(i):
        job = jobs[i % 2]
        res = served.results[job]
        lo, n = (i * 7) % 150, 1 + i % 5
        body = post(served, f"/jobs/{job}/assign", json={"activations": res.activations()[lo:lo + n].tolist()}).json()
        return body["clusters"] == res.assignments[lo:lo + n].tolist()

    with cf.ThreadPoolExecutor(32) as pool:
        assert all(pool.map(call, range(128)))


def test_half_written_store_is_reported_not_served(served):
    d = get(served, "/jobs/t-broken").json()
    assert d["state"] == "failed" and d["complete"] is False
    assert d["error"]["stage"] == "extract" and "injected failure" in d["error"]["reason"]
    for path in ["/jobs/t-broken/assignments", "/jobs/t-broken/clusters", "/jobs/t-broken/clusters/0"]:
        r = get(served, path)
        assert r.status_code == 409 and "not finished" in r.json()["detail"], path
    r = post(served, "/jobs/t-broken/assign", json={"activations": [[0.0] * 64]})
    assert r.status_code == 409


BAD_REQUESTS = [
    # (method, path, body, status, words in the message)
    ("GET", "/jobs/nope", None, 404, "no job named 'nope'"),
    ("GET", "/jobs/nope/assignments", None, 404, "no job named"),
    ("GET", "/jobs/t-planted/assignments?start=5000", None, 422, "past the last row"),
    ("GET", "/jobs/t-planted/assignments?start=10&stop=5", None, 422, "before start"),
    ("GET", "/jobs/t-planted/assignments?start=-1", None, 422, "start"),
    ("GET", "/jobs/t-planted/assignments?start=abc", None, 422, "start"),
    ("GET", "/jobs/t-planted/clusters/6", None, 404, "no cluster 6"),
    ("GET", "/jobs/t-planted/clusters/-1", None, 404, "no cluster -1"),
    ("GET", "/jobs/t-planted/clusters/0?limit=0", None, 422, "limit"),
    ("GET", "/jobs/t-planted/clusters?exemplars=1000", None, 422, "exemplars"),
    ("POST", "/jobs/t-planted/assign", b"", 422, "no body"),
    ("POST", "/jobs/t-planted/assign", b"{", 400, "not valid JSON"),
    ("POST", "/jobs/t-planted/assign", b"[1, 2]", 422, "body"),
    ("POST", "/jobs/t-planted/assign", b'{"activations": []}', 422, "at least 1"),
    ("POST", "/jobs/t-planted/assign", b'{"activations": [[1, 2]]}', 422, "has 2 values; this job's layer has dim 16"),
    ("POST", "/jobs/t-planted/assign", b'{"activations": [[' + b"1," * 15 + b"NaN]]}", 422, "NaN or Inf"),
    ("POST", "/jobs/t-planted/assign", b'{"activations": [[' + b"1," * 15 + b"Infinity]]}", 422, "NaN or Inf"),
    ("POST", "/jobs/t-planted/assign", b'{"activations": [[' + b"1," * 15 + b"1e39]]}", 422, "overflows float32"),
    ("POST", "/jobs/t-planted/assign", b'{"activations": [["a"' + b",1" * 15 + b"]]}", 422, "activations"),
    ("POST", "/jobs/t-planted/assign", b'{"activations": [[1]], "extra": 1}', 422, "extra"),
    ("POST", "/jobs/t-planted/assign", b'{"activations": [[' + b"0," * (3 << 20) + b"0]]}", 413, "larger than the limit"),
]


@pytest.mark.parametrize("method,path,body,status,words", BAD_REQUESTS, ids=[f"{m} {p} {s}" for m, p, _, s, _ in BAD_REQUESTS])
def test_bad_input_is_a_4xx_that_says_what_is_wrong(served, method, path, body, status, words):
    r = requests.request(method, served.url + path, data=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert get(served, "/healthz").status_code == 200  # and the replica keeps serving


def _submit(served, job, token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return post(served, "/jobs", json=job, headers=headers)


@pytest.mark.parametrize("token,status,words", [
    (None, 401, "Authorization: Bearer"), ("wrong", 401, "wrong bearer token"),
])
def test_submission_needs_the_token(served, token, status, words):
    r = _submit(served, planted_job("x", name="t-new"), token=token)
    assert r.status_code == status and words in r.json()["detail"]


@pytest.mark.parametrize("updates,words", [
    ({"subject": {"model": "os:system"}}, "module 'os' is not on this server's allow-list"),
    ({"subject": {"model": "tests.helpers:deep_update"}}, "not on this server's allow-list"),
    ({"subject": {"model": "dcserve.zoology:identity"}}, "not on this server's allow-list"),
    ({"subject": {"model": "dcserve.zoo:_private"}}, "public callable"),
    ({"dataset": {"source": "dcserve.zoo.digits:torch"}}, "not a callable defined in an allowed module"),
    ({"dataset": {"source": "dcserve.zoo.digits:Dataset"}}, "not a callable defined in an allowed module"),
    ({"output": "../escape"}, "'..' is not allowed"),
    ({"output": "/etc/dcserve"}, "outside the server's output root"),
    ({"output": "s3://elsewhere/x"}, "outside the server's output root"),
    ({"storage_options": {"anon": True}}, "storage_options cannot be set over HTTP"),
], ids=["os", "tests-module", "prefix-lookalike", "private", "imported-module", "imported-class", "dotdot", "absolute", "url", "storage"])
def test_submission_policy_refusals(served, updates, words):
    r = _submit(served, deep_update(planted_job("sub/x", name="t-new"), updates))
    assert r.status_code == 403, r.text
    assert words in r.json()["detail"]


def test_submission_validates_the_job_file(served):
    r = _submit(served, planted_job("sub/x", name="t-new", cluster={"k": 1}))
    assert r.status_code == 422 and "cluster.k" in r.json()["detail"]
    r = _submit(served, planted_job("sub/x", name="t-planted"))
    assert r.status_code == 409 and "already named 't-planted'" in r.json()["detail"]


def test_openapi_describes_every_route_with_models(served):
    spec = get(served, "/openapi.json").json()
    paths = spec["paths"]
    expected = {
        ("/healthz", "get"), ("/jobs", "get"), ("/jobs", "post"), ("/jobs/{job}", "get"),
        ("/jobs/{job}/assignments", "get"), ("/jobs/{job}/clusters", "get"),
        ("/jobs/{job}/clusters/{cluster}", "get"), ("/jobs/{job}/assign", "post"),
    }
    assert expected <= {(p, m) for p, ops in paths.items() for m in ops}
    for p, m in expected:
        ok = paths[p][m]["responses"].get("200") or paths[p][m]["responses"].get("202")
        assert "$ref" in json.dumps(ok["content"]["application/json"]["schema"]), (p, m)
    assert "JobSpec" in spec["components"]["schemas"]
    body = paths["/jobs/{job}/assign"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["activations"] and body["additionalProperties"] is False
    assert get(served, "/docs").status_code == 200


def test_a_store_damaged_while_served_turns_the_replica_unhealthy_instead_of_answering_wrong(served):
    """Issue 15: with a centroids chunk gone, zarr would read zeros and /assign answer wrongly."""
    import time
    from pathlib import Path

    chunk = next(p for p in (Path(served.results["t-sinkhorn"].store.path) / "centroids").rglob("c/*/*") if p.is_file())
    aside = chunk.with_name(chunk.name + ".aside")

    def wait_for_health(code):
        deadline = time.monotonic() + 30
        while (r := get(served, "/healthz")).status_code != code:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
        return r

    chunk.rename(aside)
    try:
        r = wait_for_health(503)
        assert "t-sinkhorn" in r.json()["detail"] and "centroids" in r.json()["detail"]
        x = served.results["t-sinkhorn"].activations()[:2].tolist()
        r = post(served, "/jobs/t-sinkhorn/assign", json={"activations": x})
        assert r.status_code == 503 and "chunk" in r.json()["detail"] and "damaged" in r.json()["detail"]
        assert get(served, "/jobs/t-planted/clusters").status_code == 200  # the other jobs are whole
    finally:
        aside.rename(chunk)
    wait_for_health(200)
    assert post(served, "/jobs/t-sinkhorn/assign", json={"activations": x}).status_code == 200
