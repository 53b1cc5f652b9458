"""Cluster expansion of one block of the depth-L network, one input (docs/nextorder.md#discrete).

The block maps the r-neuron moment E[Π_i f_i(h_i')] (r = 1, 2, 3 distinct neurons) to
Σ_k Π_i ε^{k_i}/k_i! E[σ^{|k|} Π_i (L^{k_i} T f_i)(h_i)] with σ = C_W ν Σ_j p̃(h_j), p̃ = p − μ(p), L = ½∂², T the heat
flow of variance ε S̄ (ν = 1/n). Expanding σ^K over neurons and the distinct-neuron moments into cluster functions
c1 = μ + ν m + ν² m2, c2 = ν W + ν² W1, c3 = ν² X gives every term of the moment through O(ν²) as a product of
cluster functions of pointwise products p̃^a·(slot function). :func:`moment_terms` enumerates them symbolically;
:mod:`.nextorder` evaluates them on grids.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import NamedTuple

__all__ = ["Arg", "Block", "Term", "moment_terms"]

MAX_ORDER = 2          # ν²
MAX_POWER = 4          # σ^4 is the highest power that reaches ν²
_BLOCK_ORDERS = {1: (0, 1, 2), 2: (1, 2), 3: (2,)}


class Arg(NamedTuple):
    """One neuron's function inside a cluster function: p̃^a times the slot function ``slot`` (None: no slot)."""

    a: int
    slot: int | None


class Block(NamedTuple):
    """A cluster function c_{len(args)} at its ν-order ``order`` (c1: 0 μ, 1 m, 2 m2; c2: 1 W, 2 W1; c3: 2 X)."""

    order: int
    args: tuple


class Term(NamedTuple):
    """coef · C_W^K · Π_i ε^{k_i}/k_i! · ν^order · Π blocks, with K = |k|; the slot functions are L^{k_i} T f_i."""

    coef: float
    order: int
    k: tuple
    blocks: tuple


def _integer_partitions(m: int, largest: int | None = None):
    """Partitions of m into positive parts, non-increasing."""
    if m == 0:
        yield ()
        return
    for first in range(min(m, largest or m), 0, -1):
        for rest in _integer_partitions(m - first, first):
            yield (first,) + rest


def _set_partitions(items: list):
    """All set partitions of ``items`` into blocks of size <= 3."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for size in range(0, min(2, len(rest)) + 1):
        for others in itertools.combinations(range(len(rest)), size):
            block = [first] + [rest[i] for i in others]
            remaining = [rest[i] for i in range(len(rest)) if i not in others]
            for part in _set_partitions(remaining):
                yield [block] + part


def _falling(r: int, g: int) -> list[float]:
    """Coefficients c_t of ν^t (t = 0, 1, 2) in (n − r)(n − r − 1)…(n − r − g + 1) / n^g."""
    c = [1.0, 0.0, 0.0]
    for t in range(g):
        x = -(r + t)
        c = [c[0], c[1] + x * c[0], c[2] + x * c[1]]
    return c


def _vanishes(block: Block) -> bool:
    """μ(p̃) = 0."""
    return block.order == 0 and len(block.args) == 1 and block.args[0] == Arg(1, None)


@lru_cache(maxsize=None)
def moment_terms(r: int) -> tuple:
    """Every term of E[Π_{i<r} f_i(h_i')] through O(ν²) (module docstring) as a tuple of :class:`Term`."""
    out = []
    for k in itertools.product(range(MAX_POWER + 1), repeat=r):
        K = sum(k)
        if K > MAX_POWER:
            continue
        for a in itertools.product(range(K + 1), repeat=r):
            rest = K - sum(a)
            if rest < 0:
                continue
            for groups in _integer_partitions(rest):
                g = len(groups)
                if K - g > MAX_ORDER:
                    continue
                count = math.factorial(K)
                for x in list(a) + list(groups):
                    count //= math.factorial(x)
                for size in set(groups):
                    count //= math.factorial(groups.count(size))
                neurons = [Arg(a[i], i) for i in range(r)] + [Arg(b, None) for b in groups]
                ff = _falling(r, g)
                for part in _set_partitions(list(range(len(neurons)))):
                    lowest = [len(B) - 1 if len(B) > 1 or neurons[B[0]] != Arg(1, None) else 1 for B in part]
                    if K - g + sum(lowest) > MAX_ORDER:
                        continue
                    for orders in itertools.product(*[_BLOCK_ORDERS[len(B)] for B in part]):
                        blocks = tuple(Block(o, tuple(neurons[i] for i in B)) for o, B in zip(orders, part))
                        if any(_vanishes(b) for b in blocks):
                            continue
                        base = K - g + sum(orders)
                        for t in range(MAX_ORDER - base + 1):
                            if ff[t] != 0.0:
                                out.append(Term(count * ff[t], base + t, k, blocks))
    return tuple(out)
