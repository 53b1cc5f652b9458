"""Quadrature for bivariate Gaussian moments of smooth activations (docs/numerics.md#quadrature).

Common-factor representation of a 2x2 block with correlation ρ (r = |ρ|, s = sign ρ):
    u = s √(r k11) w + √((1−r) k11) ξ1,    v = √(r k22) w + √((1−r) k22) ξ2,    w, ξ1, ξ2 iid N(0, 1),
so that E[f^(i)(u) g^(j)(v)] = E_w[F_i(m1(w)) G_j(m2(w))] with the smoothed derivatives
F_i(m) = E_ξ[f^(i)(m + σ1 ξ)]. Each F_i is a one-dimensional integral, evaluated by every split
    F_i(m) = σ1^{−q} E_ξ[f^(i−q)(m + σ1 ξ) He_q(ξ)],    q = 0..i
(Gaussian integration by parts onto Hermite polynomials; q = 0 is the direct derivative, q = i needs only φ),
and at each outer node the split with the smallest absolute integrand mass (the rounding bound) is kept. Small
variances favour direct derivatives, large variances favour Hermite; an intermediate split keeps order-24
moments of tanh at ~1e-14 where either extreme loses 4–10 digits. ρ = ±1 (σ = 0) is exact with q = 0;
ρ = 0 reduces to products of one-dimensional moments.

Nodes: Gauss–Legendre on [−Y, Y] mapped by y = y* + ε sinh(t), clustering nodes at φ's transition (y* = −m/σ1
on the inner axis, 0 on the outer axis) on the scale ε = δ/(coefficient), δ ≈ the distance of φ's nearest complex
singularity (π/2 tanh, π silu/softplus; fitted by measurement for erf/gelu), set in each activation record's
``profile``. tanh(σx) with σ² = 50 (nearly a step) is then exact to ~1e-13 with 64 nodes. Oscillatory φ (sin,
δ = ∞) use an almost uniform map and ~16√k nodes.
Derivatives come from exact Taylor-mode recurrences (``derivs``); a user callable without them uses q = i only.
The returned error is the rounding bound ε_mach·n·E|integrand| of the chosen estimates (not the truncation
error, which the node counts keep below it for the registered activations — see tests/test_gaussian.py).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.polynomial.legendre import leggauss

__all__ = ["Profile", "pair_moments", "diag_moments", "sinh_rule", "hermite_1d"]

_EPS = np.finfo(float).eps
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_CHUNK = 2 ** 21                       # max (nodes x orders) held at once: memory bound of the vectorised loops


@dataclass(frozen=True)
class Profile:
    """Quadrature profile (one per activation record): ``delta`` transition scale of φ, ``cap`` largest ε, ``n``
    nodes per axis at order 0. The default (δ = 1) serves user callables."""

    delta: float = 1.0
    cap: float = 1.0
    n: int = 64


def _grid(order: int, prof: Profile, kmax: float) -> tuple[int, float]:
    """(nodes per axis, half-width Y of the inner axes): Y = 9 + √order keeps He_q tails negligible; sin needs ~16√k nodes."""
    n = prof.n + 6 * order
    if math.isinf(prof.delta):
        n = max(n, int(16.0 * math.sqrt(kmax)) + 6 * order)
    return n, 9.0 + math.sqrt(order)


@functools.lru_cache(maxsize=64)
def _legendre(n: int):
    return leggauss(n)


def sinh_rule(center, eps, n: int, Y: float):
    """Nodes/weights (..., n) for ∫_{−Y}^{Y} g(y) N(y) dy, clustered at ``center`` on scale ``eps`` (broadcast)."""
    t, w = _legendre(n)
    center = np.asarray(center, dtype=float)[..., None]
    eps = np.asarray(eps, dtype=float)[..., None]
    lo, hi = np.arcsinh((-Y - center) / eps), np.arcsinh((Y - center) / eps)
    sh = np.sinh(0.5 * (hi + lo) + 0.5 * (hi - lo) * t)
    y = center + eps * sh
    return y, (0.5 * _INV_SQRT_2PI) * (hi - lo) * eps * w * np.sqrt(1.0 + sh * sh) * np.exp(-0.5 * y * y)


def _scale_eps(prof: Profile, coef):
    """ε = min(δ / |coef|, cap) elementwise (coef = 0 -> cap)."""
    c = np.abs(coef)
    return np.minimum(prof.cap, np.divide(prof.delta, c, out=np.full(c.shape, np.inf), where=c > 0))


def hermite_1d(x, order):
    """He_q(x) / √q!, q = 0..order, on the last axis (stable normalised recurrence, preallocated)."""
    h = np.empty(x.shape + (order + 1,))
    h[..., 0] = 1.0
    if order >= 1:
        h[..., 1] = x
    for q in range(1, order):
        h[..., q + 1] = (x * h[..., q] - math.sqrt(q) * h[..., q - 1]) / math.sqrt(q + 1)
    return h


def _weighted_hermite(xi, xi_w, order):
    """(xi_w·He, |xi_w·He|) on nodes xi (..., n) -> (..., n, o+1) each; None at order 0 (not needed)."""
    if order == 0:
        return None
    W = hermite_1d(xi, order)
    W *= xi_w[..., None]
    return W, np.abs(W)


def _split_table(vals, absv, sigma, order):
    """From S[..., m, q] = E[f^(m) He_q/√q!] pick, per node and order i, the split q <= i with least |mass|.

    vals, absv (..., o+1, o+1); sigma broadcastable to (...). Returns estimates and masses (..., o+1).
    """
    q = np.arange(order + 1)
    est, mass = np.empty(vals.shape[:-1]), np.empty(vals.shape[:-1])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        fac = np.sqrt([float(math.factorial(k)) for k in q]) * np.asarray(sigma)[..., None] ** (-q)
        for i in range(order + 1):
            e = vals[..., i - q[: i + 1], q[: i + 1]] * fac[..., : i + 1]
            a = absv[..., i - q[: i + 1], q[: i + 1]] * fac[..., : i + 1]
            a = np.where(np.isfinite(a) & np.isfinite(e), a, np.inf)
            k = np.argmin(a, axis=-1)[..., None]
            est[..., i] = np.take_along_axis(e, k, axis=-1)[..., 0]
            mass[..., i] = np.take_along_axis(a, k, axis=-1)[..., 0]
    est[np.isinf(mass)] = np.nan
    return est, mass


def _smoothed(phi, derivs, z, xi_w, W, sigma, order, parity=None):
    """F[..., i] = E_ξ[f^(i)(m + σ ξ)] and its absolute mass, i = 0..order, from the inner nodes.

    z = m + σξ and xi_w (quadrature weights) (B, N, n); W = (xi_w·He, |xi_w·He|) with He (B, N, n, o+1) the
    normalised Hermite polynomials of ξ (shared by both smoothed functions of a block; unused at order 0);
    sigma (B,); ``parity`` (B, o+1) multiplies He_q (sign(ρ)^q for the reflected nodes), None for +1.
    Without ``derivs`` only the split q = i is available (NaN for i >= 1 where σ = 0). Returns (B, N, o+1) x 2.
    """
    if order == 0:
        f = xi_w * phi(z)
        return np.sum(f, axis=-1)[..., None], np.sum(np.abs(f), axis=-1)[..., None]
    Wv, Wa = W
    if derivs is None:
        f = phi(z)[..., None, :]                                                        # (B, N, 1, n)
        vals = np.zeros(z.shape[:2] + (order + 1, order + 1))
        absv = np.full(z.shape[:2] + (order + 1, order + 1), np.inf)
        vals[..., :1, :], absv[..., :1, :] = f @ Wv, np.abs(f) @ Wa
    else:
        D = np.moveaxis(np.asarray(derivs(z, order), dtype=float), 0, -2)               # (B, N, o+1, n)
        vals, absv = D @ Wv, np.abs(D) @ Wa
    if parity is not None:
        vals *= parity[:, None, None, :]
    return _split_table(vals, absv, sigma[:, None], order)


def pair_moments(phi, derivs, k11, k22, k12, order, prof):
    """M[b, i, j] = E[φ^(i)(u) φ^(j)(v)] (i + j <= order, 0 elsewhere) and its rounding bound; k's flat (B,).

    Both smoothed functions share one inner grid: with t = √(r/(1−r)) the transitions sit at ξ = ∓t w, so
    f's nodes are g's nodes times sign(ρ) (He_q picks up sign(ρ)^q).
    """
    B = k12.shape[0]
    n, Y = _grid(order, prof, float(np.max(np.maximum(k11, k22), initial=0.0)))
    s = np.sqrt(k11 * k22)
    rho = np.clip(np.divide(k12, s, out=np.zeros_like(s), where=s > 0), -1.0, 1.0)
    r, sgn = np.abs(rho), np.where(rho < 0, -1.0, 1.0)
    a1, a2 = np.sqrt(r * k11), np.sqrt(r * k22)
    s1, s2 = np.sqrt((1 - r) * k11), np.sqrt((1 - r) * k22)
    t = np.divide(np.sqrt(r), np.sqrt(1 - r), out=np.zeros_like(r), where=r < 1)
    if math.isinf(prof.delta):
        t = np.zeros_like(t)
    step = max(1, _CHUNK // (n * n * (order + 1)))
    M, err = np.zeros((2, B, order + 1, order + 1))
    for c in range(0, B, step):
        sl = slice(c, c + step)
        w, ww = sinh_rule(0.0, np.minimum(_scale_eps(prof, a1[sl]), _scale_eps(prof, a2[sl])), n, 9.0)
        xi, xw = sinh_rule(np.clip(-t[sl, None] * w, -Y, Y),
                           np.broadcast_to(np.minimum(_scale_eps(prof, s1[sl]), _scale_eps(prof, s2[sl]))[:, None],
                                           w.shape), n, Y)                              # (b, N, n)
        z1 = sgn[sl, None, None] * (a1[sl, None, None] * w[..., None] + s1[sl, None, None] * xi)
        z2 = a2[sl, None, None] * w[..., None] + s2[sl, None, None] * xi
        W = _weighted_hermite(xi, xw, order)
        Fv, Fa = _smoothed(phi, derivs, z1, xw, W, s1[sl], order, sgn[sl, None] ** np.arange(order + 1))
        Gv, Ga = _smoothed(phi, derivs, z2, xw, W, s2[sl], order)
        M[sl] = np.einsum("bw,bwi,bwj->bij", ww, Fv, Gv)
        err[sl] = _EPS * (n + 10) * np.einsum("bw,bwi,bwj->bij", ww, Fa, Ga)
    i, j = np.indices((order + 1, order + 1))
    M[:, i + j > order] = 0.0
    err[:, i + j > order] = 0.0
    return M, err


def diag_moments(phi, derivs, k, order, prof):
    """E[(φ²)^(m)(u)], u ~ N(0, k), m = 0..order, and rounding bound; k flat (B,) -> (B, o+1).

    Splits E[(φ²)^(m)(a x)] = a^{−q} E[(φ²)^(m−q)(a x) He_q(x)], (φ²)^(p) = Σ_l C(p,l) φ^(l) φ^(p−l) (Leibniz).
    """
    n, Y = _grid(order, prof, float(np.max(k, initial=0.0)))
    a = np.sqrt(k)
    x, w = sinh_rule(0.0, _scale_eps(prof, a), n, Y)
    u = a[:, None] * x
    if derivs is None:
        sq = (w * phi(u) ** 2)[..., None, :]
        vals = np.zeros(k.shape + (order + 1, order + 1))
        absv = np.full(k.shape + (order + 1, order + 1), np.inf)
    else:
        D = derivs(u, order)
        sq = w[..., None, :] * np.stack([sum(math.comb(p, l) * D[l] * D[p - l] for l in range(p + 1))
                                         for p in range(order + 1)], axis=-2)
        vals, absv = np.empty((2,) + k.shape + (order + 1, order + 1))
    He = hermite_1d(x, order)
    vals[..., : sq.shape[-2], :], absv[..., : sq.shape[-2], :] = sq @ He, np.abs(sq) @ np.abs(He)
    est, mass = _split_table(vals, absv, a, order)
    return est, _EPS * (n + 10) * mass
