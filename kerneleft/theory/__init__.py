"""Leading-order finite-width theories: E[G] ≈ K0 + K1/n, n Cov[G] ≈ V4 (THEORY §5, §6).

``solve(net, closure, depth_model, **opts)`` dispatches to the G-only EFT (§5, :mod:`.gonly`) or the
sigma-kernel theory (§6, :mod:`.sigma`); both return a :class:`~kerneleft.result.KernelResult` on net.t.
Identical inputs (K_aa = K_bb = K_ab) give identical pre-activations in every neuron and layer, so they are
merged before solving and the result is expanded back: exact, and it keeps degenerate kernels finite.
"""
from __future__ import annotations

import numpy as np

from ..config import Network
from ..result import KernelResult
from ..errors import InputError

__all__ = ["solve", "CLOSURES", "distinct_inputs"]

CLOSURES = ("g-only", "sigma")


def distinct_inputs(K: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    """rep[a] = index into the distinct inputs of input a; inputs a, b are identical iff K_aa = K_bb = K_ab."""
    P = K.shape[0]
    rep, firsts = np.empty(P, dtype=int), []
    for a in range(P):
        for j, b in enumerate(firsts):
            if np.allclose([K[a, a], K[a, b]], [K[b, b], K[b, b]], rtol=rtol, atol=0.0):
                rep[a] = j
                break
        else:
            rep[a] = len(firsts)
            firsts.append(a)
    return rep


def _expand(arr: np.ndarray, rep: np.ndarray) -> np.ndarray:
    """arr[l, i, j, ...] over distinct inputs -> arr[l, rep[a], rep[b], ...] over all P inputs."""
    return arr[(slice(None),) + np.ix_(*[rep] * (arr.ndim - 1))]


def _solve_distinct(net: Network, closure: str, depth_model: str, **opts) -> KernelResult:
    if closure == "g-only":
        from .gonly import solve_gonly
        return solve_gonly(net, depth_model=depth_model, **opts)
    from .sigma import solve_sigma
    if np.linalg.eigvalsh(net.K_in)[0] <= 1e-12 * np.trace(net.K_in):
        raise InputError("K_in: the sigma theory needs linearly independent inputs (identical inputs are merged "
                         "automatically; other singular input kernels are not supported)")
    return solve_sigma(net, depth_model=depth_model, **opts)


def solve(net: Network, closure: str, depth_model: str = "continuous", **opts) -> KernelResult:
    """Solve the theory named by ``closure`` ("g-only" §5 or "sigma" §6); ``opts`` go to the solver."""
    if closure not in CLOSURES:
        raise InputError(f"closure: must be one of {', '.join(CLOSURES)}, got {closure!r}")
    rep = distinct_inputs(net.K_in)
    if rep.max() + 1 == net.P:
        return _solve_distinct(net, closure, depth_model, **opts)
    first = np.array([np.flatnonzero(rep == j)[0] for j in range(rep.max() + 1)])
    res = _solve_distinct(net.replace(K_in=net.K_in[np.ix_(first, first)]), closure, depth_model, **opts)
    arrays = {k: _expand(v, rep) for k, v in res.arrays.items()}
    meta = dict(res.meta, config=net.to_dict(), merged_inputs=rep.tolist())
    return KernelResult(res.t, arrays, {k: _expand(v, rep) for k, v in res.se.items()}, meta)
