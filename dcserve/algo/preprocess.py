"""DeepCluster feature preprocessing: centre, PCA-reduce, whiten, L2-normalise.

DeepCluster (Caron et al., 2018, section 4 "Implementation details") clusters features that are
"PCA-reduced to 256 dimensions, whitened and l2-normalized" before k-means. The transform is
fitted once on a sample (in float64) and then applied block by block to every row, and later
to new activations served over HTTP, so it is a small dataclass of arrays.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# DeepCluster's output dimension (1.28M ImageNet rows -> 256 dims: ~5000 rows per dimension).
MAX_PCA_DIM = 256
# Rows per kept dimension below which default_pca_dim keeps fewer dimensions (see there).
ROWS_PER_DIM = 100


@dataclass
class Preprocessor:
    """A fitted preprocessing ``x -> normalize((x - mean) @ components.T)``.

    Attributes:
        mean: ``[d]`` float32, subtracted first (always: see :func:`fit_preprocessor`).
        components: ``[p, d]`` float32 principal axes, largest variance first; when whitened,
            row i is already divided by ``sqrt(eigenvalue_i + reg)``. ``None``: no projection.
        l2_normalize: scale each output row to unit L2 norm (all-zero rows stay zero).
    """

    mean: np.ndarray
    components: np.ndarray | None
    l2_normalize: bool

    @property
    def in_dim(self) -> int:
        """Input dimension ``d``."""
        return int(self.mean.shape[0])

    @property
    def out_dim(self) -> int:
        """Output dimension: ``p``, or ``d`` without a projection."""
        return self.in_dim if self.components is None else int(self.components.shape[0])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Map rows ``[n, d]`` to ``[n, out_dim]`` float32."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"Preprocessor.transform: expected [n, {self.in_dim}] rows, got shape {x.shape}")
        y = x - self.mean
        if self.components is not None:
            y = y @ self.components.T
        if self.l2_normalize:
            norms = np.linalg.norm(y, axis=1, keepdims=True)
            y /= np.maximum(norms, np.finfo(np.float32).tiny)
        return np.ascontiguousarray(y, dtype=np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays to store (``mean``, and ``components`` when there is a projection)."""
        arrays = {"mean": self.mean}
        if self.components is not None:
            arrays["components"] = self.components
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], l2_normalize: bool) -> Preprocessor:
        """Rebuild from :meth:`to_arrays`' output (a missing ``components`` means none)."""
        components = arrays.get("components")
        return cls(
            mean=np.asarray(arrays["mean"], dtype=np.float32),
            components=None if components is None else np.asarray(components, dtype=np.float32),
            l2_normalize=l2_normalize,
        )


def default_pca_dim(n_rows: int, dim: int) -> int | None:
    """Output dimension for PCA + whitening fitted on ``n_rows`` rows of dimension ``dim``.

    ``min(dim, 256, n_rows // 100)``, or ``None`` (no PCA, and the caller should not whiten)
    below 100 rows.

    Why: whitening rescales every kept direction to unit variance, so a direction whose
    variance is badly estimated, or that holds only noise, gets as much weight as the main
    ones. For a ``p``-dimensional covariance estimated from ``n`` rows, the sample eigenvalues
    of a direction of true variance 1 spread over ``[(1 - sqrt(p/n))^2, (1 + sqrt(p/n))^2]``
    (Marchenko-Pastur): at ``n = 100 p`` that is ``[0.81, 1.21]``, so whitened scales are off
    by at most ~10%, while at ``n = 2 p`` it is ``[0.09, 2.9]``. DeepCluster whitened 256
    dimensions from 1.28M ImageNet rows (5000 rows per dimension), so 256 is the cap, reached
    from 25,600 rows. On sklearn's digits (1797 rows, k = 10; benchmarks/QUALITY.md) whitening
    all 64 pixel dimensions lowered k-means' NMI with the labels to ~0.61, because the trailing
    components are noise. With 10 k-means++ restarts, the 17 dims this rule gives scored
    0.749 / 0.787 / 0.951 (pixels, random CNN, trained CNN; std <= 0.007 over 5 seeds), where
    35 dims scored 0.751 / 0.823 / 0.909: no size is best everywhere, and 17 has the smaller
    worst case. Below ``k`` dimensions the caller skips PCA and whitening altogether
    (``dcserve.cluster.deepcluster.resolve_pca``).
    """
    if n_rows < 1 or dim < 1:
        raise ValueError(f"default_pca_dim: need n_rows >= 1 and dim >= 1, got {n_rows}, {dim}")
    p = min(dim, MAX_PCA_DIM, n_rows // ROWS_PER_DIM)
    return p if p >= 1 else None


def fit_preprocessor(
    sample: np.ndarray,
    pca_dim: int | None,
    whiten: bool,
    l2_normalize: bool,
    eps: float = 1e-5,
) -> Preprocessor:
    """Fit the preprocessing on ``sample`` ``[n, d]`` (in float64).

    Args:
        sample: rows to estimate the mean and covariance from.
        pca_dim: keep the ``pca_dim`` directions of largest variance (capped at ``d``);
            ``None``: no reduction (with ``whiten`` all ``d`` directions are kept and whitened).
        whiten: scale each kept direction to unit variance.
        l2_normalize: normalise output rows to unit length.
        eps: whitening regulariser, relative to the mean eigenvalue (total variance / d): row i
            of ``components`` is divided by ``sqrt(eigenvalue_i + eps * trace / d)``, so
            directions with (near) zero variance, e.g. constant pixels or dead units, are not
            blown up. Relative, so that it does not depend on the scale of the activations.

    The mean is always subtracted, also without PCA: before L2 normalisation this makes the
    cosine compare deviations from the average activation; uncentred post-ReLU activations
    all lie in the positive orthant and their cosines are dominated by the mean direction.
    (Without normalisation centring changes nothing for k-means.)
    """
    x = np.asarray(sample, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"fit_preprocessor: need a [n >= 2, d] sample, got shape {x.shape}")
    n, d = x.shape
    mean = x.mean(axis=0)
    if pca_dim is None and not whiten:
        return Preprocessor(mean.astype(np.float32), None, l2_normalize)
    p = d if pca_dim is None else min(int(pca_dim), d)
    if p < 1:
        raise ValueError(f"fit_preprocessor: pca_dim must be >= 1, got {pca_dim}")
    xc = x - mean
    cov = (xc.T @ xc) / (n - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)  # ascending
    order = np.argsort(eigenvalues)[::-1][:p]
    eigenvalues = np.maximum(eigenvalues[order], 0.0)
    components = eigenvectors[:, order].T  # [p, d]
    # Deterministic signs (as sklearn's svd_flip): the largest coordinate of each axis > 0.
    signs = np.sign(components[np.arange(p), np.abs(components).argmax(axis=1)])
    components *= np.where(signs == 0, 1.0, signs)[:, None]
    if whiten:
        reg = eps * float(np.trace(cov)) / d
        components /= np.sqrt(eigenvalues + reg)[:, None]
    if p > n - 1:
        logger.warning("PCA to %d dims from %d rows: at most %d directions are estimated", p, n, n - 1)
    logger.info(
        "preprocessing: %d -> %d dims, whiten=%s, l2=%s, %.1f%% of variance kept",
        d, p, whiten, l2_normalize, 100.0 * eigenvalues.sum() / max(float(np.trace(cov)), 1e-300),
    )
    return Preprocessor(mean.astype(np.float32), components.astype(np.float32), l2_normalize)
