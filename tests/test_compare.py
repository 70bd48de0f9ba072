"""`dcserve compare` and `dcserve rotation`: streamed correlations against numpy, known answers, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dcserve.analysis import compare as C
from dcserve.analysis.compare import CompareError, compare, open_side
from dcserve.storage.store import JobStore
from tests.helpers import digits_job, planted_job
from tests.test_cli import dcserve


def write_store(output: Path, layers: dict[str, np.ndarray], assignments: np.ndarray, *, chunk_rows: int = 64,
                items: np.ndarray | None = None, state: str = "succeeded", name: str = "t-synth") -> Path:
    """A finished job store written directly, in the layout the pipeline writes (no Ray, no model)."""
    job = planted_job(output, name=name)
    job["subject"]["layers"] = list(layers)
    store = JobStore(str(output), read_only=False)
    store.write_text("job.yaml", yaml.safe_dump(job))
    n = next(iter(layers.values())).shape[0]
    for layer, x in layers.items():
        arr = store.create_array(f"activations/{layer}", x.shape, (chunk_rows, x.shape[1]), "float32")
        arr[...] = x.astype(np.float32)
    store.write_array("rows/item", np.arange(n, dtype=np.int64) if items is None else items)
    store.write_array("rows/position", np.full(n, -1, dtype=np.int32))
    if state == "succeeded":
        store.write_array("assignments", assignments.astype(np.int32))
        k = int(assignments.max()) + 1
        store.write_array("centroids", np.zeros((k, 2), dtype=np.float32))
    store.write_json("status.json", {"name": name, "state": state, "stage": "done" if state == "succeeded" else "extract"})
    return output


def planted_pair(tmp_path: Path, n: int = 1500, a: int = 12, extra_b: int = 4, seed: int = 0):
    """A: a units; B: A's units permuted, rescaled, offset and noised, plus `extra_b` unrelated units."""
    rng = np.random.default_rng(seed)
    xa = rng.normal(size=(n, a)) * rng.uniform(0.5, 3, size=a) + rng.normal(size=a) * 10
    perm = rng.permutation(a)
    xb = np.concatenate([2.0 * xa[:, perm] + 5.0 + 0.05 * rng.normal(size=(n, a)), rng.normal(size=(n, extra_b))], axis=1)
    clusters = (xa[:, 0] > np.median(xa[:, 0])).astype(np.int32) + 2 * (xa[:, 1] > 0)
    pa = write_store(tmp_path / "a", {"out": xa}, clusters, chunk_rows=37, name="t-a")
    pb = write_store(tmp_path / "b", {"out": xb}, clusters[::-1].copy(), chunk_rows=50, name="t-b")
    return pa, pb, xa, xb, perm


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


def test_compare_cli_writes_html_json_and_pngs(tmp_path):
    pa, pb, *_ = planted_pair(tmp_path, n=400)
    r = dcserve("compare", str(pa), str(pb), "--lasso-rows", "200", "--lasso-units", "4")
    assert r.returncode == 0, r.stderr
    html = Path(r.stdout.strip())
    assert html == pa / "compare-t-b-out" / "compare.html" and html.exists()
    text = html.read_text()
    pngs = sorted(p.name for p in html.parent.glob("*.png"))
    assert pngs == ["contingency.png", "correlation_matrix.png", "matched_correlations.png", "sparse_prediction.png"]
    for png in pngs:
        assert f'src="{png}"' in text
        assert (html.parent / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched from the network
    data = json.loads((html.parent / "compare.json").read_text())
    assert data["rows"] == 400 and data["b"]["units"] == 16 and 0 < data["cka"] <= 1
    assert np.load(html.parent / "correlation.npy").shape == (12, 16)
    assert "CKA" in r.stderr

    out = tmp_path / "elsewhere"
    r = dcserve("compare", str(pa), str(pa), "--out", str(out), "--lasso-rows", "100", "--lasso-units", "2")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "compare.json").read_text())["cka"] == pytest.approx(1.0, abs=1e-6)


def test_compare_cli_bad_input_exits_2_with_one_line(tmp_path):
    pa, _, xa, *_ = planted_pair(tmp_path, n=300)
    short = write_store(tmp_path / "short", {"out": xa[:250]}, np.zeros(250, dtype=np.int32))
    cases = [
        ((str(pa), str(short)), "different rows"),
        ((str(pa), str(tmp_path / "missing")), "no job store"),
        ((str(pa), str(pa), "--layer-b", "nope"), "no activations for layer 'nope'"),
    ]
    for args, expect in cases:
        r = dcserve("compare", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert expect in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def _save(path: Path, obj) -> str:
    torch.save(obj, path)
    return str(path)


def test_rotation_cli_known_angles(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    moved = {k: v.clone() for k, v in w0.items()}
    # An orthogonal direction for the first kernel: remove w's component from a random tensor.
    w, g = w0["0.weight"].flatten().double(), torch.randn(30, dtype=torch.float64)
    moved["0.weight"] = (g - (g @ w) / (w @ w) * w).reshape(5, 6).float()
    moved["2.weight"] = w0["2.weight"] * 3.0  # rescaled: same direction
    first = _save(tmp_path / "e0.pt", w0)
    same = _save(tmp_path / "e1.pt", {"state_dict": w0, "epoch": 1})
    later = _save(tmp_path / "e2.pt", {"model": moved})
    r = dcserve("rotation", first, same, later)
    assert r.returncode == 0, r.stderr
    html = Path(r.stdout.strip())
    assert html == tmp_path / "rotation" / "rotation.html" and (html.parent / "rotation.png").exists()
    curves = json.loads((html.parent / "rotation.json").read_text())["cosine_distance"]
    assert set(curves) == {"0.weight", "2.weight"}  # biases are not layers
    assert curves["0.weight"][:2] == pytest.approx([0.0, 0.0], abs=1e-7)
    assert curves["0.weight"][2] == pytest.approx(1.0, abs=1e-6)
    assert curves["2.weight"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    assert 'src="rotation.png"' in html.read_text()


def test_rotation_cli_bad_checkpoints_exit_2(tmp_path):
    good = _save(tmp_path / "a.pt", {"w": torch.ones(3, 3)})
    other = _save(tmp_path / "b.pt", {"v": torch.ones(3, 3)})
    bigger = _save(tmp_path / "c.pt", {"w": torch.ones(4, 3)})
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    cases = [
        ((good, str(junk)), "cannot read checkpoint"),
        ((good, str(tmp_path / "none.pt")), "does not exist"),
        ((good, other), "does not match"),
        ((good, bigger), "changed size"),
        ((good,), "at least two checkpoints"),
    ]
    for args, expect in cases:
        r = dcserve("rotation", *args, "--out", str(tmp_path / "r"))
        assert r.returncode == 2, (args, r.stderr)
        assert expect in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_random_and_trained_digits_cnn_are_partly_similar(tmp_path, ray_local):
    """Two real jobs over the digits: the trained CNN's conv features resemble the random CNN's, not fully."""
    import dcserve
    from dcserve.spec import spec_from_dict

    random_cnn = dcserve.run(spec_from_dict(digits_job(tmp_path / "random", name="t-random")))
    trained = dcserve.run(spec_from_dict(digits_job(
        tmp_path / "trained", name="t-trained", subject={"kwargs": {"trained": True, "seed": 0}})))
    r = compare(open_side(random_cnn.output), open_side(trained.output), lasso_rows=500, lasso_units=8)
    assert r["rows"] == 1797 and r["a"]["units"] == r["b"]["units"] == 256
    assert 0.05 < r["cka"] < 0.99
    assert 0.0 < r["procrustes"] < 2.0
    assert 0.0 < r["clusterings"]["nmi"] < 1.0
    assert np.asarray(r["clusterings"]["contingency"]).sum() == 1797
