"""The paper's G-only EFT (docs/gonly.md): closure S^l -> S̄(G^l) and its 1/n expansion.

Its collective chain is the path sampler :func:`kerneleft.samplers.gonly_chain`.

Leading order in 1/n, with 𝒯 = DS̄ = C_W J and ℋ = D²S̄ = C_W H at K0 (ordered-pair sums,
docs/model.md#tensor-conventions):

- continuous: dK0/dt = S̄(K0), dV4/dt = 𝒯V4 + V4𝒯ᵀ + K0⊠S̄(K0), dK1/dt = 𝒯K1 + ½ℋ:V4;
- discrete (the closure applied to the exact identities I1–I2 and expanded to O(1/n), with K0 the discrete
  kernel and 𝒯, ℋ, S̄ at K0^l):  V4^{l+1} = (1+ε𝒯)V4(1+ε𝒯)ᵀ + εK0⊠S̄ + ε²S̄∘S̄,  K1^{l+1} = K1 + ε(𝒯K1 + ½ℋ:V4);
- initial data K0 = K_in, V4 = K_in∘K_in, K1 = 0 (I3; identities: docs/exact.md#identities).

Internally symmetric matrices are vectors over the pairs (:mod:`kerneleft.pairs`) and the coefficients S̄, 𝒯, ℋ
come from :mod:`kerneleft.coefficients` (docs/gonly.md#coefficients).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..coefficients import Coefficients, coefficients, local_coefficients, source, tadpole, transport_matrix
from ..branch import is_default
from ..config import Network
from ..kernel import K0_discrete, S_bar, check_continuous, check_depth_model, solve_ode
from ..limits import Budget, check_bytes, check_result, check_tolerance
from ..result import KernelResult, require_finite
from ..pairs import pair_basis
from ..tensors import circ

if TYPE_CHECKING:
    from scipy.interpolate import BarycentricInterpolator
from ..validate import check_positive

__all__ = ["GOnlyOptions", "solve_gonly"]

_CHEB_START, _CHEB_MAX = 9, 513          # Chebyshev–Lobatto grid sizes in t (continuous model)
_RTOL_MIN = 1e-13                        # solve_ivp cannot go below 100 ulp


def _discrete(net: Network) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Discrete-depth recursions (docs/gonly.md#discrete-depth); returns K0 (L+1,P,P), V (L+1,N,N), k1 (L+1,N)."""
    N, L = net.P * (net.P + 1) // 2, net.depth
    check_bytes("depth", 8.0 * L * (3 * N * N + 13 * N), f"the G-only recursions over depth = {L} layers")
    p = pair_basis(net.P)
    K0 = K0_discrete(net)
    c = coefficients(net, K0[:-1])
    if not net.residual:
        return K0, *_mlp(net, K0, c)
    eps = net.eps
    src = eps * source(K0[:-1], c.S_bar) + eps ** 2 * p.vec4(circ(p.mat(c.S_bar)))
    if c.noise is not None:                  # inner layers' noise of S (docs/architectures.md#gonly-branches)
        src = src + eps ** 2 * c.noise
    A = np.eye(N) + eps * c.T
    V = np.empty((L + 1, N, N))
    k1 = np.zeros((L + 1, N))
    V[0] = p.vec4(circ(net.K_in))
    with Budget("depth", L, f"G-only V4 recursion over {L} layers") as budget:
        for l in range(L):
            V[l + 1] = A[l] @ V[l] @ A[l].T + src[l]
            budget.step(l + 1)
    tad = tadpole(c, V[:-1]) + (0.0 if c.bias is None else c.bias)
    for l in range(L):
        k1[l + 1] = k1[l] + eps * (c.T[l] @ k1[l] + tad[l])
    return K0, V, k1


def _mlp(net: Network, K0: np.ndarray, c: Coefficients) -> tuple[np.ndarray, np.ndarray]:
    """The closure for an MLP (docs/architectures.md#mlp): G^{l+1} | G^l ~ Wishart(n, S̄(G^l) + inner noise)/n, so
    V4^{l+1} = K0^{l+1}∘K0^{l+1} + 𝒯V4^l𝒯ᵀ + noise, K1^{l+1} = 𝒯K1^l + ½ℋ:V4^l + bias; returns V (L+1,N,N), k1."""
    p = pair_basis(net.P)
    V = np.empty((net.depth + 1, p.N, p.N))
    k1 = np.zeros((net.depth + 1, p.N))
    V[0] = p.vec4(circ(net.K_in))
    src = p.vec4(circ(K0[1:])) + (0.0 if c.noise is None else c.noise)
    with Budget("depth", net.depth, f"G-only MLP recursion over {net.depth} layers") as budget:
        for l in range(net.depth):
            V[l + 1] = c.T[l] @ V[l] @ c.T[l].T + src[l]
            budget.step(l + 1)
    tad = tadpole(c, V[:-1]) + (0.0 if c.bias is None else c.bias)
    for l in range(net.depth):
        k1[l + 1] = c.T[l] @ k1[l] + tad[l]
    return V, k1


def _flat_coefficients(net: Network, K: np.ndarray) -> np.ndarray:
    """The coefficients at K (m, P, P) flattened per kernel (m, ·): S̄, 𝒯 and ℋ on the local slots for the default
    branch; S̄, 𝒯, the full ℋ and the inner-layer bias otherwise (docs/architectures.md#gonly-branches)."""
    m = K.shape[0]
    if is_default(net.branch):
        return np.concatenate([x.reshape(m, -1) for x in local_coefficients(net, K)], axis=1)
    c = coefficients(net, K)
    return np.concatenate([c.S_bar, c.T.reshape(m, -1), c.H.reshape(m, -1), c.bias], axis=1)


def _unflat_coefficients(net: Network, y: np.ndarray) -> Coefficients:
    """Inverse of :func:`_flat_coefficients` for one kernel."""
    N = net.P * (net.P + 1) // 2
    if is_default(net.branch):
        S_bar, T_local, H_local = np.split(y, np.cumsum([N, 3 * N]))
        return Coefficients(S_bar, transport_matrix(T_local.reshape(N, 3)), H_local.reshape(N, 3, 3))
    S_bar, T, H, bias = np.split(y, np.cumsum([N, N * N, N ** 3]))
    return Coefficients(S_bar, T.reshape(N, N), None, H.reshape(N, N, N), bias)


def _lobatto(m: int, T: float) -> np.ndarray:
    """m Chebyshev–Lobatto points on [0, T], increasing."""
    return 0.5 * T * (1.0 - np.cos(np.pi * np.arange(m) / (m - 1)))


def _interpolant(t: np.ndarray, y: np.ndarray) -> BarycentricInterpolator:
    w = (-1.0) ** np.arange(t.size)
    w[[0, -1]] *= 0.5
    from scipy.interpolate import BarycentricInterpolator     # at first use: keeps importing the CLI fast

    return BarycentricInterpolator(t, y, axis=0, wi=w)


def _coefficient_path(net: Network, K0_at, rtol: float, atol: float) -> tuple[BarycentricInterpolator | None, int]:
    """Chebyshev interpolant in t of [k0, S̄, 𝒯, ℋ](K0(t)) (𝒯, ℋ on their local slots, flattened per t), refined by
    doubling the Lobatto grid until the coarse interpolant predicts the new nodes within atol + rtol·max|column|.

    Returns (None, nodes) if :data:`_CHEB_MAX` nodes do not resolve it. That happens for kinked φ (relu) with a
    nearly singular 2x2 block of K0: its ℋ entries scale like det^(−1/2) and cancel in ℋ:V4, and float64 rounding
    of K0 (relative error ~1e-16/det) makes them rough in t (docs/numerics.md#ill-conditioned).
    """
    p = pair_basis(net.P)

    def values(t):
        k0 = K0_at(t).T
        return np.concatenate([k0, _flat_coefficients(net, p.mat(k0))], axis=1)

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
    """ODEs (docs/gonly.md#v4, #k1-tadpole); returns K0 (L+1,P,P), V (L+1,N,N), k1 (L+1,N) at t_l and solver statistics.

    The costly 4th-order Gaussian moments (𝒯, ℋ) depend on t only through K0(t): K0 is solved first (with
    F alone), 𝒯 and ℋ are evaluated once on an adaptive Chebyshev grid in t, and the linear V4/K1 ODEs run on
    their interpolant — or, where the grid does not resolve them (:func:`_coefficient_path`), on their exact
    values at every right-hand-side call (``coefficients: "exact"`` in meta; slower, same tolerance).
    """
    p = pair_basis(net.P)
    N = p.N
    check_continuous(net)
    check_bytes("depth", 8.0 * (net.depth + 1) * (N * N + N), f"the G-only solution over depth = {net.depth} layers")

    def rhs_k0(_t, k0):
        return p.vec(S_bar(net, p.mat(k0)))

    k0 = solve_ode(rhs_k0, p.vec(net.K_in), net.T, "the kernel K0", "rtol", dense_output=True, rtol=rtol,
                   atol=atol)
    with np.errstate(over="ignore", invalid="ignore"):
        path, nodes = _coefficient_path(net, k0.sol, rtol, atol)
    def coefficients_at(t):
        if path is not None:
            y = path(t)
            return y[:N], _unflat_coefficients(net, y[N:])
        kk = k0.sol(t)
        return kk, _unflat_coefficients(net, _flat_coefficients(net, p.mat(kk)[None])[0])

    def rhs(t, y):
        kk, c = coefficients_at(t)
        V = y[:N * N].reshape(N, N)
        TV = c.T @ V
        dV = TV + TV.T + source(p.mat(kk), c.S_bar)
        dk1 = c.T @ y[N * N:] + tadpole(c, V) + (0.0 if c.bias is None else c.bias)
        return np.concatenate([dV.ravel(), dk1])

    y0 = np.concatenate([p.vec4(circ(net.K_in)).ravel(), np.zeros(N)])
    sol = solve_ode(rhs, y0, net.T, "the G-only V4/K1 equations", "rtol", t_eval=net.t, rtol=rtol, atol=atol)
    y = sol.y.T
    stats = {"nfev_K0": k0.nfev, "nfev": sol.nfev, "coefficients": "chebyshev" if path is not None else "exact",
             "chebyshev_nodes": nodes}
    return p.mat(k0.sol(net.t).T), y[:, :N * N].reshape(-1, N, N), y[:, N * N:], stats


@dataclass(frozen=True)
class GOnlyOptions:
    """Options of :func:`solve_gonly` (continuous depth model only): ``rtol`` in [1e-13, 0.1] and ``atol`` > 0 of
    the two ODE solves and the Chebyshev resolution of 𝒯(t), ℋ(t). Validated on construction (InputError naming
    the option)."""

    rtol: float = 1e-8
    atol: float = 1e-10

    def __post_init__(self):
        object.__setattr__(self, "rtol", check_tolerance("rtol", self.rtol, _RTOL_MIN, 0.1))
        object.__setattr__(self, "atol", check_positive("atol", self.atol))


def solve_gonly(net: Network, depth_model: str = "continuous", rtol: float = GOnlyOptions.rtol,
                atol: float = GOnlyOptions.atol) -> KernelResult:
    """G-only EFT (docs/gonly.md#chain) on the grid t = net.t: arrays K0 (L+1,P,P), V4 (L+1,P,P,P,P), K1 (L+1,P,P).

    ``depth_model``: "continuous" (the ODEs; ``rtol``, ``atol``:
    :class:`GOnlyOptions`; meta reports nfev_K0, nfev, coefficients, chebyshev_nodes) or
    "discrete" (the depth-L recursions, exact consequences of I1–I2 under the closure at O(1/n); 𝒯, ℋ evaluated
    at every K0^l). Fails loudly (docs/numerics.md#ill-conditioned, #overflow): InputError naming T if the
    result overflows float64, ConvergenceError if an ODE solve fails.
    """
    check_depth_model("depth_model", depth_model)
    opts = GOnlyOptions(rtol, atol)
    check_result("depth", (net.depth + 1) * (net.P ** 4 + 2 * net.P ** 2),
                 f"the G-only result over depth = {net.depth} layers")
    t0 = time.perf_counter()
    meta = {"kind": "theory", "closure": "g-only", "depth_model": depth_model, "config": net.to_dict()}
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if depth_model == "continuous":
            K0, V, k1, stats = _continuous(net, opts.rtol, opts.atol)
            meta.update(rtol=opts.rtol, atol=opts.atol, **stats)
        else:
            K0, V, k1 = _discrete(net)
    meta["seconds"] = time.perf_counter() - t0
    p = pair_basis(net.P)
    res = KernelResult(net.t, {"K0": K0, "V4": p.mat4(V), "K1": p.mat(k1)}, meta=meta)
    return require_finite(res, "the G-only solution")

