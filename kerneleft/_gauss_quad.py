"""Quadrature for bivariate Gaussian moments of smooth activations (THEORY §4).

Coordinates: (u, v) = (a x, c x + d y) with x, y iid N(0, 1) and [[a, 0], [c, d]] the Cholesky factor of the 2x2
block (d = 0 at a degenerate block: no division by d anywhere). Each axis uses Gauss–Legendre nodes on [−Y, Y]
mapped by y = y* + ε sinh(s), which clusters nodes at the activation's transition (x = 0 for φ(u); y* = −c x / d
for φ(v)) at the scale ε = δ / (coefficient) of the transition; δ is the distance of φ's nearest complex
singularity (π/2 for tanh, π for silu/softplus), fitted by measurement for the entire functions. This keeps
tanh(σx) with σ² = 50 (nearly a step) at ~1e-13 with 64 x 64 nodes. Oscillatory φ (sin) use an almost uniform
map (ε = 3) and more nodes.

Two estimators of E[f^(i)(u) f^(j)(v)] share these nodes (see :func:`pair_moments`):
- direct: exact derivatives from Taylor-mode recurrences (``derivs``), valid at every block, degenerate included;
- Hermite: Gaussian integration by parts, E[∂^α h(z)] = E[h(z) H_α(z; K)], with H_α the bivariate Hermite
  polynomials of K (and 1-D He_m for the diagonal); needs only φ itself, and a non-degenerate block.
For each entry the estimator with the smaller rounding bound ε_mach·E|integrand| is used (small variances favour
direct derivatives, large variances and high orders favour Hermite), and that bound is returned as the error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.polynomial.legendre import leggauss

__all__ = ["Profile", "profile_for", "pair_moments", "diag_moments"]

_EPS = np.finfo(float).eps
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_DIRECT_MAX = 4                        # above this order the Hermite estimator is tried as well
_CHUNK = 2 ** 21                       # max nodes x orders held at once (memory bound of the vectorised loops)


@dataclass(frozen=True)
class Profile:
    """Quadrature profile: ``delta`` transition scale of φ, ``cap`` largest ε, ``n`` nodes per axis at order 0."""

    delta: float = 1.0
    cap: float = 1.0
    n: int = 64


_PROFILES = {"tanh": Profile(math.pi / 2), "erf": Profile(1.5), "gelu": Profile(2.0), "silu": Profile(math.pi),
             "softplus": Profile(math.pi), "sin": Profile(math.inf, 3.0, 96)}


def profile_for(name: str) -> Profile:
    """The profile of a registered smooth activation; user callables get the default (δ = 1)."""
    return _PROFILES.get(name, Profile())


def _grid(order: int, prof: Profile, kmax: float, extra: int = 0) -> tuple[int, float]:
    """(nodes per axis, half-width Y): Hermite weights of degree m live on |x| <~ 2√m; sin needs ~√k nodes."""
    Y = 9.0 + 2.0 * math.sqrt(order) * (order > _DIRECT_MAX)
    n = prof.n + extra * order
    if math.isinf(prof.delta):
        n = max(n, int(16.0 * math.sqrt(kmax)) + 6 * order)
    return n, Y


def sinh_rule(center, eps, n: int, Y: float):
    """Nodes/weights (..., n) for ∫_{−Y}^{Y} g(y) N(y) dy, clustered at ``center`` on scale ``eps`` (broadcast)."""
    t, w = leggauss(n)
    center = np.asarray(center, dtype=float)[..., None]
    eps = np.asarray(eps, dtype=float)[..., None]
    lo, hi = np.arcsinh((-Y - center) / eps), np.arcsinh((Y - center) / eps)
    s = 0.5 * (hi + lo) + 0.5 * (hi - lo) * t
    y = center + eps * np.sinh(s)
    return y, 0.5 * (hi - lo) * w * eps * np.cosh(s) * np.exp(-0.5 * y * y) * _INV_SQRT_2PI


def _scale_eps(delta, cap, *coef):
    """ε = min(δ / |coef|, cap) elementwise (coef = 0 -> cap)."""
    eps = np.full(np.broadcast(*coef).shape, cap)
    for c in coef:
        c = np.abs(c)
        eps = np.minimum(eps, np.divide(delta, c, out=np.full(c.shape, np.inf), where=c > 0))
    return eps


def cholesky2(k11, k22, k12):
    """(a, c, d) with u = a x, v = c x + d y; d = 0 at (and numerically beyond) degeneracy."""
    a = np.sqrt(k11)
    c = np.divide(k12, a, out=np.zeros_like(a), where=a > 0)
    return a, c, np.sqrt(np.maximum(k22 - c * c, 0.0))


def _nodes2(k11, k22, k12, n, Y, prof):
    """Tensor nodes for blocks (B,): u (B, n), v (B, n, n), weights wx (B, n), wy (B, n, n), x (B, n), y (B, n, n)."""
    a, c, d = cholesky2(k11, k22, k12)
    x, wx = sinh_rule(0.0, _scale_eps(prof.delta, prof.cap, a, c), n, Y)
    centred = (d[:, None] > 0) & (not math.isinf(prof.delta))
    ystar = np.clip(np.divide(-c[:, None] * x, d[:, None], out=np.zeros_like(x), where=centred), -Y, Y)
    y, wy = sinh_rule(ystar, _scale_eps(prof.delta, prof.cap, d)[:, None], n, Y)
    return a[:, None] * x, c[:, None, None] * x[..., None] + d[:, None, None] * y, wx, wy, x, y


def _hermite_1d(x, order):
    """He_m(x) / √m!, m = 0..order, stacked on axis 0 (stable normalised recurrence)."""
    h = [np.ones_like(x), x]
    for m in range(1, order):
        h.append((x * h[m] - math.sqrt(m) * h[m - 1]) / math.sqrt(m + 1))
    return np.stack(h[: order + 1])


def _hermite_rows(w1, w2, Q11, Q22, Q12, order):
    """Yield p, [H_pq(z; K)/√(p!q!) for q = 0..order−p], bivariate Hermite polynomials of K, row by row.

    w = Q z with Q = K^{-1}; H_{p,q} = w1 H_{p−1,q} − (p−1) Q11 H_{p−2,q} − q Q12 H_{p−1,q−1} (normalised form),
    H_{0,q} = w2 H_{0,q−1} − (q−1) Q22 H_{0,q−2}. Only two rows are held at a time.
    """
    row = [np.ones_like(w1)]
    for q in range(1, order + 1):
        prev = Q22 * math.sqrt(q - 1) * row[q - 2] if q >= 2 else 0.0
        row.append((w2 * row[q - 1] - prev) / math.sqrt(q))
    older = None
    for p in range(order + 1):
        yield p, row
        if p == order:
            return
        new = []
        for q in range(order - p):
            val = w1 * row[q]
            if p >= 1:
                val = val - Q11 * math.sqrt(p) * older[q]
            if q >= 1:
                val = val - Q12 * math.sqrt(q) * row[q - 1]
            new.append(val / math.sqrt(p + 1))
        older, row = row, new


def _direct_pair(derivs, u, v, wx, wy, order):
    """Σ w f^(i)(u) f^(j)(v) and Σ w |·| for i + j <= order: two (B, order+1, order+1) arrays."""
    fu = derivs(u, order)                               # (o, B, n)
    fv = derivs(v, order)                               # (o, B, n, n)
    G = np.einsum("bxy,jbxy->jbx", wy, fv)
    Ga = np.einsum("bxy,jbxy->jbx", wy, np.abs(fv))
    return np.einsum("bx,ibx,jbx->bij", wx, fu, G), np.einsum("bx,ibx,jbx->bij", wx, np.abs(fu), Ga)


def _hermite_pair(phi, u, v, wx, wy, k11, k22, k12, order):
    """E[φ(u)φ(v) H_ij(z;K)] and E|·| (i + j <= order); NaN where the block is numerically degenerate."""
    det = k11 * k22 - k12 * k12
    ok = det > 1e-12 * np.maximum(k11 * k22, 1e-300)
    inv = (np.where(ok, 1.0 / np.where(ok, det, 1.0), np.nan))[:, None, None]
    Q11, Q22, Q12 = k22[:, None, None] * inv, k11[:, None, None] * inv, -k12[:, None, None] * inv
    uu = u[..., None]
    fw = (wx[..., None] * wy) * phi(u)[..., None] * phi(v)
    val, ab = np.zeros((2, u.shape[0], order + 1, order + 1))
    for p, row in _hermite_rows(Q11 * uu + Q12 * v, Q12 * uu + Q22 * v, Q11, Q22, Q12, order):
        for q, H in enumerate(row):
            norm = math.sqrt(math.factorial(p) * math.factorial(q))
            val[:, p, q] = norm * np.einsum("bxy,bxy->b", fw, H)
            ab[:, p, q] = norm * np.einsum("bxy,bxy->b", np.abs(fw), np.abs(H))
    return val, ab


def _choose(est, err):
    """Per entry, the estimate with the smallest error bound (NaN bounds never chosen)."""
    err = np.where(np.isnan(err), np.inf, err)
    k = np.argmin(err, axis=0)
    pick = lambda A: np.take_along_axis(A, k[None], axis=0)[0]
    return pick(est), pick(err)


def pair_moments(phi, derivs, k11, k22, k12, order, prof):
    """M[b, i, j] = E[φ^(i)(u) φ^(j)(v)] (i + j <= order) and its rounding-error bound; k's flat (B,).

    ``derivs(x, order)`` gives exact derivatives (None for a user callable without them: Hermite only).
    """
    B = k12.shape[0]
    n, Y = _grid(order, prof, float(np.max(np.maximum(k11, k22), initial=0.0)))
    step = max(1, _CHUNK // (n * n * 3 * (order + 1)))
    M, err = np.zeros((2, B, order + 1, order + 1))
    for s in range(0, B, step):
        sl = slice(s, s + step)
        u, v, wx, wy, _, _ = _nodes2(k11[sl], k22[sl], k12[sl], n, Y, prof)
        ests, errs = [], []
        if derivs is not None:
            val, ab = _direct_pair(derivs, u, v, wx, wy, order)
            ests.append(val), errs.append(ab)
        if derivs is None or order > _DIRECT_MAX:
            val, ab = _hermite_pair(phi, u, v, wx, wy, k11[sl], k22[sl], k12[sl], order)
            ests.append(val), errs.append(ab)
        M[sl], err[sl] = _choose(np.stack(ests), _EPS * (n + 10) * np.stack(errs))
    i, j = np.indices((order + 1, order + 1))
    M[:, i + j > order] = 0.0
    err[:, i + j > order] = 0.0
    return M, err


def diag_moments(phi, derivs, k, order, prof):
    """E[(φ²)^(m)(u)], u ~ N(0, k), m = 0..order, and error bound; k flat (B,).

    Direct: (φ²)^(m) = Σ_l C(m,l) φ^(l) φ^(m−l); Hermite: E[(φ²)^(m)(a x)] = a^{−m} E[φ(a x)² He_m(x)].
    """
    n, Y = _grid(order, prof, float(np.max(k, initial=0.0)))
    a = np.sqrt(k)
    x, w = sinh_rule(0.0, _scale_eps(prof.delta, prof.cap, a), n, Y)
    u = a[:, None] * x
    ests, errs = [], []
    if derivs is not None:
        D = derivs(u, order)
        terms = [sum(math.comb(m, l) * D[l] * D[m - l] for l in range(m + 1)) for m in range(order + 1)]
        ests.append(np.stack([np.sum(w * t, axis=-1) for t in terms], axis=-1))
        errs.append(np.stack([np.sum(w * np.abs(t), axis=-1) for t in terms], axis=-1))
    if derivs is None or order > _DIRECT_MAX:
        He = _hermite_1d(x, order)                                  # (o, B, n), normalised
        scale = np.sqrt([math.factorial(m) for m in range(order + 1)])
        with np.errstate(divide="ignore", invalid="ignore"):
            ainv = np.where(a > 0, 1.0 / np.where(a > 0, a, 1.0), np.nan)[:, None] ** np.arange(order + 1)
        f2 = w * phi(u) ** 2
        ests.append(np.einsum("bn,mbn->bm", f2, He) * scale * ainv)
        errs.append(np.einsum("bn,mbn->bm", np.abs(f2), np.abs(He)) * scale * ainv)
    return _choose(np.stack(ests), _EPS * (n + 10) * np.stack(errs))
