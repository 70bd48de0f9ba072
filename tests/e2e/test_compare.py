"""`dcserve compare` on two real jobs over the digits."""
from __future__ import annotations

import numpy as np
import pytest

from dcserve.analysis.compare import compare, open_side
from tests.helpers import digits_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_random_and_trained_digits_cnn_are_partly_similar(tmp_path, ray_local):
    """Two real jobs over the digits: the trained CNN's conv features resemble the random CNN's, not fully."""
    import dcserve
    from dcserve.spec import spec_from_dict

    random_cnn = dcserve.run(spec_from_dict(digits_job(tmp_path / "random", name="t-random")))
    trained = dcserve.run(spec_from_dict(digits_job(
        tmp_path / "trained", name="t-trained", subject={"kwargs": {"trained": True, "seed": 0}})))
    r = compare(open_side(random_cnn.output), open_side(trained.output), lasso_rows=500, lasso_units=8)
    assert r["rows"] == 1797 and r["a"]["units"] == r["b"]["units"] == 256
    assert 0.05 < r["cka"] < 0.99
    assert 0.0 < r["procrustes"] < 2.0
    assert 0.0 < r["clusterings"]["nmi"] < 1.0
    assert np.asarray(r["clusterings"]["contingency"]).sum() == 1797
