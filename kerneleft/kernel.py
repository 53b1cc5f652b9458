"""Infinite-width kernel K0 (THEORY §4): S̄(K) = C_W F(K) + C_b 11ᵀ, discrete recursion and continuous ODE."""
from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp

from .config import Network
from .gaussian import F
from .result import KernelResult
from .errors import InputError

__all__ = ["S_bar", "K0_discrete", "K0_continuous", "kernel"]


def S_bar(net: Network, K: np.ndarray) -> np.ndarray:
    """S̄(K) = C_W F(K) + C_b 11ᵀ (§1); K (..., P, P) -> (..., P, P)."""
    return net.C_W * F(net.phi, K) + net.C_b


def K0_discrete(net: Network) -> np.ndarray:
    """K0^{l+1} = K0^l + ε S̄(K0^l), K0^0 = K_in (§4); returns (L+1, P, P)."""
    K = np.empty((net.depth + 1, net.P, net.P))
    K[0] = net.K_in
    for l in range(net.depth):
        K[l + 1] = K[l] + net.eps * S_bar(net, K[l])
    return K


def K0_continuous(net: Network, rtol: float = 1e-10, atol: float = 1e-12) -> np.ndarray:
    """Solution of dK0/dt = S̄(K0), K0(0) = K_in (§4), evaluated at t_l; returns (L+1, P, P)."""
    P = net.P

    def rhs(_t, y):
        return S_bar(net, y.reshape(P, P)).ravel()

    sol = solve_ivp(rhs, (0.0, net.T), net.K_in.ravel(), method="DOP853", t_eval=net.t, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"K0 ODE solver failed: {sol.message}")
    K = sol.y.T.reshape(-1, P, P)
    return 0.5 * (K + K.transpose(0, 2, 1))


def kernel(net: Network, depth_model: str = "discrete") -> KernelResult:
    """K0 on the depth grid: ``discrete`` (the depth-L network) or ``continuous`` (the ODE). §4."""
    if depth_model == "discrete":
        K0 = K0_discrete(net)
    elif depth_model == "continuous":
        K0 = K0_continuous(net)
    else:
        raise InputError(f"depth_model: must be 'discrete' or 'continuous', got {depth_model!r}")
    return KernelResult(net.t, {"K0": K0}, meta={"kind": "kernel", "depth_model": depth_model,
                                                 "config": net.to_dict()})
