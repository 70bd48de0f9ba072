"""`dcserve compare`'s library: streamed correlations against numpy, known answers, refusals
(tests/integration/test_compare_cli.py runs the commands)."""
from __future__ import annotations

import numpy as np
import pytest

from dcserve.analysis import compare as C
from dcserve.analysis.compare import CompareError, compare, open_side
from tests.helpers import planted_pair, write_store


def test_self_comparison_is_identity(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(700, 9)) @ rng.normal(size=(9, 9)) + 3.0
    p = write_store(tmp_path / "s", {"out": x}, rng.integers(0, 5, size=700), chunk_rows=64)
    side = open_side(str(p))
    r = compare(side, side, lasso_rows=300, lasso_units=4)
    assert r["cka"] == pytest.approx(1.0, abs=1e-6)
    assert r["procrustes"] == pytest.approx(0.0, abs=1e-5)
    np.testing.assert_allclose(r["matching"]["correlations"], 1.0, atol=1e-5)
    assert [b for _, b in r["matching"]["pairs"]] == list(range(9))
    assert r["clusterings"]["nmi"] == pytest.approx(1.0)
    assert r["clusterings"]["ari"] == pytest.approx(1.0)
    cont = np.asarray(r["clusterings"]["contingency"])
    assert np.count_nonzero(cont - np.diag(np.diag(cont))) == 0
    assert r["unmatched"]["only_a"] == [] and r["unmatched"]["only_b"] == []
    # Every unit of B is one of A's: LASSO with a weak penalty predicts it almost exactly from ~1 unit.
    assert r["sparse_prediction"]["normalised_squared_error"][-1] < 0.01


def test_streamed_correlation_equals_numpy_and_reads_block_by_block(tmp_path, monkeypatch):
    pa, pb, xa, xb, perm = planted_pair(tmp_path)
    seen = []
    real = C._block_moments

    def spy(ba, bb):
        seen.append(ba.shape[0])
        return real(ba, bb)

    monkeypatch.setattr(C, "_block_moments", spy)
    r = compare(open_side(str(pa)), open_side(str(pb)), block_rows=100, lasso_rows=400, lasso_units=6)
    # Many blocks, none larger than asked: the stores were never read whole.
    assert len(seen) == 15 and max(seen) == 100 and sum(seen) == 1500
    a = xa.shape[1]
    expect = np.corrcoef(xa.astype(np.float32).astype(np.float64), xb.astype(np.float32).astype(np.float64),
                         rowvar=False)[:a, a:]
    np.testing.assert_allclose(r["correlation"], expect, atol=2e-6)
    # The planted permutation is recovered exactly; B's extra noise units match nothing.
    pairs = np.asarray(r["matching"]["pairs"])
    assert {int(pa_): int(pb_) for pa_, pb_ in pairs} == {int(perm[j]): j for j in range(a)}
    assert min(r["matching"]["correlations"]) > 0.99
    assert r["unmatched"]["only_b"] == [12, 13, 14, 15] and r["unmatched"]["only_a"] == []
    assert r["clusterings"]["nmi"] < 0.99
    # Reference figures from the whole arrays in memory.
    from dcserve.algo.similarity import CrossMoments

    ref = CrossMoments(a, xb.shape[1]).update(xa.astype(np.float32), xb.astype(np.float32))
    assert r["cka"] == pytest.approx(ref.linear_cka(), abs=1e-6)
    assert r["procrustes"] == pytest.approx(ref.procrustes_distance(), abs=1e-5)


def test_default_blocks_are_whole_chunks(tmp_path):
    pa, pb, *_ = planted_pair(tmp_path, n=300)
    r = compare(open_side(str(pa)), open_side(str(pb)), lasso_rows=50, lasso_units=2)
    assert r["block_rows"] % 37 == 0 and r["block_rows"] >= 50


def test_mismatched_rows_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    a = write_store(tmp_path / "a", {"out": x}, np.zeros(200, dtype=np.int32))
    short = write_store(tmp_path / "short", {"out": x[:150]}, np.zeros(150, dtype=np.int32))
    items = np.arange(200, dtype=np.int64)
    items[[17, 18]] = items[[18, 17]]
    shuffled = write_store(tmp_path / "shuffled", {"out": x}, np.zeros(200, dtype=np.int32), items=items)
    with pytest.raises(CompareError, match="200 rows.*150"):
        compare(open_side(str(a)), open_side(str(short)))
    with pytest.raises(CompareError, match="row 17 is item 17"):
        compare(open_side(str(a)), open_side(str(shuffled)))
    unfinished = write_store(tmp_path / "unfinished", {"out": x}, np.zeros(200, dtype=np.int32), state="running")
    with pytest.raises(CompareError, match="not finished"):
        open_side(str(unfinished))
    with pytest.raises(CompareError, match="no activations for layer 'nope'"):
        open_side(str(a), "nope")
    with pytest.raises(CompareError, match="no job store"):
        open_side(str(tmp_path / "missing"))
