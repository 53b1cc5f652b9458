"""Gaussian-expectation engine: F(K) = E_{z~N(0,K)}[φ(z) φ(z)ᵀ] and its derivative maps (docs/numerics.md#closed-forms).

Every entry is a bivariate integral over the 2x2 block of K on {a, b}, so each call evaluates the P(P−1)/2 pair
blocks and the P diagonal (one-variable) moments in one vectorised call of two primitives:

- :func:`pair_moments`  M[..., i, j] = E[φ^(i)(u) φ^(j)(v)],  (u, v) ~ N(0, [[k11, k12], [k12, k22]]);
- :func:`diag_moments`  D[..., m]    = E[(φ²)^(m)(u)],       u ~ N(0, k).

Price's theorem / Gaussian integration by parts (docs/numerics.md#closed-forms) turns every derivative map into these:
E[∂^α(φ(z_a) φ(z_b))] = M[α_a, α_b] (a ≠ b) or D[α_a] (a = b), and ∂F_ab/∂K_ef over ordered pairs gives
``J[a,b,e,f] = ½ E[∂_e∂_f(φ_a φ_b)]``, ``H[a,b,e,f,g,h] = ¼ E[∂_e∂_f∂_g∂_h(φ_a φ_b)]``.

Methods. Everything about φ comes from its :class:`~kerneleft.activations.Activation` record. Closed forms, all
orders (the record's ``pair_closed``/``diag_closed``, :mod:`kerneleft._gauss_closed`): linear, relu (arc-cosine;
the derivatives are the distributions Θ, δ, δ', ..., evaluated exactly), erf (arcsine), sin. Everything else by
quadrature with the record's ``profile`` (:mod:`kerneleft._gauss_quad`): a common-factor split of the block into
one outer and two inner one-dimensional integrals, with the record's exact Taylor-mode ``derivs`` moved partly
onto Hermite polynomials by Gaussian integration by parts, the split chosen per node by its rounding bound.

Accuracy (tests/test_gaussian.py): orders <= 4 (F, DF, D²F) <= 1e-10 of the moment scale for variances 0.01–50 and
any correlation including ±1; order 12 moments vs Mehler series 1e-14 (erf, relu) to ~1e-11 (tanh, gelu, sin);
order 20–24 of erf: median 1e-14, worst ~1e-6 relative only for variance ratios ~5000 at |ρ| ~ 0.9.
``with_error=True`` returns the rounding bound, which covered the actual error in every case measured.

Supported: registered activations, every order, every PSD block with positive variances (degenerate included;
relu's derivative moments of order >= 2 diverge like powers of 1/sqrt(det) there and are returned as ±inf, their
exact limit, never NaN; a zero-variance input is fine for F but not for relu's derivative maps). A plain user
callable (no ``derivs``) uses integration by parts only: every order, with a rounding error growing like
(1 − |ρ|)^{-q/2} for order q, and NaN for orders >= 1 of an exactly degenerate off-diagonal block (|ρ| = 1) —
give the Activation exact ``derivs`` to lift this. Its diagonal (one-variable) moments work at every k > 0.
"""
from __future__ import annotations

import math
import operator

import numpy as np

from . import _gauss_four, _gauss_quad
from ._gauss_closed import block_det, geometric_mean
from .activations import Activation, get_activation
from .errors import InputError
from .pairs import pair_basis

__all__ = ["block_det", "pair_moments", "diag_moments", "F", "jacobian", "hessian", "DF", "D2F", "derivative_moment",
           "mean", "pair_covariance"]

_PSD_SLACK = 1e-8          # tolerated relative excess |k12| > sqrt(k11 k22) before a block is rejected


# ----------------------------------------------------------------------------------------------- validation
def _order(order) -> int:
    try:
        o = operator.index(order)
    except TypeError:
        raise InputError(f"order: must be an integer >= 0, got {type(order).__name__}") from None
    if o < 0:
        raise InputError(f"order: must be an integer >= 0, got {o}")
    return o


def _variance(name, k):
    k = np.asarray(k, dtype=float)
    if not np.all(np.isfinite(k)):
        raise InputError(f"{name}: contains NaN or inf")
    if np.any(k < 0):
        raise InputError(f"{name}: variances must be >= 0, got min {k.min():.3g}")
    return k


def _block(k11, k22, k12):
    """Validate/broadcast a 2x2 block; clip k12 into [−√(k11k22), √(k11k22)] within the slack."""
    k11, k22 = _variance("k11", k11), _variance("k22", k22)
    k12 = np.asarray(k12, dtype=float)
    if not np.all(np.isfinite(k12)):
        raise InputError("k12: contains NaN or inf")
    k11, k22, k12 = np.broadcast_arrays(k11, k22, k12)
    return k11, k22, _clip_psd("k12", k11, k22, k12)


def _clip_psd(name, k11, k22, k12):
    s = geometric_mean(k11, k22)
    if np.any(np.abs(k12) > s * (1 + _PSD_SLACK) + 1e-300):
        raise InputError(f"{name}: not positive semi-definite (|K_ab| > sqrt(K_aa K_bb) for some pair a, b)")
    return np.clip(k12, -s, s)


def _kernel(K):
    """Validate K (..., P, P): shape, finite, variances >= 0 (2x2 blocks are checked by :func:`_blocks`)."""
    K = np.asarray(K, dtype=float)
    if K.ndim < 2 or K.shape[-1] != K.shape[-2] or K.shape[-1] == 0:
        raise InputError(f"K: must have shape (..., P, P), got {K.shape}")
    if not np.all(np.isfinite(K)):
        raise InputError("K: contains NaN or inf")
    if np.any(np.diagonal(K, axis1=-2, axis2=-1) < 0):
        raise InputError("K: variances (diagonal) must be >= 0")
    return K


# ----------------------------------------------------------------------------------------------- primitives
def _method(act: Activation, closed, method):
    """The closed form to use (``closed``: the record's pair_closed or diag_closed), or None for quadrature."""
    if method not in ("auto", "closed", "quadrature"):
        raise InputError(f"method: must be 'auto', 'closed' or 'quadrature', got {method!r}")
    closed = closed if method != "quadrature" else None
    if method == "closed" and closed is None:
        raise InputError(f"method: no closed form for activation {act.name!r}")
    return closed


def _profile(act: Activation) -> _gauss_quad.Profile:
    return _gauss_quad.Profile() if act.profile is None else act.profile


def pair_moments(act, k11, k22, k12, order, *, with_error=False, method="auto"):
    """M[..., i, j] = E[φ^(i)(u) φ^(j)(v)] for i + j <= order (0 elsewhere); (u, v) ~ N(0, [[k11,k12],[k12,k22]]).

    k's broadcast to shape S; returns (*S, order+1, order+1) (and, with ``with_error``, an error estimate of the
    same shape: 8 ulp for closed forms, the rounding bound for quadrature). ``method``: 'auto' (closed form if
    there is one), 'closed' or 'quadrature' (for cross-checks). docs/numerics.md#closed-forms, #quadrature.
    """
    k11, k22, k12 = _block(k11, k22, k12)
    M, err = _pair(get_activation(act), k11, k22, k12, _order(order), method)
    return (M, err) if with_error else M


def _pair(act, k11, k22, k12, order, method="auto"):
    closed = _method(act, act.pair_closed, method)
    if closed is not None:
        M = closed(k11, k22, k12, order)
        err = np.abs(M) * 8 * np.finfo(float).eps
    else:
        shape = k12.shape
        M, err = _gauss_quad.pair_moments(act.phi, act.derivs, k11.ravel(), k22.ravel(), k12.ravel(), order,
                                          _profile(act))
        M, err = M.reshape(shape + M.shape[1:]), err.reshape(shape + M.shape[1:])
    return M, err


def diag_moments(act, k, order, *, with_error=False, method="auto"):
    """D[..., m] = E[(φ²)^(m)(u)], u ~ N(0, k), m = 0..order; k shape S -> (*S, order+1). Options as pair_moments."""
    D, err = _diag(get_activation(act), _variance("k", k), _order(order), method)
    return (D, err) if with_error else D


def _diag(act, k, order, method="auto"):
    closed = _method(act, act.diag_closed, method)
    if closed is not None:
        D = closed(k, order)
        err = np.abs(D) * 8 * np.finfo(float).eps
    else:
        D, err = _gauss_quad.diag_moments(act.phi, act.derivs, k.ravel(), order, _profile(act))
        D, err = D.reshape(k.shape + (order + 1,)), err.reshape(k.shape + (order + 1,))
    return D, err


def _blocks(act, K, order):
    """Pair moments of all blocks a < b and diagonal moments: (M (..., npair, o+1, o+1), D (..., P, o+1), a, b)."""
    act, K = get_activation(act), _kernel(K)
    p = pair_basis(K.shape[-1])
    a, b = p.a[p.off], p.b[p.off]
    kd = np.diagonal(K, axis1=-2, axis2=-1)
    kab = _clip_psd("K", kd[..., a], kd[..., b], 0.5 * (K[..., a, b] + K[..., b, a]))
    return _pair(act, kd[..., a], kd[..., b], kab, order)[0], _diag(act, kd, order)[0], a, b


# ----------------------------------------------------------------------------------------------- F and derivatives
def F(act, K):
    """F(K)_ab = E_{z~N(0,K)}[φ(z_a) φ(z_b)] (docs/model.md#network); K (..., P, P) -> (..., P, P)."""
    M, D, a, b = _blocks(act, K, 0)
    out = np.zeros(D.shape[:-1] + (D.shape[-2],))
    idx = np.arange(D.shape[-2])
    out[..., idx, idx] = D[..., 0]
    out[..., a, b] = out[..., b, a] = M[..., 0, 0]
    return out


def _combos(n):
    """All index words w ∈ {0, 1}^n (0 = a, 1 = b) as an (2^n, n) array."""
    return np.array(np.unravel_index(np.arange(2 ** n), (2,) * n)).T


def _derivative_tensor(act, K, n):
    """T[..., a, b, e1, ..., en] = E[∂_e1...∂_en (φ_a φ_b)]; K (..., P, P) -> (..., P, P, P, ..., P) (n more axes)."""
    M, D, a, b = _blocks(act, K, n)
    P = D.shape[-2]
    T = np.zeros(D.shape[:-1] + (P,) * (n + 1))
    idx = np.arange(P)
    T[(Ellipsis, idx, idx) + (idx,) * n] = D[..., n]
    for w in _combos(n):
        na = int(np.sum(w == 0))
        e = tuple((a, b)[i] for i in w)
        T[(Ellipsis, a, b) + e] = T[(Ellipsis, b, a) + e] = M[..., na, n - na]
    return T


def jacobian(act, K):
    """J[..., a, b, e, f] = ½ E[∂_e∂_f(φ(z_a) φ(z_b))]: DF[X] = Σ_ef J X_ef over ordered pairs; 𝒯 = C_W J.

    docs/numerics.md#closed-forms."""
    return 0.5 * _derivative_tensor(act, K, 2)


def hessian(act, K):
    """H[..., a, b, e, f, g, h] = ¼ E[∂_e∂_f∂_g∂_h(φ_a φ_b)]: D²F[X, Y]_ab = Σ H X_ef Y_gh; ℋ = C_W H
    (docs/numerics.md#closed-forms).

    Memory is P^6 doubles per kernel (134 MB at P = 16); prefer :func:`D2F` for contractions at large P.
    """
    return 0.25 * _derivative_tensor(act, K, 4)


def _directional(act, K, Xs):
    """(1/2^n) Σ_{e..} E[∂_e1..∂_en(φ_aφ_b)] X1_e1e2 X2_e3e4 ... for n = 2·len(Xs); returns (..., P, P)."""
    n = 2 * len(Xs)
    M, D, a, b = _blocks(act, K, n)
    Xs = [np.asarray(X, dtype=float) for X in Xs]
    P = D.shape[-2]
    idx = np.arange(P)
    shape = np.broadcast_shapes(D.shape[:-2], *(X.shape[:-2] for X in Xs))
    out = np.zeros(shape + (P, P))
    out[..., idx, idx] = D[..., n] * math.prod(X[..., idx, idx] for X in Xs)
    ab = (a, b)
    acc = 0.0
    for w in _combos(n):
        na = int(np.sum(w == 0))
        coef = M[..., na, n - na]
        for k, X in enumerate(Xs):
            coef = coef * X[..., ab[w[2 * k]], ab[w[2 * k + 1]]]
        acc = acc + coef
    out[..., a, b] = out[..., b, a] = acc
    return out / 2 ** len(Xs)


def DF(act, K, X):
    """DF_K[X]_ab = ½ Σ_ef X_ef E[∂_e∂_f(φ_a φ_b)] (ordered pairs); K, X (..., P, P) -> (..., P, P).

    docs/numerics.md#closed-forms."""
    return _directional(act, K, [X])


def D2F(act, K, X, Y):
    """D²F_K[X, Y]_ab = ¼ Σ X_ef Y_gh E[∂_e∂_f∂_g∂_h(φ_a φ_b)] ; K, X, Y (..., P, P) -> (..., P, P).

    docs/numerics.md#closed-forms."""
    return _directional(act, K, [X, Y])


def derivative_moment(act, K, alpha):
    """E_{z~N(0,K)}[∂^alpha (φ(z_a) φ(z_b))] for a multi-index ``alpha`` (length P); K (..., P, P) -> (..., P, P).

    Zero unless supp(alpha) ⊆ {a, b}; equals M[alpha_a, alpha_b] of the (a, b) block for a ≠ b and the
    one-variable moment E[(φ²)^(alpha_a)] on the diagonal (docs/sigma.md#representations).
    """
    act, K = get_activation(act), _kernel(K)
    P = K.shape[-1]
    alpha = np.asarray(alpha)
    if alpha.shape != (P,) or not np.issubdtype(alpha.dtype, np.integer) or np.any(alpha < 0):
        raise InputError(f"alpha: must be a length-{P} tuple of integers >= 0, got {tuple(np.ravel(alpha))}")
    supp = np.flatnonzero(alpha)
    if supp.size == 0:
        return F(act, K)
    out = np.zeros(K.shape)
    if supp.size > 2:
        return out
    kd = np.diagonal(K, axis1=-2, axis2=-1)
    e, n = int(supp[0]), int(alpha.sum())
    others = supp[1:] if supp.size == 2 else np.array([c for c in range(P) if c != e], dtype=int)
    kab = _clip_psd("K", kd[..., e, None], kd[..., others], 0.5 * (K[..., e, others] + K[..., others, e]))
    m = _pair(act, np.broadcast_to(kd[..., e, None], kab.shape), kd[..., others], kab, n)[0]
    out[..., e, others] = out[..., others, e] = m[..., alpha[e], n - alpha[e]]
    if supp.size == 1:
        out[..., e, e] = _diag(act, kd[..., e], n)[0][..., n]
    return out


# ----------------------------------------------------------------------------------------------- one-point mean
_MEAN_NODES = 200


def mean(act, k):
    """E[φ(u)], u ~ N(0, k); k shape S -> S (docs/architectures.md#kernel-maps). Gauss–Legendre on [−12σ, 0] and
    [0, 12σ] (200 nodes each): exact to rounding for φ smooth on each half-line (relu's kink sits at 0); k = 0
    gives φ(0)."""
    act = get_activation(act)
    k = _variance("k", k)
    x, w = _gauss_quad._legendre(_MEAN_NODES)           # cached: leggauss(200) costs ~10 ms per call
    y = 6.0 * (x + 1.0)                                  # [0, 12] standard deviations
    w = 6.0 * w * np.exp(-0.5 * y ** 2) / math.sqrt(2.0 * math.pi)
    s = np.sqrt(k)[..., None]
    return (act.phi(s * y) @ w + act.phi(-s * y) @ w)


# ----------------------------------------------------------------------------------------------- four-point vertex
def pair_covariance(act, K, *, nodes=None, tol=_gauss_four.DEFAULT_TOL, method="auto"):
    """C[..., r, s] = Cov_{x~N(0,K)}(φ(x_a)φ(x_b), φ(x_c)φ(x_d)) over the pairs r = (a, b), s = (c, d) of
    :func:`~kerneleft.pairs.pair_basis`: the four-point vertex (n Cov[Σ] of n iid Gaussian neurons);
    K (..., P, P) PSD -> (..., N, N), symmetric (docs/architectures.md#kernel-maps).

    Closed forms for linear and sin, nested quadrature otherwise, error <= ``tol`` of max E[φ⁴] (ConvergenceError
    if not reached: raise ``nodes``); ``method='quadrature'`` skips the closed forms. Method and guarantees:
    :mod:`kerneleft._gauss_four`.
    """
    act, K = get_activation(act), _kernel(K)
    E4 = _gauss_four.fourth_moments(act.phi, K, smooth=act.smooth, pair_closed=act.pair_closed, profile=act.profile,
                                    nodes=nodes, tol=tol, method=method)
    return _gauss_four.pair_covariance(E4, pair_basis(K.shape[-1]).vec(F(act, K)))
