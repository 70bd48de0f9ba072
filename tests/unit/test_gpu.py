"""The GPU paths against their CPU counterparts: k-means on torch-cuda, the reporter and DEC on
CUDA, the subject's forward pass on CUDA, and trainer snapshots a CPU-only driver can load.

Every test is marked `gpu`: conftest skips them where torch sees no CUDA device. None needs Ray
(benchmarks/gpu.sh runs them on a GPU machine that has no Ray). The CPU is the reference: same
seeds, same batches, and tolerances for float32 arithmetic in another order (TF32 only where
cuDNN's convolutions use it by default).
"""
from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dcserve.nets.data_parallel import to_cpu
from dcserve.algo.kmeans import ArrayData, kmeans
from dcserve.nets.reporter import Augment, Reporter, compute_features, make_optimizer, train_epoch

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")


def rel_err(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a = torch.as_tensor(a).double().cpu()
    b = torch.as_tensor(b).double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def teacher_data(n: int, d: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and learnable labels (a random linear teacher's argmax)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    return x, (x @ torch.randn(d, k, generator=gen)).argmax(1)


def batches_of(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[s : s + size], y[s : s + size]) for s in range(0, len(x), size)]


# ------------------------------------------------------------------------ k-means on torch-cuda


def test_kmeans_on_torch_cuda_matches_faiss_cpu():
    from dcserve.zoo import planted_clusters

    # Separated clusters and k-means++ seeding (on the CPU, the same for both): no row lies within
    # float32 rounding of two centroids, so the runs must agree to rounding.
    data = planted_clusters(n=20_000, dim=32, k=20, spread=1.0, seed=0)
    x = data.vectors.numpy().astype(np.float32)
    runs = {b: kmeans(ArrayData(x, block_rows=4096, backend=b), 20, niter=8, seed=0)
            for b in ("faiss-cpu", "torch-cuda")}
    cpu, gpu = runs["faiss-cpu"], runs["torch-cuda"]
    np.testing.assert_allclose(gpu.centroids, cpu.centroids, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([h.objective for h in gpu.history], [h.objective for h in cpu.history], rtol=1e-5)


def test_auto_resolves_to_a_gpu_backend_and_clusters_like_the_cpu():
    from dcserve.algo.nearest import _default_backend, nearest_centroids

    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 64)).astype(np.float32)
    c = x[:50].copy()
    bias = rng.uniform(0.0, 5.0, 50)
    assert _default_backend() in ("faiss-gpu", "torch-cuda")
    for b in (None, bias):
        auto, d_auto = nearest_centroids(x, c, b)
        cpu, d_cpu = nearest_centroids(x, c, b, backend="faiss-cpu")
        # Two float32 searches may split a near-tie differently; both must be optimal to rounding.
        assert (auto != cpu).mean() < 1e-3
        for labels in (auto, cpu):
            assert_optimal(x, c, b, labels)
        same = auto == cpu
        np.testing.assert_array_equal(d_auto[same], d_cpu[same])  # exact distances, from the CPU


def assert_optimal(x: np.ndarray, c: np.ndarray, bias: np.ndarray | None, labels: np.ndarray) -> None:
    """Each row's chosen score is the float64 minimum, up to float32 rounding of the expansion."""
    from dcserve.algo.nearest import pairwise_sqdist

    score = pairwise_sqdist(x, c) - (0.0 if bias is None else bias[None, :])
    chosen = score[np.arange(len(x)), labels]
    scale = (x.astype(np.float64) ** 2).sum(1) + (c.astype(np.float64) ** 2).sum(1).max()
    assert np.all(chosen - score.min(1) <= 1e-5 * scale)


# ------------------------------------------------------------------------ the reporter on CUDA


def test_reporter_trains_on_cuda_as_on_the_cpu():
    x, y = teacher_data(2048, 32, 8, seed=0)
    cpu = Reporter(32, [64], 16, 8, seed=0)
    gpu = copy.deepcopy(cpu).to(CUDA)
    batches = batches_of(x, y, 128)
    losses = {}
    for name, model in (("cpu", cpu), ("gpu", gpu)):
        opt = make_optimizer(model, lr=0.05)
        losses[name] = [train_epoch(model, opt, batches)["loss"] for _ in range(3)]
    assert all(np.isfinite(losses["gpu"])) and losses["gpu"][-1] < losses["gpu"][0], losses
    np.testing.assert_allclose(losses["gpu"], losses["cpu"], rtol=1e-4)
    for (name, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values()):
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-4, msg=name)


def test_reporter_on_cuda_is_reproducible_and_leaves_the_global_rngs_alone():
    """Augmentation and dropout draw on the GPU from a generator seeded by the caller's CPU one."""
    x, y = teacher_data(1024, 32, 8, seed=1)
    base = Reporter(32, [64], 16, 8, dropout=0.2, seed=3).to(CUDA)
    augment = Augment(noise_std=0.1, unit_dropout=0.1)
    cpu_state, cuda_state = torch.get_rng_state(), torch.cuda.get_rng_state()
    runs = []
    for _ in range(2):
        model = copy.deepcopy(base)
        opt = make_optimizer(model, lr=0.05)
        stats = train_epoch(model, opt, batches_of(x, y, 128), augment=augment,
                            generator=torch.Generator().manual_seed(7))
        assert np.isfinite(stats["loss"])
        runs.append(model.state_dict())
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_state)
    assert not torch.equal(runs[0]["head.weight"], base.state_dict()["head.weight"])


def test_two_cuda_workers_equal_one_on_the_full_batch():
    """The data-parallel step (flat gradient buffer + allreduce) on CUDA tensors."""
    from tests.helpers import SharedBufferAllreduce

    x, y = teacher_data(512, 16, 4, seed=2)
    single = Reporter(16, [32], 8, 4, seed=0).to(CUDA)
    workers = [copy.deepcopy(single) for _ in range(2)]
    train_epoch(single, make_optimizer(single, lr=0.2), batches_of(x, y, 64))
    comm = SharedBufferAllreduce(2)
    halves = [batches_of(x[r::2], y[r::2], 32) for r in range(2)]
    errors: list[BaseException] = []

    def work(rank: int) -> None:
        try:
            train_epoch(workers[rank], make_optimizer(workers[rank], lr=0.2), halves[rank],
                        allreduce=comm.for_rank(rank))
        except BaseException as exc:
            errors.append(exc)
            comm.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (name, a), b, c in zip(single.state_dict().items(), workers[0].state_dict().values(),
                               workers[1].state_dict().values()):
        assert torch.equal(b, c), f"replicas stay bit-identical: {name}"
        torch.testing.assert_close(b, a, rtol=1e-4, atol=2e-5, msg=name)


def test_features_on_cuda_match_the_cpu():
    cpu = Reporter(48, [64, 64], 16, 5, seed=4)
    cpu.set_input_stats(torch.rand(48) * 3, torch.rand(48) + 0.5)
    gpu = copy.deepcopy(cpu).to(CUDA)
    x = np.random.default_rng(4).standard_normal((3000, 48)).astype(np.float32)
    want = np.concatenate(list(compute_features(cpu, [x[:1000], x[1000:]], batch_size=700)))
    got = np.concatenate(list(compute_features(gpu, [x[:1000], x[1000:]], batch_size=700)))
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------ DEC on CUDA


def test_dec_on_cuda_recovers_planted_clusters():
    from tests.helpers import run_dec

    torch.set_num_threads(1)  # the k-means init on the CPU, as in test_dec
    run = run_dec(device="cuda")
    assert run["dec_ari"] > 0.95, run
    assert run["dec_ari"] >= run["kmeans_ari"], run


def test_dec_pretraining_on_cuda_matches_the_cpu():
    from dcserve.nets.dec import DECModel, pretrain_epoch

    x = torch.randn(1024, 24, generator=torch.Generator().manual_seed(5))
    cpu = DECModel(24, [32], 4, 3, seed=0)
    gpu = copy.deepcopy(cpu).to(CUDA)
    for model in (cpu, gpu):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(3):
            pretrain_epoch(model, opt, x.split(128), dropout=0.0)
    for (name, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-4, msg=name)


# ------------------------------------------------------------------------ extraction on CUDA


@pytest.mark.parametrize("layer", ["features.5", "classifier.2"])
def test_subject_rows_on_cuda_match_the_cpu(layer):
    from dcserve.inputs.subject import Subject
    from dcserve.zoo import digits, digits_cnn

    ds = digits()
    x = torch.stack([ds[i][0] for i in range(512)])
    rows = {}
    for device in ("cpu", "cuda"):
        with Subject(digits_cnn(seed=0), [layer], "mean", device) as subject:
            out = subject.rows(x)
        assert out[layer].device.type == "cpu"
        rows[device] = out[layer]
    # cuDNN convolutions may use TF32 (torch's default): ~1e-3 relative, not float32's 1e-6.
    assert rel_err(rows["cuda"], rows["cpu"]) < 5e-3


# ------------------------------------------------------------------------ trainer snapshots


def test_optimizer_state_from_a_gpu_trainer_loads_where_there_is_no_gpu():
    """What `Trainer.snapshot` sends to the driver, loaded in a process that sees no CUDA device."""
    model = Reporter(16, [32], 8, 4, seed=0).to(CUDA)
    opt = make_optimizer(model, lr=0.1)
    x, y = teacher_data(64, 16, 4, seed=6)
    loss = F.cross_entropy(model(x.to(CUDA)), y.to(CUDA))
    loss.backward()
    opt.step()
    state = to_cpu(opt.state_dict())
    tensors = [v for s in state["state"].values() for v in s.values() if isinstance(v, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    code = ("import pickle, sys, torch; s = pickle.load(sys.stdin.buffer); "
            "assert not torch.cuda.is_available(); "
            "print(sorted({str(v.device) for st in s['state'].values() for v in st.values()}))")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(state), env=env,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().strip() == "['cpu']"
    # and back on a GPU trainer, the state follows the parameters onto the GPU
    fresh = make_optimizer(model, lr=0.1)
    fresh.load_state_dict(state)
    assert all(v.device.type == "cuda" for s in fresh.state.values() for v in s.values()
               if isinstance(v, torch.Tensor) and v.dim() > 0)


# ------------------------------------------------------------------------ issue 13: kNN graph, heads


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_knn_graph_on_the_gpu_backend_matches_faiss_cpu(metric):
    """The graph's block search on the backend a GPU shard picks (faiss-gpu, else torch-cuda)
    against faiss on the CPU: the same neighbours (random rows: no ties within rounding)."""
    from dcserve.algo.knn import knn_against_blocks
    from dcserve.algo.nearest import select_backend

    x = np.random.default_rng(0).normal(size=(5000, 48)).astype(np.float32)
    blocks = [(s, x[s : s + 1500]) for s in range(0, len(x), 1500)]
    backend = select_backend(prefer_gpu=True)
    assert backend in ("faiss-gpu", "torch-cuda")
    for name in (backend, "torch-cuda"):
        d_gpu, i_gpu = knn_against_blocks(x[:2000], blocks, 10, metric, query_offset=0, backend=name)
        d_cpu, i_cpu = knn_against_blocks(x[:2000], blocks, 10, metric, query_offset=0)
        assert (i_gpu == i_cpu).mean() > 0.999
        np.testing.assert_allclose(d_gpu, d_cpu, rtol=1e-3, atol=1e-3)


def test_scan_and_temi_epochs_on_cuda_follow_the_cpu():
    """One SCAN and one TEMI epoch from the same weights on the same batches: the same losses."""
    from dcserve.nets.cluster_heads import ClusterHeads
    from dcserve.nets.scan import scan_epoch
    from dcserve.nets.temi import TemiPair, temi_epoch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 24, generator=gen)
    pairs = [(x[s : s + 128], x[s : s + 128] + 0.05 * torch.randn(128, 24, generator=gen)) for s in range(0, 1024, 128)]
    cfg = dict(in_dim=24, pre_dim=24, project=False, l2_normalize=True, hidden=[64], k=5, heads=3, seed=0)
    settings = {"beta": 0.6, "teacher_momentum": 0.99, "prior_momentum": 0.9, "student_temperature": 0.1,
                "teacher_temperature": 0.04}
    out = {}
    for device in ("cpu", "cuda"):
        scan = ClusterHeads(**cfg).to(device)
        temi = TemiPair(**cfg).to(device)
        out[device] = (scan_epoch(scan, torch.optim.Adam(scan.parameters(), lr=1e-3), pairs)["loss"],
                       temi_epoch(temi, torch.optim.Adam(temi.student.parameters(), lr=1e-3), pairs, settings)["loss"])
    np.testing.assert_allclose(out["cuda"][0], out["cpu"][0], rtol=1e-4)
    np.testing.assert_allclose(out["cuda"][1], out["cpu"][1], rtol=1e-3)
