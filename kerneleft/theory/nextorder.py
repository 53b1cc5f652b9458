"""The next order in 1/n, one input (docs/nextorder.md): E[G] = K0 + K1/n + K2/n², n Var[G] = V4 + V4_1/n.

Sigma theory (exact at this order): the neuron-cluster expansion of the exchangeable n-neuron system
(docs/nextorder.md#clusters) — the one-neuron law's shifts m, m2 (densities on R), the two-neuron covariance W, W1
(densities w, w1 on R²) and the three-neuron cumulant X (density chi on R³), all zero at t = 0 — in continuous depth
by the ODEs of docs/nextorder.md#equations (:func:`cluster_march`: exact heat flow per axis in Fourier space,
integrating-factor RK4 for the rest) and in discrete depth by the exact block map of docs/nextorder.md#discrete
(:func:`cluster_layers`, terms from :mod:`._clusters`). Layer l → l+1 runs on a grid of half-width 8·sqrt(K0^{l+1}).
G-only closure at the same order (docs/nextorder.md#gonly) and MLPs (docs/nextorder.md#mlp): scalar chains expanded
by :func:`_chain_step`. Refinement and its error estimate: :func:`sigma_next_order` (docs/nextorder.md#convergence).
"""
from __future__ import annotations

import math
import time
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy import integrate, special

from .. import limits
from ..branch import is_default
from ..config import Network
from ..errors import ConvergenceError, InputError
from ..gaussian import diag_moments
from ..kernel import K0_continuous, K0_discrete, solve_ode
from ._clusters import moment_terms
from ._sigma_march import default_substeps, layer_node, march, next_level_seconds, refinement_level

__all__ = ["OBSERVABLES", "ORDER2_TOL", "cluster_march", "cluster_layers", "gonly_continuous", "gonly_discrete",
           "mlp_next_order", "sigma_next_order", "gonly_next_order", "check_supported", "source_closure"]

_NAMES = ("m", "w", "m2", "w1", "chi")
_DIMS = (1, 2, 1, 2, 3)


class Grid(NamedTuple):
    """Periodic grid: x (n,), spacing dx, k2[d] = |k|² on the rfftn grid of dimension d = 1, 2, 3, and the
    second-derivative multipliers kx2[d] = −k_0² along the first axis."""

    x: np.ndarray
    dx: float
    k2: dict
    kx2: dict


def make_grid(n: int, half_width: float) -> Grid:
    """Grid of ``n`` (even) points on [−half_width, half_width)."""
    dx = 2.0 * half_width / n
    x = -half_width + dx * np.arange(n)
    k = 2.0 * np.pi * np.fft.fftfreq(n, dx)
    kr = 2.0 * np.pi * np.fft.rfftfreq(n, dx)
    k2, kx2 = {}, {}
    for d in (1, 2, 3):
        axes = [k] * (d - 1) + [kr]
        mesh = np.meshgrid(*axes, indexing="ij")
        k2[d] = sum(a ** 2 for a in mesh)
        kx2[d] = -mesh[0] ** 2
    return Grid(x, dx, k2, kx2)


def resample_matrix(old: Grid, new: Grid) -> np.ndarray:
    """(n, n) matrix evaluating the trigonometric interpolant on ``old`` at the points of ``new`` (the Nyquist mode as
    a cosine) and zero at new points outside the old box (not its periodic image): the densities decay to ~e^{-32}
    at the box edge, so this is spectrally accurate (docs/nextorder.md#equations)."""
    n = old.x.size
    k = 2.0 * np.pi * np.fft.fftfreq(n, old.dx)
    E = np.exp(1j * np.outer(new.x - old.x[0], k))
    E[:, n // 2] = np.cos(k[n // 2] * (new.x - old.x[0]))
    F = np.fft.fft(np.eye(n), axis=0) / n                    # c = F f
    inside = (new.x >= old.x[0]) & (new.x <= old.x[-1] + 0.5 * old.dx)
    return np.real(E @ F) * inside[:, None]


def _resample(A: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Apply the resampling matrix ``R`` along every axis of ``A``."""
    for axis in range(A.ndim):
        A = np.moveaxis(np.tensordot(R, A, axes=(1, axis)), 0, axis)
    return A


class _Layout(NamedTuple):
    """Where each density sits in the flat Fourier state vector."""

    shapes: tuple
    offsets: tuple
    size: int


def _layout(n: int) -> _Layout:
    shapes = tuple((n,) * (d - 1) + (n // 2 + 1,) for d in _DIMS)
    sizes = [int(np.prod(s)) for s in shapes]
    return _Layout(shapes, tuple(np.cumsum([0] + sizes[:-1])), int(sum(sizes)))


def _unpack(lay: _Layout, u: np.ndarray) -> dict:
    return {k: u[o:o + int(np.prod(s))].reshape(s) for k, s, o in zip(_NAMES, lay.shapes, lay.offsets)}


def _gauss(x: np.ndarray, K: float) -> tuple[np.ndarray, np.ndarray]:
    """(μ, μ'') of N(0, K) on the grid."""
    g = np.exp(-0.5 * x ** 2 / K) / np.sqrt(2.0 * np.pi * K)
    return g, g * (x ** 2 / K ** 2 - 1.0 / K)


def _sym3(B: np.ndarray) -> np.ndarray:
    """B(x;y,z) + B(y;x,z) + B(z;x,y) for B symmetric in its last two slots."""
    return B + B.transpose(1, 0, 2) + B.transpose(1, 2, 0)


def _sources(gr: Grid, p: np.ndarray, K: float, C_W: float, F: dict) -> dict:
    """Right-hand sides (real space) of the cluster equations without the heat flow (docs/nextorder.md#equations).

    ``F``: the densities in Fourier space; returns the real-space sources of m, w, m2, w1, chi.
    """
    n, dx, x = gr.x.size, gr.dx, gr.x
    R = {k: np.fft.irfftn(v, s=(n,) * v.ndim, axes=tuple(range(v.ndim))) for k, v in F.items()}
    d2 = {k: np.fft.irfftn(gr.kx2[F[k].ndim] * F[k], s=(n,) * F[k].ndim, axes=tuple(range(F[k].ndim)))
          for k in ("m", "w")}
    g, g2 = _gauss(x, K)
    mu_p = dx * (p @ g)
    c = (p - mu_p) * g                                   # Cov_μ(p, ·) as a density
    m, w, m2, w1, chi = (R[k] for k in _NAMES)
    mp, m2p = dx * (p @ m), dx * (p @ m2)
    Pw, Pw1 = dx * (p @ w), dx * (p @ w1)                 # W(p, ·), W1(p, ·)
    Xp = dx * (chi @ p)                                   # X(·, ·, p) (x, y)
    half = 0.5 * C_W

    kk = -(2 * np.pi * np.fft.fftfreq(n, dx)) ** 2

    def dxx(a: np.ndarray, axis: int = 0) -> np.ndarray:
        shape = [1] * a.ndim
        shape[axis] = n
        return np.real(np.fft.ifft(np.fft.fft(a, axis=axis) * kk.reshape(shape), axis=axis))

    src = {}
    src["m"] = half * (mp * g2 + dxx(c + Pw))
    src["w"] = half * (np.outer(g2, Pw + c))
    src["w"] = src["w"] + src["w"].T
    c1 = p * m - mp * g - mu_p * m                        # Cov¹(p, ·) as a density
    src["m2"] = half * ((m2p - mp) * g2 + (mp - mu_p) * d2["m"] + dxx(Pw1 - Pw + p * m))
    D = (mp - 2 * mu_p + p[:, None] + p[None, :]) * w + Xp - np.outer(Pw, g)
    A = half * (dxx(D, 0) + np.outer(g2, Pw1 + c1 - 2 * Pw) + np.outer(d2["m"], Pw + c))
    src["w1"] = A + A.T
    Cp = c + Pw
    kap = (p[:, None] - mu_p) * w - np.outer(g, Pw)       # κ'(y, z)
    B = half * (g2[:, None, None] * (Xp + kap + kap.T)[None]
                + d2["w"][:, :, None] * Cp[None, None, :] + d2["w"][:, None, :] * Cp[None, :, None])
    src["chi"] = _sym3(B)
    return src


def cluster_march(net: Network, n: int, stride: int, box: float = 8.0) -> dict:
    """:data:`OBSERVABLES` (each (L+1,)) of the one-input resnet from the cluster equations on an ``n``-point grid
    with ``stride`` RK4 steps per layer (continuous depth, docs/nextorder.md#equations). Layer l → l+1 runs on a
    grid of half-width ``box``·sqrt(K0(t_{l+1})); the densities are resampled onto it at every layer."""
    M = net.depth * stride
    K = K0_continuous(net.replace(depth=2 * M))[:, 0, 0]        # nodes t_i = i h / 2
    h = net.T / M
    lay = _layout(n)
    C_W = net.C_W
    gr = make_grid(n, box * np.sqrt(K[0]))
    R = {k: np.zeros((n,) * d) for k, d in zip(_NAMES, _DIMS)}
    out = [_observables(R, K[0], gr.x, net.phi(gr.x) ** 2)]
    with _layer_budget(net, n) as budget:
        for l in range(net.depth):
            new = make_grid(n, box * np.sqrt(K[layer_node("rk4", stride, l + 1)]))
            T = resample_matrix(gr, new)
            gr, base = new, layer_node("rk4", stride, l)
            p = net.phi(gr.x) ** 2
            k2 = np.concatenate([gr.k2[d].ravel() for d in _DIMS])

            def decay(i, j, k2=k2, base=base):
                return np.exp(-0.5 * (K[base + j] - K[base + i]) * k2)

            def f(_n, _s, i, u, gr=gr, p=p, base=base):
                src = _sources(gr, p, K[base + i], C_W, _unpack(lay, u))
                return np.concatenate([np.fft.rfftn(src[k]).ravel() for k in _NAMES]), ()

            u = np.concatenate([np.fft.rfftn(_resample(R[k], T)).ravel() for k in _NAMES])
            _, (last,) = march(f, decay, u, stride, h, stride, "rk4", lambda _l, v: (v,))
            R = {k: np.fft.irfftn(v, s=(n,) * v.ndim, axes=tuple(range(v.ndim)))
                 for k, v in _unpack(lay, last[-1]).items()}
            out.append(_observables(R, K[layer_node("rk4", stride, l + 1)], gr.x, p))
            budget.step(l + 1)
    return dict(zip(OBSERVABLES, np.array(out).T))


def _layer_budget(net: Network, n: int) -> limits.Budget:
    """Progress bar (past 30 s) and time limit of one refinement level's march over the layers."""
    return limits.Budget("depth", net.depth, f"next-order cluster densities (grid {n}) over {net.depth} layers")


OBSERVABLES = ("K1", "V4", "K2", "V4_1", "T3", "Sigma_2")
"""What the cluster solvers return per layer: K1, V4, K2, V4_1, T3 = n²κ3[G] (leading), and Sigma_2 = m2(p), the
1/n² part of E[Σ] (docs/nextorder.md#observables)."""


def _observables(R: dict, K0: float, x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """:data:`OBSERVABLES` from the cluster densities ``R`` (real space) at a layer with kernel K0
    (docs/nextorder.md#observables): E[G] = ρ1(q), n Var[G] = Var_ρ1(q) + (n−1) c2(q, q),
    n² κ3[G] = κ3_μ(q) + 3(W(q², q) − 2K0 W(q, q)) + X(q, q, q) + O(1/n)."""
    dx = x[1] - x[0]
    q = x ** 2
    K1, K2 = dx * (q @ R["m"]), dx * (q @ R["m2"])
    Wqq = dx ** 2 * (q @ R["w"] @ q)
    V41 = dx * (q ** 2 @ R["m"]) - 2 * K1 * K0 + dx ** 2 * (q @ R["w1"] @ q) - Wqq
    T3 = 8 * K0 ** 3 + 3 * (dx ** 2 * (q ** 2 @ R["w"] @ q) - 2 * K0 * Wqq) + dx ** 3 * ((R["chi"] @ q) @ q @ q)
    return np.array([K1, 2 * K0 ** 2 + Wqq, K2, V41, T3, dx * (p @ R["m2"])])


# ------------------------------------------------------------------------------------------ G-only, next order
def _sbar_jet(net: Network, K: np.ndarray) -> np.ndarray:
    """(S̄, S̄', S̄'', S̄''') at the variances K (...,) of one input: S̄^(j) = C_W E[(φ²)^(2j)]/2^j (+ C_b for j = 0),
    by Price's theorem (docs/gonly.md#coefficients) -> (4, ...)."""
    D = diag_moments(net.phi, np.asarray(K, dtype=float), 6)
    jet = np.stack([net.C_W * D[..., 2 * j] / 2 ** j for j in range(4)])
    jet[0] += net.C_b
    return jet


def gonly_continuous(net: Network, rtol: float = 1e-10, atol: float = 1e-12) -> dict:
    """G-only EFT to the next order, one input, continuous depth (docs/nextorder.md#gonly): the moment equations of
    dG = S̄(G) dt + n^{-1/2}(4 G S̄(G))^{1/2} dB through O(1/n²). Returns K0, K1, V4, K2, V4_1, T3 (each (L+1,))
    with T3 = n² κ3[G]."""

    def rhs(_t, y):
        K0, K1, V4, K2, V41, T3 = y
        S, S1, S2, S3 = _sbar_jet(net, K0)
        return np.array([S, S1 * K1 + 0.5 * S2 * V4, 2 * S1 * V4 + 4 * K0 * S,
                         S1 * K2 + 0.5 * S2 * (V41 + K1 ** 2) + S3 * T3 / 6,
                         2 * S1 * V41 + S2 * (T3 + 2 * K1 * V4) + S3 * V4 ** 2
                         + 4 * ((S + K0 * S1) * K1 + (S1 + 0.5 * K0 * S2) * V4),
                         3 * S1 * T3 + 3 * S2 * V4 ** 2 + 12 * (S + K0 * S1) * V4])

    k = float(net.K_in[0, 0])
    sol = solve_ode(rhs, np.array([k, 0.0, 2 * k ** 2, 0.0, 0.0, 8 * k ** 3]), net.T, "the G-only next order",
                    "rtol", t_eval=net.t, rtol=rtol, atol=atol)
    return dict(zip(("K0", "K1", "V4", "K2", "V4_1", "T3"), sol.y))


def gonly_discrete(net: Network) -> dict:
    """G-only EFT to the next order, one input, the depth-L chain G' = (1/n)Σ(h_i + (εS̄(G))^{1/2} z_i)²
    (docs/nextorder.md#gonly): exact conditional cumulants (mean G + εS̄, n Var (4εGS̄ + 2ε²S̄²), n² κ3
    24ε²GS̄² + 8ε³S̄³) expanded through O(1/n²) by :func:`_chain_step`. Returns K0, K1, V4, K2, V4_1, T3
    (each (L+1,))."""
    e = net.eps
    out = np.zeros((6, net.depth + 1))
    k = float(net.K_in[0, 0])
    out[:, 0] = [k, 0.0, 2 * k ** 2, 0.0, 0.0, 8 * k ** 3]
    for l in range(net.depth):
        K0 = out[0, l]
        S, S1, S2, S3 = _sbar_jet(net, K0)
        coef = (K0 + e * S, 1 + e * S1, e * S2 / 2, e * S3 / 6, 4 * e * K0 * S + 2 * e ** 2 * S ** 2,
                4 * e * (S + K0 * S1) + 4 * e ** 2 * S * S1,
                4 * e * (2 * S1 + K0 * S2) + 4 * e ** 2 * (S1 ** 2 + S * S2),
                24 * e ** 2 * K0 * S ** 2 + 8 * e ** 3 * S ** 3)
        out[:, l + 1] = _chain_step(coef, list(out[:, l]))
    return dict(zip(("K0", "K1", "V4", "K2", "V4_1", "T3"), out))


# --------------------------------------------------------------------------------------- discrete depth, P = 1
@lru_cache(maxsize=None)
def _merged_terms(r: int) -> list:
    """:func:`._clusters.moment_terms` with identical terms merged: [(coef, order, k, blocks)]."""
    acc: dict = {}
    for t in moment_terms(r):
        key = (t.order, t.k, tuple(sorted(t.blocks)))
        acc[key] = acc.get(key, 0.0) + t.coef
    return [(c, o, k, b) for (o, k, b), c in acc.items() if c != 0.0]


def _block_value(block, dens: dict, pt: list, dx: float) -> tuple[np.ndarray | float, tuple]:
    """A cluster function of p̃^a·slot products (:class:`._clusters.Block`) on the grid, integrated over its
    arguments without a slot: (array with one axis per slot, in increasing slot order; the slots)."""
    field = {(1, 0): "mu", (1, 1): "m", (1, 2): "m2", (2, 1): "w", (2, 2): "w1", (3, 2): "chi"}[
        (len(block.args), block.order)]
    letters = "abc"[:len(block.args)]
    ops, subs = [dens[field]], [letters]
    for letter, arg in zip(letters, block.args):
        if arg.a:
            ops.append(pt[arg.a])
            subs.append(letter)
    slots = sorted((arg.slot, letter) for letter, arg in zip(letters, block.args) if arg.slot is not None)
    nint = len(block.args) - len(slots)
    val = np.einsum(",".join(subs) + "->" + "".join(l for _, l in slots), *ops) * dx ** nint
    return val, tuple(s for s, _ in slots)


_ORDERS = {1: (0, 1, 2), 2: (1, 2), 3: (2,)}       # the orders of the r-neuron moments that _cumulants uses


def _combine(r: int, pattern: tuple, coefs: np.ndarray, factors: list) -> np.ndarray:
    """Σ_t coefs[t] Π_b factors[b][t] as an r-dimensional array (axes = slots 0..r−1); ``pattern``: the slots of
    each factor, factors[b] of shape (T, n, ...) over those slots."""
    n = factors[0].shape[1]
    if len(pattern) == 1:
        return np.tensordot(coefs, factors[0], axes=1)
    if r == 2:
        return (coefs[:, None] * factors[0]).T @ factors[1]
    if len(pattern) == 3:
        rest = (factors[1][:, :, None] * factors[2][:, None, :]).reshape(len(coefs), n * n)
        return ((coefs[:, None] * factors[0]).T @ rest).reshape(n, n, n)
    one = 0 if len(pattern[0]) == 1 else 1
    single, pair = factors[one], factors[1 - one]
    out = ((coefs[:, None] * single).T @ pair.reshape(len(coefs), n * n)).reshape(n, n, n)
    return np.moveaxis(out, 0, pattern[one][0])  # out[s, i, j] with (i, j) = the pair's slots in order


def _block_map(gr: Grid, net: Network, K: float, dens: dict) -> dict:
    """One block of the depth-L network on the cluster densities (docs/nextorder.md#discrete): returns the new
    m, w, m2, w1, chi (real space).

    Every term of :func:`._clusters.moment_terms` is a product of cluster functions over disjoint slot sets, so
    it is assembled in Fourier space from the factors' transforms with the per-axis multipliers
    T·(½∂²)^{k_i} (heat flow of variance εS̄ and the derivatives), summed per factorisation pattern by matrix
    products, and transformed back once per order.
    """
    x, dx, n = gr.x, gr.dx, gr.x.size
    eps, C_W = net.eps, net.C_W
    p = net.phi(x) ** 2
    g, _ = _gauss(x, K)
    mu_p = dx * (p @ g)
    S = net.C_b + C_W * mu_p
    pt = [np.ones_like(x)] + [(p - mu_p) ** a for a in range(1, 5)]
    dens = dict(dens, mu=g)
    kk = 2 * np.pi * np.fft.fftfreq(n, dx)
    mult = [np.exp(-0.5 * eps * S * kk ** 2) * (-0.5 * kk ** 2) ** j for j in range(5)]
    cache: dict = {}

    def factor(block, k: tuple):
        if block not in cache:
            v, slots = _block_value(block, dens, pt, dx)
            cache[block] = (np.fft.fftn(v) if slots else v, slots)
        v, slots = cache[block]
        for axis, s in enumerate(slots):
            shape = [1] * len(slots)
            shape[axis] = n
            v = v * mult[k[s]].reshape(shape)
        return v, slots

    rho = {}
    for r in (1, 2, 3):
        groups: dict = {}
        for coef, order, k, blocks in _merged_terms(r):
            if order not in _ORDERS[r]:
                continue
            c = coef * C_W ** sum(k) * np.prod([eps ** ki / math.factorial(ki) for ki in k])
            arrays = []
            for b in blocks:
                v, slots = factor(b, k)
                if slots:
                    arrays.append((slots, v))
                else:
                    c = c * v
            arrays.sort(key=lambda sv: sv[0])
            key = (order, tuple(s for s, _ in arrays))
            groups.setdefault(key, ([], [[] for _ in arrays]))
            groups[key][0].append(c)
            for lst, (_, v) in zip(groups[key][1], arrays):
                lst.append(v)
        out = {o: np.zeros((n,) * r, dtype=complex) for o in _ORDERS[r]}
        for (order, pattern), (coefs, factors) in groups.items():
            out[order] += _combine(r, pattern, np.array(coefs), [np.stack(f) for f in factors])
        rho[r] = {o: np.real(np.fft.ifftn(v)) for o, v in out.items()}
    return _cumulants(rho)


def _cumulants(rho: dict) -> dict:
    """Cluster densities from the moments rho[r][order] (r = 1, 2, 3 neurons; orders ν^0..ν²)."""
    mu, m, m2 = (rho[1][o] for o in (0, 1, 2))
    o = np.multiply.outer
    w = rho[2][1] - o(mu, m) - o(m, mu)
    w1 = rho[2][2] - o(mu, m2) - o(m, m) - o(m2, mu)

    def sym3(a2: np.ndarray, a1: np.ndarray) -> np.ndarray:
        """Σ over the three placements of the single neuron: a1 ⊗ a2."""
        t = o(a1, a2)                                              # (i; j, k)
        return t + t.transpose(1, 0, 2) + t.transpose(1, 2, 0)

    ones = (o(o(m2, mu), mu) + o(o(mu, m2), mu) + o(o(mu, mu), m2)
            + o(o(m, m), mu) + o(o(m, mu), m) + o(o(mu, m), m))
    chi = rho[3][2] - ones - sym3(w1, mu) - sym3(w, m)
    return {"m": m, "w": w, "m2": m2, "w1": w1, "chi": chi}


def cluster_layers(net: Network, n: int, box: float = 8.0) -> dict:
    """:data:`OBSERVABLES` (each (L+1,)) of the one-input depth-L resnet by the exact block map of the cluster
    densities (docs/nextorder.md#discrete) on an ``n``-point grid; block l → l+1 runs on a grid of half-width
    ``box``·sqrt(K0^{l+1}), the densities resampled onto it."""
    K = K0_discrete(net)[:, 0, 0]
    gr = make_grid(n, box * np.sqrt(K[0]))
    dens = {k: np.zeros((n,) * d) for k, d in zip(_NAMES, _DIMS)}
    out = np.zeros((len(OBSERVABLES), net.depth + 1))
    out[:, 0] = _observables(dens, K[0], gr.x, net.phi(gr.x) ** 2)
    with _layer_budget(net, n) as budget:
        for l in range(net.depth):
            new = make_grid(n, box * np.sqrt(K[l + 1]))
            T = resample_matrix(gr, new)
            gr = new
            dens = _block_map(gr, net, K[l], {k: _resample(v, T) for k, v in dens.items()})
            out[:, l + 1] = _observables(dens, K[l + 1], gr.x, net.phi(gr.x) ** 2)
            budget.step(l + 1)
    return dict(zip(OBSERVABLES, out))


# ----------------------------------------------------------------------------------------------- MLPs, P = 1
def _hermite_moment(phi, power: int, X: float, j: int) -> float:
    """E[(φ^power)^(j)(z)], z ~ N(0, X), by Gaussian integration by parts onto He_j (no derivative of φ):
    X^{−j/2} E[φ(√X u)^power He_j(u)], adaptive quadrature on both half-lines (a kink at 0 is allowed)."""
    s = np.sqrt(X)
    he = special.hermitenorm(j)

    def integrand(u):
        return float(phi(np.array([s * u]))[0]) ** power * he(u) * np.exp(-0.5 * u * u) / np.sqrt(2 * np.pi)

    total = sum(integrate.quad(integrand, a, b, epsabs=1e-14, epsrel=1e-13, limit=200)[0]
                for a, b in ((-np.inf, 0.0), (0.0, np.inf)))
    return total / s ** j


def _chain_coefficients(net: Network, X: float, closure: str) -> tuple:
    """(f, a1, a2, a3, v, v', v'', k3) of one MLP layer at the variance X (docs/nextorder.md#mlp).

    sigma (exact): the chain of S = C_W Σ + C_b, f = S̄, v = C_W² Var[φ²], k3 = C_W³ κ3[φ²] under N(0, X);
    g-only: the chain of G with S → S̄(G): f = S̄, v = 2S̄², k3 = 8S̄³ (Wishart)."""
    f, f1, f2, f3 = _sbar_jet(net, np.array(X))
    if closure == "g-only":
        return f, f1, f2 / 2, f3 / 6, 2 * f ** 2, 4 * f * f1, 4 * (f1 ** 2 + f * f2), 8 * f ** 3
    F, _, F1, _, F2 = diag_moments(net.phi, np.array(X), 4) / np.array([1, 1, 2, 1, 4])
    E4, E44, E42 = (_hermite_moment(net.phi, 4, X, j) for j in (0, 4, 2))
    Q = E4 - F ** 2
    Q1 = 0.5 * E42 - 2 * F * F1
    Q2 = 0.25 * E44 - 2 * F1 ** 2 - 2 * F * F2
    k3 = _hermite_moment(net.phi, 6, X, 0) - 3 * E4 * F + 2 * F ** 3
    c = net.C_W
    return f, f1, f2 / 2, f3 / 6, c ** 2 * Q, c ** 2 * Q1, c ** 2 * Q2, c ** 3 * k3


def mlp_next_order(net: Network, closure: str) -> dict:
    """K0, K1, V4, K2, V4_1 (each (L+1,)) of a one-input MLP through O(1/n²) (docs/nextorder.md#mlp).

    sigma: the exact chain S^{l+1} = C_W (1/n)Σ_i φ(z_i)² + C_b, z_i ~ N(0, S^l) iid, expanded in 1/n (mean,
    variance, third cumulant of S), with G^{l+1} | S^l a Wishart (E = S^l, n Var = 2(S^l)²); g-only: the chain
    of G with S^l → S̄(G^l). Both start from the exact layer-0 laws (h^0_i iid N(0, K_in))."""
    L, k = net.depth, float(net.K_in[0, 0])
    G = np.zeros((5, L + 1))                       # K0, K1, V4, K2, V4_1 of G
    G[:, 0] = [k, 0.0, 2 * k ** 2, 0.0, 0.0]
    if closure == "g-only":
        state = [k, 0.0, 2 * k ** 2, 0.0, 0.0, 8 * k ** 3]      # x0, K1, V, K2, V1, T of G itself
    else:                                                        # S^0: an average of n iid C_W φ² + C_b
        f, *_, v, _, _, k3 = _chain_coefficients(net, k, "sigma")
        state = [f, 0.0, v, 0.0, 0.0, k3]
    for l in range(L):
        x0, K1, V, K2, V1, T = state
        if closure == "g-only":
            nxt = _chain_step(_chain_coefficients(net, x0, closure), state)
            G[:, l + 1] = nxt[:5]
        else:                                                    # G^{l+1} | S^l is Wishart
            G[:, l + 1] = [x0, K1, 2 * x0 ** 2 + V, K2, 4 * x0 * K1 + 2 * V + V1]
            nxt = _chain_step(_chain_coefficients(net, x0, closure), state) if l + 1 < L else state
        state = nxt
    return dict(zip(("K0", "K1", "V4", "K2", "V4_1"), G))


def _chain_step(coef: tuple, state: list) -> list:
    """One step of a scalar chain X' = f(X) + ξ (E ξ = 0, n Var ξ = v(X), n² κ3 ξ = k3(X)) on the expansion
    state [x0, K1, V, K2, V1, T] (mean x0 + K1/n + K2/n², n Var = V + V1/n, n² κ3 = T): docs/nextorder.md#mlp."""
    f, a1, a2, a3, v, v1, v2, k3 = coef
    x0, K1, V, K2, V1, T = state
    return [f, a1 * K1 + a2 * V, a1 ** 2 * V + v, a1 * K2 + a2 * (V1 + K1 ** 2) + a3 * T,
            a1 ** 2 * V1 + 2 * a1 * a2 * (T + 2 * K1 * V) + (6 * a1 * a3 + 2 * a2 ** 2) * V ** 2 + v1 * K1
            + 0.5 * v2 * V,
            a1 ** 3 * T + 6 * a1 ** 2 * a2 * V ** 2 + 3 * a1 * v1 * V + k3]


# ------------------------------------------------------------------------------------- solver with refinement
ORDER2_TOL = 1e-2
"""Default relative change of K2 and V4_1 at which the next-order grids stop refining (docs/nextorder.md#convergence)."""
_N0 = 48              # grid points per axis at the first level
_MAX_LEVELS = 4


def check_supported(net: Network) -> None:
    """InputError unless the next order is implemented for ``net``: one input of the default resnet block or of
    the default MLP (docs/nextorder.md#scope)."""
    if not is_default(net.branch):
        raise InputError("order: 2 is implemented for the default resnet block and the default MLP only, got a "
                         "branch (docs/nextorder.md#scope)")
    if net.P != 1:
        raise InputError(f"order: 2 is implemented for one input (P = 1, or inputs that are all identical), got "
                         f"P = {net.P} distinct inputs (docs/nextorder.md#scope)")


def _sigma_level(net: Network, depth_model: str, n: int, stride: int) -> dict:
    return cluster_layers(net, n) if depth_model == "discrete" else cluster_march(net, n, stride)


def _change(new: dict, old: dict, K0max: float) -> float:
    """max over K2, V4_1 of max|new − old| / max(max|new|, floor), floors 1e-3·max K0 (K2) and 1e-3·(max K0)² (V4_1):
    changes that small move E[G] and n Var[G] by less than 1e-3/n² and 1e-3/n relative, and they are the level of
    the grid noise when K2 or V4_1 vanish (linear φ: ~1e-5·K0) (docs/nextorder.md#convergence)."""
    floors = {"K2": 1e-3 * K0max, "V4_1": 1e-3 * K0max ** 2}
    return max(float(np.max(np.abs(new[k] - old[k])) / max(np.max(np.abs(new[k])), floors[k])) for k in floors)


def sigma_next_order(net: Network, depth_model: str, tol: float = ORDER2_TOL, max_levels: int = _MAX_LEVELS) -> tuple:
    """K2, V4_1 (each (L+1,)) of the sigma theory and the refinement meta (docs/nextorder.md#convergence).

    Levels k = 0, 1, ...: n = 48·1.5^k grid points per axis and, in continuous depth, ⌈s0·1.5^k⌉ RK4 steps per
    layer (s0: 32 steps over [0, T] at least); stops at the first relative change of K2 and V4_1 below ``tol``;
    ConvergenceError (with the achieved change) after ``max_levels`` levels or when the next level is predicted
    to pass :data:`kerneleft.limits.MAX_SECONDS`.
    """
    check_supported(net)
    if not net.residual:
        return mlp_next_order(net, "sigma"), {"error_estimate": 1e-12, "representation": "recursion"}
    s0 = default_substeps(net.depth)
    K0max = float(np.max(K0_discrete(net) if depth_model == "discrete" else K0_continuous(net)))
    t0, history, old, err = time.perf_counter(), [], None, None
    for lev in range(max_levels):
        n, stride = refinement_level(_N0, s0, lev)
        limits.check_bytes("order", 8.0 * 12 * n ** 3, f"the next-order grids ({n}³ points)")
        if len(history) >= 2:
            ahead = next_level_seconds([0.0] + [h["seconds"] for h in history])
            if time.perf_counter() - t0 + ahead > limits.MAX_SECONDS:
                raise ConvergenceError(f"order 2: not converged to tol {tol:g} (achieved {err:.2g}, grid "
                                       f"{history[-1]['grid']}); the next level would take ~{limits.duration(ahead)}"
                                       f": raise --tol2")
        new = _sigma_level(net, depth_model, n, stride)
        err = None if old is None else _change(new, old, K0max)
        history.append({"grid": n, "substeps": stride if depth_model == "continuous" else None, "change": err,
                        "seconds": time.perf_counter() - t0})
        old = new
        if err is not None and err < tol:
            return new, {"levels": history, "error_estimate": err, "converged": True}
    raise ConvergenceError(f"order 2: not converged to tol {tol:g} after {max_levels} levels (achieved {err:.2g}, "
                           f"grid {history[-1]['grid']}): raise --tol2")


def gonly_next_order(net: Network, depth_model: str) -> tuple:
    """K2, V4_1 (and T3 = n²κ3[G]) of the G-only EFT and its meta (docs/nextorder.md#gonly)."""
    check_supported(net)
    if not net.residual:
        return mlp_next_order(net, "g-only"), {"error_estimate": 1e-12}
    out = gonly_discrete(net) if depth_model == "discrete" else gonly_continuous(net)
    return out, {"error_estimate": 0.0 if depth_model == "discrete" else 1e-10}


def source_closure(net: Network, depth_model: str, tol: float = ORDER2_TOL) -> dict:
    """The K2 source term by term (docs/nextorder.md#gonly), each (L+1,) per unit depth-time.

    ``exact`` = C_W m2(p), the 1/n² part of E[S] (I1: dK2/dt, or (K2^{l+1} − K2^l)/ε); ``closure`` = the G-only
    closure of it, the 1/n² part of E[S̄(G)], evaluated on the exact moments of the sigma theory and split into
    ``linear`` S̄'K2, ``tadpole`` ½S̄''(V4_1 + K1²) and ``cubic`` S̄'''T3/6; ``T3`` and ``T3_gonly``: n²κ3[G] of the
    sigma theory and of the G-only chain. The G-only closure is exact for linear φ (tested)."""
    check_supported(net)
    if not net.residual:
        raise InputError("order: the source diagnostics are for the resnet block (an MLP's chain is exact)")
    sig, _ = sigma_next_order(net, depth_model, tol)
    go = gonly_discrete(net) if depth_model == "discrete" else gonly_continuous(net)
    K0 = go["K0"] if depth_model == "discrete" else K0_continuous(net)[:, 0, 0]
    S, S1, S2, S3 = _sbar_jet(net, K0)
    terms = {"linear": S1 * sig["K2"], "tadpole": 0.5 * S2 * (sig["V4_1"] + sig["K1"] ** 2),
             "cubic": S3 * sig["T3"] / 6}
    return {"exact": net.C_W * sig["Sigma_2"], "closure": sum(terms.values()), **terms, "T3": sig["T3"],
            "T3_gonly": go["T3"]}
