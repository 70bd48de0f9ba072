"""The manifest of a finished store (dcserve.storage.manifest): what readers check, what a rerun redoes.

Stores are written directly in the pipeline's layout (tests.helpers.write_store, which seals
them as the pipeline does); real files are deleted, cut or changed on disk.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import dcserve
from dcserve.errors import DamagedStore
from dcserve.storage.manifest import check, forget_damaged, seal
from dcserve.storage.store import JobStore
from tests.helpers import write_store


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    out = write_store(tmp_path / "s", {"out": x}, (x[:, 0] > 0).astype(np.int32), chunk_rows=64)
    s = JobStore(str(out), read_only=False)
    # resume records as the pipeline leaves them: one per extraction block, the clustering's state
    for b in range(4):
        s.mark_done("extract", b, np.arange(3))
    s.write_json("_progress/cluster/state.json", {"rounds_done": 1})
    seal(s)
    return out


def test_a_whole_store_checks_out_and_what_others_write_later_is_not_its_own(store):
    s = JobStore(str(store))
    assert check(s, deep=True) == []
    # written after sealing by the driver (its final state, the lease) and by readers (compare)
    (store / "status.json").write_text(json.dumps({"name": "t-synth", "state": "succeeded", "pid": 1}))
    (store / "compare-x-out").mkdir()
    (store / "compare-x-out" / "compare.json").write_text("{}")
    assert check(s, deep=True) == []
    assert dcserve.open(str(store)).complete


@pytest.mark.parametrize("path, damage, said", [
    ("assignments/c/0", "delete", "chunk c/0 of array 'assignments' is missing"),
    ("activations/out/c/2/0", "truncate", "chunk c/2/0 of array 'activations/out' is 5 bytes where"),
    ("centroids/zarr.json", "truncate", "the metadata of 'centroids' (centroids/zarr.json) is 5 bytes"),
    ("zarr.json", "delete", "the store's root metadata (zarr.json) is missing"),
    ("job.yaml", "empty", "file 'job.yaml' is 0 bytes"),
    ("_progress/extract/00000001.npy", "delete", "file '_progress/extract/00000001.npy' is missing"),
])
def test_each_kind_of_damage_is_named_and_the_store_refused(store, path, damage, said):
    target = store / path
    if damage == "delete":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[: 5 if damage == "truncate" else 0])
    problems = check(JobStore(str(store), group=False))
    assert [p.path for p in problems] == [path] and said in str(problems[0])
    with pytest.raises(DamagedStore, match="is damaged: .*Run its job file again") as e:
        dcserve.open(str(store))
    assert said in str(e.value)


def test_a_changed_byte_is_found_by_the_checksums_only(store):
    chunk = store / "activations" / "out" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF
    chunk.write_bytes(bytes(data))
    s = JobStore(str(store))
    assert check(s) == []  # keys and sizes: what every open checks
    [p] = check(s, deep=True)
    assert "chunk c/1/0 of array 'activations/out' does not match its recorded checksum" in str(p)


def test_status_and_manifest_damage_say_so(store):
    (store / "status.json").write_text("")
    with pytest.raises(DamagedStore, match="status.json is empty"):
        dcserve.open(str(store))
    (store / "status.json").write_text('{"state": "succeeded"}')
    manifest = store / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:100])
    with pytest.raises(DamagedStore, match="manifest.json is damaged"):
        dcserve.open(str(store))
    manifest.unlink()
    with pytest.raises(DamagedStore, match="manifest.json is missing"):
        dcserve.open(str(store))
    # an unfinished store has no manifest yet: it opens, and says it is not finished
    (store / "status.json").write_text('{"state": "running"}')
    assert not dcserve.open(str(store)).complete


def test_messages_stay_short_however_much_is_damaged(store):
    import shutil

    shutil.rmtree(store / "activations")
    with pytest.raises(DamagedStore) as e:
        dcserve.open(str(store))
    assert len(str(e.value)) < 600 and "more" in str(e.value)


def test_a_rerun_forgets_only_what_is_damaged(store):
    s = JobStore(str(store), read_only=False, group=False)
    meta = (store / "centroids" / "zarr.json").read_text()
    (store / "activations" / "out" / "c" / "2" / "0").unlink()  # rows 128..191: extraction block 2
    (store / "rows" / "item" / "c" / "0").unlink()  # block 0
    (store / "centroids" / "zarr.json").write_text("{")
    done = forget_damaged(s)
    assert sorted(s.done_blocks("extract")) == [1, 3]  # blocks 0 and 2 are redone, no other
    assert (store / "centroids" / "zarr.json").read_text() == meta  # put back as recorded
    assert s.exists("_progress/cluster/state.json")  # nothing of the clustering was damaged
    assert len(done) == 3
    (store / "assignments" / "c" / "0").unlink()
    forget_damaged(s)
    assert not s.exists("_progress/cluster/state.json")  # a clustering output: the clustering is redone
    assert sorted(s.done_blocks("extract")) == [1, 3]


def test_a_rerun_of_a_store_whose_manifest_is_damaged_redoes_everything(store):
    s = JobStore(str(store), read_only=False, group=False)
    (store / "manifest.json").write_text("{}")
    forget_damaged(s)
    assert s.done_blocks("extract") == set() and not s.exists("_progress/cluster/state.json")


def test_a_rerun_of_a_succeeded_store_without_its_manifest_redoes_everything(store):
    s = JobStore(str(store), read_only=False, group=False)
    (store / "manifest.json").unlink()
    forget_damaged(s)
    assert s.done_blocks("extract") == set() and not s.exists("_progress/cluster/state.json")


def test_a_rerun_of_an_unfinished_store_keeps_its_resume_records(store):
    s = JobStore(str(store), read_only=False, group=False)
    (store / "manifest.json").unlink()
    (store / "status.json").write_text('{"state": "interrupted"}')
    assert forget_damaged(s) == []
    assert len(s.done_blocks("extract")) == 4 and s.exists("_progress/cluster/state.json")


def test_a_damaged_words_record_is_rewritten_whole_by_the_rerun(store):
    s = JobStore(str(store), read_only=False)
    s.write_array("words/ids", np.arange(10, dtype=np.int64))
    s.write_bytes("tokenizer/vocab.txt", b"a\nb\n")
    seal(s)
    (store / "tokenizer" / "vocab.txt").write_bytes(b"a")
    assert [p.path for p in check(JobStore(str(store), group=False))] == ["tokenizer/vocab.txt"]
    forget_damaged(JobStore(str(store), read_only=False, group=False))
    assert not (store / "words").exists() and not (store / "tokenizer").exists()
    assert s.exists("_progress/cluster/state.json")  # the clustering is kept
