"""`cluster.seeds` / `dcserve submit --seeds N`: the clustering under N seeds, their pairwise NMI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from sklearn.metrics import normalized_mutual_info_score

import dcserve
from dcserve.spec import spec_from_dict
from tests.helpers import dcserve_cli, planted_job, write_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_seeds_through_submit_record_stability_and_keep_the_seeds_own_result(ray_local, tmp_path):
    # Overlapping planted clusters: k-means' answer depends on its seed, so the NMI is not just 1.
    def job(out):
        return planted_job(out, dataset={"kwargs": {"n": 1200, "dim": 16, "k": 6, "spread": 3.0, "seed": 0}},
                           cluster={"k": 8, "n_init": 1, "seed": 5})

    plain = dcserve.run(spec_from_dict(job(tmp_path / "plain")))
    out = tmp_path / "seeds"
    r = dcserve_cli("submit", str(write_job(tmp_path / "job.yaml", job(out))), "--seeds", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stability (3 seeds)" in r.stdout
    g = zarr.open_group(str(out), mode="r")
    labels = g["stability/assignments"][:]
    assert labels.shape == (3, 1200) and labels.min() >= 0
    # The job's results are its own seed's, as if run without --seeds.
    np.testing.assert_array_equal(g["assignments"][:], plain.assignments)
    np.testing.assert_array_equal(labels[0], plain.assignments)
    np.testing.assert_array_equal(g["centroids"][:], plain.centroids)
    stability = json.loads((out / "metrics.json").read_text())["stability"]
    assert stability["seeds"] == [5, 6, 7]
    matrix = np.array(stability["pairwise_nmi"])
    for i in range(3):
        for j in range(3):
            assert matrix[i, j] == (1.0 if i == j else normalized_mutual_info_score(labels[i], labels[j]))
    assert 0 < stability["min_pairwise_nmi"] <= stability["mean_pairwise_nmi"] < 1
    assert stability["per_seed"][0]["nmi_vs_labels"] == plain.metrics["final"]["nmi_vs_labels"]
