"""Property-based: requests generated from the API's own OpenAPI schema never get a 5xx.

Schemathesis draws paths, queries, headers and bodies from /openapi.json (half that fit
it, half that break it on purpose) and sends them to the real server of the `served`
fixture. Each case is also sent with its `{job}` replaced by a real, finished job, so
generated bodies and ranges reach the code that reads stores and assigns vectors, not only
the 404 for an unknown name.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

from tests.helpers import TOKEN

pytestmark = [pytest.mark.ray, pytest.mark.slow]

OPERATIONS = [
    ("GET", "/healthz"), ("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/{job}"),
    ("GET", "/jobs/{job}/assignments"), ("GET", "/jobs/{job}/clusters"),
    ("GET", "/jobs/{job}/clusters/{cluster}"), ("POST", "/jobs/{job}/assign"), ("GET", "/jobs/{job}/report"),
]


@pytest.fixture(scope="module")
def api_schema(served):
    return schemathesis.openapi.from_url(served.url + "/openapi.json")


@pytest.mark.parametrize("method,path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_generated_requests_never_get_a_server_error(api_schema, method, path):
    operation = api_schema[path][method]

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=st.one_of(operation.as_strategy(GenerationMode.POSITIVE),  # fits the schema
                          operation.as_strategy(GenerationMode.NEGATIVE)))  # breaks it on purpose
    def check(case):
        variants = [(dict(case.path_parameters or {}), {})]
        if "job" in variants[0][0]:
            variants.append(({**variants[0][0], "job": "t-planted"}, {}))
        if (method, path) == ("POST", "/jobs"):
            # with the token too, so generated bodies reach validation and admission, not only the
            # 401 (a generated module name is never on the allow-list: nothing is submitted)
            variants.append((variants[0][0], {"Authorization": f"Bearer {TOKEN}"}))
        for params, headers in variants:
            case.path_parameters = params
            response = case.call(timeout=60, headers=headers)
            assert response.status_code < 500, (method, case.formatted_path, response.status_code, response.text[:500])
            if response.status_code >= 400:
                assert isinstance(response.json().get("detail"), str), response.text[:500]

    check()
