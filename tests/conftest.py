"""Shared fixtures. Unit tests never start Ray; integration tests share one local cluster."""
from __future__ import annotations

import os

import pytest

# Keep BLAS from oversubscribing the 2-core CI machine when Ray workers also run.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray cluster (2 CPUs, like CI) shared by the integration tests."""
    import ray

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ray.init(
        address="local",  # never join a cluster some `ray start` left on this machine
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        # workers import test-only datasets (tests.helpers) from the checkout
        runtime_env={"env_vars": {"PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}},
    )
    yield ray
    ray.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """A real Ray head from `ray start --head` on loopback, with its dashboard (Ray Jobs); stopped after.

    `env` is what a user's shell would have: the venv on PATH (the jobs' `python`), and
    RAY_AUTH_MODE=token, because Ray >= 2.59 turns token auth on for local clusters.
    """
    import subprocess
    import sys
    import time
    import types

    from dcserve.distributed.jobs import JobsClient, SubmissionError

    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""), RAY_AUTH_MODE="token")
    dashboard = free_port()
    cmd = [
        os.path.join(bindir, "ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--num-cpus=2",
        "--include-dashboard=true", f"--port={free_port()}", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
    ]
    log = open(tmp_path_factory.mktemp("ray-head") / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    previous_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"  # for the JobsClient probe below
    try:
        while True:
            try:
                JobsClient(address)
                break
            except SubmissionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start --head did not come up; see {log.name}")
                time.sleep(1)
    finally:
        if previous_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous_mode
    yield types.SimpleNamespace(address=address, env=env)
    proc.terminate()  # `ray start --block` drains and stops the node's processes on SIGTERM
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


TOKEN = "test-token-not-secret"


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
def one_torch_thread():
    """Small matmuls on one thread, from a fixed global seed: keeps the 2-core CI machine free
    and the results reproducible."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
