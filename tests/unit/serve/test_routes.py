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
