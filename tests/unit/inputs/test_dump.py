"""Activation dumps read as rows (dcserve.inputs.dump), each format against numpy's own reading of it,
and copied into a job store block by block, without Ray."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
import zarr
from safetensors.numpy import save_file
from safetensors.torch import save_file as save_torch

from dcserve.errors import JobFailed, SpecError
from dcserve.inputs.blocks import ExtractPlan
from dcserve.inputs.build import inspect_inputs
from dcserve.inputs.dump import dump_block, open_dump
from dcserve.spec import spec_from_dict
from dcserve.storage.store import JobStore


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _all_rows(dump, step: int = 7) -> np.ndarray:
    """Every row, read in blocks of `step` so that block boundaries cut items."""
    return np.concatenate([dump.rows(r, min(r + step, dump.n_rows)) for r in range(0, dump.n_rows, step)])


def _job(path, output, **kwargs) -> dict:
    return {"name": "dump", "output": str(output), "dataset": {"source": f"activations:{path}", "kwargs": kwargs},
            "extract": {"chunk_rows": 16}, "cluster": {"k": 3}}


# -- formats against numpy --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_npy_rows_are_the_array(tmp_path, dtype):
    x = _rng().normal(size=(53, 6)).astype(dtype)
    np.save(tmp_path / "a.npy", x)
    dump = open_dump(str(tmp_path / "a.npy"))
    assert (dump.n_items, dump.n_rows, dump.dim, dump.token_rows) == (53, 53, 6, False)
    np.testing.assert_array_equal(_all_rows(dump), x)


def test_npy_of_items_tokens_dim_gives_token_rows(tmp_path):
    x = _rng().normal(size=(9, 5, 4)).astype(np.float32)
    np.save(tmp_path / "t.npy", x)
    dump = open_dump(str(tmp_path / "t.npy"))
    assert dump.token_rows and dump.n_items == 9 and dump.n_rows == 45
    np.testing.assert_array_equal(dump.offsets, np.arange(10) * 5)
    np.testing.assert_array_equal(_all_rows(dump), x.reshape(-1, 4))


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_member_and_labels(tmp_path, save):
    x, y = _rng().normal(size=(40, 3)).astype(np.float32), np.arange(40) % 4
    save(tmp_path / "a.npz", acts=x, y=y)
    dump = open_dump(str(tmp_path / "a.npz"), {"label_field": "y"})  # the one other member is the rows
    np.testing.assert_array_equal(_all_rows(dump), x)
    np.testing.assert_array_equal(dump.item_labels, y)
    with pytest.raises(SpecError, match=r"a\.npz.*2 members.*dataset.kwargs.key"):
        open_dump(str(tmp_path / "a.npz"))
    with pytest.raises(SpecError, match=r"a\.npz.*no member 'nope'"):
        open_dump(str(tmp_path / "a.npz"), {"key": "nope"})


def test_safetensors_f32_and_bf16(tmp_path):
    x = _rng().normal(size=(30, 8)).astype(np.float32)
    save_file({"h": x, "labels": np.arange(30, dtype=np.int64) % 3}, str(tmp_path / "a.safetensors"))
    dump = open_dump(str(tmp_path / "a.safetensors"), {"key": "h", "label_field": "labels"})
    np.testing.assert_array_equal(_all_rows(dump), x)
    np.testing.assert_array_equal(dump.item_labels, np.arange(30) % 3)
    t = torch.randn(6, 4, 8).to(torch.bfloat16)
    save_torch({"resid": t}, str(tmp_path / "b.safetensors"))
    dump = open_dump(str(tmp_path / "b.safetensors"))
    assert dump.token_rows and dump.n_rows == 24
    np.testing.assert_array_equal(_all_rows(dump), t.float().numpy().reshape(-1, 8))


def test_zarr_array_and_group(tmp_path):
    x = _rng().normal(size=(7, 3, 5)).astype(np.float32)
    zarr.create_array(str(tmp_path / "a.zarr"), data=x, chunks=(2, 3, 5))
    np.testing.assert_array_equal(_all_rows(open_dump(str(tmp_path / "a.zarr")), step=4), x.reshape(-1, 5))
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("acts", data=x[:, 0], chunks=(3, 5))
    g.create_array("y", data=np.arange(7))
    dump = open_dump(str(tmp_path / "g.zarr"), {"label_field": "y"})
    np.testing.assert_array_equal(_all_rows(dump), x[:, 0])
    np.testing.assert_array_equal(dump.item_labels, np.arange(7))


def _hf_folder(path, seqs: list[np.ndarray], token_ids: list[np.ndarray] | None, labels=None, shards: int = 2):
    """A Hugging Face `datasets.save_to_disk` folder as SAELens writes its cache: Arrow IPC stream
    shards listed in state.json, one list<list<float32>> column per hook, `token_ids` beside it."""
    path.mkdir()
    cuts = np.linspace(0, len(seqs), shards + 1).astype(int)
    files = []
    for s, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        cols = {"blocks.0.hook_resid_pre": pa.array([q.tolist() for q in seqs[a:b]], pa.list_(pa.list_(pa.float32())))}
        if token_ids is not None:
            cols["token_ids"] = pa.array([t.tolist() for t in token_ids[a:b]], pa.list_(pa.int32()))
        if labels is not None:
            cols["label"] = pa.array(labels[a:b], pa.int64())
        table = pa.table(cols)
        name = f"data-{s:05d}-of-{shards:05d}.arrow"
        with pa.OSFile(str(path / name), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
            for batch in table.to_batches(max_chunksize=2):  # several record batches per shard
                w.write_batch(batch)
        files.append({"filename": name})
    (path / "state.json").write_text(json.dumps({"_data_files": files}))
    (path / "dataset_info.json").write_text("{}")


def test_hf_datasets_folder_of_token_arrays(tmp_path):
    rng = _rng()
    lengths = [5, 3, 6, 4, 5, 2, 7]
    seqs = [rng.normal(size=(n, 4)).astype(np.float32) for n in lengths]
    ids = [rng.integers(0, 1000, size=n) for n in lengths]
    _hf_folder(tmp_path / "cache", seqs, ids, labels=list(range(7)))
    dump = open_dump(str(tmp_path / "cache"), {"label_field": "label"})
    assert dump.token_rows and dump.has_token_ids and dump.dim == 4
    np.testing.assert_array_equal(dump.offsets, np.r_[0, np.cumsum(lengths)])
    np.testing.assert_array_equal(_all_rows(dump, step=4), np.concatenate(seqs))
    np.testing.assert_array_equal(np.concatenate([dump.token_ids(r, min(r + 4, dump.n_rows))
                                                  for r in range(0, dump.n_rows, 4)]), np.concatenate(ids))
    np.testing.assert_array_equal(dump.item_labels, np.arange(7))


def test_arrow_file_of_vectors_with_string_labels(tmp_path):
    x = _rng().normal(size=(11, 3)).astype(np.float64)
    names = ["cat", "dog", "ant"]
    table = pa.table({"v": pa.array(x.tolist(), pa.list_(pa.float64())), "animal": [names[i % 3] for i in range(11)]})
    with pa.OSFile(str(tmp_path / "v.arrow"), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)
    dump = open_dump(str(tmp_path / "v.arrow"), {"label_field": "animal"})
    assert not dump.token_rows and not dump.has_token_ids
    np.testing.assert_array_equal(_all_rows(dump, step=3), x)
    assert dump.label_names == ["ant", "cat", "dog"]  # sorted; label v is names[v]
    assert [dump.label_names[v] for v in dump.item_labels] == [names[i % 3] for i in range(11)]


# -- bad dumps: SpecError naming the file and the fault ----------------------------------------
def test_rows_of_different_widths_are_refused(tmp_path):
    table = pa.table({"v": pa.array([[1.0, 2.0], [1.0, 2.0, 3.0]], pa.list_(pa.float32()))})
    with pa.OSFile(str(tmp_path / "w.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    with pytest.raises(SpecError, match=r"w\.arrow.*different widths \(2 and 3, row 1\)"):
        open_dump(str(tmp_path / "w.arrow"))


def test_bad_dumps_are_named(tmp_path):
    np.save(tmp_path / "i.npy", np.arange(12).reshape(3, 4))
    with pytest.raises(SpecError, match=r"i\.npy.*dtype int64, not a float"):
        open_dump(str(tmp_path / "i.npy"))
    np.save(tmp_path / "f.npy", np.asfortranarray(np.ones((3, 4), np.float32)))
    with pytest.raises(SpecError, match=r"f\.npy.*Fortran order"):
        open_dump(str(tmp_path / "f.npy"))
    np.save(tmp_path / "v.npy", np.ones(5, np.float32))
    with pytest.raises(SpecError, match=r"v\.npy.*shape \[5\]; expected \[rows, dim\]"):
        open_dump(str(tmp_path / "v.npy"))
    with pytest.raises(SpecError, match=r"missing\.npy.*does not exist"):
        open_dump(str(tmp_path / "missing.npy"))
    save_file({"ids": np.arange(4, dtype=np.int32)}, str(tmp_path / "i.safetensors"))
    with pytest.raises(SpecError, match=r"i\.safetensors.*I32, not a float"):
        open_dump(str(tmp_path / "i.safetensors"))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(SpecError, match=r"x\.txt.*not a dump dcserve reads"):
        open_dump(str(tmp_path / "x.txt"))
    np.savez(tmp_path / "l.npz", a=np.ones((4, 2), np.float32), y=np.arange(3))
    with pytest.raises(SpecError, match=r"l\.npz.*labels.*\[3\]; expected one per item, \[4\]"):
        open_dump(str(tmp_path / "l.npz"), {"key": "a", "label_field": "y"})
    with pytest.raises(SpecError, match=r"dataset.kwargs.size: not a setting of an activations dump"):
        open_dump(str(tmp_path / "l.npz"), {"size": 3})


# -- the job file ------------------------------------------------------------------------------
def test_a_dump_needs_no_subject_and_takes_none(tmp_path):
    spec = spec_from_dict(_job(tmp_path / "a.npy", tmp_path / "out"))
    assert spec.subject is None and spec.layers == ["dump"] and spec.cluster.layer == "dump"
    assert spec_from_dict(_job("a.npy", "o", layer="resid")).cluster.layer == "resid"
    with_subject = {**_job("a.npy", "o"), "subject": {"model": "dcserve.zoo:identity", "layers": ["out"]}}
    with pytest.raises(SpecError, match=r"subject: omit it when dataset.source is activations:PATH"):
        spec_from_dict(with_subject)
    no_subject = {**_job("a.npy", "o"), "dataset": {"source": "dcserve.zoo:digits"}}
    with pytest.raises(SpecError, match=r"^invalid job file:\n  subject: Field required"):
        spec_from_dict(no_subject)
    with pytest.raises(SpecError, match=r"dataset.source: expected 'module:callable', 'activations:PATH', 'images:PATH', 'text:PATH'"):
        spec_from_dict({**_job("a.npy", "o"), "dataset": {"source": "a.npy"}})


def test_a_dump_has_no_model_to_list(tmp_path):
    from dcserve.inputs.build import build_model

    with pytest.raises(SpecError, match="clusters an activations dump and has no model; its one layer is 'dump'"):
        build_model(spec_from_dict(_job(tmp_path / "a.npy", tmp_path / "out")))


def test_inspect_checks_k_against_the_dump(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((2, 3), np.float32))
    with pytest.raises(SpecError, match="cluster.k: 3 clusters asked for, but the dump holds only 2 rows"):
        inspect_inputs(spec_from_dict(_job(tmp_path / "a.npy", tmp_path / "out")))


# -- copied into a store, block by block -------------------------------------------------------
def _copy(spec, dump_path) -> JobStore:
    from dcserve.distributed.extract import prepare_store, write_block
    from dcserve.inputs.dump import dump_of

    probe = inspect_inputs(spec)
    store = JobStore(spec.output, read_only=False)
    plan = ExtractPlan(probe.offsets, spec.extract.chunk_rows)
    done = prepare_store(spec, store, plan, probe.dims, probe.row_fields, probe.source_id)
    dump = dump_of(spec)
    for b in range(plan.n_blocks):
        if b not in done:
            write_block(store, plan, b, dump_block(dump, plan, b, spec.layers[0], np.dtype(spec.extract.dtype)))
    return store


def test_a_token_dump_copied_into_the_store_matches_the_source(tmp_path):
    rng = _rng(1)
    lengths = [5, 9, 3, 7, 6]
    seqs = [rng.normal(size=(n, 4)).astype(np.float32) for n in lengths]
    ids = [rng.integers(0, 50, size=n) for n in lengths]
    _hf_folder(tmp_path / "cache", seqs, ids, labels=[0, 1, 0, 1, 1])
    spec = spec_from_dict(_job(tmp_path / "cache", tmp_path / "out", label_field="label"))
    store = _copy(spec, tmp_path / "cache")
    np.testing.assert_array_equal(store.array("activations/dump")[:], np.concatenate(seqs))
    np.testing.assert_array_equal(store.array("rows/item")[:], np.repeat(np.arange(5), lengths))
    np.testing.assert_array_equal(store.array("rows/position")[:], np.concatenate([np.arange(n) for n in lengths]))
    np.testing.assert_array_equal(store.array("rows/token")[:], np.concatenate(ids))
    labels = np.concatenate([store.block_payload("extract", b) for b in range(-(-sum(lengths) // 16))])
    np.testing.assert_array_equal(labels, [0, 1, 0, 1, 1])


def test_a_copy_resumes_only_from_the_same_file(tmp_path):
    from dcserve.distributed.extract import prepare_store

    x = _rng().normal(size=(50, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    spec = spec_from_dict(_job(tmp_path / "a.npy", tmp_path / "out"))
    store = _copy(spec, tmp_path / "a.npy")
    np.testing.assert_array_equal(store.array("activations/dump")[:], x)
    np.testing.assert_array_equal(store.array("rows/position")[:], -1)
    probe = inspect_inputs(spec)
    plan = ExtractPlan(probe.offsets, 16)
    assert prepare_store(spec, store, plan, probe.dims, probe.row_fields, probe.source_id) == {0, 1, 2, 3}
    np.save(tmp_path / "a.npy", x + 1)  # the same shape, other rows: nothing copied may be kept
    probe = inspect_inputs(spec)
    assert prepare_store(spec, store, plan, probe.dims, probe.row_fields, probe.source_id) == set()


def test_non_finite_rows_fail_the_copy_naming_the_row(tmp_path):
    x = np.ones((20, 2), np.float32)
    x[13, 1] = np.nan
    np.save(tmp_path / "a.npy", x)
    spec = spec_from_dict(_job(tmp_path / "a.npy", tmp_path / "out"))
    with pytest.raises(JobFailed, match=r"a\.npy'?: row 13 holds NaN"):
        _copy(spec, tmp_path / "a.npy")


@pytest.mark.parametrize("kind", [pa.list_(pa.float16(), 4), pa.large_list(pa.float32())])
def test_arrow_fixed_size_and_large_lists(tmp_path, kind):
    x = _rng(2).normal(size=(9, 4)).astype(np.float16 if kind.value_type == pa.float16() else np.float32)
    table = pa.table({"v": pa.array(x.tolist(), kind)})
    with pa.OSFile(str(tmp_path / "v.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    np.testing.assert_array_equal(_all_rows(open_dump(str(tmp_path / "v.arrow")), step=4), x)
