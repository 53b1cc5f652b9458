"""Four-point Gaussian moments of φ in the pair basis (docs/architectures.md#kernel-maps, docs/numerics.md#quadrature).

``E4[..., r, s] = E_{x~N(0,K)}[φ(x_a) φ(x_b) φ(x_c) φ(x_d)]`` for pairs r = (a, b), s = (c, d) of
:func:`kerneleft.pairs.pair_basis`; :func:`pair_covariance` subtracts ``F_r F_s``. An entry depends only on the
multiset {a, b, c, d}: it is ``E[Π_i φ(x_i)^{m_i}]`` over its d <= 4 distinct coordinates (powers m_i >= 1,
Σ m_i = 4). Each distinct index set S is integrated once, for all its power patterns together.

Closed forms: linear (Isserlis) and sin (characteristic function: 16 exponentials, constant and linear terms removed
before summing). Everything else by nested quadrature over each d x d block K_S, vectorised over blocks:

- Pivoted Cholesky K_S = L Lᵀ (largest conditional variance first; below 1e-13 of the largest variance a conditional
  variance counts as 0, so a singular block is integrated exactly as the lower-rank integral it is); x = L y,
  y ~ N(0, I), y_1 outermost.
- On axis y_k the factor φ(x_i)^{m_i} (i >= k) has its transition (kink) where the mean of x_i given y_1..y_k
  crosses 0, ``y_k = −Σ_{j<k} L_ij y_j / L_ik``, blurred on the scale ``w_ik = hypot(δ, σ_ik) / |L_ik|``
  (δ: φ's transition scale from its quadrature profile, 0 for a kink; σ_ik² = Σ_{j>k} L_ij² the variance still to
  be integrated). The axis [−Y, Y] is split at the own transition of factor k and at every later factor's that is
  sharper than the profile's cap; each piece carries Gauss–Legendre nodes mapped by y = c ± ε sinh(τ), clustered
  at its transition c on the scale ε = min(w, cap) (the map of :mod:`kerneleft._gauss_quad`). Node counts grow with
  the largest sinh range of the axis. A smooth axis whose only factor is wider than 1 gets one rule for all points.
- Kinks (``smooth=False``: φ smooth except at 0, e.g. relu) sit exactly on split points, so every piece integrates
  a smooth function; a blur narrower than 1e-6 counts as a kink (its effect is O(w²)). relu's innermost axis is
  the closed form E[relu(μ + sξ)^p] (partial moments of the normal).

Convergence: every block is integrated with n and n/1.5 nodes per piece (default n = profile.n / 2 = 32). The
error estimate of the finer value is 10·e^{1.5}, e = |difference| / scale (geometric convergence in n, with a
safety factor 10), the scale being the block's Hölder bound max_i E[φ(x_i)⁴]; blocks above ``tol`` are redone with
1.5x the nodes (twice), then :class:`~kerneleft.errors.ConvergenceError` states the error reached and the ``nodes``
option. K's symmetric part is used; K must be PSD (eigenvalues >= −1e-10 max |K|, else InputError).

Accuracy (tests/test_pair_covariance.py): error <= ``tol`` (default 1e-10) of that scale for the registered
activations and smooth user callables whose transitions lie within ~δ of 0, at variances 0.01–10, for P <= 4
random kernels, pairs at ρ up to 1 − 1e-9 and singular K. Measured against independent references: 1e-15–1e-11,
typically ~1e-14; of random blocks 0–13 % (gelu) need the 1.5x rerun. A φ that converges more slowly raises
ConvergenceError rather than returning a wrong value.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import special

from ._gauss_closed import pair_linear, pair_relu, pair_sin
from ._gauss_quad import Profile
from .errors import ConvergenceError, InputError
from .limits import Budget, check_tolerance
from .pairs import pair_basis
from .validate import check_int

__all__ = ["fourth_moments", "pair_covariance", "DEFAULT_TOL"]

DEFAULT_TOL = 1e-10
_Y = 10.0                    # each y_k ~ N(0, 1) is integrated over [−Y, Y] (tail mass 1.5e-23)
_RANK_TOL = 1e-13            # conditional variance / largest variance below which a block is singular there
_PSD_TOL = 1e-10             # tolerated relative negative eigenvalue of K
_KINK_WIDTH = 1e-6           # blurs narrower than this (in y units) are treated as exact kinks
_FIXED_WIDTH = 1.0           # a smooth axis whose factor is at least this wide gets one rule for all points
_CHUNK = 2 ** 20             # max grid points held at once
_BLOCK_POINTS = 2 ** 23      # grid points per batch of blocks (one progress step)
_ESCALATIONS = 2
_SAFETY = 10.0               # accept when _SAFETY · (difference / scale)^1.5 <= tol
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------- index tables
@functools.lru_cache(maxsize=None)
def _patterns(d: int) -> np.ndarray:
    """Power patterns (npat, d): compositions of 4 into d parts >= 1."""
    return np.array([p for p in itertools.product(range(1, 5), repeat=d) if sum(p) == 4], dtype=int)


def _quads(P: int) -> np.ndarray:
    """(N, N, 4) index quadruples (a_r, b_r, a_s, b_s)."""
    pb = pair_basis(P)
    return np.stack(np.broadcast_arrays(pb.a[:, None], pb.b[:, None], pb.a[None, :], pb.b[None, :]), axis=-1)


@functools.lru_cache(maxsize=None)
def _tables(P: int):
    """({d: index sets (nS, d)}, {d: offset}, total, where (N, N)): values are stacked over d = 1..min(4, P) as
    [set-major, pattern-minor] blocks, and ``where[r, s]`` is the position of the multiset of entry (r, s)."""
    sets, offsets, lookup, off = {}, {}, {}, 0
    for d in range(1, min(4, P) + 1):
        S = np.array(list(itertools.combinations(range(P), d)), dtype=int)
        pats = _patterns(d)
        sets[d], offsets[d] = S, off
        for si, s in enumerate(S):
            for pi, p in enumerate(pats):
                lookup[tuple(sorted(itertools.chain.from_iterable([c] * m for c, m in zip(s, p))))] = \
                    off + si * len(pats) + pi
        off += len(S) * len(pats)
    N = pair_basis(P).N
    where = np.array([lookup[tuple(sorted(q))] for q in _quads(P).reshape(-1, 4)], dtype=int).reshape(N, N)
    return sets, offsets, off, where


# ----------------------------------------------------------------------------------------------- closed forms
def _isserlis(Q):
    """E[x1 x2 x3 x4] for the 4x4 covariances Q (..., 4, 4)."""
    return Q[..., 0, 1] * Q[..., 2, 3] + Q[..., 0, 2] * Q[..., 1, 3] + Q[..., 0, 3] * Q[..., 1, 2]


def _exp_minus_linear(x):
    """e^x − 1 − x without cancellation (series below |x| = 1e-3)."""
    small = np.abs(x) < 1e-3
    xs = np.where(small, x, 0.0)
    series = xs * xs * (0.5 + xs * (1 / 6 + xs * (1 / 24 + xs * (1 / 120 + xs / 720))))
    return np.where(small, series, np.expm1(x) - x)


_SIGNS = np.array(list(itertools.product((1.0, -1.0), repeat=4)))          # (16, 4)


def _sin_moment(Q):
    """E[Π_j sin(x_j)] = (1/16) Σ_ε (Πε) e^{−εᵀQε/2} for the 4x4 covariances Q; the constant and linear terms of
    the exponential cancel in the signed sum and are removed before summing (exact for small Q)."""
    q = np.einsum("ei,...ij,ej->...e", _SIGNS, Q, _SIGNS)
    return np.einsum("e,...e->...", np.prod(_SIGNS, axis=1), _exp_minus_linear(-0.5 * q)) / 16.0


def _relu_partial(mu, s, pmax):
    """E[relu(μ + sξ)^p], p = 1..pmax, ξ ~ N(0, 1); mu, s (M,) -> (M, pmax); s = 0 gives relu(μ)^p exactly.

    Σ_k C(p, k) μ^{p−k} u_k with u_k = s^k E[ξ^k; ξ > −μ/s] = (k−1) s² u_{k−2} + s (−μ)^{k−1} N(μ/s).
    """
    pos = s > 0
    t = np.where(pos, mu / np.where(pos, s, 1.0), np.where(mu > 0, np.inf, -np.inf))
    dens = np.where(pos, np.exp(-0.5 * np.where(pos, t, 0.0) ** 2) * _INV_SQRT_2PI, 0.0)
    u = [special.ndtr(t), s * dens]
    for k in range(2, pmax + 1):
        u.append((k - 1) * s * s * u[k - 2] + s * (-mu) ** (k - 1) * dens)
    return np.stack([sum(math.comb(p, k) * mu ** (p - k) * u[k] for k in range(p + 1))
                     for p in range(1, pmax + 1)], axis=-1)


_CLOSED = {pair_linear: _isserlis, pair_sin: _sin_moment}      # keyed by the activation record's pair_closed
_INNER = {pair_relu: _relu_partial}


@dataclass(frozen=True)
class _Integrand:
    """φ as the quadrature sees it: ``kink`` (smooth except at 0), profile, optional closed innermost axis."""

    phi: Callable[[np.ndarray], np.ndarray]
    kink: bool
    prof: Profile
    inner: Callable | None = None


# ----------------------------------------------------------------------------------------------- factorisation
def _pivoted_cholesky(A):
    """A (B, d, d) PSD -> (L (B, d, d) lower, perm (B, d)) with A[perm][:, perm] = L Lᵀ, largest pivot first.

    Pivots below _RANK_TOL times the largest diagonal are set to 0 (their column of L vanishes).
    """
    A = np.array(A, dtype=float)
    B, d = A.shape[:2]
    rows = np.arange(B)[:, None]
    perm = np.tile(np.arange(d), (B, 1))
    L = np.zeros_like(A)
    floor = _RANK_TOL * np.max(np.diagonal(A, axis1=1, axis2=2), axis=1, initial=0.0)
    for k in range(d):
        j = k + np.argmax(np.diagonal(A, axis1=1, axis2=2)[:, k:], axis=1)
        q = np.tile(np.arange(d), (B, 1))
        q[np.arange(B), k], q[np.arange(B), j] = j, k
        A = A[rows[:, :, None], q[:, :, None], q[:, None, :]]
        L, perm = L[rows, q], perm[rows, q]
        piv = A[:, k, k]
        ok = piv > floor
        lkk = np.sqrt(np.where(ok, piv, 1.0))
        L[:, k, k] = np.where(ok, lkk, 0.0)
        L[:, k + 1:, k] = np.where(ok[:, None], A[:, k + 1:, k] / lkk[:, None], 0.0)
        A[:, k + 1:, k + 1:] -= L[:, k + 1:, k, None] * L[:, None, k + 1:, k]
    return L, perm


# ----------------------------------------------------------------------------------------------- nested rule
@functools.lru_cache(maxsize=64)
def _legendre(n: int):
    return np.polynomial.legendre.leggauss(n)


def _piece_nodes(A, Bend, eps, n):
    """Nodes/weights (..., n) of ∫_A^B g(y) N(y) dy by Gauss–Legendre in τ, y = A ± eps sinh(τ) (arrays (...))."""
    t, w = _legendre(n)
    half = 0.5 * np.arcsinh(np.abs(Bend - A) / eps)[..., None]                     # τ ∈ [0, 2·half]
    e = np.exp(half * (1.0 + t))
    inv = 1.0 / e
    y = A[..., None] + (0.5 * np.sign(Bend - A) * eps)[..., None] * (e - inv)
    wt = (e + inv) * np.exp(-0.5 * y * y)
    wt *= (0.5 * _INV_SQRT_2PI) * half * eps[..., None] * w
    return y, wt


def _widths(L, f: _Integrand):
    """W[b, k, i] (i >= k): width of factor i's transition on axis y_k; inf: no feature there, 0: an exact kink."""
    B, d = L.shape[:2]
    W = np.full((B, d, d), np.inf)
    delta = 0.0 if f.kink else f.prof.delta
    for k in range(d):
        for i in range(k, d):
            a = np.abs(L[:, i, k])
            blur = np.hypot(delta, np.sqrt(np.sum(L[:, i, k + 1:] ** 2, axis=1)))
            with np.errstate(divide="ignore", invalid="ignore"):
                w = np.where(a > 0, blur / np.where(a > 0, a, 1.0), np.inf)
            W[:, k, i] = np.where(w < _KINK_WIDTH, 0.0, w) if f.kink else w
    return W


class _Rule:
    """Piece layout and node counts of every axis for a batch of Cholesky factors L (B, d, d)."""

    def __init__(self, L, f: _Integrand, n: int):
        B, d = L.shape[:2]
        cap = f.prof.cap
        self.L, self.d, self.cap, self.closed_last = L, d, cap, f.inner is not None
        W = _widths(L, f)
        self.eps = np.minimum(np.where(W == 0.0, cap, np.maximum(W, _KINK_WIDTH)), cap)        # (B, d, d)
        # all transitions of axis y_1 sit at 0: one split point, clustered on the narrowest scale
        self.eps[:, 0, 0] = np.min(np.where(np.isfinite(W[:, 0, :]), self.eps[:, 0, :], cap), axis=1)
        # split points of axis k: the own factor's, and those of later factors sharper than the cap
        self.factors = [[k] + [i for i in range(k + 1, d) if k > 0 and np.any(W[:, k, i] < cap)] for k in range(d)]
        self.fixed = [k > 0 and not f.kink and len(self.factors[k]) == 1
                      and bool(np.all(W[:, k, k] >= _FIXED_WIDTH)) for k in range(d)]
        # a kink far from the Gaussian bulk (own conditional std < half the explained one) would leave the bulk to
        # the coarse far end of its piece: split at 0 too
        self.bulk = [k > 0 and f.kink and bool(np.any(2 * L[:, k, k] < np.linalg.norm(L[:, k, :k], axis=1)))
                     for k in range(d)]
        ref = math.asinh(2 * _Y / cap)
        self.n, self.fixed_nodes = [], []
        for k in range(d):
            tau = float(np.max(np.arcsinh(2 * _Y / self.eps[:, k, self.factors[k]]), initial=ref))
            nk = math.ceil(n * tau / ref)
            if math.isinf(f.prof.delta):                       # oscillatory φ: ~8√k nodes per piece
                nk = max(nk, math.ceil(8 * math.sqrt(float(np.max(L[:, :, k] ** 2, initial=0.0)))) + 8)
            self.n.append(nk)
            self.fixed_nodes.append(None if not self.fixed[k] else tuple(a.reshape(-1) for a in _piece_nodes(
                np.zeros(2), np.array([-_Y, _Y]), np.full(2, cap), nk)))

    def points(self, k):
        """Grid points per point of axis k (axes k..d−1; a closed innermost axis counts 1)."""
        last = self.d - 1 if self.closed_last else self.d
        return math.prod(2 * (len(self.factors[j]) + self.bulk[j]) * self.n[j] for j in range(k, last))

    def nodes(self, k, kern, mu):
        """Nodes and weights (M, npts) on axis y_k for points with kernel index kern (M,) and means mu (M, d)."""
        M = kern.shape[0]
        if self.fixed[k]:
            y, w = self.fixed_nodes[k]
            return np.broadcast_to(y, (M, y.size)), np.broadcast_to(w, (M, y.size))
        fk = self.factors[k]
        a = self.L[:, fk, k][kern]                                                  # (M, m)
        c = np.clip(np.where(a != 0.0, -mu[:, fk] / np.where(a != 0.0, a, 1.0), 0.0), -_Y, _Y)
        e = self.eps[:, k, fk][kern]
        if self.bulk[k]:
            c, e = np.concatenate([c, np.zeros((M, 1))], 1), np.concatenate([e, np.full((M, 1), self.cap)], 1)
        order = np.argsort(c, axis=1)
        c, e = np.take_along_axis(c, order, 1), np.take_along_axis(e, order, 1)
        # pieces: [−Y, c1], [c1, mid12], [mid12, c2], ..., [cm, Y], each clustered at its split point
        A = np.concatenate([c[:, :1], np.stack([c[:, :-1], c[:, 1:]], -1).reshape(M, -1), c[:, -1:]], axis=1)
        Bend = np.concatenate([np.full((M, 1), -_Y), np.repeat(0.5 * (c[:, 1:] + c[:, :-1]), 2, axis=1),
                               np.full((M, 1), _Y)], axis=1)
        E = np.concatenate([e[:, :1], np.stack([e[:, :-1], e[:, 1:]], -1).reshape(M, -1), e[:, -1:]], axis=1)
        y, w = _piece_nodes(A, Bend, E, self.n[k])
        return y.reshape(M, -1), w.reshape(M, -1)


def _powers(v, pmax):
    """(..., n) -> (..., n, pmax): v, v², ..., v^pmax."""
    out = np.empty(v.shape + (pmax,))
    out[..., 0] = v
    for p in range(1, pmax):
        np.multiply(out[..., p - 1], v, out=out[..., p])
    return out


def _axis(f: _Integrand, rule: _Rule, pmax, k, kern, mu):
    """T[m, (p_k, ..., p_{d−1})] = E[Π_{i>=k} φ(x_i)^{p_i} | y_<k] for points kern (M,), mu (M, d) (the partial
    means Σ_{j<k} L_ij y_j); p in 1..pmax, flattened C-order -> (M, pmax^(d−k))."""
    d = rule.d
    if k == d - 1 and f.inner is not None:
        return f.inner(mu[:, k], rule.L[kern, k, k], pmax)
    M = kern.shape[0]
    step = max(1, _CHUNK // rule.points(k))
    out = np.empty((M, pmax ** (d - k)))
    for c0 in range(0, M, step):
        sl = slice(c0, c0 + step)
        y, w = rule.nodes(k, kern[sl], mu[sl])                                      # (m, n)
        Lk = rule.L[:, :, k][kern[sl]]                                               # (m, d)
        Phi = _powers(np.asarray(f.phi(mu[sl, k, None] + Lk[:, k, None] * y), dtype=float), pmax)
        if k == d - 1:
            out[sl] = np.einsum("mn,mnp->mp", w, Phi)
            continue
        m, n = y.shape
        mu_in = mu[sl, None, :] + Lk[:, None, :] * y[:, :, None]                     # (m, n, d)
        inner = _axis(f, rule, pmax, k + 1, np.repeat(kern[sl], n), mu_in.reshape(m * n, d))
        out[sl] = np.einsum("mn,mnp,mnr->mpr", w, Phi, inner.reshape(m, n, -1)).reshape(m, -1)
    return out


def _nested(f: _Integrand, L, perm, n):
    """E[Π φ(x_i)^{m_i}] of every power pattern of _patterns(d) for the blocks L (B, d, d) (pivot order perm):
    (B, npat)."""
    B, d = L.shape[:2]
    pmax = 5 - d
    T = _axis(f, _Rule(L, f, n), pmax, 0, np.arange(B), np.zeros((B, d)))
    # pattern m (original coordinates) is the entry m[perm] of the pivoted tensor
    flat = np.ravel_multi_index(tuple(np.moveaxis(np.take_along_axis(_patterns(d)[None], perm[:, None, :], 2),
                                                  -1, 0) - 1), (pmax,) * d)
    return np.take_along_axis(T, flat, 1)


def _converged(f: _Integrand, blocks, scale, n, tol):
    """Moments (B, npat) of blocks (B, d, d) to ``tol`` of ``scale`` (B,) (None: of the largest moment)."""
    d = blocks.shape[-1]
    L, perm = _pivoted_cholesky(blocks)
    todo = np.arange(blocks.shape[0])
    out, coarse = _nested(f, L, perm, n), _nested(f, L, perm, round(n / 1.5))
    for attempt in range(_ESCALATIONS + 1):
        s = np.max(np.abs(out[todo]), axis=1) if scale is None else scale[todo]
        diff = np.max(np.abs(out[todo] - coarse), axis=1)
        bad = ~(diff <= (tol / _SAFETY) ** (2 / 3) * s)     # error of the finer rule ~ (diff / s)^1.5
        if not np.any(bad):
            return out
        if attempt == _ESCALATIONS:
            worst = int(np.argmax(np.where(bad, diff / np.where(s > 0, s, 1.0), 0.0)))
            raise ConvergenceError(
                f"nodes: the four-point quadrature of a {d}-input block reached an estimated relative error of "
                f"{_SAFETY * (diff[worst] / max(s[worst], 1e-300)) ** 1.5:.2g} (tol {tol:.2g}) with {n} nodes per "
                f"piece; pass nodes= larger (e.g. {math.ceil(1.5 * n)}) or a larger tol")
        todo, coarse = todo[bad], out[todo[bad]]
        n = math.ceil(1.5 * n)
        out[todo] = _nested(f, L[todo], perm[todo], n)
    return out


def _check_psd(K):
    """InputError unless the symmetric K (B, P, P) is PSD within rounding (eigenvalues >= −1e-10 of max |K|)."""
    scale = np.max(np.abs(K), axis=(-2, -1), initial=0.0)
    low = np.min(np.linalg.eigvalsh(K), axis=-1, initial=np.inf)
    if np.any(low < -_PSD_TOL * scale):
        raise InputError(f"K: not positive semi-definite (smallest eigenvalue {np.min(low):.3g})")


def fourth_moments(phi, K, *, smooth=True, pair_closed=None, profile=None, nodes=None, tol=DEFAULT_TOL,
                   method="auto"):
    """E4[..., r, s] = E[φ(x_a)φ(x_b)φ(x_c)φ(x_d)], x ~ N(0, K); K (..., P, P) PSD -> (..., N, N), symmetric.

    From the activation record: ``phi``, ``smooth`` (False: a kink at 0), ``pair_closed`` (selects the closed forms
    of linear, sin and relu's innermost axis), ``profile`` (transition scale, cap, nodes). ``nodes``: Gauss–Legendre
    nodes per piece (default profile.n / 2); ``tol``: relative tolerance; ``method``: 'auto' or 'quadrature'
    (ignore closed forms, for cross-checks).
    """
    if method not in ("auto", "quadrature"):
        raise InputError(f"method: must be 'auto' or 'quadrature', got {method!r}")
    tol = check_tolerance("tol", tol, 1e-13, 1e-2)
    K = np.asarray(K, dtype=float)
    P, lead = K.shape[-1], K.shape[:-2]
    Kf = K.reshape((-1, P, P))
    Kf = 0.5 * (Kf + np.swapaxes(Kf, -1, -2))                                    # as F: the symmetric part
    _check_psd(Kf)
    auto = method == "auto"
    if auto and pair_closed in _CLOSED:
        return _CLOSED[pair_closed](Kf[:, _quads(P)[..., :, None], _quads(P)[..., None, :]]).reshape(
            lead + (pair_basis(P).N,) * 2)
    prof = Profile() if profile is None else profile
    n = max(6, prof.n // 2) if nodes is None else check_int("nodes", nodes, 6, maximum=512)
    f = _Integrand(phi, not smooth, prof, _INNER.get(pair_closed) if auto and not smooth else None)
    sets, offsets, total, where = _tables(P)
    B = Kf.shape[0]
    values = np.empty((B, total))
    work = {d: (2 * n) ** (d - (f.inner is not None)) for d in sets}
    diag = None
    with Budget("K", sum(work[d] * B * len(S) for d, S in sets.items()), "four-point moments") as budget:
        done = 0
        for d, S in sets.items():
            blocks = Kf[:, S[:, :, None], S[:, None, :]].reshape(-1, d, d)         # (B·nS, d, d), set-minor
            scale = None if diag is None else np.max(diag[:, S], axis=-1).reshape(-1)
            v = np.empty((blocks.shape[0], len(_patterns(d))))
            step = max(1, _BLOCK_POINTS // work[d])
            for c0 in range(0, blocks.shape[0], step):
                sl = slice(c0, c0 + step)
                v[sl] = _converged(f, blocks[sl], None if scale is None else scale[sl], n, tol)
                done += work[d] * v[sl].shape[0]
                budget.step(done)
            values[:, offsets[d]: offsets[d] + v.size // max(B, 1)] = v.reshape(B, v.size // max(B, 1))
            if d == 1:
                diag = v.reshape(B, P)                                              # E[φ(x_a)⁴]
    return values[:, where].reshape(lead + where.shape)


def pair_covariance(E4, Fvec):
    """C[..., r, s] = E4[..., r, s] − F_r F_s; E4 (..., N, N), Fvec (..., N) the pair vector of F."""
    return E4 - Fvec[..., :, None] * Fvec[..., None, :]
