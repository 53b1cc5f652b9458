"""The paper's G-only EFT (THEORY §5): closure S^l -> S̄(G^l), its 1/n expansion and its collective chain.

Importing this module registers the path sampler 'g-only-chain' in :mod:`kerneleft.ensemble`.

Leading order in 1/n, with 𝒯 = DS̄ = C_W J and ℋ = D²S̄ = C_W H at K0 (§4 conventions, ordered-pair sums):

- continuous: dK0/dt = S̄(K0), dV4/dt = 𝒯V4 + V4𝒯ᵀ + K0⊠S̄(K0), dK1/dt = 𝒯K1 + ½ℋ:V4;
- discrete (the closure applied to the exact identities I1–I2 and expanded to O(1/n), with K0 the discrete
  kernel and 𝒯, ℋ, S̄ at K0^l):  V4^{l+1} = (1+ε𝒯)V4(1+ε𝒯)ᵀ + εK0⊠S̄ + ε²S̄∘S̄,  K1^{l+1} = K1 + ε(𝒯K1 + ½ℋ:V4);
- initial data K0 = K_in, V4 = K_in∘K_in, K1 = 0 (I3).

Internally symmetric matrices are vectors over the N = P(P+1)/2 pairs p = (a <= b) (``x[p] = X_ab``) and
four-index objects are N x N matrices (``V[p, r] = V4[a,b,c,d]``). An operator acting by ordered-pair
contraction becomes the N x N matrix ``Tr[p, q] = m_q 𝒯[a,b,e,f]`` with multiplicity m_q = 2 for e != f.
Because F_ab depends only on the {a,b} block of K, row p of 𝒯 and ℋ touches only the local pairs
(aa, ab, bb): 𝒯 and ℋ come from batched bivariate (and diagonal) Gaussian moments.
"""
from __future__ import annotations

import time
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy.interpolate import BarycentricInterpolator

from ..config import Network
from ..ensemble import register_method
from ..gaussian import F, diag_moments, pair_moments
from ..kernel import K0_discrete, S_bar, solve_ode
from ..limits import Budget, check_bytes, check_result, check_tolerance
from ..result import KernelResult, require_finite
from ..samplers import block_law_step, check_layer
from ..tensors import box, circ
from ..validate import check_positive
from ..errors import InputError

__all__ = ["solve_gonly", "gonly_chain", "Coefficients", "coefficients", "tadpole", "to_pairs", "from_pairs",
           "to_pairs4", "from_pairs4"]

# local slots (aa, ab, bb) of a pair block: number of derivatives on z_a in ∂_e∂_f
_SLOT_A = np.array([2, 1, 0])
_CHEB_START, _CHEB_MAX = 9, 513          # Chebyshev–Lobatto grid sizes in t (continuous model)
_RTOL_MIN = 1e-13                        # solve_ivp cannot go below 100 ulp


class _Pairs(NamedTuple):
    a: np.ndarray        # (N,) first index of pair p
    b: np.ndarray        # (N,) second index (a <= b)
    index: np.ndarray    # (P, P) pair number of (a, b) and (b, a)
    off: np.ndarray      # (N,) bool, a != b
    loc: np.ndarray      # (N, 3) pair numbers of the local slots (aa, ab, bb)
    weight: np.ndarray   # (N, 3) ordered-pair multiplicities of the slots: (1, 2, 1), or (1, 0, 0) if a == b


@lru_cache(maxsize=None)
def _pairs(P: int) -> _Pairs:
    a, b = np.triu_indices(P)
    index = np.empty((P, P), dtype=int)
    index[a, b] = index[b, a] = np.arange(a.size)
    off = a != b
    loc = np.stack([index[a, a], index[a, b], index[b, b]], axis=-1)
    weight = np.where(off[:, None], [1.0, 2.0, 1.0], [1.0, 0.0, 0.0])
    out = _Pairs(a, b, index, off, loc, weight)
    for arr in out:
        arr.setflags(write=False)
    return out


def _pairs_of(N: int) -> _Pairs:
    """The pair tables for N = P(P+1)/2."""
    return _pairs(int(round((np.sqrt(8 * N + 1) - 1) / 2)))


def to_pairs(X: np.ndarray) -> np.ndarray:
    """Symmetric (..., P, P) -> (..., N) pair vector ``x[p] = X[a, b]``."""
    p = _pairs(X.shape[-1])
    return X[..., p.a, p.b]


def from_pairs(x: np.ndarray, P: int) -> np.ndarray:
    """(..., N) pair vector -> symmetric (..., P, P)."""
    return x[..., _pairs(P).index]


def to_pairs4(V4: np.ndarray) -> np.ndarray:
    """(..., P, P, P, P) -> (..., N, N) with ``V[p, r] = V4[a, b, c, d]``."""
    p = _pairs(V4.shape[-1])
    return V4[..., p.a[:, None], p.b[:, None], p.a[None, :], p.b[None, :]]


def from_pairs4(V: np.ndarray, P: int) -> np.ndarray:
    """(..., N, N) -> (..., P, P, P, P), the inverse of :func:`to_pairs4` on pair-symmetric tensors."""
    i = _pairs(P).index
    return V[..., i[:, :, None, None], i[None, None, :, :]]


class Coefficients(NamedTuple):
    """S̄, 𝒯 and ℋ at a kernel K (..., P, P), in the pair basis (§5).

    S : (..., N) S̄(K).   Tr : (..., N, N) 𝒯 = C_W J with multiplicities, so ``(𝒯X)_p = Tr @ x``.
    Hb : (..., N, 3, 3) ℋ restricted to the local slots of each row, multiplicities included, so
    ``(ℋ:V4)_p = Σ_ij Hb[p, i, j] V[loc[p, i], loc[p, j]]``.
    """

    S: np.ndarray
    Tr: np.ndarray
    Hb: np.ndarray


def _compact(net: Network, K: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S̄ (..., N), 𝒯 rows on their local slots Tb (..., N, 3) and ℋ rows Hb (..., N, 3, 3) at K (..., P, P).

    Off-diagonal rows a < b need M[i, j] = E[φ^(i)(z_a) φ^(j)(z_b)] of the {a,b} block up to i + j = 4
    (J[a,b,slot] = ½M[α], H[a,b,slot,slot'] = ¼M[α + α'] with α the multi-index of the slot); diagonal rows need
    D[m] = E[(φ²)^(m)(z_a)] (J = ½D[2], H = ¼D[4]). One batched call of each primitive (§4).
    """
    p = _pairs(K.shape[-1])
    a, b, d = p.a[p.off], p.b[p.off], p.a[~p.off]
    M = pair_moments(net.phi, K[..., a, a], K[..., b, b], K[..., a, b], 4)              # (..., Npairs_off, 5, 5)
    D = diag_moments(net.phi, K[..., d, d], 4)                                          # (..., P, 5)
    batch, N = K.shape[:-2], p.a.size
    na = _SLOT_A[:, None] + _SLOT_A[None, :]                                            # a-count of slot pairs

    S = np.empty(batch + (N,))
    S[..., p.off], S[..., ~p.off] = M[..., 0, 0], D[..., 0]
    Tb = np.zeros(batch + (N, 3))
    Tb[..., p.off, :], Tb[..., ~p.off, 0] = 0.5 * M[..., _SLOT_A, 2 - _SLOT_A], 0.5 * D[..., 2]
    Hb = np.zeros(batch + (N, 3, 3))
    Hb[..., p.off, :, :], Hb[..., ~p.off, 0, 0] = 0.25 * M[..., na, 4 - na], 0.25 * D[..., 4]
    Tb *= net.C_W * p.weight
    Hb *= net.C_W * p.weight[:, :, None] * p.weight[:, None, :]
    return net.C_W * S + net.C_b, Tb, Hb


def _transport_matrix(Tb: np.ndarray) -> np.ndarray:
    """Scatter the slot rows Tb (..., N, 3) into the pair-basis operator Tr (..., N, N)."""
    N = Tb.shape[-2]
    p = _pairs_of(N)
    Tr = np.zeros(Tb.shape[:-1] + (N,))
    rows = np.arange(N)
    for i in range(3):  # within one slot the (row, column) pairs are distinct, so += does not collide
        Tr[..., rows, p.loc[:, i]] += Tb[..., i]
    return Tr


def coefficients(net: Network, K: np.ndarray) -> Coefficients:
    """S̄(K), 𝒯 = C_W J(K) and ℋ = C_W H(K) (§4, §5) at K (..., P, P), in the pair basis."""
    S, Tb, Hb = _compact(net, K)
    return Coefficients(S, _transport_matrix(Tb), Hb)


def tadpole(c: Coefficients, V: np.ndarray) -> np.ndarray:
    """½ℋ:V4 in the pair basis: V (..., N, N) -> (..., N)."""
    loc = _pairs_of(V.shape[-1]).loc
    Vloc = V[..., loc[:, :, None], loc[:, None, :]]                                     # (..., N, 3, 3)
    return 0.5 * np.einsum("...pij,...pij->...p", c.Hb, Vloc)


def _source(K0: np.ndarray, S: np.ndarray) -> np.ndarray:
    """K0⊠S̄(K0) in the pair basis; K0 (..., P, P), S (..., N) -> (..., N, N)."""
    return to_pairs4(box(K0, from_pairs(S, K0.shape[-1])))


def _discrete(net: Network) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """§5 discrete-depth recursions; returns K0 (L+1,P,P), V (L+1,N,N), k1 (L+1,N)."""
    N, L = net.P * (net.P + 1) // 2, net.depth
    check_bytes("depth", 8.0 * L * (3 * N * N + 13 * N), f"the G-only recursions over depth = {L} layers")
    K0 = K0_discrete(net)
    c = coefficients(net, K0[:-1])
    eps = net.eps
    src = eps * _source(K0[:-1], c.S) + eps ** 2 * to_pairs4(circ(from_pairs(c.S, net.P)))
    A = np.eye(N) + eps * c.Tr
    V = np.empty((L + 1, N, N))
    k1 = np.zeros((L + 1, N))
    V[0] = to_pairs4(circ(net.K_in))
    with Budget("depth", L, f"G-only V4 recursion over {L} layers") as budget:
        for l in range(L):
            V[l + 1] = A[l] @ V[l] @ A[l].T + src[l]
            budget.step(l + 1)
    tad = tadpole(c, V[:-1])
    for l in range(L):
        k1[l + 1] = k1[l] + eps * (c.Tr[l] @ k1[l] + tad[l])
    return K0, V, k1


def _lobatto(m: int, T: float) -> np.ndarray:
    """m Chebyshev–Lobatto points on [0, T], increasing."""
    return 0.5 * T * (1.0 - np.cos(np.pi * np.arange(m) / (m - 1)))


def _interpolant(t: np.ndarray, y: np.ndarray) -> BarycentricInterpolator:
    w = (-1.0) ** np.arange(t.size)
    w[[0, -1]] *= 0.5
    return BarycentricInterpolator(t, y, axis=0, wi=w)


def _coefficient_path(net: Network, K0_at, rtol: float, atol: float) -> tuple[BarycentricInterpolator | None, int]:
    """Chebyshev interpolant in t of [k0, S̄, Tb, Hb](K0(t)) (flattened per t), refined by doubling the
    Lobatto grid until the coarse interpolant predicts the new nodes within atol + rtol·max|column|.

    Returns (None, nodes) if :data:`_CHEB_MAX` nodes do not resolve it. That happens for kinked φ (relu) with a
    nearly singular 2x2 block of K0: its ℋ entries scale like det^(−1/2) and cancel in ℋ:V4, and float64 rounding
    of K0 (relative error ~1e-16/det) makes them rough in t (docs/numerics.md#ill-conditioned).
    """
    P = net.P

    def values(t):
        k0 = K0_at(t).T
        S, Tb, Hb = _compact(net, from_pairs(k0, P))
        return np.concatenate([k0, S, Tb.reshape(t.size, -1), Hb.reshape(t.size, -1)], axis=1)

    t = _lobatto(_CHEB_START, net.T)
    y = values(t)
    while t.size < _CHEB_MAX:
        t_all = _lobatto(2 * t.size - 1, net.T)
        y_new = values(t_all[1::2])
        err = np.abs(_interpolant(t, y)(t_all[1::2]) - y_new)
        y_all = np.empty((t_all.size, y.shape[1]))
        y_all[0::2], y_all[1::2] = y, y_new
        t, y = t_all, y_all
        if np.all(err <= atol + rtol * np.max(np.abs(y), axis=0)):
            return _interpolant(t, y), t.size
    return None, t.size


def _continuous(net: Network, rtol: float, atol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """§5 ODEs; returns K0 (L+1,P,P), V (L+1,N,N), k1 (L+1,N) at t_l and solver statistics.

    The costly 4th-order Gaussian moments (𝒯, ℋ) depend on t only through K0(t): K0 is solved first (with
    F alone), 𝒯 and ℋ are evaluated once on an adaptive Chebyshev grid in t, and the linear V4/K1 ODEs run on
    their interpolant — or, where the grid does not resolve them (:func:`_coefficient_path`), on their exact
    values at every right-hand-side call (``coefficients: "exact"`` in meta; slower, same tolerance).
    """
    P = net.P
    N = P * (P + 1) // 2
    check_bytes("depth", 8.0 * (net.depth + 1) * (N * N + N), f"the G-only solution over depth = {net.depth} layers")

    def rhs_k0(_t, k0):
        return to_pairs(S_bar(net, from_pairs(k0, P)))

    k0 = solve_ode(rhs_k0, to_pairs(net.K_in), net.T, "the kernel K0", "rtol", dense_output=True, rtol=rtol,
                   atol=atol)
    with np.errstate(over="ignore", invalid="ignore"):
        path, nodes = _coefficient_path(net, k0.sol, rtol, atol)
    cut = np.cumsum([N, N, 3 * N])

    def coefficients_at(t):
        if path is not None:
            return np.split(path(t), cut)
        kk = k0.sol(t)
        return [kk, *_compact(net, from_pairs(kk, P))]

    def rhs(t, y):
        kk, S, Tb, Hb = coefficients_at(t)
        c = Coefficients(S, _transport_matrix(Tb.reshape(N, 3)), Hb.reshape(N, 3, 3))
        V = y[:N * N].reshape(N, N)
        TV = c.Tr @ V
        dV = TV + TV.T + _source(from_pairs(kk, P), S)
        return np.concatenate([dV.ravel(), c.Tr @ y[N * N:] + tadpole(c, V)])

    y0 = np.concatenate([to_pairs4(circ(net.K_in)).ravel(), np.zeros(N)])
    sol = solve_ode(rhs, y0, net.T, "the G-only V4/K1 equations", "rtol", t_eval=net.t, rtol=rtol, atol=atol)
    y = sol.y.T
    stats = {"nfev_K0": k0.nfev, "nfev": sol.nfev, "coefficients": "chebyshev" if path is not None else "exact",
             "chebyshev_nodes": nodes}
    return from_pairs(k0.sol(net.t).T, P), y[:, :N * N].reshape(-1, N, N), y[:, N * N:], stats


def solve_gonly(net: Network, depth_model: str = "continuous", rtol: float = 1e-8,
                atol: float = 1e-10) -> KernelResult:
    """G-only EFT (§5) on the grid t = net.t: arrays K0 (L+1,P,P), V4 (L+1,P,P,P,P), K1 (L+1,P,P).

    ``depth_model``: "continuous" (the ODEs; ``rtol`` in [1e-13, 0.1] and ``atol`` govern the two ODE solves and
    the Chebyshev resolution of 𝒯(t), ℋ(t); meta reports nfev_K0, nfev, coefficients, chebyshev_nodes) or
    "discrete" (the depth-L recursions, exact consequences of I1–I2 under the closure at O(1/n); 𝒯, ℋ evaluated
    at every K0^l). Fails loudly (docs/numerics.md#ill-conditioned, #overflow): InputError naming T if the
    result overflows float64, ConvergenceError if an ODE solve fails.
    """
    rtol = check_tolerance("rtol", rtol, _RTOL_MIN, 0.1)
    check_positive("atol", atol)
    if depth_model not in ("continuous", "discrete"):
        raise InputError(f"depth_model: must be 'continuous' or 'discrete', got {depth_model!r}")
    check_result("depth", (net.depth + 1) * (net.P ** 4 + 2 * net.P ** 2),
                 f"the G-only result over depth = {net.depth} layers")
    t0 = time.perf_counter()
    meta = {"kind": "theory", "closure": "g-only", "depth_model": depth_model, "config": net.to_dict()}
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if depth_model == "continuous":
            K0, V, k1, stats = _continuous(net, rtol, atol)
            meta.update(rtol=rtol, atol=atol, **stats)
        else:
            K0, V, k1 = _discrete(net)
    meta["seconds"] = time.perf_counter() - t0
    res = KernelResult(net.t, {"K0": K0, "V4": from_pairs4(V, net.P), "K1": from_pairs(k1, net.P)}, meta=meta)
    return require_finite(res, "the G-only solution")


def gonly_chain(net: Network, width: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The G-only collective chain (§5), a path sampler: returns G, Sigma, each (size, L+1, P, P).

    G^0 ~ Wishart_P(n, K_in)/n (I3), drawn as one §2.2 block-law step of length 1 from h = 0 with S = K_in;
    then G^{l+1} = block-law step from (G^l, S̄(G^l)) and Sigma^l := F(G^l). Exact Markov chain of the closure at
    width n, cost independent of n. InputError naming T if the chain overflows float64.
    """
    P, L = net.P, net.depth
    G = np.empty((size, L + 1, P, P))
    Sigma = np.empty_like(G)
    G[:, 0] = block_law_step(rng, np.zeros((size, P, P)), np.broadcast_to(net.K_in, (size, P, P)), width, 1.0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for l in range(L + 1):
            check_layer(net, l, G[:, l])
            Sigma[:, l] = F(net.phi, G[:, l])
            if l < L:
                G[:, l + 1] = block_law_step(rng, G[:, l], net.C_W * Sigma[:, l] + net.C_b, width, net.eps)
    return G, Sigma


register_method("g-only-chain", gonly_chain)
