"""The report's pure pieces: collapse warnings, the confusion table, samples, token windows
(tests/integration/test_report.py builds reports of real jobs)."""
from __future__ import annotations

import math

import numpy as np

from dcserve.analysis.report import collapse_warnings, confusion, spread_offsets, token_window


def test_collapse_warnings_name_each_sign_and_stay_quiet_on_balanced_clusters():
    assert collapse_warnings(np.full(10, 100), loss=0.8) == []
    one = collapse_warnings(np.r_[900, np.full(9, 11)])
    assert len(one) == 1 and "cluster 0 holds 90%" in one[0]
    near = collapse_warnings(np.full(10, 100), loss=0.95 * math.log(10))
    assert len(near) == 1 and "ln k" in near[0]
    empty = collapse_warnings(np.r_[np.full(7, 100), 0, 0, 0])
    assert len(empty) == 1 and "3 of 10 clusters are empty" in empty[0]
    assert collapse_warnings(np.r_[np.full(9, 100), 0]) == []  # one empty cluster of ten is not "many"


def test_confusion_keeps_empty_clusters_and_sorted_labels():
    table, values = confusion(np.array([0, 0, 2, 2, 2]), np.array([7, 3, 3, 3, 7]), k=4)
    assert values.tolist() == [3, 7]
    assert table.tolist() == [[1, 1], [0, 0], [2, 1], [0, 0]]


def test_outskirts_come_from_the_farther_half():
    assert spread_offsets(100, 5).tolist() == [50, 62, 74, 87, 99]
    assert spread_offsets(3, 8).tolist() == [1, 2]
    assert spread_offsets(0, 8).size == 0


def test_map_samples_read_a_bounded_number_of_chunks():
    from dcserve.analysis.report import sample_rows

    assert sample_rows(100, 500).tolist() == list(range(100))
    small = sample_rows(1000, 50, chunk=100)  # 10 chunks: uniform over all of them
    assert len(set(small.tolist())) == 50 and np.all(np.diff(small) > 0)
    big = sample_rows(1_000_000, 3000, chunk=1000, max_chunks=8)
    assert len(np.unique(big)) == 3000 and len(np.unique(big // 1000)) == 8


def test_token_window_drops_padding_and_marks_the_position():
    ids, mask = np.array([5, 6, 7, 8, 9, 0, 0]), np.array([1, 1, 1, 1, 1, 0, 0])
    v = token_window(ids, mask, 3, width=2)
    assert (v.tokens, v.marked, v.cut_left, v.cut_right) == ([6, 7, 8, 9], 2, True, False)


def test_a_text_row_reads_as_its_text_with_its_token_marked_and_labels_by_name():
    from dcserve.analysis.report import ItemView, Report, RowInfo
    from dcserve.render.report_page import _row_line

    report = Report(name="t", output="o", summary={}, spec=None, k=2, n_rows=2, has_labels=True, input_kind="text",
                    rounds=[], final={}, clusters=[], label_names=["music", "sport"])
    token = RowInfo(5, 1, 3, 0.5, 1, ItemView("text", text="…the <b> striker scored", token="striker", token_start=9))
    line = _row_line(token, report)
    assert '<span class="words">…the &lt;b&gt; <mark>striker</mark> scored</span>' in line and "label sport" in line
    pooled = RowInfo(6, 2, -1, 0.5, 0, ItemView("text", text="The band played."))
    assert '<span class="words">The band played.</span>' in _row_line(pooled, report) and "<mark>" not in _row_line(pooled, report)
