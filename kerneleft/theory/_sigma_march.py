"""Time marching shared by the sigma solvers (docs/sigma.md#equations) (see :mod:`.sigma`).

``u' = ℒ(t) u + f(t, u)`` with the exact flow of ℒ given by ``decay(i, j)`` (a multiplier, or None for ℒ = 0):
- ``"rk4"`` (continuous depth): integrating-factor RK4, step h, nodes t_i = i h/2, stages at nodes 2n, 2n+1, 2n+1, 2n+2;
- ``"euler"`` (discrete depth, the exact layer recursion): u_{l+1} = decay(l, l+1)(u_l + ε f(l, u_l)), nodes t_l.
``f(n, s, i, u) -> (du, out)``: step n, stage s, node i; ``out`` (a tuple of arrays) is recorded per stage.

Also the refinement schedule shared by the grid solvers (the sigma plane grids and the next-order cluster grids,
docs/sigma.md#convergence, docs/nextorder.md#convergence): :func:`default_substeps`, :func:`refinement_level`,
:func:`next_level_seconds`.
"""
from __future__ import annotations

import math

import numpy as np

from ..limits import Budget

__all__ = ["march", "layer_node", "MIN_STEPS", "default_substeps", "refinement_level", "next_level_seconds"]

MIN_STEPS = 32          # RK4 steps over [0, T] at the coarsest level


def default_substeps(depth: int) -> int:
    """RK4 steps per layer at the coarsest level: :data:`MIN_STEPS` over [0, T] at least."""
    return -(-MIN_STEPS // depth)


def refinement_level(n: int, s0: int, lev: int) -> tuple[int, int]:
    """(grid, substeps) of refinement level ``lev`` from (n, s0) at level 0: both × 1.5 per level, the grid even."""
    return 2 * int(round(n * 1.5 ** lev / 2)), int(math.ceil(s0 * 1.5 ** lev))


def next_level_seconds(cumulative: list[float]) -> float:
    """Time of the next refinement level from the cumulative times [0, t_1, ..., t_k] (k >= 2) of the last ones:
    the last level's time times its growth over the one before (at least 1)."""
    last, before = cumulative[-1] - cumulative[-2], cumulative[-2] - cumulative[-3]
    return last * max(last / max(before, 1e-9), 1.0)


def layer_node(scheme: str, stride: int, l: int) -> int:
    """Node index of layer l."""
    return l if scheme == "euler" else 2 * stride * l


def _stack(rows: list[tuple]) -> tuple[np.ndarray, ...]:
    """[(a_0, b_0, ...), (a_1, b_1, ...), ...] -> (stack(a), stack(b), ...)."""
    return tuple(np.stack(col) for col in zip(*rows))


def march(f, decay, u, steps: int, h: float, stride: int, scheme: str, at_layer):
    """Integrate ``steps`` steps; returns (stage outputs, each (steps, n_stages, ...); layer outputs, each (L+1, ...)).

    ``at_layer(l, u) -> tuple`` is called at every layer l = 0..steps/stride.
    """
    one = lambda i, j: 1.0  # noqa: E731
    E = decay or one
    stages, layers = [], [at_layer(0, u)]
    with Budget("depth", steps, f"sigma time marching over {steps} steps") as budget:
        for n in range(steps):
            out, u = _step(f, E, n, u, h, scheme)
            stages.append(out)
            if (n + 1) % stride == 0:
                layers.append(at_layer((n + 1) // stride, u))
            budget.step(n + 1)
    return _stack([_stack(st) for st in stages]), _stack(layers)


def _step(f, E, n: int, u, h: float, scheme: str) -> tuple[list, object]:
    """One step n from u: (the stage outputs, the new u)."""
    if scheme == "euler":
        k, out = f(n, 0, n, u)
        return [out], E(n, n + 1) * (u + h * k)
    i0, i1, i2 = 2 * n, 2 * n + 1, 2 * n + 2
    E01, E02, E12 = E(i0, i1), E(i0, i2), E(i1, i2)
    ka, oa = f(n, 0, i0, u)
    kb, ob = f(n, 1, i1, E01 * (u + 0.5 * h * ka))
    kc, oc = f(n, 2, i1, E01 * u + 0.5 * h * kb)
    kd, od = f(n, 3, i2, E02 * u + h * E12 * kc)
    return [oa, ob, oc, od], E02 * (u + h / 6 * ka) + h / 6 * (2 * E12 * (kb + kc) + kd)
