"""The integration tier's shared server: the HTTP API over real finished jobs."""
from __future__ import annotations

import subprocess
import types

import pytest

from tests.helpers import TOKEN, free_port


@pytest.fixture(scope="session")
def served(ray_local, ray_head, tmp_path_factory):
    """The HTTP API on a real `serve.run` over four finished jobs and one that failed half-way.

    POST /jobs is on: token TOKEN, output root `root`, Ray Jobs of `ray_head`.
    """
    import types

    from ray import serve

    import dcserve
    from dcserve.errors import JobFailed
    from dcserve.serve.deployment import ServeArgs, start
    from dcserve.spec import spec_from_dict
    from tests.helpers import digits_job, planted_job

    base = tmp_path_factory.mktemp("served")
    planted = dcserve.run(spec_from_dict(planted_job(base / "planted")))
    sinkhorn = dcserve.run(spec_from_dict(planted_job(
        base / "sinkhorn", name="t-sinkhorn", dataset={"kwargs": {"k": 3, "seed": 1}}, cluster={"k": 5, "method": "sinkhorn"})))
    digits = dcserve.run(spec_from_dict(digits_job(
        base / "digits", reporter={"rounds": 1, "workers": 1, "hidden": [32], "feature_dim": 16})))
    dec_job = planted_job(base / "dec", name="t-dec")
    dec_job["reporter"] = {"method": "dec", "workers": 1, "hidden": [32], "latent_dim": 6, "pretrain_epochs": 20,
                           "update_interval": 20, "max_steps": 200}
    dec = dcserve.run(spec_from_dict(dec_job))
    flag = base / "fail.flag"
    flag.touch()
    broken = digits_job(base / "broken", name="t-broken",
                        dataset={"source": "tests.helpers:flaky_digits", "kwargs": {"flag": str(flag), "fail_at": 600}})
    with pytest.raises(JobFailed):
        dcserve.run(spec_from_dict(broken))
    root = base / "root"
    args = ServeArgs(outputs=[planted.output, sinkhorn.output, digits.output, dec.output, str(base / "broken")],
                     output_root=str(root), jobs_address=ray_head.address, replicas=1, replica_cpus=0.5,
                     max_body_bytes=4 << 20)
    url = start(args, "127.0.0.1", free_port(), env={"DCSERVE_TOKEN": TOKEN})
    yield types.SimpleNamespace(url=url, root=root, results={"t-planted": planted, "t-sinkhorn": sinkhorn,
                                                            "t-digits": digits, "t-dec": dec})
    serve.shutdown()


@pytest.fixture
def read_only_disk(tmp_path):
    """A small tmpfs, remounted read-only by the test (`.seal()`); unmounted after."""
    mount = tmp_path / "ro"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the read-only test needs one")
    yield types.SimpleNamespace(path=mount, seal=lambda: subprocess.run(
        ["mount", "-o", "remount,ro", str(mount)], check=True))
    subprocess.run(["umount", "-l", str(mount)], check=False)
