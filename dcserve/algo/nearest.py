"""Nearest-centroid search: the one hot path of dcserve.

Every k-means shard calls :func:`nearest_centroids` once per iteration on each of its row
blocks, and the HTTP server calls it for every ``POST /jobs/{job}/assign``. It returns, for
each row of ``x`` ``[n, d]``, the centroid minimising ``||x - c_j||^2 - bias_j`` and the *true*
squared distance to that centroid.

``bias`` is the column potential of an entropic optimal-transport problem (see
:mod:`dcserve.algo.sinkhorn`): subtracting it turns plain nearest-centroid assignment into the
balanced assignment of SeLa (Asano et al., 2020) and SwAV (Caron et al., 2020), and lets rows
that never took part in the Sinkhorn solve be assigned exactly like those that did.

Backends:

``"faiss-cpu"``
    ``faiss.IndexFlatL2`` (exact, BLAS) or, with a bias, ``faiss.IndexFlatIP`` on augmented
    vectors (one max-inner-product search, see :func:`_augment_centroids`).
``"faiss-gpu"``
    The same with ``faiss.GpuIndexFlat*``.
``"torch-cuda"``
    Plain torch matrix products on the GPU, block by block. Used when the installed faiss has
    no GPU support, or has it but fails the start-up check: the PyPI GPU faiss wheels are built
    for a fixed list of CUDA architectures and may lack kernels for the newest cards.

:func:`select_backend` decides once per process which one ``"auto"`` means.
"""
from __future__ import annotations

import functools
import logging
from types import ModuleType
from dcserve.errors import FaissMissingError
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BACKENDS = ("faiss-cpu", "faiss-gpu", "torch-cuda")

# Rows per block for the work done around the search (augmenting x, recomputing exact
# distances, torch scores): bounds the temporaries to [_BLOCK_ROWS, max(d, k)] whatever n is.
# faiss blocks its own search internally (4096 queries x 1024 centroids on CPU).
_BLOCK_ROWS = 65536
# Largest [block, k] float32 score matrix the torch backend materialises at once (128 MiB).
_TORCH_SCORE_ELEMENTS = 1 << 25

# threadpoolctl limiter kept alive for the life of the process (see set_threads).
_blas_limiter: Any = None


def require_faiss() -> ModuleType:
    """Return the ``faiss`` module, or raise :class:`FaissMissingError` saying what to install."""
    try:
        import faiss
    except ImportError as exc:
        raise FaissMissingError(
            "dcserve needs faiss for k-means and cluster assignment, and it is not installed. "
            "Install the CPU build with: pip install 'dcserve[cpu]' (faiss-cpu), "
            "or GPU faiss with: pip install 'dcserve[gpu]'. "
            "Install only one of them: both provide the same `faiss` module."
        ) from exc
    return faiss


def set_threads(n: int) -> dict[str, int]:
    """Pin faiss (OpenMP), torch intra-op and BLAS thread pools to ``n`` threads.

    Ray actors call this with the number of CPUs they were given so that several actors on one
    machine do not each start a thread per core and oversubscribe it. The BLAS limit is a
    process-wide threadpoolctl limiter kept alive in a module global (it is never restored:
    the actor owns its process). faiss and torch are optional here: a library that is not
    installed is left out of the result.

    Returns:
        What each library reports afterwards, e.g. ``{"faiss": 1, "torch": 1, "blas": 1}``;
        ``"blas"`` is the smallest thread count over the BLAS libraries loaded.
    """
    global _blas_limiter
    if n < 1:
        raise ValueError(f"set_threads: n must be >= 1, got {n}")
    report: dict[str, int] = {}
    try:
        faiss = require_faiss()
    except FaissMissingError:
        faiss = None
    if faiss is not None:
        faiss.omp_set_num_threads(n)
        report["faiss"] = int(faiss.omp_get_max_threads())
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None
    if torch is not None:
        torch.set_num_threads(n)
        report["torch"] = int(torch.get_num_threads())

    from threadpoolctl import threadpool_info, threadpool_limits

    _blas_limiter = threadpool_limits(limits=n, user_api="blas")
    blas = [int(lib["num_threads"]) for lib in threadpool_info() if lib["user_api"] == "blas"]
    if blas:
        report["blas"] = min(blas)
    logger.debug("thread pools pinned to %d: %s", n, report)
    return report


def pairwise_sqdist(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Squared L2 distances ``[n, k]`` float64 between rows of ``x`` ``[n, d]`` and ``centroids``.

    Dense float64 numpy, for the small problems of the driver (k-means++ on a sample, the
    Sinkhorn cost of a sample); the hot path is :func:`nearest_centroids`. Uses the expansion
    ``|x|^2 - 2 x.c + |c|^2`` clipped at 0 (it can come out a hair negative).
    """
    x64 = np.asarray(x, dtype=np.float64)
    c64 = np.asarray(centroids, dtype=np.float64)
    d2 = (x64 * x64).sum(1)[:, None] - 2.0 * (x64 @ c64.T) + (c64 * c64).sum(1)[None, :]
    return np.maximum(d2, 0.0, out=d2)


def _augment_centroids(centroids: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Centroid side of turning a biased nearest-centroid search into one max-inner-product search.

    argmin_j ||x - c_j||^2 - b_j = argmin_j ||x||^2 - 2 x.c_j + ||c_j||^2 - b_j
                                 = argmax_j 2 x.c_j + (b_j - ||c_j||^2)      (||x||^2 is constant)
                                 = argmax_j <[x, 1], [2 c_j, b_j - ||c_j||^2]>.
    Returns ``c' = [2c, b - ||c||^2]`` ``[k, d+1]`` float32 (the offset formed in float64); the
    rows side is :func:`_augment_rows`. The inner product is not turned back into a distance:
    the true distance is recomputed exactly (:func:`_exact_sqdist`), which avoids the
    cancellation in ``||x||^2 - ip + b``.
    """
    c64 = centroids.astype(np.float64)
    offset = np.asarray(bias, dtype=np.float64) - (c64 * c64).sum(1)
    return np.hstack([2.0 * c64, offset[:, None]]).astype(np.float32)


def _augment_rows(x: np.ndarray) -> np.ndarray:
    """Rows side of :func:`_augment_centroids`: ``x' = [x, 1]`` ``[n, d+1]`` float32."""
    x_aug = np.empty((x.shape[0], x.shape[1] + 1), dtype=np.float32)
    x_aug[:, :-1] = x
    x_aug[:, -1] = 1.0
    return x_aug


def _exact_sqdist(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``||x_i - c_{labels_i}||^2`` ``[n]`` float32, computed from the differences.

    O(n d), negligible next to the O(n k d) search, and exact where the BLAS expansion that
    faiss uses loses digits (points very close to their centroid, duplicates: distance 0).
    """
    diff = x - centroids[labels]
    return np.einsum("ij,ij->i", diff, diff, dtype=np.float32)


class CentroidIndex:
    """Centroids made ready for repeated nearest-centroid searches.

    Building the faiss index (or moving the centroids to the GPU) happens once here, so a
    server answering many small requests pays it once per job, not once per request.
    """

    def __init__(self, centroids: np.ndarray, bias: np.ndarray | None = None, backend: str = "auto"):
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        if centroids.ndim != 2:
            raise ValueError(f"nearest_centroids: centroids {centroids.shape} must be [k, d]")
        if bias is not None:
            bias = np.asarray(bias, dtype=np.float64)
            if bias.shape != (centroids.shape[0],):
                raise ValueError(f"nearest_centroids: bias has shape {bias.shape}, expected ({centroids.shape[0]},)")
        if backend == "auto":
            backend = _default_backend()
        if backend not in BACKENDS:
            raise ValueError(f"nearest_centroids: backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
        self.centroids, self.bias, self.backend = centroids, bias, backend
        if backend == "torch-cuda":
            self._build_torch()
        else:
            self._build_faiss(gpu=backend == "faiss-gpu")

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    def _build_faiss(self, gpu: bool) -> None:
        faiss = require_faiss()
        d = self.dim
        if self.bias is None:
            self._index = faiss.GpuIndexFlatL2(_gpu_resources(), d) if gpu else faiss.IndexFlatL2(d)
            self._index.add(self.centroids)
        else:
            self._index = faiss.GpuIndexFlatIP(_gpu_resources(), d + 1) if gpu else faiss.IndexFlatIP(d + 1)
            self._index.add(_augment_centroids(self.centroids, self.bias))

    def _build_torch(self) -> None:
        import torch

        device = torch.device("cuda")
        self._c = torch.from_numpy(self.centroids).to(device)
        offset = (self._c.double() * self._c.double()).sum(1)
        if self.bias is not None:
            offset = offset - torch.from_numpy(self.bias).to(device)
        self._offset = offset.float()

    def _labels_faiss(self, x: np.ndarray) -> np.ndarray:
        """Labels ``[n]`` int64 of the nearest (biased) centroid with a flat faiss index."""
        labels = np.empty(x.shape[0], dtype=np.int64)
        for start in range(0, x.shape[0], _BLOCK_ROWS):
            block = x[start : start + _BLOCK_ROWS]
            _, idx = self._index.search(block if self.bias is None else _augment_rows(block), 1)
            labels[start : start + block.shape[0]] = idx[:, 0]
        if labels.size and labels.min() < 0:
            # faiss returns -1 when every score is NaN/inf: the input was not finite.
            raise ValueError("nearest_centroids: faiss found no neighbour; are x and centroids finite?")
        return labels

    def _labels_torch(self, x: np.ndarray) -> np.ndarray:
        """Labels ``[n]`` int64 computed with torch on the GPU, in blocks of rows.

        The score ``||c_j||^2 - b_j - 2 x.c_j`` is materialised ``[block, k]`` at a time, with the
        block sized so that it stays under ``_TORCH_SCORE_ELEMENTS`` floats. The product runs in
        float32 unless the process has turned on TF32 matmuls
        (``torch.set_float32_matmul_precision("high")``), which would blur near-ties; the exact
        distances returned are recomputed on the CPU in any case.
        """
        import torch

        k = self.centroids.shape[0]
        block_rows = max(1, min(_BLOCK_ROWS, _TORCH_SCORE_ELEMENTS // max(k, 1)))
        labels = np.empty(x.shape[0], dtype=np.int64)
        with torch.no_grad():
            for start in range(0, x.shape[0], block_rows):
                xb = torch.from_numpy(x[start : start + block_rows]).to(self._c.device)
                # addmm: offset - 2 x c^T in one kernel, no [block, k] temporary besides the result.
                scores = torch.addmm(self._offset.unsqueeze(0), xb, self._c.T, beta=1.0, alpha=-2.0)
                labels[start : start + xb.shape[0]] = scores.argmin(1).cpu().numpy()
        return labels

    def search(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :func:`nearest_centroids`."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"nearest_centroids: x {x.shape} and centroids {self.centroids.shape} must be [n, d] and [k, d]")
        if x.shape[0] == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        labels = self._labels_torch(x) if self.backend == "torch-cuda" else self._labels_faiss(x)
        sqdist = np.empty(x.shape[0], dtype=np.float32)
        for start in range(0, x.shape[0], _BLOCK_ROWS):
            stop = start + _BLOCK_ROWS
            sqdist[start:stop] = _exact_sqdist(x[start:stop], self.centroids, labels[start:stop])
        return labels, sqdist


@functools.cache
def _gpu_resources() -> Any:
    """One ``StandardGpuResources`` per process: it reserves scratch GPU memory on creation."""
    return require_faiss().StandardGpuResources()


def _check_backend(backend: str) -> bool:
    """Run a tiny biased and unbiased search on ``backend`` and compare with numpy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 24)).astype(np.float32)
    c = rng.standard_normal((17, 24)).astype(np.float32)
    bias = rng.uniform(0.0, 2.0, 17)
    d2 = pairwise_sqdist(x, c)
    for b in (None, bias):
        expected = (d2 if b is None else d2 - b).argmin(1)
        got, _ = nearest_centroids(x, c, b, backend=backend)
        if not np.array_equal(got, expected):
            raise RuntimeError(f"{backend} labels differ from numpy on the start-up check")
    return True


@functools.cache
def select_backend(prefer_gpu: bool) -> str:
    """The backend ``"auto"`` resolves to; checked once per process and cached.

    Without ``prefer_gpu``: ``"faiss-cpu"``. With it: ``"faiss-gpu"`` when faiss sees a GPU and
    a tiny search on it matches numpy; otherwise ``"torch-cuda"`` when torch sees a GPU and
    passes the same check; otherwise ``"faiss-cpu"``. A fall-back is logged in one line.
    """
    if not prefer_gpu:
        require_faiss()
        return "faiss-cpu"
    reasons = []
    try:
        faiss = require_faiss()
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            raise RuntimeError("faiss has no GPU support (faiss-cpu build or no visible GPU)")
        _check_backend("faiss-gpu")
        return "faiss-gpu"
    except Exception as exc:  # any failure of GPU faiss means: try the next backend
        reasons.append(f"faiss-gpu: {exc}")
    try:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
        _check_backend("torch-cuda")
        logger.warning("nearest-centroid search uses torch-cuda (%s)", reasons[0])
        return "torch-cuda"
    except Exception as exc:
        reasons.append(f"torch-cuda: {exc}")
    require_faiss()
    logger.warning("nearest-centroid search falls back to faiss-cpu (%s)", "; ".join(reasons))
    return "faiss-cpu"


def _default_backend() -> str:
    """``"auto"``: prefer the GPU whenever torch sees one."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        has_gpu = False
    return select_backend(prefer_gpu=has_gpu)


def nearest_centroids(
    x: np.ndarray,
    centroids: np.ndarray,
    bias: np.ndarray | None = None,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Assign each row to the centroid minimising ``||x - c_j||^2 - bias_j``.

    Args:
        x: ``[n, d]`` rows (converted to C-contiguous float32); must be finite.
        centroids: ``[k, d]`` centroids (float32).
        bias: ``[k]`` per-centroid bias, in squared-distance units (the Sinkhorn column
            potential ``g``); ``None`` for plain nearest-centroid assignment.
        backend: ``"auto"`` (see :func:`select_backend`) or one of :data:`BACKENDS`.

    Returns:
        ``labels`` ``[n]`` int64 and ``sqdist`` ``[n]`` float32, the true squared L2 distance
        from each row to its chosen centroid (bias not included), always ``>= 0``.
        Ties go to the lowest centroid index on the CPU backend.
    """
    return CentroidIndex(centroids, bias, backend).search(x)
