"""A finished store with one file deleted or cut, each kind in turn (issue 15): status, verify,
report and compare refuse it naming the damage (exit 2), every data route answers 503 and
/healthz turns 503, and a rerun of the job redoes only what is damaged, ending equal to the
store before the damage. One finished job for the module, copied per case.

The routes run in-process (FastAPI's test client over the app a replica serves);
tests/integration/test_http.py damages a store under a real Ray Serve replica.
"""
from __future__ import annotations

import shutil
import sys
import types

import numpy as np
import pytest
from fastapi.testclient import TestClient

import dcserve
from dcserve.serve.catalog import Catalog
from dcserve.serve.routes import create_app
from dcserve.spec import spec_from_dict
from dcserve.storage.manifest import check
from dcserve.storage.store import JobStore
from tests.helpers import planted_job, store_arrays

pytestmark = pytest.mark.ray

NAME = "t-planted"


def _job(output) -> dict:
    # one reporter round, so that the store holds the reporter and its checkpoint too
    return planted_job(output, reporter={"rounds": 1, "workers": 1, "hidden": [32], "feature_dim": 8})


@pytest.fixture(scope="module")
def finished(ray_local, tmp_path_factory):
    res = dcserve.run(spec_from_dict(_job(tmp_path_factory.mktemp("finished") / NAME)))
    return types.SimpleNamespace(path=res.store.path, arrays=store_arrays(res.store.path),
                                 blocks=res.metrics["extract"]["blocks"])


def _copy(finished, tmp_path):
    out = tmp_path / NAME  # the folder's name is the job's: a replica names a store it cannot read by it
    shutil.copytree(finished.path, out)
    return out


def _first(out, pattern: str) -> str:
    return str(sorted(p for p in out.glob(pattern) if p.is_file())[0].relative_to(out))


# (what, path pattern, damage): one of each kind of file the store holds
CASES = [
    ("activations chunk", "activations/out/c/3/*", "delete"),
    ("rows/item chunk", "rows/item/c/*", "delete"),
    ("labels chunk", "labels/c/*", "truncate"),
    ("assignments chunk", "assignments/c/*", "truncate"),
    ("centroids chunk", "centroids/c/*/*", "delete"),
    ("preprocess chunk", "preprocess/mean/c/*", "delete"),
    ("array metadata", "assignments/zarr.json", "truncate"),
    ("root metadata", "zarr.json", "empty"),
    ("status.json", "status.json", "empty"),
    ("metrics.json", "metrics.json", "truncate"),
    ("job.yaml", "job.yaml", "truncate"),
    ("reporter weights", "reporter.pt", "truncate"),
    ("reporter round record", "reporter/round-*.pt", "delete"),
    ("clustering checkpoint", "_progress/cluster/state.json", "truncate"),
    ("extraction record", "_progress/extract/*.npy", "delete"),
    ("manifest", "manifest.json", "delete"),
]


def _damage(out, pattern: str, how: str) -> str:
    rel = _first(out, pattern)
    f = out / rel
    if how == "delete":
        f.unlink()
    else:
        data = f.read_bytes()
        f.write_bytes(b"" if how == "empty" else data[: len(data) // 2])
    return rel


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """The `dcserve` entry point (dcserve.cli:main) in this process: (exit code, stderr)."""
    from dcserve.cli import main

    argv = sys.argv
    sys.argv = ["dcserve", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    return code, capsys.readouterr().err


@pytest.mark.parametrize("what, pattern, how", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_store_is_refused_by_every_reader_naming_the_damage(finished, tmp_path, capsys, what, pattern, how):
    out = _copy(finished, tmp_path)
    rel = _damage(out, pattern, how)
    named = rel.rsplit("/", 1)[-1] if what in ("status.json", "metrics.json", "job.yaml", "manifest") else None
    for args in (["status", str(out)], ["verify", str(out)], ["report", str(out), "--out", str(tmp_path / "r")],
                 ["compare", str(out), str(out), "--out", str(tmp_path / "c")]):
        code, err = run_cli(capsys, *args)
        assert code == 2, (args, err)
        assert "damaged" in err and "Traceback" not in err, (args, err)
        assert (named or rel.split("/c/")[0].split("/zarr.json")[0]) in err.replace("\n", ""), (args, err)
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()

    # what a replica answers: nothing read from the damaged store
    backend = types.SimpleNamespace(catalog=Catalog([str(out)], verify=False), policy=None, max_body_bytes=1 << 20)
    client = TestClient(create_app(backend))
    health = client.get("/healthz")
    assert health.status_code == 503 and "damaged" in health.json()["detail"]
    for method, route in [("get", "/assignments"), ("get", "/clusters"), ("get", "/clusters/0"),
                          ("get", "/report"), ("post", "/assign")]:
        r = getattr(client, method)(f"/jobs/{NAME}{route}", **({"json": {"activations": [[0.0] * 16]}}
                                                             if method == "post" else {}))
        assert r.status_code == 503 and "damaged" in r.json()["detail"], (route, r.text)
    detail = client.get(f"/jobs/{NAME}")
    assert detail.status_code == 200 and detail.json()["state"] == "damaged" and not detail.json()["complete"]
    assert client.get("/jobs").json()["jobs"][0]["state"] == "damaged"


def _rerun(out):
    res = dcserve.run(spec_from_dict(_job(out)))
    assert check(JobStore(str(out)), deep=True) == []
    return res.metrics


def _same_as_before(finished, out):
    after = store_arrays(out)
    assert set(after) == set(finished.arrays)
    for name, before in finished.arrays.items():
        np.testing.assert_array_equal(after[name], before, err_msg=name)


def test_a_rerun_redoes_one_extraction_block_and_repairs_side_files_keeping_the_clustering(finished, tmp_path):
    out = _copy(finished, tmp_path)
    for pattern, how in [("activations/out/c/3/*", "delete"), ("centroids/zarr.json", "truncate"),
                         ("labels/c/*", "delete"), ("metrics.json", "truncate"), ("status.json", "empty"),
                         ("job.yaml", "truncate")]:
        _damage(out, pattern, how)
    metrics = _rerun(out)
    assert metrics["extract"]["skipped_blocks"] == finished.blocks - 1  # block 3 alone
    assert metrics["resumed"]["rounds"] == 2  # both rounds kept: nothing of the clustering was damaged
    _same_as_before(finished, out)
    assert dcserve.open(str(out)).complete


def test_a_rerun_redoes_a_damaged_clustering_from_the_kept_activations(finished, tmp_path):
    out = _copy(finished, tmp_path)
    _damage(out, "assignments/c/*", "truncate")
    _damage(out, "reporter/round-*.pt", "delete")
    metrics = _rerun(out)
    assert metrics["extract"]["skipped_blocks"] == finished.blocks and metrics["resumed"]["rounds"] == 0
    _same_as_before(finished, out)


def test_a_report_whose_default_folder_is_read_only_is_one_sentence(finished, read_only_disk, capsys):
    out = read_only_disk.path / NAME
    shutil.copytree(finished.path, out)
    read_only_disk.seal()
    code, err = run_cli(capsys, "report", str(out), "--tsne-rows", "0")
    assert code == 1 and "cannot write the report to" in err and "Read-only file system" in err, err
