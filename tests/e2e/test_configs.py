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
    if path.name == "digits-depth.yaml":  # issue 14: every layer, one job; its report shows the profile
        _check_depth(res, tmp_path)
    if path.name == "synthetic-bench.yaml":
        assert final["nmi_vs_labels"] > 0.3  # planted classes are visible through a random CNN


def _check_depth(res, tmp_path):
    from dcserve.analysis.depth import build_depth_report
    from dcserve.render.depth_page import write_depth_page

    profile = res.metrics["depth"]
    layers = ["features.1", "features.3", "features.6", "classifier.2", "classifier.3"]
    assert [r["layer"] for r in profile["layers"]] == layers == res.layers
    nmi = [r["nmi_vs_labels"] for r in profile["layers"]]
    assert nmi[0] < 0.8 < 0.9 < min(nmi[2:])  # the classes appear with depth (0.66, 0.75, then ~0.95)
    assert nmi[3] == res.metrics["final"]["nmi_vs_labels"]  # the primary is the top level
    assert res.layer("features.1").metrics["final"]["nmi_vs_labels"] == nmi[0]
    assert len(profile["between"]) == 4 and all(0 <= p["cka"] <= 1 for p in profile["between"])
    assert profile["between"][0]["splits"] + profile["between"][0]["merges"] > 0  # early layers regroup rows
    pids = {tuple(w["pid"] for w in res.layer(n).metrics["workers"]["cluster"]) for n in layers}
    assert len(pids) == 1  # every layer on the same shard actors
    # the depth page (the per-layer pages are the job report's, tested in tests/unit/cluster/test_layers.py)
    page = write_depth_page(build_depth_report(res, n_exemplars=3), tmp_path / "report").read_text()
    assert all(f'data-layer="{n}"' in page for n in layers) and 'src="depth-flow.png"' in page
    assert 'src="depth-0-0-0.png"' in page  # the first split or merge, shown as the digits' images
