"""Infinite-width kernel K0 (docs/gonly.md#k0): S̄(K) = C_W F(K) + C_b 11ᵀ, discrete recursion and continuous ODE.

K0 grows like e^{C_W t}; when it leaves float64 the computation stops with an InputError naming T and the depth t
at which it overflowed (docs/numerics.md#overflow), without RuntimeWarnings.
"""
from __future__ import annotations

import numpy as np

from .branch import is_default, kernel_map
from .config import Network
from .errors import ConvergenceError, InputError
from .gaussian import F
from .limits import Budget, check_result
from .result import KernelResult, overflow_error

__all__ = ["S_bar", "K0_discrete", "K0_continuous", "kernel", "DEPTH_MODELS", "check_depth_model", "check_continuous",
           "solve_ode"]

_HUGE = 1e300           # a kernel entry beyond this overflows at the next step (or inside F)


def S_bar(net: Network, K: np.ndarray) -> np.ndarray:
    """S̄(K) = C_W F(K) + C_b 11ᵀ (docs/model.md#network), or the branch's kernel map
    (docs/architectures.md#kernel-maps); K (..., P, P) -> (..., P, P)."""
    if is_default(net.branch):
        return net.C_W * F(net.phi, K) + net.C_b
    return kernel_map(net.branch, net.phi, K)


def solve_ode(rhs, y0: np.ndarray, T: float, what: str, option: str, **kwargs):
    """``solve_ivp(rhs, (0, T), y0, method="DOP853", **kwargs)`` that fails loudly, without RuntimeWarnings.

    InputError naming T (:func:`overflow_error`) as soon as a state or its derivative leaves float64 (or exceeds
    1e300): the solver only evaluates states within its error tolerance of the solution, so the kernel itself does;
    ConvergenceError naming ``what``, the solver's message and ``option`` if it fails otherwise.
    """
    from scipy.integrate import solve_ivp          # here, not at import: keeps `kerneleft --help` fast

    class Overflow(Exception):
        pass

    def watched(t, y):
        if not (np.all(np.isfinite(y)) and np.max(np.abs(y), initial=0.0) <= _HUGE):
            raise Overflow(t)
        dy = rhs(t, y)
        if not np.all(np.isfinite(dy)):
            raise Overflow(t)
        return dy

    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            sol = solve_ivp(watched, (0.0, T), y0, method="DOP853", **kwargs)
    except Overflow as stop:
        raise overflow_error(stop.args[0], what) from None
    finite = np.all(np.isfinite(sol.y)) and np.max(np.abs(sol.y), initial=0.0) <= _HUGE
    if not sol.success or not finite:
        t = float(sol.t[-1]) if sol.t.size else 0.0
        raise ConvergenceError(f"{what}: the ODE solver stopped at t = {t:.3g} ({sol.message}); change {option}")
    return sol


def K0_discrete(net: Network) -> np.ndarray:
    """K0^{l+1} = K0^l + ε S̄(K0^l) (resnet) or S̄(K0^l) (MLP, docs/architectures.md#mlp), K0^0 = K_in
    (docs/gonly.md#k0); returns (L+1, P, P).

    InputError naming T at the first layer whose kernel is not finite (overflow); loops long enough to matter
    report progress or are refused (:class:`kerneleft.limits.Budget`, option ``depth``).
    """
    check_result("depth", (net.depth + 1) * net.P ** 2, f"the kernel over depth = {net.depth} layers")
    K = np.empty((net.depth + 1, net.P, net.P))
    K[0] = net.K_in
    with np.errstate(over="ignore", invalid="ignore"), \
            Budget("depth", net.depth, f"K0 recursion over {net.depth} layers") as budget:
        for l in range(net.depth):
            K[l + 1] = K[l] + net.eps * S_bar(net, K[l]) if net.residual else S_bar(net, K[l])
            if not np.isfinite(K[l + 1]).all() or np.abs(K[l + 1]).max() > _HUGE:
                raise overflow_error(net.t[l + 1])
            budget.step(l + 1)
    return K


def K0_continuous(net: Network, rtol: float = 1e-10, atol: float = 1e-12) -> np.ndarray:
    """Solution of dK0/dt = S̄(K0), K0(0) = K_in (docs/gonly.md#k0), evaluated at t_l; returns (L+1, P, P).

    InputError naming T if K0 overflows before T; ConvergenceError if the ODE solver fails otherwise.
    """
    P = net.P
    check_continuous(net)
    check_result("depth", (net.depth + 1) * P ** 2, f"the kernel over depth = {net.depth} layers")

    def rhs(_t, y):
        return S_bar(net, y.reshape(P, P)).ravel()

    sol = solve_ode(rhs, net.K_in.ravel(), net.T, "the kernel K0", "rtol", t_eval=net.t, rtol=rtol, atol=atol)
    K = sol.y.T.reshape(-1, P, P)
    return 0.5 * (K + K.transpose(0, 2, 1))


DEPTH_MODELS = ("continuous", "discrete")
"""The depth models of every solver: the depth-time ODEs, or the depth-L network's layer recursion
(docs/model.md#depth-grid)."""


def check_continuous(net: Network) -> None:
    """InputError naming depth_model for an MLP, whose depth is discrete (docs/architectures.md#mlp)."""
    if not net.residual:
        raise InputError("depth_model: an MLP (architecture = 'mlp') has only the 'discrete' depth model")


def check_depth_model(name: str, value) -> str:
    """``value`` if it is one of :data:`DEPTH_MODELS`; else InputError naming ``name``."""
    if not isinstance(value, str) or value not in DEPTH_MODELS:
        raise InputError(f"{name}: must be 'continuous' or 'discrete', got {value!r}")
    return value


def kernel(net: Network, depth_model: str = "discrete") -> KernelResult:
    """K0 on the depth grid: ``discrete`` (the depth-L network) or ``continuous`` (the ODE). docs/model.md#depth-grid"""
    check_depth_model("depth_model", depth_model)
    K0 = K0_discrete(net) if depth_model == "discrete" else K0_continuous(net)
    return KernelResult(net.t, {"K0": K0}, meta={"kind": "kernel", "depth_model": depth_model,
                                                 "config": net.to_dict()})
