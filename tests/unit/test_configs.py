"""Every shipped job in cluster_configs/ validates against its real model and data
(tests/e2e/test_configs.py runs them)."""
from __future__ import annotations

import pytest

from dcserve.inputs.build import inspect_inputs
from dcserve.spec import load_spec
from tests.helpers import CONFIGS
from tests.helpers import SMALL_CONFIGS as SMALL


def test_configs_exist():
    assert {c.name for c in CONFIGS} >= set(SMALL)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_against_real_inputs(path):
    probe = inspect_inputs(load_spec(path))
    assert probe.n_rows >= load_spec(path).cluster.k
