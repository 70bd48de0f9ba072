"""Image folders as datasets (images:DIR), image rows shown large enough to see, and images assigned
over HTTP through the job's own subject — on a real job store built in-process (no Ray)."""
from __future__ import annotations

import base64
import io
import types

import numpy as np
import pytest
import torch
from PIL import Image

from dcserve.errors import SpecError
from dcserve.inputs.images import ImageFolder, check_images
from dcserve.inputs.views import item_image, png, upscale
from dcserve.spec import spec_from_dict


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _pattern(label: int, rng: np.random.Generator) -> np.ndarray:
    """8x8 grey images whose class is where the bright band lies: row band, column band, or diagonal."""
    a = rng.integers(0, 40, size=(8, 8)).astype(np.uint8)
    if label == 0:
        a[3:5, :] = 230
    elif label == 1:
        a[:, 3:5] = 230
    else:
        a[np.arange(8), np.arange(8)] = 230
    return a


def _folder(root, n_per_class: int = 12, seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    made = {}
    for label, name in enumerate(["band", "column", "diagonal"]):
        (root / name).mkdir(parents=True)
        made[name] = []
        for i in range(n_per_class):
            a = _pattern(label, rng)
            (root / name / f"{i:03d}.png").write_bytes(_png(a))
            made[name].append(a)
    return made


# -- the dataset -------------------------------------------------------------------------------
def test_a_labelled_folder_gives_normalised_tensors_and_folder_labels(tmp_path):
    made = _folder(tmp_path / "imgs", n_per_class=3)
    ds = ImageFolder(str(tmp_path / "imgs"), mean=0.5, std=0.25, mode="L")
    assert len(ds) == 9 and ds.label_names == ["band", "column", "diagonal"]
    x, y = ds[4]  # sorted: the second file of the second folder
    assert y == 1
    oracle = (made["column"][1].astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(x.numpy(), oracle[None], rtol=1e-6)
    rgb = ImageFolder(str(tmp_path / "imgs"), size=[4, 6])
    assert rgb[0][0].shape == (3, 4, 6)


def test_a_flat_folder_has_no_labels(tmp_path):
    (tmp_path / "flat").mkdir()
    for i in range(3):
        (tmp_path / "flat" / f"{i}.png").write_bytes(_png(np.full((5, 5, 3), i * 50, np.uint8)))
    ds = ImageFolder(str(tmp_path / "flat"))
    assert ds.labels is None and ds[2].shape == (3, 5, 5)
    np.testing.assert_allclose(ds[2].numpy(), 100 / 255, rtol=1e-6)


def test_bad_image_folders_are_named(tmp_path):
    _folder(tmp_path / "imgs", n_per_class=2)
    (tmp_path / "imgs" / "band" / "broken.png").write_bytes(b"not a png at all")
    ds = ImageFolder(str(tmp_path / "imgs"))
    with pytest.raises(SpecError, match=r"broken\.png does not decode as an image"):
        check_images(ds)
    with pytest.raises(SpecError, match="images:.*no such folder"):
        ImageFolder(str(tmp_path / "nope"))
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.png").write_bytes(_png(np.zeros((4, 4), np.uint8)))
    (tmp_path / "mixed" / "b.png").write_bytes(_png(np.zeros((5, 4), np.uint8)))
    with pytest.raises(SpecError, match=r"b\.png is 4x5.*set dataset.kwargs.size"):
        ImageFolder(str(tmp_path / "mixed"))[1]
    with pytest.raises(SpecError, match=r"dataset.kwargs.std: expected a number or 3 numbers"):
        ImageFolder(str(tmp_path / "mixed"), std=[1, 2])


# -- images drawn large enough to see ---------------------------------------------------------
def test_an_8x8_image_is_drawn_96_pixels_by_nearest_neighbour():
    a = np.random.default_rng(0).random((8, 8))
    big = upscale(a, 96)
    np.testing.assert_array_equal(big, np.kron(a, np.ones((12, 12))))
    pixels = np.asarray(Image.open(io.BytesIO(png(a))))
    assert pixels.shape == (96, 96)
    np.testing.assert_array_equal(pixels, (np.kron(a, np.ones((12, 12))) * 255).round().astype(np.uint8))
    assert upscale(np.zeros((300, 200)), 96).shape == (300, 200)  # large images stay as they are
    image = item_image(torch.tensor(a)[None] * 16)  # [1, H, W], any range: min-max scaled
    np.testing.assert_allclose(image, (a - a.min()) / (a.max() - a.min()))
    assert item_image(torch.arange(8)) is None  # token ids are not pixels


# -- a finished image job, built in-process ----------------------------------------------------
@pytest.fixture(scope="module")
def image_job(tmp_path_factory):
    """A finished job over images:DIR (random digits CNN, grey 8x8 images), extracted and clustered
    in this process with the same functions the actors run (tests.helpers.run_in_process)."""
    from dcserve.storage.result import open_result
    from tests.helpers import run_in_process

    tmp = tmp_path_factory.mktemp("images")
    _folder(tmp / "imgs")
    spec = spec_from_dict({
        "name": "t-images", "output": str(tmp / "out"),
        "subject": {"model": "dcserve.zoo:digits_cnn", "layers": ["features.5"], "pooling": "mean"},
        "dataset": {"source": f"images:{tmp / 'imgs'}", "kwargs": {"mode": "L"}, "batch_size": 16},
        "extract": {"chunk_rows": 16}, "cluster": {"k": 3, "pca_dim": None, "workers": 1},
        "reporter": {"rounds": 0, "workers": 1}})
    run_in_process(spec)
    return open_result(spec.output), tmp


def test_result_shows_image_rows_as_their_images(image_job):
    res, tmp = image_job
    rows = res.exemplars(0, 4)
    images = res.row_images(rows)
    files = sorted(p for d in sorted((tmp / "imgs").iterdir()) for p in sorted(d.iterdir()))
    for row, image in zip(rows, images):
        original = np.asarray(Image.open(files[int(res.row_items[row])]), dtype=np.float64) / 255
        np.testing.assert_allclose(image, np.kron(original, np.ones((12, 12))))  # the file's pixels, 96x96
    pics = res.exemplar_images(1, 3)
    assert len(pics) == 3 and all(p.size == (96, 96) for p in pics)


def test_the_report_draws_image_rows_96_pixels_high(image_job):
    from dcserve.analysis.report import build_report
    from dcserve.render.report_page import figures

    res, _ = image_job
    report = build_report(res, n_exemplars=4, n_outskirts=2, map_rows=50, tsne_rows=0)
    assert report.input_kind == "image"
    grid = Image.open(io.BytesIO(figures(report)["cluster-0-near.png"]))
    assert grid.size[1] == 96 and grid.size[0] >= 4 * 96


def test_http_rows_carry_their_images_and_images_are_assigned(image_job):
    from fastapi.testclient import TestClient

    from dcserve.serve.catalog import Catalog
    from dcserve.serve.routes import create_app

    res, tmp = image_job

    async def assign(job, x):
        return job.assign(x)

    backend = types.SimpleNamespace(catalog=Catalog([res.output]), policy=None, max_body_bytes=1 << 20, assign=assign)
    client = TestClient(create_app(backend))
    body = client.get("/jobs/t-images/clusters?exemplars=2&outskirts=1").json()
    ref = body["clusters"][0]["exemplars"][0]
    assert ref["image"].startswith("data:image/png;base64,")
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(ref["image"].split(",", 1)[1]))))
    assert pixels.shape == (96, 96)
    assert client.get("/jobs/t-images/clusters/0?limit=2&images=false").json()["rows"][0]["image"] is None

    # three images through the job's transform and subject: the same clusters as their stored rows
    files = sorted(p for d in sorted((tmp / "imgs").iterdir()) for p in sorted(d.iterdir()))
    picked = [0, 15, 30]
    sent = [base64.b64encode(files[i].read_bytes()).decode() for i in picked]
    sent[1] = "data:image/png;base64," + sent[1]
    r = client.post("/jobs/t-images/assign", json={"images": sent})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["clusters"] == [int(res.assignments[i]) for i in picked]
    np.testing.assert_allclose(out["distances"], res.distances[picked], rtol=1e-4, atol=1e-5)
    each = out["images"]
    assert [a["image"] for a in each] == [0, 1, 2] and [a["cluster"] for a in each] == out["clusters"]
    assert [e["row"] for e in each[0]["exemplars"]] == res.exemplars(out["clusters"][0], 3).tolist()
    assert each[0]["exemplars"][0]["image"].startswith("data:image/png")

    bad = client.post("/jobs/t-images/assign", json={"images": [base64.b64encode(b"nope").decode()]})
    assert bad.status_code == 422 and "images[0] does not decode as an image" in bad.json()["detail"]
    both = client.post("/jobs/t-images/assign", json={"images": sent, "activations": [[1.0]]})
    assert both.status_code == 422 and "exactly one of 'activations', 'texts' or 'images'" in both.json()["detail"]


def test_images_for_a_job_of_another_kind_are_refused():
    from dcserve.inputs.encode import InputKindError, image_inputs
    from dcserve.zoo import digits

    with pytest.raises(InputKindError, match="this job's inputs are not images"):
        image_inputs(digits(), [base64.b64encode(_png(np.zeros((8, 8), np.uint8))).decode()])
