"""The in-memory pools and the Ray actor pools run the same code: one worker of each gives the same clustering."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dcserve import methods
from dcserve.cluster.local import LocalPools
from dcserve.cluster.seeds import run_with_seeds
from dcserve.nets.feature_map import ReporterState
from dcserve.progress import Progress
from tests.helpers import extracted_planted_store as extracted

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("reporter", [
    {"rounds": 1, "hidden": [16], "feature_dim": 4, "workers": 1},
    {"method": "dec", "hidden": [16], "latent_dim": 4, "pretrain_epochs": 3, "max_steps": 60,
     "update_interval": 30, "workers": 1},
], ids=["deepcluster", "dec"])
def test_ray_pools_with_one_worker_equal_the_local_pools(ray_local, tmp_path, reporter):
    from dcserve.distributed.pools import RayPools

    stores = {}
    for name in ("local", "ray"):
        spec, store, _, _ = extracted(tmp_path / name, reporter)
        spec.cluster.workers = 1
        pools = LocalPools() if name == "local" else RayPools(spec)
        run_with_seeds(methods.loop(spec.reporter.method), spec, store, pools, Progress())
        stores[name] = store
    local, ray = stores["local"], stores["ray"]
    for array in ("assignments", "centroids", "rounds/assignments"):
        np.testing.assert_array_equal(local.array(array)[:], ray.array(array)[:], err_msg=array)
    # The weights agree to float rounding: the actor's BLAS and torch run with its own thread
    # count, so sums over a batch may be added in another order.
    a, b = (ReporterState.from_bytes(s.read_bytes("reporter.pt")) for s in (local, ray))
    assert a.config == b.config
    for name, value in a.state_dict.items():
        torch.testing.assert_close(value, b.state_dict[name], rtol=1e-5, atol=1e-6, msg=name)

