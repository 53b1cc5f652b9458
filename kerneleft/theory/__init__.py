"""Leading-order finite-width theories: E[G] ≈ K0 + K1/n, n Cov[G] ≈ V4 (docs/gonly.md, docs/sigma.md).

``solve(net, closure, depth_model, **opts)`` dispatches to the G-only EFT (:mod:`.gonly`) or the sigma-kernel
theory (:mod:`.sigma`); both return a :class:`~kerneleft.result.KernelResult` on net.t.

Identical and nearly identical inputs (docs/numerics.md#ill-conditioned). Identical inputs (K_aa = K_bb = K_ab)
give identical pre-activations in every neuron and layer, so they are merged before solving and the result is
expanded back: exact, and it keeps degenerate kernels finite. Inputs a, b with
max(|K_aa − K_bb|, |K_ab − K_bb|) <= τ·K_bb are merged too (:func:`merge_rtol`): V4 and K1 depend on K_in
differentiably at the diagonal (also for relu, measured: V4 and K1 move by O(τ)·scale), so merging changes them by
O(τ) relative, below the solver's tolerance. τ = 1e-12 for the G-only theory (its closed forms and quadrature are
accurate at any 1 − ρ, so only rounding-level ties are merged) and 0.01·tol for the sigma theory (whose plane
grids are whitened to resolve the thin direction of a nearly singular block, measured down to 1 − ρ = 1e-10).
"""
from __future__ import annotations

import numpy as np

from ..config import Network
from ..errors import InputError
from ..result import KernelResult

__all__ = ["solve", "CLOSURES", "distinct_inputs", "merge_rtol", "representatives", "expand"]

CLOSURES = ("g-only", "sigma")
EXACT_RTOL = 1e-12          # rounding-level ties: merged by every solver


def merge_rtol(closure: str, opts: dict) -> float:
    """τ: inputs within relative distance τ are merged (module docstring). sigma: 0.01·tol, G-only: 1e-12."""
    if closure == "sigma":
        from .sigma import DEFAULT_TOL
        tol = opts.get("tol", DEFAULT_TOL)
        if isinstance(tol, (int, float, np.integer, np.floating)) and not isinstance(tol, bool) and tol > 0:
            return max(EXACT_RTOL, 0.01 * float(tol))
    return EXACT_RTOL


def distinct_inputs(K: np.ndarray, rtol: float = EXACT_RTOL) -> np.ndarray:
    """rep[a] = index into the distinct inputs of input a; a, b count as identical iff
    |K_aa − K_bb| <= rtol·K_bb and |K_ab − K_bb| <= rtol·K_bb (b the first input of its class)."""
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


def representatives(K: np.ndarray, rtol: float = EXACT_RTOL) -> tuple[np.ndarray, np.ndarray]:
    """(rep, first): rep = :func:`distinct_inputs`, first[j] = the first input of class j (its representative)."""
    rep = distinct_inputs(K, rtol)
    return rep, np.array([np.flatnonzero(rep == j)[0] for j in range(rep.max() + 1)])


def expand(arr: np.ndarray, rep: np.ndarray) -> np.ndarray:
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
    """Solve the theory named by ``closure`` ("g-only" or "sigma"); ``opts`` go to the solver.

    Nearly identical inputs are merged first (module docstring); meta then has ``merged_inputs`` (rep[a] for
    every input) and ``merge_rtol`` (τ).
    """
    if closure not in CLOSURES:
        raise InputError(f"closure: must be one of {', '.join(CLOSURES)}, got {closure!r}")
    tau = merge_rtol(closure, opts)
    rep, first = representatives(net.K_in, tau)
    if first.size == net.P:
        return _solve_distinct(net, closure, depth_model, **opts)
    res = _solve_distinct(net.replace(K_in=net.K_in[np.ix_(first, first)]), closure, depth_model, **opts)
    arrays = {k: expand(v, rep) for k, v in res.arrays.items()}
    meta = dict(res.meta, config=net.to_dict(), merged_inputs=rep.tolist(), merge_rtol=tau)
    return KernelResult(res.t, arrays, {k: expand(v, rep) for k, v in res.se.items()}, meta)
