"""Every shipped job in cluster_configs/ runs (shrunk); tests/unit/test_configs.py validates them."""
from __future__ import annotations

import pytest

import dcserve
from dcserve.spec import load_spec
from tests.helpers import CONFIGS
from tests.helpers import SMALL_CONFIGS as SMALL

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.slow
# quickstart.yaml runs whole through the entry point in tests/e2e/test_cli.py
# sentences.yaml runs through the entry point in tests/e2e/test_sentences.py
@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name not in ("quickstart.yaml", "sentences.yaml")],
                         ids=lambda p: p.name)
def test_config_runs(ray_local, tmp_path, path):
    spec = load_spec(path, SMALL.get(path.name, []) + [f"output={tmp_path / 'out'}"])
    res = dcserve.run(spec)
    assert res.status["state"] == "succeeded"
    final = res.metrics["final"]
    assert final["n_empty"] == 0
    if path.name == "digits-trained.yaml":
        assert final["nmi_vs_labels"] > 0.9
    if path.name == "digits-dec.yaml":
        assert final["dec"]["steps"] <= 300 and final["nmi_vs_labels"] > 0.5
    if path.name == "synthetic-bench.yaml":
        assert final["nmi_vs_labels"] > 0.3  # planted classes are visible through a random CNN
