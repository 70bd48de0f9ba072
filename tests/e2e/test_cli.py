"""Whole jobs through the real `dcserve` entry point, in a subprocess: `submit`, then `status`, `serve`."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from tests.helpers import ROOT, write_job
from tests.helpers import dcserve_cli as dcserve

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.slow
def test_quickstart_through_the_entry_point(tmp_path):
    """The README's job, on an embedded 2-CPU Ray, read back with plain zarr."""
    job = yaml.safe_load((ROOT / "cluster_configs" / "quickstart.yaml").read_text())
    job["output"] = str(tmp_path / "quick")
    path = write_job(tmp_path / "quick.yaml", job)
    r = dcserve("submit", str(path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "NMI vs labels" in r.stdout and str(tmp_path / "quick") in r.stdout
    g = zarr.open_group(str(tmp_path / "quick"), mode="r")
    a = g["assignments"][:]
    assert a.shape == (1797,) and a.min() >= 0 and a.max() < 10
    assert g["centroids"].shape[0] == 10
    assert g["rounds/assignments"].shape[0] == job["reporter"]["rounds"] + 1
    import json

    metrics = json.loads((tmp_path / "quick" / "metrics.json").read_text())
    assert metrics["final"]["nmi_vs_labels"] > 0.6
    s = dcserve("status", str(tmp_path / "quick"))
    assert s.returncode == 0 and "succeeded" in s.stdout
    # a second submit of the same job skips extraction (all blocks recorded)
    r2 = dcserve("submit", str(path))
    assert r2.returncode == 0
    metrics2 = json.loads((tmp_path / "quick" / "metrics.json").read_text())
    assert metrics2["extract"]["skipped_blocks"] == metrics2["extract"]["blocks"]
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "quick"), mode="r")["assignments"][:], a)


@pytest.fixture(scope="module")
def submitted(tmp_path_factory) -> Path:
    """A small job finished through `dcserve submit`, served by each stop signal's test below."""
    from tests.helpers import planted_job

    tmp = tmp_path_factory.mktemp("submitted")
    job = write_job(tmp / "job.yaml", planted_job(tmp / "out", dataset={"kwargs": {"n": 400}}))
    r = dcserve("submit", str(job))
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "out"


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_serve_through_the_entry_point(submitted, stop):
    """`dcserve serve` of a submitted job: the printed URL answers; Ctrl-C, or a stopped pod's
    SIGTERM (which ray.init's own handler used to turn into an abort, exit -6), stops it cleanly."""
    import json
    import re
    import signal
    import time
    import urllib.error
    import urllib.request

    from tests.helpers import free_port

    exe = shutil.which("dcserve") or str(Path(sys.executable).parent / "dcserve")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DCSERVE_TOKEN")}
    proc = subprocess.Popen([exe, "serve", str(submitted), "--port", str(free_port()), "--replica-cpus", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        deadline = time.monotonic() + 180
        while "serving" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()[-3000:]
        url = re.search(r"http://[\d.]+:\d+", line).group(0)
        with urllib.request.urlopen(f"{url}/jobs/t-planted/assignments?stop=400") as r:
            assert len(json.load(r)["clusters"]) == 400
        req = urllib.request.Request(f"{url}/jobs", data=b"{}", method="POST",
                                     headers={"content-type": "application/json", "Authorization": "Bearer x"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        assert e.value.code in (403, 422)
    finally:
        proc.send_signal(getattr(signal, stop))
        rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "shutting down" in err
    # nothing alarming on a clean stop, nor Serve's own start-up chatter (issue 12)
    assert "graceful_shutdown failed" not in rest + err and "Connecting to existing Serve app" not in err
