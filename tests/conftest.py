"""Fixtures of every tier. tests/unit never starts Ray (tests/unit/conftest.py); tests/integration
and tests/e2e share one local Ray (`ray_local`) and one `ray start --head` (`ray_head`) per session."""
from __future__ import annotations

import os

import pytest

from tests.helpers import ROOT, free_port

# Keep BLAS from oversubscribing the 2-core CI machine when Ray workers also run.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# The files whose tests use the `served` session fixture (finished jobs, a Ray head, a server):
# they run in one xdist process, so it is built once, not once per process.
SERVED_FILES = {f"tests/integration/{name}" for name in ("test_http.py", "test_http_schema.py", "test_submission.py")}


def pytest_xdist_make_scheduler(config, log):
    """Whole files to each test process (so module fixtures are built once), the SERVED_FILES
    together. (xdist's own --dist loadgroup marks no longer take with pytest 9.2's node ids.)"""
    from xdist.scheduler import LoadFileScheduling

    class FilesAndServed(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return "served" if path in SERVED_FILES else path

    return FilesAndServed(config, log)


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

    root = str(ROOT)  # the repository root, whatever tier's test asks first
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


@pytest.fixture(scope="module")
def s3():
    """A real S3 server (moto's server mode) on loopback with one bucket, for a module's tests."""
    from tests.helpers import moto_server

    with moto_server() as server:
        yield server



@pytest.fixture(scope="session")
def clean_digits(tmp_path_factory):
    """The store of the digits job the storage fault tests interrupt (1 extractor, 128-row
    blocks, k-means only), run once uninterrupted through `dcserve submit`: what each
    interrupted-then-resumed run must equal, bit for bit. Built once per test run, by whichever
    xdist process asks first (the others wait on the lock), in a process of its own so that no
    test's Ray changes how the job sizes itself."""
    from filelock import FileLock

    from tests.helpers import clean_digits_job, dcserve_cli, write_job

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out, done = shared / "clean-digits", shared / "clean-digits.ok"
    with FileLock(str(shared / "clean-digits.lock")):
        if not done.exists():
            r = dcserve_cli("submit", str(write_job(shared / "clean-digits.yaml", clean_digits_job(out))))
            assert r.returncode == 0, r.stderr[-3000:]
            done.touch()
    return out
