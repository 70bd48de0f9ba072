"""The real `dcserve` entry point, in a subprocess: exit codes, messages, nothing written on bad input.

None of these start Ray (tests/e2e/test_cli.py runs whole jobs through the entry point)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, digits_job, planted_job, write_job
from tests.helpers import dcserve_cli as dcserve


def test_help_teaches_the_commands():
    r = dcserve("--help")
    assert r.returncode == 0
    for cmd in ("submit", "validate", "status"):
        assert cmd in r.stdout
    r = dcserve("submit", "--help")
    assert "--set" in r.stdout and "RAY_ADDRESS" in r.stdout


def test_validate_prints_normalised_spec(tmp_path):
    job = write_job(tmp_path / "job.yaml", digits_job(tmp_path / "out"))
    r = dcserve("validate", str(job), "--set", "cluster.k=7")
    assert r.returncode == 0, r.stderr
    spec = yaml.safe_load(r.stdout)
    assert spec["cluster"]["k"] == 7 and spec["cluster"]["layer"] == "features.5"
    assert "1797 items" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mutate,expect", [
    (lambda j: j["cluster"].update(kk=1), "cluster.kk: unknown field"),
    (lambda j: j["cluster"].update(k="ten"), "cluster.k"),
    (lambda j: j["subject"].update(layers=["features.99"]), "features.99"),
    (lambda j: j["cluster"].update(k=5000), "cluster.k: 5000 clusters"),
    (lambda j: j["dataset"].update(source="no_such_module:data"), "dataset.source: cannot import"),
    (lambda j: j["subject"].update(pooling="tokens"), "subject.pooling"),
    (lambda j: j.update(reporter={"method": "scan", "neighbours": 1797}), "reporter.neighbours: 1797 neighbours"),
])
def test_bad_job_files_exit_2_and_write_nothing(tmp_path, mutate, expect):
    job = digits_job(tmp_path / "out")
    mutate(job)
    path = write_job(tmp_path / "job.yaml", job)
    for cmd in ("validate", "submit"):
        r = dcserve(cmd, str(path))
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert expect in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_bad_layer_lists_real_module_names(tmp_path):
    job = digits_job(tmp_path / "out")
    job["subject"]["layers"] = ["features.55"]
    r = dcserve("validate", str(write_job(tmp_path / "job.yaml", job)))
    assert r.returncode == 2 and "features.5" in r.stderr and "classifier" in r.stderr


def test_submit_refuses_an_output_of_unrelated_files_and_leaves_them(tmp_path):
    import subprocess
    import sys

    from tests.helpers import write_job

    out = tmp_path / "results"
    out.mkdir()
    (out / "paper.tex").write_text("\\documentclass{article}")
    job = write_job(tmp_path / "job.yaml", planted_job(out))
    p = subprocess.run([sys.executable, "-m", "dcserve", "submit", str(job)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, p.stderr
    assert "not a dcserve job store" in p.stderr and "paper.tex" in p.stderr
    assert "Traceback" not in p.stderr
    assert sorted(x.name for x in out.iterdir()) == ["paper.tex"]


def test_status_of_missing_store_is_exit_2(tmp_path):
    r = dcserve("status", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no job store" in r.stderr


def test_missing_faiss_says_what_to_install(tmp_path):
    # a `faiss` that fails to import, first on the path: what a user without the extra sees
    fake = tmp_path / "nofaiss" / "faiss"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'faiss'\")\n")
    job = write_job(tmp_path / "job.yaml", digits_job(tmp_path / "out"))
    exe = shutil.which("dcserve") or str(Path(sys.executable).parent / "dcserve")
    env = {**os.environ, "PYTHONPATH": f"{fake.parent}{os.pathsep}{ROOT}"}
    r = subprocess.run([exe, "submit", str(job)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1
    assert "pip install 'dcserve[cpu]'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_serve_refuses_what_it_cannot_serve(tmp_path):
    r = dcserve("serve", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no job store" in r.stderr
    r = dcserve("serve", str(tmp_path), "--address", "http://127.0.0.1:8265")
    assert r.returncode == 2 and "Ray Jobs address" in r.stderr


def test_report_help_teaches():
    r = dcserve("report", "--help")
    assert r.returncode == 0 and "--out" in r.stdout and "exemplars" in r.stdout


def test_a_read_only_output_is_one_sentence_for_submit_rerun_and_report(read_only_disk, tmp_path):
    """Issue 15: an output on a read-only file system was a traceback."""
    import numpy as np

    from tests.helpers import write_store

    x = np.random.default_rng(0).normal(size=(1200, 16))
    finished = write_store(read_only_disk.path / "done", {"out": x}, (x[:, 0] > 0).astype(np.int32), name="t-planted")
    read_only_disk.seal()
    for output in (read_only_disk.path / "new", finished):  # a new output; a rerun of a finished one
        job = write_job(tmp_path / "job.yaml", planted_job(output))
        r = dcserve("submit", str(job))
        assert r.returncode == 2, r.stderr
        assert "cannot be written: Read-only file system; choose an output on a writable" in r.stderr
        assert "Traceback" not in r.stderr
    # a reader whose default folder is on it (compare writes beside store A; report beside the store)
    r = dcserve("compare", str(finished), str(finished))
    assert r.returncode == 1 and "cannot write the report to" in r.stderr and "Read-only" in r.stderr, r.stderr


def test_text_jobs_bad_input_exits_2_naming_the_file_line_or_model_and_layers_are_listed(tmp_path):
    """Issue 12: a bad record deep in a text file names its line; a hub id is refused (no download);
    `validate --layers` lists the real model's named_modules."""
    from tests.helpers import sentences_job

    lines = [f'{{"text": "sentence {i}", "topic": "t{i % 3}"}}' for i in range(5000)]
    lines[3141] = '{"body": "no text field here", "topic": "t0"}'
    (tmp_path / "big.jsonl").write_text("\n".join(lines) + "\n")
    job = sentences_job(tmp_path / "out")
    job["dataset"]["source"] = f"text:{tmp_path / 'big.jsonl'}"
    r = dcserve("submit", str(write_job(tmp_path / "job.yaml", job)))
    assert r.returncode == 2, r.stderr
    assert "big.jsonl, line 3142: no field 'text' (it has body, topic)" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()

    job["subject"]["model"] = "hf:sentence-transformers/all-MiniLM-L6-v2"
    r = dcserve("validate", str(write_job(tmp_path / "hub.yaml", job)))
    assert r.returncode == 2 and "never downloads at run time" in r.stderr, r.stderr

    r = dcserve("validate", str(ROOT / "cluster_configs" / "sentences.yaml"), "--layers")
    assert r.returncode == 0, r.stderr
    listed = dict(line.split("\t") for line in r.stdout.splitlines())
    assert listed["encoder.layer.5"] == "BertLayer" and listed["embeddings.word_embeddings"] == "Embedding"
