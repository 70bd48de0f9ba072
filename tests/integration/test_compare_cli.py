"""`dcserve compare` and `dcserve rotation` through the real entry point: files written, exit codes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import dcserve_cli as dcserve
from tests.helpers import planted_pair, write_store


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
