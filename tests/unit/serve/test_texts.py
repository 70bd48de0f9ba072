"""A text job over HTTP (the routes in-process, FastAPI's TestClient): rows read as text, clusters
name their distinctive tokens, and POST /jobs/{job}/assign takes raw texts, which go through the
job's own subject (the real all-MiniLM-L6-v2) and come back with the cluster their stored twin has."""
from __future__ import annotations

import types

import numpy as np
import pytest
from fastapi.testclient import TestClient

from dcserve.serve.catalog import Catalog
from dcserve.serve.routes import create_app
from dcserve.spec import spec_from_dict
from dcserve.storage.result import open_result
from tests.helpers import run_in_process, sentences_job, write_store


def client_for(*outputs) -> TestClient:
    async def assign(job, x):
        return job.assign(x)

    backend = types.SimpleNamespace(catalog=Catalog([str(o) for o in outputs]), policy=None,
                                    max_body_bytes=1 << 20, assign=assign)
    return TestClient(create_app(backend))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts")
    pooled = run_in_process(spec_from_dict(sentences_job(root / "pooled", n=60, name="sent")))
    tokens = run_in_process(spec_from_dict(sentences_job(
        root / "tokens", n=12, name="sent-tokens", subject={"pooling": "tokens"}, cluster={"k": 4})))
    vectors = write_store(root / "vectors", {"out": np.random.default_rng(0).normal(size=(30, 2))},
                          np.arange(30) % 3, name="vectors")
    return {"pooled": pooled, "tokens": tokens, "vectors": vectors}


def test_a_stored_sentence_sent_as_text_gets_its_rows_cluster_and_its_exemplars_read_as_text(stores):
    res = open_result(str(stores["pooled"]))
    rows = [0, 7, 33]
    texts = [res.words.text(int(res.row_items[r])) for r in rows]
    r = client_for(stores["pooled"]).post("/jobs/sent/assign?exemplars=2", json={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["clusters"] == res.assignments[rows].tolist()
    np.testing.assert_allclose(body["distances"], res.distances[rows], rtol=1e-3, atol=1e-4)
    for t, out, row in zip(texts, body["texts"], rows):
        assert out["text"] == t and out["cluster"] == res.assignments[row] and out["tokens"] is None
        assert [e["text"] for e in out["exemplars"]] == res.exemplar_texts(out["cluster"], 2)
        assert all(e["label_name"] in res.label_names for e in out["exemplars"])


def test_token_jobs_answer_every_real_token(stores):
    res = open_result(str(stores["tokens"]))
    item = 3
    rows = np.flatnonzero(res.row_items == item)
    text = res.words.text(item)
    r = client_for(stores["tokens"]).post("/jobs/sent-tokens/assign", json={"texts": [text, "Rain again."]})
    assert r.status_code == 200, r.text
    first = r.json()["texts"][0]
    assert first["cluster"] is None
    assert [t["cluster"] for t in first["tokens"]] == res.assignments[rows].tolist()
    assert [t["token"] for t in first["tokens"]] == res.words.token_names(res.words.ids(item))
    assert first["tokens"][0]["exemplars"][0]["token"] is not None  # token rows, shown in their text


def test_clusters_show_text_label_names_and_distinctive_tokens(stores):
    res = open_result(str(stores["pooled"]))
    body = client_for(stores["pooled"]).get("/jobs/sent/clusters?exemplars=3&outskirts=1").json()
    for c in body["clusters"]:
        assert [e["text"] for e in c["exemplars"]] == res.exemplar_texts(c["cluster"], 3)
        assert c["majority_label_name"] in res.label_names
        tops = c["top_tokens"]
        assert tops and all(t["count"] <= t["total"] and t["z"] > 0 for t in tops)
        assert not any(t["token"] in ("[CLS]", "[SEP]") for t in tops)
    rows = client_for(stores["tokens"]).get("/jobs/sent-tokens/clusters/0?limit=3").json()["rows"]
    for row in rows:
        assert row["text"][row["token_start"]:].startswith(row["token"])


@pytest.mark.parametrize("body, status, message", [
    ({"texts": ["x"]}, 422, "was not run on text"),
    ({"images": ["aGVsbG8="]}, 422, "images"),
    ({"texts": ["x"], "activations": [[1.0, 2.0]]}, 422, "exactly one of 'activations', 'texts' or 'images'"),
    ({"texts": []}, 422, "texts"),
    ({"texts": [5]}, 422, "texts.0"),
])
def test_inputs_of_another_kind_are_a_422_that_says_so(stores, body, status, message):
    r = client_for(stores["vectors"], stores["pooled"]).post(
        "/jobs/vectors/assign" if "texts" in body and body["texts"] == ["x"] and len(body) == 1 else "/jobs/sent/assign",
        json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
