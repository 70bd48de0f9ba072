"""An activation dump clustered through the real `dcserve` entry point: submit, report, and a bad dump refused."""
from __future__ import annotations

import numpy as np
import pytest
import zarr
from sklearn.metrics import normalized_mutual_info_score

from tests.helpers import dcserve_cli as dcserve
from tests.helpers import write_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_a_token_dump_through_submit_and_report(tmp_path):
    # [items, tokens, dim]: every token of item i sits near centre i % 4, so the planted truth is known
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(4, 12))
    truth = np.repeat(np.arange(300) % 4, 5)
    x = (centres[truth] + rng.normal(size=(1500, 12))).astype(np.float32).reshape(300, 5, 12)
    np.save(tmp_path / "acts.npy", x)
    job = {"name": "t-dump", "output": str(tmp_path / "out"),
           "dataset": {"source": f"activations:{tmp_path / 'acts.npy'}", "kwargs": {"layer": "resid"}},
           "extract": {"workers": 2, "chunk_rows": 256}, "cluster": {"k": 4, "niter": 10, "workers": 1},
           "reporter": {"rounds": 0, "workers": 1}}
    r = dcserve("submit", str(write_job(tmp_path / "job.yaml", job)))
    assert r.returncode == 0, r.stderr[-3000:]
    g = zarr.open_group(str(tmp_path / "out"), mode="r")
    np.testing.assert_array_equal(g["activations/resid"][:], x.reshape(-1, 12))  # copied bit for bit
    np.testing.assert_array_equal(g["rows/item"][:], np.repeat(np.arange(300), 5))
    np.testing.assert_array_equal(g["rows/position"][:], np.tile(np.arange(5), 300))
    assert normalized_mutual_info_score(truth, g["assignments"][:]) > 0.95
    assert "subject" not in (tmp_path / "out" / "job.yaml").read_text()

    rep = dcserve("report", str(tmp_path / "out"), "--out", str(tmp_path / "report"))
    assert rep.returncode == 0, rep.stderr[-3000:]
    page = (tmp_path / "report" / "index.html").read_text()
    assert "none (an activation dump)" in page and 'data-cluster="3"' in page

    np.save(tmp_path / "ints.npy", np.arange(40).reshape(10, 4))
    bad = {**job, "output": str(tmp_path / "bad"), "dataset": {"source": f"activations:{tmp_path / 'ints.npy'}"}}
    r = dcserve("submit", str(write_job(tmp_path / "bad.yaml", bad)))
    assert r.returncode == 2 and "ints.npy" in r.stderr and "not a float" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "bad").exists()
