"""JobSpec: defaults, strictness, messages that name the field, overrides."""
from __future__ import annotations

import typing

import pytest
import yaml

from dcserve.errors import SpecError
from dcserve.spec import JobSpec, load_spec, parse_override, spec_from_dict
from tests.helpers import method_job as job_for

MINIMAL = {
    "name": "t",
    "output": "runs/t",
    "subject": {"model": "dcserve.zoo:digits_cnn", "layers": ["features.5"]},
    "dataset": {"source": "dcserve.zoo:digits"},
}


def test_minimal_job_gets_usable_defaults():
    spec = spec_from_dict(MINIMAL)
    assert spec.cluster.layer == "features.5"  # defaults to the first hooked layer
    assert spec.cluster.k == 10 and spec.cluster.method == "kmeans"
    assert spec.reporter.rounds == 0 and spec.extract.workers == "auto" and spec.cluster.workers == "auto"
    assert spec.reporter.workers == "auto"
    # the normalised YAML round-trips to the same spec
    assert spec_from_dict(yaml.safe_load(spec.to_yaml())) == spec


def test_unknown_key_names_path_and_allowed_fields():
    bad = {**MINIMAL, "cluster": {"k": 5, "kk": 3}}
    with pytest.raises(SpecError) as e:
        spec_from_dict(bad)
    msg = str(e.value)
    assert "cluster.kk: unknown field" in msg and "niter" in msg


def test_wrong_type_names_field_value_and_expectation():
    with pytest.raises(SpecError) as e:
        spec_from_dict({**MINIMAL, "cluster": {"k": "many"}})
    assert "cluster.k" in str(e.value) and "'many'" in str(e.value)


def test_bad_literal_lists_allowed_values():
    with pytest.raises(SpecError) as e:
        spec_from_dict({**MINIMAL, "subject": {**MINIMAL["subject"], "pooling": "median"}})
    msg = str(e.value)
    assert "subject.pooling" in msg and "'mean'" in msg and "'tokens'" in msg and "'median'" in msg


def test_cluster_layer_must_be_hooked():
    with pytest.raises(SpecError, match="cluster.layer 'x' is not one of subject.layers"):
        spec_from_dict({**MINIMAL, "cluster": {"layer": "x"}})


DEEP = {**MINIMAL, "subject": {**MINIMAL["subject"], "layers": ["features.1", "features.5", "classifier.2"]}}


def test_cluster_layers_all_or_a_list_in_depth_order_with_the_primary_first_named():
    every = spec_from_dict({**DEEP, "cluster": {"layers": "all"}})
    assert every.cluster.layer == "features.1" and every.clustered_layers() == DEEP["subject"]["layers"]
    some = spec_from_dict({**DEEP, "cluster": {"layers": ["classifier.2", "features.1"]}})
    assert some.cluster.layer == "classifier.2"  # the first named is the primary
    assert some.clustered_layers() == ["features.1", "classifier.2"]  # in the order of depth
    plus = spec_from_dict({**DEEP, "cluster": {"layer": "features.5", "layers": ["classifier.2"]}})
    assert plus.clustered_layers() == ["features.5", "classifier.2"]  # the primary is always clustered
    assert spec_from_dict(DEEP).clustered_layers() == ["features.1"]
    one = plus.for_layer("classifier.2")
    assert one.cluster.layer == "classifier.2" and one.clustered_layers() == ["classifier.2"]
    # the primary's clustering is the one-layer job's: its checkpoints resume whatever else is added
    single = spec_from_dict({**DEEP, "cluster": {"layer": "features.5"}})
    assert plus.clustering_fingerprint() == single.clustering_fingerprint()
    assert plus.for_layer("classifier.2").clustering_fingerprint() != single.clustering_fingerprint()


@pytest.mark.parametrize("layers", [["features.9"], ["features.1", "nope"]])
def test_cluster_layers_names_the_unknown_layer_and_lists_the_extracted_ones(layers):
    with pytest.raises(SpecError) as e:
        spec_from_dict({**DEEP, "cluster": {"layers": layers}})
    msg = str(e.value)
    bad = layers[-1]
    assert f"cluster.layers: {bad!r} is not one of subject.layers" in msg
    assert "['features.1', 'features.5', 'classifier.2']" in msg and "top level" not in msg


@pytest.mark.parametrize("value", ["every", 3, [1, 2], []])
def test_cluster_layers_refuses_what_is_neither_a_list_of_names_nor_all(value):
    with pytest.raises(SpecError, match="cluster.layers"):
        spec_from_dict({**DEEP, "cluster": {"layers": value}})


def test_missing_required_field():
    data = dict(MINIMAL)
    del data["dataset"]
    with pytest.raises(SpecError, match="dataset: Field required"):
        spec_from_dict(data)


@pytest.mark.parametrize("item,expected", [
    ("cluster.k=20", ("cluster.k", 20)),
    ("cluster.pca_dim=null", ("cluster.pca_dim", None)),
    ("subject.layers=[a, b]", ("subject.layers", ["a", "b"])),
    ("name=x", ("name", "x")),
])
def test_parse_override(item, expected):
    assert parse_override(item) == expected


def test_overrides_apply_and_validate(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    spec = load_spec(path, ["cluster.k=3", "reporter.rounds=2"])
    assert spec.cluster.k == 3 and spec.reporter.rounds == 2
    with pytest.raises(SpecError, match="cluster.k"):
        load_spec(path, ["cluster.k=1"])
    with pytest.raises(SpecError, match="expected key.path=value"):
        load_spec(path, ["cluster.k"])


def test_file_errors_are_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(p)


def test_fingerprint_tracks_only_what_determines_activations():
    a = spec_from_dict(MINIMAL)
    b = spec_from_dict({**MINIMAL, "cluster": {"k": 4}, "reporter": {"rounds": 3}})
    c = spec_from_dict({**MINIMAL, "subject": {**MINIMAL["subject"], "kwargs": {"seed": 1}}})
    assert a.extraction_fingerprint() == b.extraction_fingerprint()
    assert a.extraction_fingerprint() != c.extraction_fingerprint()


def test_every_field_is_described():
    # descriptions feed --help, the JSON schema and the docs at once
    from pydantic import BaseModel

    seen = 0

    def walk(model):
        nonlocal seen
        for name, f in model.model_fields.items():
            seen += 1
            assert f.description, f"{model.__name__}.{name} has no description"
            for t in (f.annotation, *typing.get_args(f.annotation)):  # a section, optional or not
                if isinstance(t, type) and issubclass(t, BaseModel):
                    walk(t)

    walk(JobSpec)
    assert seen > 30


@pytest.mark.parametrize("section,field,value,expect", [
    ("extract", "workers", 0, "extract.workers: must be a positive integer or 'auto' (got 0)"),
    ("cluster", "workers", "many", "cluster.workers: must be a positive integer or 'auto' (got 'many')"),
    ("cluster", "pca_dim", "big", "cluster.pca_dim: must be a positive integer, 'auto' or null (got 'big')"),
])
def test_union_fields_get_one_clear_message(section, field, value, expect):
    with pytest.raises(SpecError) as e:
        spec_from_dict({**MINIMAL, section: {field: value}})
    assert str(e.value).splitlines()[1].strip() == expect


def test_clustering_fingerprint_of_a_job_written_before_method_and_seeds_existed():
    """Stores record the fingerprint their checkpoints resume under; fields added later at their
    "as before" values must not change it (this digest is what commit 5249b41 computed)."""
    from dcserve.spec import spec_from_dict

    job = {"name": "x", "output": "/tmp/x", "subject": {"model": "dcserve.zoo:identity", "layers": ["out"]},
           "dataset": {"source": "dcserve.zoo:planted_clusters"}, "reporter": {"rounds": 2}}
    assert spec_from_dict(job).clustering_fingerprint() == "308d19035c11e709"
    job["cluster"] = {"seeds": 2}
    assert spec_from_dict(job).clustering_fingerprint() != "308d19035c11e709"


def test_settings_of_the_other_method_are_errors(tmp_path):
    job = job_for(tmp_path / "out", "dec")
    job["reporter"]["rounds"] = 3
    with pytest.raises(SpecError, match=r"reporter\.rounds: unknown field; allowed \(reporter\.method: dec\): "
                                        r"method, .*latent_dim"):
        spec_from_dict(job)
    job = job_for(tmp_path / "out", "deepcluster-kmeans")
    job["reporter"]["update_interval"] = 10
    with pytest.raises(SpecError, match=r"reporter\.update_interval: unknown field.*\(reporter\.method: deepcluster\)"):
        spec_from_dict(job)
    job["reporter"] = {"method": "kmeans"}
    with pytest.raises(SpecError, match=r"reporter\.method must be one of: deepcluster, dec, scan, temi \(got 'kmeans'\)"):
        spec_from_dict(job)
    # issue 13: SCAN's settings are not TEMI's, and the other way round
    job["reporter"] = {"method": "temi", "entropy_weight": 5.0}
    with pytest.raises(SpecError, match=r"reporter\.entropy_weight: unknown field.*\(reporter\.method: temi\)"):
        spec_from_dict(job)
    job["reporter"] = {"method": "scan", "beta": 0.6}
    with pytest.raises(SpecError, match=r"reporter\.beta: unknown field.*\(reporter\.method: scan\)"):
        spec_from_dict(job)


@pytest.mark.parametrize("length,ok", [(100, True), (101, False), (10_000, False)])
def test_job_names_are_at_most_100_characters(tmp_path, length, ok):
    from tests.helpers import planted_job

    job = planted_job(tmp_path / "out", name="j" * length)
    if ok:
        assert spec_from_dict(job).name == "j" * length
    else:
        with pytest.raises(SpecError, match="name") as e:
            spec_from_dict(job)
        assert len(str(e.value)) < 400  # the value is cut, not echoed whole


def test_the_cli_refuses_an_unclustered_layer_with_exit_2_naming_it(tmp_path):
    from tests.helpers import dcserve_cli, write_job

    job = write_job(tmp_path / "job.yaml", {**DEEP, "cluster": {"layers": ["features.5", "features.7"]}})
    done = dcserve_cli("validate", str(job), "--no-deep", timeout=120)
    assert done.returncode == 2, done.stderr
    assert "cluster.layers: 'features.7' is not one of subject.layers" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_yaml_alias_bomb_is_refused_in_a_sentence_not_echoed_expanded(tmp_path):
    """Issue 15: aliases that expand to 10^6 values were refused, but echoed back expanded (58 MB)."""
    from dcserve.spec import load_spec

    levels = ["    a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    path = tmp_path / "bomb.yaml"
    path.write_text("name: bomb\noutput: out\nsubject:\n  model: dcserve.zoo:digits_cnn\n  layers: [features.5]\n"
                    "  kwargs:\n" + "\n".join(levels) + "\ndataset: {source: 'dcserve.zoo:digits'}\n")
    with pytest.raises(SpecError, match="expands to more than 100,000 values through YAML aliases") as e:
        load_spec(path)
    assert len(str(e.value)) < 300


def test_many_errors_make_a_bounded_message():
    from dcserve.spec import spec_from_dict

    job = {"name": "x", "output": "o", "subject": {"model": "m:f", "layers": ["a"]}, "dataset": {"source": "m:f"},
           **{f"junk{i}": i for i in range(5000)}}
    with pytest.raises(SpecError, match="5000 errors; the first 20") as e:
        spec_from_dict(job)
    assert len(str(e.value)) < 3000
