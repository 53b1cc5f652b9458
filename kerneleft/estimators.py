"""Streaming moment accumulators and standard errors for the exact ensemble (docs/estimators.md#standard-errors).

:class:`Moments` holds the central co-moments of a d-vector observable up to order (2, 2) — enough for means,
covariances and the standard errors of both (docs/estimators.md#standard-errors) — and merges two partial results
exactly (Pébay's pairwise update), so an ensemble is a deterministic left fold over fixed chunks of samples in chunk
order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pairs import pair_basis
from .result import KernelResult
from .errors import InputError

__all__ = ["MIN_COV_SAMPLES", "Moments", "merge", "drift_control_variate", "WidthFit",
           "extrapolate_width", "extrapolate_K1", "NEXT_ORDER_WIDTHS", "NextOrderFit", "fit_next_order"]

#: Fewest samples with a defined standard error of a covariance (:meth:`Moments.cov_se`).
MIN_COV_SAMPLES = 3


@dataclass(frozen=True)
class Moments:
    """Central co-moments of x (..., d) over ``count`` samples; every array has leading shape ``...`` (e.g. L+1).

    ``mean[..., i]``; ``M11[..., i, j] = Σ δx_i δx_j``; ``M21[..., i, j] = Σ δx_i² δx_j``;
    ``M22[..., i, j] = Σ δx_i² δx_j²`` with δx = x − mean.
    """

    count: int
    mean: np.ndarray
    M11: np.ndarray
    M21: np.ndarray
    M22: np.ndarray

    @classmethod
    def from_samples(cls, x: np.ndarray) -> "Moments":
        """Moments of samples x (N, ..., d) along axis 0."""
        mean = x.mean(axis=0)
        y = np.moveaxis(x - mean, 0, -1)          # (..., d, N)
        y2 = y * y
        yt = y.swapaxes(-1, -2)
        return cls(x.shape[0], mean, y @ yt, y2 @ yt, y2 @ y2.swapaxes(-1, -2))

    def _require(self, minimum: int, what: str) -> None:
        if self.count < minimum:
            raise InputError(f"samples: {what} needs >= {minimum} samples, got {self.count}")

    def cov(self) -> np.ndarray:
        """Unbiased covariance (..., d, d); needs count >= 2."""
        self._require(2, "a covariance")
        return self.M11 / (self.count - 1)

    def mean_se(self) -> np.ndarray:
        """Standard error of the mean, sqrt(s²/N) with the unbiased s² (..., d); needs count >= 2."""
        return np.sqrt(np.diagonal(self.cov(), axis1=-2, axis2=-1) / self.count)

    def cov_se(self) -> np.ndarray:
        """Jackknife standard error of the unbiased covariance :meth:`cov` (..., d, d); needs count >= 3.

        Leaving sample k out changes ``cov`` by an affine function of u_k = δx_i δx_j (k), so the leave-one-out
        variance has the closed form  Var_J = N / ((N−1)(N−2)²) · (Σ u_k² − (Σ u_k)²/N)  from M22 and M11
        (docs/estimators.md#standard-errors). It is >= 0, conservative in expectation (Efron–Stein; for Gaussian
        data E[Var_J] = 2σ⁴/(N−2) against the true 2σ⁴/(N−1)) and within O(1/N) of the delta method; for N = 2
        every estimate of it is identically 0 (u_1 = u_2), so fewer than 3 samples are an error.
        """
        self._require(MIN_COV_SAMPLES, "the standard error of a covariance")
        N = self.count
        return np.sqrt(np.clip(self.M22 - self.M11 ** 2 / N, 0.0, None) * (N / ((N - 1) * (N - 2) ** 2)))


def _shifted(m: Moments, a: np.ndarray) -> tuple:
    """Co-moments of one part about a mean shifted by a (..., d): (M11, M21, M22) of (y + a), Σy = 0."""
    ai, aj = a[..., :, None], a[..., None, :]
    d20 = np.diagonal(m.M11, axis1=-2, axis2=-1)
    m20, m02 = d20[..., :, None], d20[..., None, :]
    M12 = m.M21.swapaxes(-1, -2)
    M11 = m.M11 + m.count * ai * aj
    M21 = m.M21 + aj * m20 + 2 * ai * m.M11 + m.count * ai * ai * aj
    M22 = (m.M22 + 2 * aj * m.M21 + 2 * ai * M12 + aj * aj * m20 + ai * ai * m02 + 4 * ai * aj * m.M11
           + m.count * ai * ai * aj * aj)
    return M11, M21, M22


def merge(a: Moments, b: Moments) -> Moments:
    """Exact moments of the union of two sample sets (Pébay 2008 pairwise update); deterministic."""
    n = a.count + b.count
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.count / n)
    pa, pb = _shifted(a, -delta * (b.count / n)), _shifted(b, delta * (a.count / n))
    return Moments(n, mean, *(x + y for x, y in zip(pa, pb)))


def drift_control_variate(G: np.ndarray, S: np.ndarray, K_in: np.ndarray, Tr: np.ndarray, eps: float,
                          residual: bool = True) -> np.ndarray:
    """Linear-response control variate Y^l (l = 1..L) for the drift integral D^l, with E[Y^l] = 0 exactly.

    G, S (size, L+1, P, P) per network; Tr (L, P,P,P,P) the transport operators 𝒯_k = DS̄(K0^k)
    (docs/gonly.md#coefficients); see docs/estimators.md#control-variate.
    Built only from zero-mean pieces — δ^0 = G^0 − K_in (I3) and the martingale increments
    ΔM^k = G^{k+1} − G^k − ε S^k (I1; docs/exact.md#identities) — propagated linearly: δ^{k+1} = δ^k + ε𝒯_k δ^k + ΔM^k,
    Y^l = ε Σ_{k<l} 𝒯_k δ^k. Since D^l − E[D^l] ≈ ε Σ_{k<l} 𝒯_k (G^k − E G^k) to first order, D − Y keeps only the
    nonlinear and not-slaved-to-G parts of the fluctuation of S. For an MLP (``residual=False``,
    docs/architectures.md#mlp) D^l = S^{l−1}: ΔM^k = G^{k+1} − S^k, δ^{k+1} = 𝒯_k δ^k + ΔM^k, Y^l = 𝒯_{l−1}δ^{l−1}.
    Returns (size, L, P, P).
    """
    dM = G[:, 1:] - G[:, :-1] - eps * S[:, :-1] if residual else G[:, 1:] - S[:, :-1]
    delta = G[:, 0] - K_in
    Y = np.empty_like(dM)
    acc = np.zeros_like(delta)
    for k in range(dM.shape[1]):
        if residual:
            lin = eps * np.einsum("abcd,scd->sab", Tr[k], delta)
            acc = acc + lin
            Y[:, k] = acc
            delta = delta + lin + dM[:, k]
        else:
            Y[:, k] = np.einsum("abcd,scd->sab", Tr[k], delta)
            delta = Y[:, k] + dM[:, k]
    return Y


@dataclass(frozen=True)
class WidthFit:
    """Per-entry fit ``y_n = Σ_k coef[k] / n^k`` (docs/estimators.md#width-extrapolation); entry shape ``...``.

    ``coef``, ``se`` (degree+1, ...): coefficients and their SEs (``coef[0]`` the n → ∞ limit); ``chi2`` (...) the
    weighted squared residual; ``dof`` (...) widths − degree − 1, 0 for exact entries (SE 0 at every width);
    ``cov`` (..., degree+1, degree+1) the covariance of the coefficients of each entry, (XᵀWX)⁻¹ (0 for exact
    entries), so ``se = sqrt(diag(cov))``.
    """

    coef: np.ndarray
    se: np.ndarray
    chi2: np.ndarray
    dof: np.ndarray
    cov: np.ndarray

    @property
    def value(self) -> np.ndarray:
        """The n → ∞ limit (...)."""
        return self.coef[0]

    @property
    def value_se(self) -> np.ndarray:
        return self.se[0]


def extrapolate_width(widths, values, ses, degree: int = 1) -> WidthFit:
    """Fit ``y_n = A + Σ_{k=1..degree} B_k / n^k`` per entry by weighted least squares, weights 1/SE²
    (docs/estimators.md#width-extrapolation).

    ``widths`` (m,) distinct; ``values``, ``ses``: one array (...) per width. Entries whose SE is 0 at every width
    are exact: fitted unweighted and reported with SE 0 and no degrees of freedom.
    """
    x = 1.0 / np.asarray(widths, dtype=float)
    m = x.size
    if m < degree + 1 or np.unique(x).size != m:
        raise InputError(f"widths: need >= {degree + 1} distinct widths for degree {degree}, got {list(widths)}")
    y, s = np.stack(values).astype(float), np.stack(ses).astype(float)          # (m, ...)
    exact = np.all(s == 0, axis=0)
    w = np.where(exact, 1.0, 1.0 / np.where(s > 0, s, np.inf) ** 2)
    X = np.vander(x, degree + 1, increasing=True)                                # (m, degree+1)
    cov = np.linalg.inv(np.einsum("m...,mi,mj->...ij", w, X, X))                 # (..., degree+1, degree+1)
    coef = np.einsum("...ij,m...,mj,m...->i...", cov, w, X, y)
    resid = y - np.einsum("mi,i...->m...", X, coef)
    se = np.moveaxis(np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1)), -1, 0)
    return WidthFit(coef, np.where(exact, 0.0, se), np.where(exact, 0.0, (w * resid ** 2).sum(0)),
                    np.where(exact, 0, m - degree - 1), np.where(exact[..., None, None], 0.0, cov))


def extrapolate_K1(results) -> KernelResult:
    """Fit ``K1_n = K1 + c/n`` per (l, a, b) over >= 2 widths by :func:`extrapolate_width`
    (docs/estimators.md#width-extrapolation).

    ``results``: sampler KernelResults (same net, distinct ``meta['width']``) with ``K1`` and its ``se``.
    Returns a KernelResult with arrays ``K1`` (the n → ∞ limit) and ``K1_slope`` (c), each with ``se``, and meta
    ``widths``, ``chi2`` (weighted residual over a <= b and all layers) and ``dof``, and ``chi2_T``, ``dof_T`` the same
    at the last layer (layers are strongly correlated: K1 is a running sum over depth). Entries whose SE is 0 at every width (l = 0 for
    the drift estimator) are exact: fitted unweighted, reported with SE 0.
    """
    results = list(results)
    widths = [r.meta["width"] for r in results]
    if len(set(widths)) < 2:
        raise InputError(f"results: need >= 2 distinct widths, got {[float(n) for n in widths]}")
    fit = extrapolate_width(widths, [r["K1"] for r in results], [r.se["K1"] for r in results])
    p = pair_basis(results[0]["K1"].shape[-1])
    return KernelResult(results[0].t, {"K1": fit.coef[0], "K1_slope": fit.coef[1]},
                        se={"K1": fit.se[0], "K1_slope": fit.se[1]},
                        meta={"kind": "extrapolation", "widths": [float(n) for n in widths],
                              "chi2": float(p.vec(fit.chi2).sum()),
                              "dof": int(p.vec(fit.dof).sum()),
                              "chi2_T": float(p.vec(fit.chi2[-1]).sum()),
                              "dof_T": int(p.vec(fit.dof[-1]).sum())})


#: Fewest widths of :func:`fit_next_order`: the next-order model plus one higher term, with one degree of freedom
#: left to test it (docs/estimators.md#next-order-fits).
NEXT_ORDER_WIDTHS = 4


@dataclass(frozen=True)
class NextOrderFit:
    """The next order in 1/n measured from ensembles at several widths (docs/estimators.md#next-order-fits).

    ``widths`` (m,). ``V4`` fits n Cov[G]_n = V4 + V4_1/n per entry (L+1,P,P,P,P): ``V4.coef[0]`` estimates V4,
    ``V4.coef[1]`` V4_1, ``V4.cov[..., 0, 1]`` their covariance. ``K`` fits n(E[G]_n − K0) = K1 + K2/n per entry
    (L+1,P,P) on the control-variate estimate ``K1_cv``: ``K.coef[0]`` estimates K1, ``K.coef[1]`` K2.
    ``V4_higher`` and ``K_higher`` are the same fits with one more term, c/n²: ``coef[2]/se[2]`` tests whether the
    truncation after the next order is resolved at these widths, and ``chi2``/``dof`` of each fit its quality.
    """

    widths: tuple[int, ...]
    V4: WidthFit
    K: WidthFit
    V4_higher: WidthFit
    K_higher: WidthFit


def fit_next_order(results) -> NextOrderFit:
    """Fit the next order in 1/n per entry from sampler results at >= :data:`NEXT_ORDER_WIDTHS` distinct widths
    (docs/estimators.md#next-order-fits) by :func:`extrapolate_width`: n Cov[G] (``V4`` with its SE) in 1/n to
    degrees 1 and 2, and n(E[G] − K0) (``K1_cv``, the control-variate drift estimator with exact K0, and its SE)
    likewise. ``results``: KernelResults of :func:`kerneleft.ensemble.simulate` (or pooled batches) of one network
    with distinct ``meta['width']``. Returns a :class:`NextOrderFit`.
    """
    results = list(results)
    widths = [r.meta["width"] for r in results]
    if len(set(widths)) != len(widths) or len(widths) < NEXT_ORDER_WIDTHS:
        raise InputError(f"results: need >= {NEXT_ORDER_WIDTHS} distinct widths (the next order and one higher "
                         f"term, with a degree of freedom left), got {[int(n) for n in widths]}")
    missing = [k for k in ("V4", "K1_cv") if any(k not in r or k not in r.se for r in results)]
    if missing:
        raise InputError(f"results: need {missing[0]} and its standard error (results of simulate)")

    def fit(key: str, degree: int) -> WidthFit:
        return extrapolate_width(widths, [r[key] for r in results], [r.se[key] for r in results], degree)

    return NextOrderFit(tuple(int(n) for n in widths), fit("V4", 1), fit("K1_cv", 1), fit("V4", 2), fit("K1_cv", 2))
