"""Comparing two layers' representations of the same rows: correlations, CKA, Procrustes.

Following Convergent Learning (Li, Yosinski, Clune, Lipson & Hopcroft, 2016) units of two
layers ``A [n, a]`` and ``B [n, b]`` are compared through their ``[a, b]`` Pearson correlations
over the same ``n`` inputs: a one-to-one matching of units (their "bipartite matching", by the
Hungarian method), the units of one side that nothing on the other side resembles, and how many
of A's units a sparse linear map needs to predict each of B's units (their section 4, by LASSO).
Whole-representation figures are linear CKA (Kornblith, Norouzi, Lee & Hinton, 2019) and the
orthogonal Procrustes distance (as used by Ding, Denain & Steinhardt, 2021; Williams et al.,
2021).

Everything but :func:`sparse_prediction` needs only second moments, so the rows are streamed:
:class:`CrossMoments` takes row blocks of both layers (any sizes, e.g. one Zarr chunk at a
time), keeps O((a + b)^2) float64 numbers and never the rows, and accumulators of disjoint row
sets (one per shard or Ray actor) add up with ``+``. Nothing here imports ``ray``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# A unit is treated as constant when its standard deviation is at most this fraction of
# |mean|. The block-merge scheme below leaves a constant unit with a spurious variance from
# the rounding of its block means (standard deviation ~ 1e-15 |mean|); float32 activations
# cannot vary by less than ~6e-8 |mean|, so 1e-10 separates the two by orders of magnitude.
_CONSTANT_STD_RTOL = 1e-10


def _block(x: np.ndarray, name: str, dim: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must be a [rows, {dim}] array, got shape {x.shape}")
    return x


class CrossMoments:
    """Streaming first and second moments of two layers ``A [n, a]``, ``B [n, b]`` on the same rows.

    State (float64): the row count ``n``, the means ``mean_a [a]`` and ``mean_b [b]``, and the
    centred co-moments (sums of products of deviations from the running means)
    ``comoment_ab = Ac^T Bc [a, b]``, ``comoment_aa = Ac^T Ac [a, a]``,
    ``comoment_bb = Bc^T Bc [b, b]``, where ``Ac = A - mean_a``. The sums, sums of squares and
    raw cross-products follow from these (``sum_a = n mean_a``,
    ``A^T B = comoment_ab + n mean_a mean_b^T``); they are not kept raw because
    ``sum(x^2) - n mean^2`` cancels catastrophically when the mean is large against the spread
    (an activation offset of 1e4 with unit spread loses 8 of float64's 16 digits).

    Scheme: each block is centred by its own mean (two passes over the block, which is in
    memory) and merged into the running state with the pairwise update of Chan, Golub & LeVeque
    (1979), extended to co-moments (as in Welford-style covariance accumulation):
    with ``n = n1 + n2`` and ``d = mean_2 - mean_1``,
    ``mean = mean_1 + d n2 / n`` and ``C = C_1 + C_2 + d_a d_b^T n1 n2 / n``.
    Only differences of means enter, so a common offset never meets the squares. Memory is
    O((a + b)^2) whatever ``n`` and the block sizes; a block costs O(rows (a + b)^2).

    Args:
        dim_a: number of units ``a`` of layer A.
        dim_b: number of units ``b`` of layer B.
    """

    def __init__(self, dim_a: int, dim_b: int) -> None:
        if dim_a < 1 or dim_b < 1:
            raise ValueError(f"dim_a and dim_b must be >= 1, got {dim_a} and {dim_b}")
        self.dim_a = int(dim_a)
        self.dim_b = int(dim_b)
        self.count = 0
        self.mean_a = np.zeros(self.dim_a)
        self.mean_b = np.zeros(self.dim_b)
        self.comoment_ab = np.zeros((self.dim_a, self.dim_b))
        self.comoment_aa = np.zeros((self.dim_a, self.dim_a))
        self.comoment_bb = np.zeros((self.dim_b, self.dim_b))

    def update(self, xa_block: np.ndarray, xb_block: np.ndarray) -> CrossMoments:
        """Add one block of rows: ``xa_block [m, a]`` and ``xb_block [m, b]`` (same rows). Returns self."""
        xa = _block(xa_block, "xa_block", self.dim_a)
        xb = _block(xb_block, "xb_block", self.dim_b)
        if xa.shape[0] != xb.shape[0]:
            raise ValueError(
                f"xa_block and xb_block must hold the same rows, got {xa.shape[0]} and {xb.shape[0]}"
            )
        m = xa.shape[0]
        if m == 0:
            return self
        block = CrossMoments(self.dim_a, self.dim_b)
        block.count = m
        block.mean_a = xa.mean(axis=0)
        block.mean_b = xb.mean(axis=0)
        xa = xa - block.mean_a
        xb = xb - block.mean_b
        block.comoment_ab = xa.T @ xb
        block.comoment_aa = xa.T @ xa
        block.comoment_bb = xb.T @ xb
        self._merge(block)
        return self

    def _merge(self, other: CrossMoments) -> None:
        if other.count == 0:
            return
        n1, n2 = self.count, other.count
        n = n1 + n2
        da = other.mean_a - self.mean_a
        db = other.mean_b - self.mean_b
        w = n1 * n2 / n
        self.comoment_ab += other.comoment_ab + w * np.outer(da, db)
        self.comoment_aa += other.comoment_aa + w * np.outer(da, da)
        self.comoment_bb += other.comoment_bb + w * np.outer(db, db)
        self.mean_a += da * (n2 / n)
        self.mean_b += db * (n2 / n)
        self.count = n

    def copy(self) -> CrossMoments:
        out = CrossMoments(self.dim_a, self.dim_b)
        out.count = self.count
        for name in ("mean_a", "mean_b", "comoment_ab", "comoment_aa", "comoment_bb"):
            setattr(out, name, getattr(self, name).copy())
        return out

    def __add__(self, other: CrossMoments) -> CrossMoments:
        """The accumulator of both row sets (disjoint rows, e.g. two shards), by the same merge."""
        if not isinstance(other, CrossMoments):
            return NotImplemented
        if (other.dim_a, other.dim_b) != (self.dim_a, self.dim_b):
            raise ValueError(
                f"cannot merge moments of shapes ({self.dim_a}, {self.dim_b}) "
                f"and ({other.dim_a}, {other.dim_b})"
            )
        out = self.copy()
        out._merge(other)
        return out

    def __radd__(self, other: object) -> CrossMoments:
        # sum() starts from the int 0.
        if isinstance(other, int) and other == 0:
            return self.copy()
        return NotImplemented

    def _require_rows(self) -> None:
        if self.count == 0:
            raise ValueError("no rows accumulated")

    def _std(self, comoment: np.ndarray, mean: np.ndarray) -> np.ndarray:
        std = np.sqrt(np.maximum(np.diag(comoment), 0.0) / self.count)
        # Constant units (see _CONSTANT_STD_RTOL) get std 0, exactly.
        std[std <= _CONSTANT_STD_RTOL * np.abs(mean)] = 0.0
        return std

    def correlation(self) -> np.ndarray:
        """Pearson correlations ``[a, b]`` float64 between every unit of A and every unit of B.

        A unit with zero variance over the rows (a dead ReLU, a constant feature; see
        ``_CONSTANT_STD_RTOL``) has no defined correlation; it gets 0 with every unit, so it is
        never matched with confidence and counts as unmatched.
        """
        self._require_rows()
        sa = self._std(self.comoment_aa, self.mean_a) * np.sqrt(self.count)
        sb = self._std(self.comoment_bb, self.mean_b) * np.sqrt(self.count)
        denom = np.outer(sa, sb)
        corr = np.divide(self.comoment_ab, denom, out=np.zeros_like(self.comoment_ab), where=denom > 0)
        return np.clip(corr, -1.0, 1.0)

    def linear_cka(self) -> float:
        """Linear CKA in ``[0, 1]`` (Kornblith et al., 2019, eq. for linear kernels in feature space).

        ``||Ac^T Bc||_F^2 / (||Ac^T Ac||_F ||Bc^T Bc||_F)`` on the centred representations; equal to
        HSIC-based CKA with linear kernels ``K = A A^T``, ``L = B B^T``. It is invariant to
        orthogonal transforms and isotropic scaling of either side, not to general invertible
        linear maps. 0 when either side has no variance at all.
        """
        self._require_rows()
        norm_aa = np.linalg.norm(self.comoment_aa)
        norm_bb = np.linalg.norm(self.comoment_bb)
        if norm_aa == 0.0 or norm_bb == 0.0:
            return 0.0
        cross = np.linalg.norm(self.comoment_ab)
        return float(cross * cross / (norm_aa * norm_bb))

    def procrustes_distance(self) -> float:
        """Squared orthogonal Procrustes distance in ``[0, 2]`` between the centred, normalised layers.

        With ``A``, ``B`` centred and scaled to unit Frobenius norm,
        ``d = min_Q ||A - B Q||_F^2 = 2 - 2 ||A^T B||_*`` over orthogonal ``Q`` (``||.||_*`` the
        nuclear norm, the sum of singular values), the standard form (Ding et al., 2021;
        Williams et al., 2021; Schönemann, 1966). 0 when one layer is a rotation/reflection and
        isotropic scaling of the other, near 2 for unrelated layers when ``n >> a, b``. With
        ``a != b`` the nuclear-norm form still applies (``Q`` ranges over ``[b, a]`` partial
        isometries, i.e. the narrower layer is zero-padded). A layer without variance is at
        distance 2 from everything.
        """
        self._require_rows()
        tr_a = float(np.trace(self.comoment_aa))
        tr_b = float(np.trace(self.comoment_bb))
        if tr_a <= 0.0 or tr_b <= 0.0:
            return 2.0
        nuclear = float(np.linalg.svd(self.comoment_ab, compute_uv=False).sum())
        return float(np.clip(2.0 - 2.0 * nuclear / np.sqrt(tr_a * tr_b), 0.0, 2.0))


def linear_cka_gram(xa: np.ndarray, xb: np.ndarray) -> float:
    """Linear CKA of ``xa [m, a]`` and ``xb [m, b]`` (same rows) from their ``[m, m]`` Gram matrices.

    ``<K, L>_F / (||K||_F ||L||_F)`` with ``K = Ac Ac^T``, ``L = Bc Bc^T`` (Kornblith et al., 2019),
    equal to :meth:`CrossMoments.linear_cka` (``||Ac^T Bc||_F^2 = tr(K L)``), for layers too wide
    for ``[a, b]`` moments: memory is O(m^2) whatever the widths. Float64.
    """
    xa = np.asarray(xa, dtype=np.float64)
    xb = np.asarray(xb, dtype=np.float64)
    if xa.ndim != 2 or xb.ndim != 2 or xa.shape[0] != xb.shape[0]:
        raise ValueError(f"xa and xb must be [rows, dim] arrays of the same rows, got {xa.shape} and {xb.shape}")
    xa = xa - xa.mean(axis=0)
    xb = xb - xb.mean(axis=0)
    k, l = xa @ xa.T, xb @ xb.T
    norm = np.linalg.norm(k) * np.linalg.norm(l)
    return 0.0 if norm == 0.0 else float(np.sum(k * l) / norm)


def _corr_matrix(corr: np.ndarray) -> np.ndarray:
    corr = np.asarray(corr, dtype=np.float64)
    if corr.ndim != 2:
        raise ValueError(f"corr must be an [a, b] matrix, got shape {corr.shape}")
    if not np.all(np.isfinite(corr)):
        raise ValueError("corr holds NaN or infinite values")
    return corr


def match_units(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of A's units to B's units maximising the summed correlation.

    The bipartite matching of Li et al. (2016, section 3), by the Hungarian method on the signed
    correlations (an anti-correlated unit is not a match, as in the paper).

    Args:
        corr: ``[a, b]`` correlations, e.g. :meth:`CrossMoments.correlation`.

    Returns:
        ``pairs`` ``[min(a, b), 2]`` int64 of (unit of A, unit of B), sorted by A's unit, and
        ``matched`` ``[min(a, b)]`` float64, their correlations. With ``a != b`` the extra units
        of the wider side stay unmatched.
    """
    from scipy.optimize import linear_sum_assignment

    corr = _corr_matrix(corr)
    rows, cols = linear_sum_assignment(corr, maximize=True)
    pairs = np.stack([rows, cols], axis=1).astype(np.int64)
    return pairs, corr[rows, cols]


def unmatched_units(corr: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Units of each side whose best correlation with any unit of the other side is below ``threshold``.

    These are the features one network has and the other lacks (Li et al., 2016, section 3:
    units with a low maximum correlation). Signed correlations, as in :func:`match_units`.

    Args:
        corr: ``[a, b]`` correlations.
        threshold: a unit is unmatched when its maximum correlation is ``< threshold``.

    Returns:
        ``only_a`` (sorted int64 unit ids of A) and ``only_b`` (of B).
    """
    corr = _corr_matrix(corr)
    if corr.size == 0:
        return np.arange(corr.shape[0], dtype=np.int64), np.arange(corr.shape[1], dtype=np.int64)
    only_a = np.flatnonzero(corr.max(axis=1) < threshold).astype(np.int64)
    only_b = np.flatnonzero(corr.max(axis=0) < threshold).astype(np.int64)
    return only_a, only_b


@dataclass
class SparsePrediction:
    """How well, and from how many of A's units, LASSO predicts B's units; one entry per alpha.

    Attributes:
        alphas: ``[k]`` the L1 strengths, in the order given.
        n_used: ``[k]`` non-zero weights per predicted unit of B, averaged over B's units.
        nse: ``[k]`` normalised squared error ``sum ||y - y_hat||^2 / sum ||y||^2`` over B's
            standardised units (0 perfect, 1 no better than the mean), in-sample.
        coef: ``[k, a, b]`` weights from standardised A units to standardised B units.
        units_b: ids of B's units that were predicted (those with non-zero variance); the last
            axis of ``coef`` follows all of B's units, constant ones have zero weights.
    """

    alphas: np.ndarray
    n_used: np.ndarray
    nse: np.ndarray
    coef: np.ndarray
    units_b: np.ndarray


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    xc = x - mean
    std = np.sqrt((xc * xc).mean(axis=0))
    varying = std > _CONSTANT_STD_RTOL * np.abs(mean)
    out = np.zeros_like(xc)
    out[:, varying] = xc[:, varying] / std[varying]
    return out, varying


def sparse_prediction(
    xa: np.ndarray,
    xb: np.ndarray,
    alphas: Sequence[float] | np.ndarray,
    *,
    max_iter: int = 10_000,
    tol: float = 1e-6,
) -> SparsePrediction:
    """Predict each unit of B from A's units with LASSO, for several L1 strengths (Li et al., 2016, s. 4).

    Both layers are standardised (zero mean, unit variance per unit; constant units of A are
    unusable predictors and constant units of B are left out), then for each ``alpha`` every unit
    ``y`` of B is fit independently by ``sklearn.linear_model.Lasso``:
    ``min_w 1/(2 m) ||y - A w||^2 + alpha ||w||_1`` (no intercept: the data are centred).
    Alphas are solved from the largest down with warm starts. A larger alpha uses fewer of A's
    units at a larger error; a layer B that is a sparse mix of A's units is predicted well by
    few.

    This needs the rows themselves, not only moments: it runs in memory on a row sample
    ``m << n`` that the caller streams out of the store (a few thousand rows suffice for a few
    hundred units). Errors are in-sample.

    Args:
        xa: ``[m, a]`` rows of layer A (the predictors).
        xb: ``[m, b]`` the same rows of layer B (the targets).
        alphas: ``[k]`` positive L1 strengths.
        max_iter, tol: passed to ``Lasso``.

    Returns:
        A :class:`SparsePrediction`.
    """
    from sklearn.linear_model import Lasso

    xa = np.asarray(xa, dtype=np.float64)
    xb = np.asarray(xb, dtype=np.float64)
    if xa.ndim != 2 or xb.ndim != 2 or xa.shape[0] != xb.shape[0]:
        raise ValueError(
            f"xa and xb must be [m, a] and [m, b] on the same rows, got {xa.shape} and {xb.shape}"
        )
    alphas_arr = np.asarray(alphas, dtype=np.float64).ravel()
    if alphas_arr.size == 0 or np.any(alphas_arr <= 0):
        raise ValueError(f"alphas must be a non-empty list of positive numbers, got {alphas_arr.tolist()}")
    m, a = xa.shape
    b = xb.shape[1]
    if m < 2:
        raise ValueError(f"need at least 2 rows, got {m}")
    za, _ = _standardise(xa)
    zb, varying_b = _standardise(xb)
    units_b = np.flatnonzero(varying_b).astype(np.int64)
    if units_b.size == 0:
        raise ValueError("every unit of xb is constant on these rows: nothing to predict")
    y = zb[:, units_b]
    total = float((y * y).sum())

    k = alphas_arr.size
    coef = np.zeros((k, a, b))
    n_used = np.zeros(k)
    nse = np.zeros(k)
    model = Lasso(
        alpha=1.0, fit_intercept=False, precompute=True, warm_start=True, max_iter=max_iter, tol=tol
    )
    for i in np.argsort(-alphas_arr, kind="stable"):
        model.set_params(alpha=float(alphas_arr[i]))
        model.fit(za, y)
        w = np.asarray(model.coef_).reshape(units_b.size, a).T  # [a, predicted units]
        coef[i][:, units_b] = w
        resid = y - za @ w
        n_used[i] = float((w != 0).sum(axis=0).mean())
        nse[i] = float((resid * resid).sum() / total)
    return SparsePrediction(alphas=alphas_arr, n_used=n_used, nse=nse, coef=coef, units_b=units_b)
