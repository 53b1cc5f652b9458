"""Leading-order finite-width theories: E[G] ≈ K0 + K1/n, n Cov[G] ≈ V4 (docs/gonly.md, docs/sigma.md).

``solve(net, closure, depth_model, options, **opts)`` dispatches through the closure registry :data:`CLOSURES` to
the G-only EFT (:mod:`.gonly`) or the sigma-kernel theory (:mod:`.sigma`); both return a
:class:`~kerneleft.result.KernelResult` on net.t. Each closure declares its options once, as a frozen dataclass
beside its solver (:class:`.gonly.GOnlyOptions`, :class:`.sigma.SigmaOptions`) validated on construction; an
unknown option is refused with one line listing the allowed ones (:func:`make_options`).

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

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import limits
from ..config import Network
from ..errors import InputError
from ..kernel import check_depth_model
from ..result import KernelResult, require_finite
from ..validate import check_int
from .gonly import GOnlyOptions, solve_gonly
from .nextorder import ORDER2_TOL, check_supported, gonly_next_order, sigma_next_order
from .sigma import SigmaOptions, solve_sigma

__all__ = ["solve", "Closure", "CLOSURES", "make_options", "distinct_inputs", "merge_rtol", "representatives", "expand",
           "finite_width", "ORDERS", "ORDER2_TOL"]

ORDERS = (1, 2)
"""Orders in 1/n: 1 (K1, V4) and 2 (adds K2, V4_1; docs/nextorder.md)."""

EXACT_RTOL = 1e-12          # rounding-level ties: merged by every solver


@dataclass(frozen=True)
class Closure:
    """A theory: ``solve(net, depth_model=..., **fields of options_type)`` and its frozen options dataclass;
    ``parallel``: its solver takes ``pool=`` (independent sub-problems through :func:`kerneleft.maps.as_map`)."""

    name: str
    solve: Callable[..., KernelResult]
    options_type: type
    parallel: bool = False


CLOSURES: dict[str, Closure] = {c.name: c for c in (Closure("g-only", solve_gonly, GOnlyOptions),
                                                    Closure("sigma", solve_sigma, SigmaOptions, parallel=True))}


def _closure(name) -> Closure:
    if not isinstance(name, str) or name not in CLOSURES:
        raise InputError(f"closure: must be one of {', '.join(CLOSURES)}, got {name!r}")
    return CLOSURES[name]


def make_options(closure: str, options=None, **opts):
    """The validated options of ``closure``: ``options`` (an instance of its options type, or None for the
    defaults) with the fields ``opts`` replaced. InputError ``<closure> option '<name>': unknown (allowed: ...)``
    for a name that is not a field, or naming the option whose value is refused."""
    c = _closure(closure)
    fields = [f.name for f in dataclasses.fields(c.options_type)]
    for name in opts:
        if name not in fields:
            raise InputError(f"{closure} option {name!r}: unknown (allowed: {', '.join(fields)})")
    if options is None:
        return c.options_type(**opts)
    if not isinstance(options, c.options_type):
        raise InputError(f"options: must be a {c.options_type.__name__} for closure {closure!r}, "
                         f"got {type(options).__name__}")
    return dataclasses.replace(options, **opts)


def merge_rtol(closure: str, opts) -> float:
    """τ: inputs within relative distance τ are merged (module docstring). sigma: 0.01·tol, G-only: 1e-12.
    ``opts``: the closure's validated options."""
    return max(EXACT_RTOL, 0.01 * opts.tol) if closure == "sigma" else EXACT_RTOL


def distinct_inputs(K: np.ndarray, rtol: float = EXACT_RTOL) -> np.ndarray:
    """rep[a] = index into the distinct inputs of input a; a, b count as identical iff
    |K_aa − K_bb| <= rtol·K_bb and |K_ab − K_bb| <= rtol·K_bb (b the first input of its class)."""
    return representatives(K, rtol)[0]


def representatives(K: np.ndarray, rtol: float = EXACT_RTOL) -> tuple[np.ndarray, np.ndarray]:
    """(rep, first): rep = :func:`distinct_inputs`, first[j] = the first input of class j (its representative)."""
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
    return rep, np.array(firsts)


def expand(arr: np.ndarray, rep: np.ndarray) -> np.ndarray:
    """arr[l, i, j, ...] over distinct inputs -> arr[l, rep[a], rep[b], ...] over all P inputs."""
    return arr[(slice(None),) + np.ix_(*[rep] * (arr.ndim - 1))]


def _solve_distinct(net: Network, closure: str, depth_model: str, opts, pool=None, order: int = 1,
                    tol2: float = ORDER2_TOL) -> KernelResult:
    if closure == "sigma" and np.linalg.eigvalsh(net.K_in)[0] <= 1e-12 * np.trace(net.K_in):
        raise InputError("K_in: the sigma theory needs linearly independent inputs (identical inputs are merged "
                         "automatically; other singular input kernels are not supported)")
    if order == 2:
        check_supported(net)
    extra = {"pool": pool} if CLOSURES[closure].parallel else {}
    res = CLOSURES[closure].solve(net, depth_model=depth_model, **dataclasses.asdict(opts), **extra)
    if order == 1:
        return res
    t0 = time.perf_counter()
    out, info = (sigma_next_order(net, depth_model, tol2) if closure == "sigma" else
                 gonly_next_order(net, depth_model))
    arrays = dict(res.arrays, K2=out["K2"].reshape(-1, 1, 1), V4_1=out["V4_1"].reshape(-1, 1, 1, 1, 1))
    info = dict(info, seconds=time.perf_counter() - t0, **({"tol2": tol2} if closure == "sigma" else {}))
    return require_finite(KernelResult(res.t, arrays, res.se, dict(res.meta, order=2, next_order=info)))


def finite_width(res: KernelResult, width: int) -> KernelResult:
    """``res`` with the finite-width predictions of INTERFACE "Next order in 1/n": ``G_mean_pred`` = K0 + K1/N
    (+ K2/N²) and ``V4_pred`` = V4 (+ V4_1/N) at N = ``width`` (meta ``width``); docs/nextorder.md#predictions."""
    N = check_int("width", width, 1)
    G = res["K0"] + res["K1"] / N + (res["K2"] / N ** 2 if "K2" in res else 0.0)
    V = res["V4"] + (res["V4_1"] / N if "V4_1" in res else 0.0)
    return KernelResult(res.t, dict(res.arrays, G_mean_pred=G, V4_pred=V), res.se, dict(res.meta, width=N))


def solve(net: Network, closure: str, depth_model: str = "continuous", options=None, pool=None, order: int = 1,
          tol2: float = ORDER2_TOL, **opts) -> KernelResult:
    """Solve the theory named by ``closure`` (a key of :data:`CLOSURES`: "g-only" or "sigma").

    ``depth_model``: "continuous" or "discrete" (checked here, for every closure). ``options``: the closure's
    options dataclass (:class:`~.gonly.GOnlyOptions`, :class:`~.sigma.SigmaOptions`) or None for the defaults;
    ``opts``: fields of it to set (``tol=1e-4``); see :func:`make_options`. Nearly identical inputs are merged first
    (module docstring); meta then has ``merged_inputs`` (rep[a] for every input) and ``merge_rtol`` (τ).
    ``pool``: where a parallel closure (sigma: its plane grids) runs, :func:`kerneleft.maps.as_map`; the numbers do
    not depend on it. InputError for a closure that runs serially (g-only) given a pool other than None or 1.
    ``order``: 1, or 2 to add K2 (L+1,P,P) and V4_1 (L+1,P,P,P,P) (docs/nextorder.md; one input of the default
    resnet block), the sigma ones refined until they change by < ``tol2`` relative (meta ``next_order``).
    """
    if not isinstance(net, Network):
        raise InputError(f"net: must be a kerneleft Network, got {type(net).__name__}")
    if not _closure(closure).parallel and pool not in (None, 1):
        raise InputError(f"pool: the {closure} closure runs serially (only sigma takes a pool)")
    check_depth_model("depth_model", depth_model)
    if order not in ORDERS:
        raise InputError(f"order: must be one of 1, 2, got {order!r}")
    tol2 = limits.check_tolerance("tol2", tol2, 1e-8, 0.5)
    opts = make_options(closure, options, **opts)
    tau = merge_rtol(closure, opts)
    rep, first = representatives(net.K_in, tau)
    if first.size == net.P:
        return _solve_distinct(net, closure, depth_model, opts, pool, order, tol2)
    res = _solve_distinct(net.replace(K_in=net.K_in[np.ix_(first, first)]), closure, depth_model, opts, pool, order,
                          tol2)
    arrays = {k: expand(v, rep) for k, v in res.arrays.items()}
    meta = dict(res.meta, config=net.to_dict(), merged_inputs=rep.tolist(), merge_rtol=tau)
    return KernelResult(res.t, arrays, {k: expand(v, rep) for k, v in res.se.items()}, meta)
