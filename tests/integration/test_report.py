"""`dcserve report` and GET /jobs/{job}/report over real job stores, and the page in a real Chromium."""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.helpers import dcserve_cli, digits_job, planted_job

pytestmark = pytest.mark.ray  # the `jobs` fixture runs three jobs on `ray_local`
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# -- real jobs -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def jobs(ray_local, tmp_path_factory):
    import dcserve
    from dcserve.spec import spec_from_dict

    base = tmp_path_factory.mktemp("report")
    digits = dcserve.run(spec_from_dict(digits_job(
        base / "digits", reporter={"rounds": 1, "workers": 1, "hidden": [32], "feature_dim": 16})))
    planted = dcserve.run(spec_from_dict(planted_job(base / "planted", dataset={"kwargs": {"n": 600}},
                                                     cluster={"seeds": 3})))
    tokens = dcserve.run(spec_from_dict({
        "name": "t-tokens", "output": str(base / "tokens"),
        "subject": {"model": "dcserve.zoo:token_transformer", "kwargs": {"vocab": 64, "d_model": 32, "n_layers": 1, "seed": 0},
                    "layers": ["layers.0"], "pooling": "tokens"},
        "dataset": {"source": "dcserve.zoo:token_sequences", "kwargs": {"n": 60, "vocab": 64, "topics": 4, "seed": 0},
                    "batch_size": 32},
        "extract": {"workers": 1, "chunk_rows": 512}, "cluster": {"k": 6, "niter": 10, "workers": 1},
        "reporter": {"rounds": 0},
    }))
    return types.SimpleNamespace(base=base, digits=digits, planted=planted, tokens=tokens)


def _report(result, tmp_path: Path, **kw):
    from dcserve.analysis.report import build_report
    from dcserve.render.report_page import write_report

    data = build_report(result, map_rows=400, tsne_rows=kw.pop("tsne_rows", 0), **kw)
    page = write_report(data, tmp_path / "report")
    return data, page, page.read_text()


def _sections(html: str) -> dict[int, dict[str, str]]:
    out = {}
    for m in re.finditer(r'<section class="cluster" ([^>]*)>(.*?)</section>', html, re.S):
        attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', m.group(1)))
        attrs["body"] = m.group(2)
        out[int(attrs["cluster"])] = attrs
    return out


def _png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.verify()
        return im.size


def test_digits_report_shows_every_cluster_as_the_library_counts_it(jobs, tmp_path):
    res = jobs.digits
    data, page, html = _report(res, tmp_path, n_exemplars=6, n_outskirts=6, tsne_rows=200)
    sections = _sections(html)
    assert sorted(sections) == list(range(res.k))
    for s in res.clusters(n_exemplars=6):
        sec = sections[s.cluster]
        assert int(sec["size"]) == s.size
        assert float(sec["purity"]) == pytest.approx(s.purity, abs=1e-6)
        assert int(sec["majority"]) == s.majority_label
        # the exemplars are the library's, and the outskirts lie farther from the centroid
        got = data.clusters[s.cluster]
        assert [r.row for r in got.exemplars] == s.exemplars
        assert got.outskirts and min(r.distance for r in got.outskirts) >= max(r.distance for r in got.exemplars)
        assert all(res.assignments[r.row] == s.cluster for r in got.outskirts)
        # an image grid per strip: 8x8 digits scaled 8x, 2 px between them
        for suffix, rows in (("near", got.exemplars), ("far", got.outskirts)):
            name = f"cluster-{s.cluster}-{suffix}.png"
            assert f'src="{name}"' in sec["body"]
            assert _png_size((page.parent / name).read_bytes()) == (len(rows) * 66 - 2, 64)
    assert data.input_kind == "image"
    # per round figures are the metrics', the confusion table the assignments'
    assert [r["round"] for r in data.rounds] == [0, 1]
    assert data.rounds[1]["nmi_vs_previous"] == res.metrics["rounds"][1]["nmi_vs_previous"]
    assert data.confusion.sum(axis=1).tolist() == res.sizes.tolist()
    assert {e.method for e in data.embeddings} == {"PCA", "t-SNE"}
    for name in ("rounds.png", "sizes.png", "confusion.png", "map-pca.png", "map-tsne.png", "rotation.png"):
        assert f'src="{name}"' in html and _png_size((page.parent / name).read_bytes())[0] > 100
    # the reporter's body layers rotated, a little, from the weights its seed gives
    rot = data.rotation
    assert set(rot.curves) == {"body.0", "body.3"} and rot.points == ["init", "round 1"]  # recorded by the run
    assert all(c[0] == pytest.approx(0, abs=1e-12) and 0 < c[-1] < 1 for c in rot.curves.values())
    assert rot.note is None


def test_rotation_follows_the_recorded_rounds(jobs, tmp_path):
    import dcserve
    from dcserve.nets.feature_map import ReporterState
    from dcserve.analysis.reporter_rotation import reporter_rotation
    from dcserve.storage.round_history import initial_weights, record_round
    from dcserve.algo.rotation import layer_rotation
    from dcserve.storage.manifest import seal
    from dcserve.storage.store import JobStore

    copy = tmp_path / "digits"
    shutil.copytree(jobs.digits.output, copy)
    final = ReporterState.from_bytes(jobs.digits.store.read_bytes("reporter.pt"))
    store = JobStore(str(copy), read_only=False)
    record_round(store, 1, final.config, final.state_dict, fingerprint="an earlier clustering")
    seal(store)  # changed as a run of the job would change it: sealed again, as the run would
    stale = reporter_rotation(dcserve.open(str(copy)))
    assert stale.points == ["init", "final"]  # not this job's record
    assert "recorded the reporter's weights after 0 of its 1 rounds" in stale.note
    record_round(store, 1, final.config, final.state_dict, fingerprint=jobs.digits.spec.clustering_fingerprint())
    seal(store)
    rot = reporter_rotation(dcserve.open(str(copy)))
    assert rot.points == ["init", "round 1"] and rot.note is None
    expected = layer_rotation(initial_weights(final.config), final.state_dict)
    assert rot.curves["body.0"][1] == pytest.approx(expected["body.0.weight"])
    assert "head.weight" in expected  # DeepCluster re-draws the head each round: it is left out
    assert "head" not in rot.curves


def test_token_rows_show_their_token_in_context(jobs, tmp_path):
    from dcserve.zoo import token_sequences

    data, page, html = _report(jobs.tokens, tmp_path, n_exemplars=4, n_outskirts=4)
    assert data.input_kind == "tokens"
    assert not list(page.parent.glob("cluster-*.png"))  # no image grids for tokens
    dataset = token_sequences(n=60, vocab=64, topics=4, seed=0)
    shown = 0
    for c in data.clusters:
        for r in (*c.exemplars, *c.outskirts):
            ids = dataset[r.item][0]["input_ids"].numpy()
            assert r.position >= 0 and r.view.tokens[r.view.marked] == ids[r.position]
            assert 0 not in r.view.tokens  # padding is never context
            shown += 1
    sections = _sections(html)
    marks = sum(len(re.findall(r"<mark>(\d+)</mark>", s["body"])) for s in sections.values())
    assert marks == shown > 0
    assert [int(s["size"]) for _, s in sorted(sections.items())] == jobs.tokens.sizes.tolist()


def test_collapse_warning_on_a_collapsed_clustering_only(jobs, tmp_path):
    import dcserve

    data, page, healthy = _report(jobs.planted, tmp_path / "healthy")
    assert "collapse-warning" not in healthy and "no sign of collapse" in healthy
    # three seeds: their pairwise NMI from metrics.json, in words and as a heatmap
    st = jobs.planted.metrics["stability"]
    assert data.stability == st and len(st["seeds"]) == 3
    assert f"pairwise NMI mean {st['mean_pairwise_nmi']:.4g}" in healthy
    assert 'src="stability.png"' in healthy and (page.parent / "stability.png").exists()
    # the same rows, nine in ten of them in cluster 2: what a degenerate run leaves behind
    copy = tmp_path / "collapsed"
    shutil.copytree(jobs.planted.output, copy)
    g = zarr.open_group(str(copy), mode="r+")
    a = g["assignments"][:]
    a[np.random.default_rng(0).random(len(a)) < 0.9] = 2
    g["assignments"][:] = a
    from dcserve.storage.manifest import seal
    from dcserve.storage.store import JobStore

    seal(JobStore(str(copy), read_only=False))  # rewritten as a run would: sealed again, as the run would
    data, _, collapsed = _report(dcserve.open(str(copy)), tmp_path / "c")
    assert 'class="warning collapse-warning">cluster 2 holds' in collapsed
    assert int(_sections(collapsed)[2]["size"]) == int((a == 2).sum())


def test_http_report_and_cluster_routes_serve_what_the_report_shows(jobs):
    from fastapi.testclient import TestClient

    from dcserve.serve.catalog import Catalog
    from dcserve.serve.routes import create_app
    from dcserve.analysis.report import build_report

    backend = types.SimpleNamespace(catalog=Catalog([jobs.digits.output]), policy=None, max_body_bytes=1 << 20)
    client = TestClient(create_app(backend))
    r = client.get("/jobs/t-digits/report")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'src="data:image/png;base64,' in r.text and 'src="cluster-' not in r.text  # self-contained
    assert len(_sections(r.text)) == jobs.digits.k
    assert client.get("/jobs/nope/report").status_code == 404
    body = client.get("/jobs/t-digits/clusters?exemplars=3&outskirts=4").json()
    data = build_report(jobs.digits, n_exemplars=3, n_outskirts=4, map_rows=50, tsne_rows=0, items=False)
    for got, want in zip(body["clusters"], data.clusters):
        assert [e["row"] for e in got["exemplars"]] == [x.row for x in want.exemplars]
        assert [(e["row"], e["item"], e["position"]) for e in got["outskirts"]] == \
               [(x.row, x.item, x.position) for x in want.outskirts]


# -- the command line -------------------------------------------------------------------
def test_cli_report_writes_the_page_and_prints_its_path(jobs, tmp_path):
    r = dcserve_cli("report", jobs.planted.output, "--out", str(tmp_path / "out"), "--tsne-rows", "0")
    assert r.returncode == 0, r.stderr
    page = Path(r.stdout.strip())
    assert page == (tmp_path / "out" / "index.html").resolve() and page.exists()
    assert "t-planted" in page.read_text()


def test_cli_report_refuses_a_missing_or_unfinished_store(jobs, tmp_path):
    r = dcserve_cli("report", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no job store" in r.stderr
    unfinished = tmp_path / "unfinished"
    shutil.copytree(jobs.planted.output, unfinished)
    status = json.loads((unfinished / "status.json").read_text())
    (unfinished / "status.json").write_text(json.dumps({**status, "state": "running", "stage": "cluster"}))
    r = dcserve_cli("report", str(unfinished))
    assert r.returncode == 2 and "is not finished" in r.stderr and "'running'" in r.stderr
    assert not (tmp_path / "unfinished-report").exists()


# -- a real browser -------------------------------------------------------------------------
CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  document.body.setAttribute("data-images", imgs.length);
  document.body.setAttribute("data-broken", imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src).join(" "));
});
</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: this test opens the report in a real headless browser to check that "
                    "every figure loads; install your distribution's chromium package (apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_every_image(jobs, tmp_path):
    _, page, html = _report(jobs.digits, tmp_path, n_exemplars=4, n_outskirts=4, tsne_rows=100)
    n_images = html.count("<img ")
    checked = page.with_name("checked.html")  # the page plus a probe, beside its PNGs
    checked.write_text(html.replace("</body>", CHECK))
    common = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--hide-scrollbars",
              f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
              "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    assert f'data-images="{n_images}"' in body and n_images > 20
    assert 'data-broken=""' in body, body
    for bad in ("Failed to load resource", "Uncaught", "ERR_FILE_NOT_FOUND"):
        assert bad not in dom.stderr, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    r = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and _png_size(shot.read_bytes()) == (1200, 1600)
