"""The pair basis: symmetric P x P matrices as vectors over the N = P(P+1)/2 pairs (docs/gonly.md#coefficients).

Pairs r = (a <= b) are numbered in ``numpy.triu_indices(P)`` order. A symmetric matrix X is the vector
``x[r] = X[a, b]`` (N,); a four-index object V (symmetric in a <-> b and in c <-> d) is the N x N matrix
``V[r, s] = V[a, b, c, d]``. An ordered-pair sum over (c, d) visits an off-diagonal pair twice: the multiplicity
``mult[s]`` (1 if c == d, 2 otherwise) turns such a contraction into a matrix product (docs/reference.md#notation).
This module is the only place that builds pair tables.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["PairBasis", "pair_basis"]


@dataclass(frozen=True)
class PairBasis:
    """The N = P(P+1)/2 unordered pairs r = (a <= b) of P inputs (docs/gonly.md#coefficients)."""

    P: int
    N: int
    a: np.ndarray        # (N,) first index
    b: np.ndarray        # (N,) second index, a <= b
    index: np.ndarray    # (P, P) pair number of (a, b) and (b, a)
    off: np.ndarray      # (N,) bool a != b
    loc: np.ndarray      # (N, 3) pair numbers of the local slots (aa, ab, bb)
    weight: np.ndarray   # (N, 3) ordered-pair multiplicities (1, 2, 1) or (1, 0, 0) on the diagonal
    mult: np.ndarray     # (N,) ordered-pair multiplicity of pair r: 2 if a != b else 1

    def vec(self, X: np.ndarray) -> np.ndarray:
        """Symmetric (..., P, P) -> (..., N) pair vector ``x[r] = X[a, b]``."""
        return X[..., self.a, self.b]

    def mat(self, x: np.ndarray) -> np.ndarray:
        """(..., N) pair vector -> symmetric (..., P, P)."""
        return x[..., self.index]

    def vec4(self, V4: np.ndarray) -> np.ndarray:
        """(..., P, P, P, P) -> (..., N, N) with ``V[r, s] = V4[a, b, c, d]``."""
        return V4[..., self.a[:, None], self.b[:, None], self.a[None, :], self.b[None, :]]

    def mat4(self, V: np.ndarray) -> np.ndarray:
        """(..., N, N) -> (..., P, P, P, P), the inverse of :meth:`vec4` on pair-symmetric tensors."""
        i = self.index
        return V[..., i[:, :, None, None], i[None, None, :, :]]


@lru_cache(maxsize=None)
def pair_basis(P: int) -> PairBasis:
    """The pair basis of P inputs (cached; its arrays are read-only)."""
    a, b = np.triu_indices(P)
    index = np.empty((P, P), dtype=int)
    index[a, b] = index[b, a] = np.arange(a.size)
    off = a != b
    loc = np.stack([index[a, a], index[a, b], index[b, b]], axis=-1)
    mult = np.where(off, 2.0, 1.0)
    weight = mult[loc] * np.stack([np.ones(a.size), off, off], axis=-1)   # slot ab (and bb) coincide with aa if a == b
    arrays = (a, b, index, off, loc, weight, mult)
    for arr in arrays:
        arr.setflags(write=False)
    return PairBasis(P, int(a.size), *arrays)
