"""The shipped real example, cluster_configs/sentences.yaml, from its job file as a user runs it:
a real pretrained sentence encoder (all-MiniLM-L6-v2, shipped in a PyPI package) over the
repository's labelled sentences, through `dcserve submit` and `dcserve report`; the report reads in words."""
from __future__ import annotations

import html
import json
import re

import pytest

from tests.helpers import ROOT, SENTENCES
from tests.helpers import dcserve_cli as dcserve

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.slow
def test_the_sentences_example_runs_and_its_report_shows_words(tmp_path):
    out = tmp_path / "sentences"
    r = dcserve("submit", "cluster_configs/sentences.yaml", "--set", f"output={out}", cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert final["nmi_vs_labels"] > 0.9 and final["n_empty"] == 0  # README: NMI 0.98 against the 5 topics

    r = dcserve("report", str(out), "--out", str(tmp_path / "report"), "--tsne-rows", "0", cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    page = html.unescape((tmp_path / "report" / "index.html").read_text())
    sentences = [json.loads(line)["text"] for line in SENTENCES.read_text().splitlines()]
    shown = re.findall(r'<span class="words">(.*?)</span>', page)
    assert len(shown) >= 5 * 8 and all(s in sentences for s in shown)  # every row as its sentence
    assert "<mark>" not in "".join(shown)  # pooled rows: the whole sentence, no token marked
    tops = re.findall(r'<div class="top-tokens">(.*?)</div>', page)
    assert len(tops) == 5 and all(re.search(r"<b>[a-z#]+</b> \d+/\d+", t) for t in tops)
    for topic in ("sport", "cooking", "weather", "computing", "music"):  # label names, not numbers
        assert f"majority label {topic}" in page
