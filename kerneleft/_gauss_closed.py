"""Closed-form Gaussian moments for linear, relu (arc-cosine), erf (arcsine) and sin, all orders.

docs/numerics.md#closed-forms.

``pair_<name>(k11, k22, k12, order) -> M[..., i, j] = E[φ^(i)(u) φ^(j)(v)]``, (u, v) ~ N(0, [[k11, k12], [k12, k22]]),
zero for i + j > order; ``diag_<name>(k, order) -> E[(φ²)^(m)(u)]``, u ~ N(0, k). Shapes: k's broadcast to S,
outputs (*S, order+1, order+1) and (*S, order+1).

relu derivatives are distributions (relu' = Θ, relu'' = δ, ...): E[δ^(p)(u) h(v)] = (−1)^p ∂_u^p[N(u; k11) E[h(v)|u]]
at u = 0 is evaluated exactly from Taylor series, E[δ^(p)(u) δ^(q)(v)] = H_pq(0; K) N(0; K) (bivariate Hermite at the
origin). These diverge as 1/sqrt(det K) powers at a degenerate block (|ρ| = 1); there they are returned as ±inf
(the exact limit), never NaN. erf: E[erf^(p+1)(u) erf^(q+1)(v)] = (4/π) ∂^p∂^q E[e^{−(u+m1)² − (v+m2)²}] at m = 0,
a Gaussian in m; E[erf(u) erf^(q+1)(v)] from the exact series of E[erf(u) e^{−(v+m)²}].
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special

__all__ = ["pair_linear", "diag_linear", "pair_relu", "diag_relu", "pair_erf", "diag_erf", "pair_sin", "diag_sin",
           "bivariate_origin_hermite", "block_det", "geometric_mean"]

_PHI0 = 1.0 / math.sqrt(2.0 * math.pi)


def _broadcast(*ks):
    return np.broadcast_arrays(*(np.asarray(k, dtype=float) for k in ks))


def _empty(shape, order):
    return np.zeros(tuple(shape) + (order + 1, order + 1))


def bivariate_origin_hermite(A11, A22, A12, order):
    """E_pq = ∂_1^p ∂_2^q exp(−½ mᵀ A m) at m = 0, p + q <= order; A entries shape S -> (*S, order+1, order+1)."""
    E = _empty(np.shape(A11), order)
    E[..., 0, 0] = 1.0
    for n in range(1, order + 1):                    # fill total degree n from degrees n-1, n-2
        for p in range(n + 1):
            q = n - p
            if p >= 1:                                 # raise p: E_{p,q} = −(p−1)A11 E_{p−2,q} − q A12 E_{p−1,q−1}
                val = 0.0
                if p >= 2:
                    val = val - (p - 1) * A11 * E[..., p - 2, q]
                if q >= 1:
                    val = val - q * A12 * E[..., p - 1, q - 1]
            else:                                      # raise q: E_{0,q} = −(q−1) A22 E_{0,q−2}
                val = -(q - 1) * A22 * E[..., 0, q - 2] if q >= 2 else 0.0 * A22
            E[..., p, q] = val
    return E


def _mask(M, order):
    i, j = np.indices((order + 1, order + 1))
    M[..., i + j > order] = 0.0
    return M


# ----------------------------------------------------------------------------------------------------- linear
def pair_linear(k11, k22, k12, order):
    k11, k22, k12 = _broadcast(k11, k22, k12)
    M = _empty(k12.shape, order)
    M[..., 0, 0] = k12
    if order >= 2:
        M[..., 1, 1] = 1.0
    return M


def diag_linear(k, order):
    k = np.asarray(k, dtype=float)
    out = np.zeros(k.shape + (order + 1,))
    out[..., 0] = k
    if order >= 2:
        out[..., 2] = 2.0
    return out


# ----------------------------------------------------------------------------------------------------- sin
def _cos_quarter(n):
    return np.array([1.0, 0.0, -1.0, 0.0])[np.asarray(n) % 4]


def pair_sin(k11, k22, k12, order):
    """E[sin(u + iπ/2) sin(v + jπ/2)] = ½[e^{−(k11+k22−2k12)/2} cos((i−j)π/2) − e^{−(k11+k22+2k12)/2} cos((i+j)π/2)]."""
    k11, k22, k12 = _broadcast(k11, k22, k12)
    i, j = np.indices((order + 1, order + 1))
    A = np.exp(-0.5 * (k11 + k22 - 2.0 * k12))[..., None, None]
    B = np.exp(-0.5 * (k11 + k22 + 2.0 * k12))[..., None, None]
    return _mask(0.5 * (A * _cos_quarter(i - j) - B * _cos_quarter(i + j)), order)


def diag_sin(k, order):
    """sin² = (1 − cos 2u)/2: E[(sin²)^(m)] = ½δ_m0 − ½ 2^m e^{−2k} cos(mπ/2)."""
    k = np.asarray(k, dtype=float)
    m = np.arange(order + 1)
    out = -0.5 * 2.0 ** m * np.exp(-2.0 * k)[..., None] * _cos_quarter(m)
    out[..., 0] += 0.5
    return out


# ----------------------------------------------------------------------------------------------------- relu
def _gauss_taylor(k, order):
    """Taylor coefficients at 0 of N(u; 0, k): (*S, order+1)."""
    n = np.arange(order + 1)
    half = n // 2
    coef = np.where(n % 2 == 0, (-0.5) ** half / special.factorial(half), 0.0)
    return coef * (1.0 / np.sqrt(2.0 * np.pi * k))[..., None] / k[..., None] ** half


def _scaled_series(a, beta, sigma, s):
    """Taylor coefficients a_k β^k σ^(s−k) of σ^s h(β u / σ) (h has coefficients a_k), exact ±inf limit at σ = 0."""
    k = np.arange(a.size)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        c = a * (beta[..., None] / sigma[..., None]) ** k * sigma[..., None] ** s
        finite_at_zero = (k <= s)                      # σ = 0: terms k <= s are a_k β^k δ_ks
        lim = np.where(finite_at_zero, np.where(k == s, a * beta[..., None] ** k, 0.0),
                       np.sign(a * beta[..., None] ** k) * np.inf)
        lim = np.where(a == 0.0, 0.0, lim)
    return np.where((sigma == 0.0)[..., None], lim, c)


def _relu_series(order):
    """Taylor coefficients of Ψ(x) = xΦ(x) + φ(x) (E[relu(x + Y)]) and of Φ(x), k = 0..order."""
    psi, Phi = np.zeros(order + 1), np.zeros(order + 1)
    psi[0], Phi[0] = _PHI0, 0.5
    if order >= 1:
        psi[1] = 0.5
    for k in range(1, order + 1, 2):                  # Φ_(2n+1) = φ(0)(−1)^n / (2^n n! (2n+1)) = Ψ_(2n+2) (2n+2)
        n = (k - 1) // 2
        Phi[k] = _PHI0 * (-0.5) ** n / math.factorial(n) / k
        if k + 1 <= order:
            psi[k + 1] = Phi[k] / (k + 1)
    return psi, Phi


def _delta_times(k11, k22, k12, det, order, h):
    """E[δ^(p)(u) h(v)] for p = 0..order, h = relu (0) or Θ (1): (−1)^p p! [u^p] N(u; k11) E[h(v) | u].

    The conditional variance of v given u is det/k11 (not k22 − βk12, which cancels near |ρ| = 1).
    """
    pos = k11 > 0
    beta = np.where(pos, k12 / np.where(pos, k11, 1.0), 0.0)
    sigma = np.sqrt(np.where(pos, det / np.where(pos, k11, 1.0), k22))
    psi, Phi = _relu_series(order)
    m = _scaled_series(psi, beta, sigma, 1) if h == 0 else _scaled_series(Phi, beta, sigma, 0)
    g = _gauss_taylor(k11, order)
    p = np.arange(order + 1)
    with np.errstate(invalid="ignore"):
        prod = np.stack([np.sum(np.where(g[..., q::-1] == 0.0, 0.0, g[..., q::-1] * m[..., : q + 1]), axis=-1)
                         for q in range(order + 1)], axis=-1)
    return (-1.0) ** p * special.factorial(p) * prod


def _delta_delta(k11, k22, k12, det, order):
    """E[δ^(p)(u) δ^(q)(v)] = H_pq(0; K) N(0; K), computed with adj(K) to get the exact ±inf at det K = 0."""
    H = bivariate_origin_hermite(k22, k11, -k12, order)           # Q = adj(K)/det, H homogeneous of degree (p+q)/2
    p, q = np.indices((order + 1, order + 1))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = det[..., None, None] ** (-(p + q + 1) / 2.0) / (2.0 * np.pi)
        return np.where(H == 0.0, 0.0, H * scale)


def _two_product(a, b):
    """(p, e) with p = fl(a·b) and p + e = a·b exactly (Dekker/Veltkamp); e = 0 where the split would overflow."""
    def split(x):
        c = 134217729.0 * x                            # 2^27 + 1
        hi = c - (c - x)
        return hi, x - hi

    with np.errstate(over="ignore", invalid="ignore"):
        p = a * b
        (ah, al), (bh, bl) = split(a), split(b)
        e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, np.where(np.isfinite(e), e, 0.0)


def geometric_mean(k11, k22):
    """√(k11·k22), as √k11·√k22 when the product could overflow (entries beyond 1e150)."""
    if max(np.max(k11, initial=0.0), np.max(k22, initial=0.0)) > 1e150:
        return np.sqrt(k11) * np.sqrt(k22)
    return np.sqrt(k11 * k22)


def block_det(k11, k22, k12):
    """det = k11·k22 − k12² >= 0 of the floating-point entries to a few ulp of det itself (not of k11·k22).

    Near a degenerate block (|ρ| -> 1) the naive difference loses all digits of det; relu's derivative moments
    scale like det^(−1/2) and must cancel in contractions, so every relu formula takes this one det
    (docs/numerics.md#ill-conditioned).
    """
    p1, e1 = _two_product(k11, k22)
    p2, e2 = _two_product(k12, k12)
    return np.maximum((p1 - p2) + (e1 - e2), 0.0)


def pair_relu(k11, k22, k12, order):
    """Arc-cosine kernel and all distributional derivatives (relu^(i) = relu, Θ, δ, δ', ...).

    Written in det = k11k22 − k12² (:func:`block_det`), √det = s·sin θ and θ = atan2(√det, k12), so that every
    entry is accurate relative to itself as |ρ| -> 1 (no 1 − ρ or arccos ρ cancellations).
    """
    k11, k22, k12 = _broadcast(k11, k22, k12)
    s = geometric_mean(k11, k22)
    det = block_det(k11, k22, k12)
    c = np.sqrt(det)
    theta = np.where(s > 0, np.arctan2(c, k12), 0.5 * np.pi)
    one_plus_rho = np.divide(np.where(k12 >= 0, s + k12, det / np.where(s > k12, s - k12, 1.0)), s,
                             out=np.ones_like(s), where=s > 0)
    M = _empty(k12.shape, order)
    M[..., 0, 0] = (c + (np.pi - theta) * k12) / (2 * np.pi)
    if order >= 1:                                     # E[relu(u) Θ(v)] = √k11 (1 + ρ) / (2√(2π))
        M[..., 0, 1] = np.sqrt(k11) * one_plus_rho * 0.5 * _PHI0
        M[..., 1, 0] = np.sqrt(k22) * one_plus_rho * 0.5 * _PHI0
    if order >= 2:
        M[..., 1, 1] = (np.pi - theta) / (2 * np.pi)
        for h in (0, 1):                               # i >= 2 against relu / Θ, and the mirror image
            n = order - 2 - h
            if n >= 0:
                M[..., 2: 3 + n, h] = _delta_times(k11, k22, k12, det, n, h)
                M[..., h, 2: 3 + n] = _delta_times(k22, k11, k12, det, n, h)
    if order >= 4:
        M[..., 2:order - 1, 2:order - 1] = _delta_delta(k11, k22, k12, det, order - 4)
    return _mask(M, order)


def diag_relu(k, order):
    """relu² = x²Θ: derivatives 2xΘ, 2Θ, 2δ, 2δ', ...; E[δ^(p)(u)] = He_p(0) k^{−p/2} / √(2πk)."""
    k = np.asarray(k, dtype=float)
    out = np.zeros(k.shape + (order + 1,))
    out[..., 0] = 0.5 * k
    if order >= 1:
        out[..., 1] = 2.0 * np.sqrt(k) * _PHI0
    if order >= 2:
        out[..., 2] = 1.0
    if order >= 3:
        out[..., 3:] = 2.0 * (-1.0) ** np.arange(order - 2) * _gauss_taylor(k, order - 3) \
            * special.factorial(np.arange(order - 2))
    return out


# ----------------------------------------------------------------------------------------------------- erf
def _erf_edge(k11, k22, k12, order):
    """E[erf(u) erf^(q+1)(v)], q = 0..order: (2/√π) q! [m^q] (1+2k22)^{-1/2} e^{−m²/(1+2k22)} erf(−λ m)."""
    c = 1.0 + 2.0 * k22
    det = (1.0 + 2.0 * k11) * c - 4.0 * k12 * k12
    lam = 2.0 * k12 / np.sqrt(c * det)
    n = np.arange(order + 1)
    half = n // 2
    g = np.where(n % 2 == 0, (-1.0) ** half / special.factorial(half), 0.0) / c[..., None] ** half
    e = np.where(n % 2 == 1, -2.0 / math.sqrt(math.pi) * (-1.0) ** half / (special.factorial(half) * np.maximum(n, 1)), 0.0) \
        * lam[..., None] ** n
    prod = np.stack([np.sum(g[..., q::-1] * e[..., : q + 1], axis=-1) for q in range(order + 1)], axis=-1)
    return 2.0 / math.sqrt(math.pi) * special.factorial(n) * prod / np.sqrt(c)[..., None]


def pair_erf(k11, k22, k12, order):
    """Arcsine kernel (2/π) asin(2k12/√((1+2k11)(1+2k22))) and all its derivative moments."""
    k11, k22, k12 = _broadcast(k11, k22, k12)
    det = (1.0 + 2.0 * k11) * (1.0 + 2.0 * k22) - 4.0 * k12 * k12
    M = _empty(k12.shape, order)
    M[..., 0, 0] = 2.0 / np.pi * np.arcsin(np.clip(2.0 * k12 / np.sqrt((1 + 2 * k11) * (1 + 2 * k22)), -1, 1))
    if order >= 1:
        M[..., 0, 1:] = _erf_edge(k11, k22, k12, order - 1)
        M[..., 1:, 0] = _erf_edge(k22, k11, k12, order - 1)
    if order >= 2:                                     # A = (K + I/2)^{-1} = adj(K + I/2) / det(K + I/2)
        dA = det / 4.0
        E = bivariate_origin_hermite((k22 + 0.5) / dA, (k11 + 0.5) / dA, -k12 / dA, order - 2)
        M[..., 1:order, 1:order] = 4.0 / np.pi / np.sqrt(det)[..., None, None] * E
    return _mask(M, order)


def _diag_from_pair(pair):
    """E[(φ²)^(m)(u)] = Σ_l C(m, l) E[φ^(l)(u) φ^(m−l)(u)] from a closed form valid at k12 = k11 = k22."""
    def diag(k, order):
        k = np.asarray(k, dtype=float)
        M = pair(k, k, k, order)
        return np.stack([sum(math.comb(m, l) * M[..., l, m - l] for l in range(m + 1))
                         for m in range(order + 1)], axis=-1)
    return diag


diag_erf = _diag_from_pair(pair_erf)
