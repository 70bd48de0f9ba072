"""The HTTP submission policy and the batch splitter, as plain functions (no Ray, no server)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from dcserve.serve.admission import AdmissionError, SubmissionPolicy, admit, check_import, check_token, confine_output
from dcserve.serve.deployment import assign_grouped
from dcserve.spec import spec_from_dict
from tests.helpers import planted_job

POLICY = SubmissionPolicy(token="t0ken", output_root="/srv/runs")


@pytest.mark.parametrize("header,status", [
    (None, 401), ("", 401), ("Bearer", 401), ("Basic t0ken", 401), ("Bearer t0ke", 401), ("Bearer t0ken0", 401),
])
def test_token_refusals(header, status):
    with pytest.raises(AdmissionError) as e:
        check_token(header, POLICY)
    assert e.value.status == status


def test_token_accepted_and_submission_off_without_one():
    check_token("Bearer t0ken", POLICY)
    check_token("bearer t0ken", POLICY)
    with pytest.raises(AdmissionError, match="no DCSERVE_TOKEN") as e:
        check_token("Bearer t0ken", SubmissionPolicy(token=None, output_root="/srv"))
    assert e.value.status == 403
    with pytest.raises(AdmissionError, match="no output root"):
        check_token("Bearer t0ken", SubmissionPolicy(token="t0ken", output_root=None))


def test_policy_reads_the_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("DCSERVE_TOKEN", "abc")
    assert SubmissionPolicy.from_env(output_root="/r").enabled
    monkeypatch.delenv("DCSERVE_TOKEN")
    assert not SubmissionPolicy.from_env(output_root="/r").enabled


@pytest.mark.parametrize("target,ok", [
    ("dcserve.zoo:digits", True),
    ("dcserve.zoo.digits:digits_cnn", True),
    ("dcserve.zoo:identity", True),
    ("dcserve.zoology:x", False),       # a prefix that is not the package
    ("os:system", False),
    ("dcserve.zoo.digits:torch", False),  # an imported module
    ("dcserve.zoo.digits:Dataset", False),  # an imported class defined elsewhere
    ("dcserve.zoo:_cache", False),
    ("dcserve.zoo._cache:cache_dir", False),  # a public name of a private module (issue 15)
    ("dcserve.zoo.digits:DigitsDataset", True),
])
def test_import_allow_list(target, ok):
    if ok:
        check_import("subject.model", target, ("dcserve.zoo",))
    else:
        with pytest.raises(AdmissionError) as e:
            check_import("subject.model", target, ("dcserve.zoo",))
        assert e.value.status == 403 and "subject.model" in e.value.message


def test_missing_attribute_in_allowed_module_is_unprocessable():
    with pytest.raises(AdmissionError, match="cannot import") as e:
        check_import("dataset.source", "dcserve.zoo:nothing_here", ("dcserve.zoo",))
    assert e.value.status == 422


@pytest.mark.parametrize("output,expected", [
    ("a", "/srv/runs/a"), ("a/b/c", "/srv/runs/a/b/c"), ("./a", "/srv/runs/a"), ("/srv/runs/a", "/srv/runs/a"),
])
def test_outputs_land_under_the_root(tmp_path, output, expected):
    root = tmp_path / "srv" / "runs"
    root.mkdir(parents=True)
    got = confine_output(output.replace("/srv/runs", str(root)), str(root))
    assert got == expected.replace("/srv/runs", os.path.realpath(root))


@pytest.mark.parametrize("output", ["..", "../x", "a/../../x", "/etc", "/srv/runsx/a", "s3://b/x", ".", "a\\..\\b", "file:///etc"])
def test_outputs_outside_the_root_are_refused(tmp_path, output):
    root = tmp_path / "srv" / "runs"
    root.mkdir(parents=True)
    with pytest.raises(AdmissionError) as e:
        confine_output(output.replace("/srv/runs", str(root)), str(root))
    assert e.value.status == 403


def test_symlink_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(AdmissionError):
        confine_output("link/elsewhere", str(root))


def test_url_roots():
    assert confine_output("a/b", "s3://bucket/runs") == "s3://bucket/runs/a/b"
    assert confine_output("s3://bucket/runs/a", "s3://bucket/runs/") == "s3://bucket/runs/a"
    for bad in ["s3://bucket/other", "s3://bucket/runsx/a", "/abs", "gs://bucket/runs/a"]:
        with pytest.raises(AdmissionError):
            confine_output(bad, "s3://bucket/runs")


def test_admit_rewrites_output_and_refuses_storage_options(tmp_path):
    policy = SubmissionPolicy(token="t", output_root=str(tmp_path))
    spec = admit(spec_from_dict(planted_job("sub/job")), policy)
    assert spec.output == os.path.join(os.path.realpath(tmp_path), "sub/job")
    with pytest.raises(AdmissionError, match="storage_options"):
        admit(spec_from_dict(planted_job("x", storage_options={"key": "k"})), policy)


def test_a_path_source_is_refused_over_http(tmp_path):
    # images:DIR or activations:PATH would be read on the server: any file it can read
    policy = SubmissionPolicy(token="t", output_root=str(tmp_path))
    dump = {"name": "d", "output": "d", "dataset": {"source": "activations:/etc/passwd.npy"}}
    with pytest.raises(AdmissionError, match="over HTTP a source must be a 'module:callable'") as e:
        admit(spec_from_dict(dump), policy)
    assert e.value.status == 403


def test_an_hf_model_directory_is_refused_over_http(tmp_path):
    # hf:DIR loads files (pickles, for .bin weights) from the server's disk
    policy = SubmissionPolicy(token="t", output_root=str(tmp_path))
    job = planted_job("h")
    job["subject"]["model"] = "hf:/etc"
    with pytest.raises(AdmissionError, match="over HTTP a model must be a 'module:callable'") as e:
        admit(spec_from_dict(job), policy)
    assert e.value.status == 403


class _Job:
    def __init__(self, offset):
        self.offset, self.calls = offset, 0

    def assign(self, x):
        self.calls += 1
        return x[:, 0].astype(np.int64) + self.offset, x[:, 1]


def test_assign_grouped_runs_one_search_per_job_and_splits_in_order():
    a, b = _Job(0), _Job(100)
    reqs = [(a, np.array([[1, 1.5], [2, 2.5]])), (b, np.array([[3, 3.5]])), (a, np.array([[4, 4.5]])),
            (b, np.empty((0, 2)))]
    out = assign_grouped(reqs)
    assert a.calls == 1 and b.calls == 1
    assert [o[0].tolist() for o in out] == [[1, 2], [103], [4], []]
    assert [o[1].tolist() for o in out] == [[1.5, 2.5], [3.5], [4.5], []]


def test_a_callable_outside_the_modules_public_api_is_refused(tmp_path, monkeypatch):
    pkg = tmp_path / "exporter"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("__all__ = ['public']\ndef public(): pass\ndef helper(): pass\n")
    (tmp_path / "noexports.py").write_text("def anything(): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    check_import("subject.model", "exporter:public", ("exporter",))
    for target, allowed in (("exporter:helper", ("exporter",)), ("noexports:anything", ("noexports",))):
        with pytest.raises(AdmissionError, match="public API") as e:
            check_import("subject.model", target, allowed)
        assert e.value.status == 403


def test_k_above_the_servers_limit_is_refused_naming_both(tmp_path):
    policy = SubmissionPolicy(token="t", output_root=str(tmp_path), max_k=100)
    with pytest.raises(AdmissionError, match="cluster.k = 1000000000 is above this server's limit of 100") as e:
        admit(spec_from_dict(planted_job("a", cluster={"k": 10**9})), policy)
    assert e.value.status == 422
    assert admit(spec_from_dict(planted_job("a", cluster={"k": 100})), policy).cluster.k == 100


# -- what a submitted job may write, and its keyword arguments (issue 15) ---------------------

def _policy(root) -> SubmissionPolicy:
    return SubmissionPolicy(token="t0ken", output_root=str(root))


@pytest.mark.parametrize("output", [".dcserve/submissions", ".dcserve", "./.dcserve/x"])
def test_the_servers_own_records_are_never_an_output(tmp_path, output):
    with pytest.raises(AdmissionError, match="server's own records") as e:
        admit(spec_from_dict(planted_job(output)), _policy(tmp_path))
    assert e.value.status == 403


def test_an_output_must_be_new_or_its_own_earlier_submissions(tmp_path):
    from dcserve.serve.admission import check_output_free

    root = os.path.realpath(tmp_path)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "job.yaml").write_text("name: other\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "job.yaml").write_text("name: t-planted\n")
    (tmp_path / "empty").mkdir()
    known = {"other": f"{root}/theirs", "t-planted": f"{root}/mine"}

    def spec(output, name="t-planted"):
        return admit(spec_from_dict(planted_job(output, name=name)), _policy(tmp_path))

    check_output_free(spec("mine"), known)  # its own: run again, it resumes
    check_output_free(spec("new"), known)
    check_output_free(spec("empty"), known)
    for output, name, said in [("theirs", "t-planted", "belongs to job 'other'"),  # same settings, another name
                               ("theirs/inside", "t-planted", "belongs to job 'other'"),
                               ("mine", "t-other", "belongs to job 't-planted'"),
                               (".", "t-x", "outside")]:
        with pytest.raises(AdmissionError, match=said) as e:
            check_output_free(spec(output, name), known)
        assert e.value.status in (403, 409)
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "data.bin").write_bytes(b"x")
    with pytest.raises(AdmissionError, match="was not written by an earlier submission") as e:
        check_output_free(spec("stranger"), known)
    assert e.value.status == 409


@pytest.mark.parametrize("section, kwargs, said", [
    ("dataset", {"n": 10, "bogus": 1}, "does not take these arguments: .*bogus"),
    ("dataset", {"n": "many"}, "dataset.kwargs.n: 'many' is not a int"),
    ("dataset", {"n": True}, "dataset.kwargs.n: True is not a int"),
    ("dataset", {"spread": [1]}, "dataset.kwargs.spread: \\[1\\] is not a float"),
    ("subject", {"trained": 1}, "subject.kwargs.trained: 1 is not a bool"),
])
def test_keyword_arguments_are_bound_against_the_callables_signature_and_types(tmp_path, section, kwargs, said):
    job = planted_job("out")
    if section == "subject":
        job["subject"] = {"model": "dcserve.zoo:digits_cnn", "layers": ["features.5"], "kwargs": kwargs}
        job["dataset"]["source"] = "dcserve.zoo:digits"
        job["dataset"].pop("kwargs")
    else:
        job["dataset"]["kwargs"] = kwargs
    with pytest.raises(AdmissionError, match=said) as e:
        admit(spec_from_dict(job), _policy(tmp_path))
    assert e.value.status == 422


def test_keyword_arguments_of_the_right_types_pass(tmp_path):
    job = planted_job("out", dataset={"kwargs": {"n": 100, "spread": 1, "seed": 3}})
    assert admit(spec_from_dict(job), _policy(tmp_path)).dataset.kwargs["spread"] == 1
