"""Leading-order finite-width theories: E[G] ≈ K0 + K1/n, n Cov[G] ≈ V4 (THEORY §5, §6).

``solve(net, closure, depth_model, **opts)`` dispatches to the G-only EFT (§5, :mod:`.gonly`) or the
sigma-kernel theory (§6, :mod:`.sigma`); both return a :class:`~kerneleft.result.KernelResult` on net.t.
"""
from __future__ import annotations

from ..config import Network
from ..result import KernelResult

__all__ = ["solve", "CLOSURES"]

CLOSURES = ("g-only", "sigma")


def solve(net: Network, closure: str, depth_model: str = "continuous", **opts) -> KernelResult:
    """Solve the theory named by ``closure`` ("g-only" §5 or "sigma" §6); ``opts`` go to the solver."""
    if closure == "g-only":
        from .gonly import solve_gonly
        return solve_gonly(net, depth_model=depth_model, **opts)
    if closure == "sigma":
        from .sigma import solve_sigma
        return solve_sigma(net, depth_model=depth_model, **opts)
    raise ValueError(f"closure: must be one of {', '.join(CLOSURES)}, got {closure!r}")
