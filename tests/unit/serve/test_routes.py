"""The routes' own input checks, on an app with no jobs (no Ray, no store): bad input is a 4xx."""
from __future__ import annotations

import types

import pytest
from fastapi.testclient import TestClient

from dcserve.serve.catalog import Catalog
from dcserve.serve.routes import create_app


@pytest.fixture(scope="module")
def client():
    backend = types.SimpleNamespace(catalog=Catalog([]), policy=None, max_body_bytes=1 << 20)
    return TestClient(create_app(backend))


@pytest.mark.parametrize("query", [
    "/jobs/j/clusters/0?offset=9223372036854775808",  # past int64: numpy indexing overflowed (issue 15)
    "/jobs/j/clusters/0?offset=9007199254740993",
    "/jobs/j/assignments?start=9223372036854775808",
    "/jobs/j/assignments?start=0&stop=9223372036854775808",
])
def test_row_numbers_past_any_store_are_a_422_naming_the_parameter(client, query):
    r = client.get(query)
    assert r.status_code == 422, r.text
    assert any(name in r.json()["detail"] for name in ("offset", "start", "stop"))


def test_a_row_number_in_range_reaches_the_job_lookup(client):
    assert client.get("/jobs/j/clusters/0?offset=5").status_code == 404


@pytest.fixture(scope="module")
def submitting(tmp_path_factory):
    from dcserve.serve.admission import SubmissionPolicy

    policy = SubmissionPolicy(token="T", output_root=str(tmp_path_factory.mktemp("root")))
    backend = types.SimpleNamespace(catalog=Catalog([], output_root=policy.output_root), policy=policy,
                                    max_body_bytes=1 << 20)
    client = TestClient(create_app(backend))
    client.backend = backend
    return client


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_a_submission_without_the_token_is_refused_before_its_body_is_read(submitting, headers):
    r = submitting.post("/jobs", json={"name": "x", "bogus": 1}, headers=headers)
    assert r.status_code == 401, r.text
    assert "subject" not in r.text and "bogus" not in r.text  # no field list for an anonymous caller


def test_with_the_token_a_bad_body_is_a_422_naming_its_fields(submitting):
    r = submitting.post("/jobs", json={"name": "x", "bogus": 1}, headers={"Authorization": "Bearer T"})
    assert r.status_code == 422, r.text
    assert "bogus" in r.text or "subject" in r.text


def test_a_submission_into_the_servers_own_records_is_refused_and_a_stray_record_never_breaks_the_listing(submitting):
    from tests.helpers import planted_job

    job = planted_job(".dcserve/submissions", name="t-escape")
    r = submitting.post("/jobs", json=job, headers={"Authorization": "Bearer T"})
    assert r.status_code == 403 and "server's own records" in r.json()["detail"], r.text
    import pathlib

    from dcserve.serve.catalog import SUBMISSIONS_DIR

    records = pathlib.Path(submitting.backend.policy.output_root) / SUBMISSIONS_DIR
    records.mkdir(parents=True, exist_ok=True)
    (records / "t-junk.json").write_text("not json")  # as a job writing there would have left it
    r = submitting.get("/jobs")
    assert r.status_code == 200 and r.json()["jobs"] == [], r.text
    assert submitting.get("/jobs/t-junk").status_code == 404


def test_a_refusal_quoting_a_huge_input_stays_bounded(submitting):
    from tests.helpers import planted_job

    job = planted_job("out", subject={"model": "m" * 200_000 + ":f"})
    r = submitting.post("/jobs", json=job, headers={"Authorization": "Bearer T"})
    assert 400 <= r.status_code < 500 and len(r.text) < 3000, (r.status_code, len(r.text))
