"""Tensor algebra on symmetric P x P matrices (docs/model.md#tensor-conventions).

Four-index objects are stored as full tensors ``T[..., a, b, c, d]`` and act on matrices by the ordered-pair
contraction ``(T X)_ab = Σ_cd T[a,b,c,d] X_cd`` — the convention in which ``K_ef`` and ``K_fe`` are one symmetric
variable and every sum runs over ordered pairs.
"""
from __future__ import annotations

import numpy as np

__all__ = ["box", "circ", "apply", "compose", "transport"]


def box(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """(A⊠B)_{ab,cd} = A_ac B_bd + A_ad B_bc + A_bc B_ad + A_bd B_ac; A, B (..., P, P) -> (..., P, P, P, P)."""
    return (np.einsum("...ac,...bd->...abcd", A, B) + np.einsum("...ad,...bc->...abcd", A, B)
            + np.einsum("...bc,...ad->...abcd", A, B) + np.einsum("...bd,...ac->...abcd", A, B))


def circ(A: np.ndarray) -> np.ndarray:
    """(A∘A)_{ab,cd} = A_ac A_bd + A_ad A_bc (the Wishart covariance n Cov[G] at l = 0); (..., P, P) -> (..., P,P,P,P)."""
    AA = np.einsum("...ac,...bd->...abcd", A, A)
    return AA + AA.swapaxes(-1, -2)


def apply(T: np.ndarray, X: np.ndarray) -> np.ndarray:
    """(T X)_ab = Σ_cd T[a,b,c,d] X_cd; T (..., P,P,P,P), X (..., P, P) -> (..., P, P)."""
    return np.einsum("...abcd,...cd->...ab", T, X)


def compose(T: np.ndarray, U: np.ndarray) -> np.ndarray:
    """(T U)[a,b,c,d] = Σ_ef T[a,b,e,f] U[e,f,c,d] (operator product on matrices)."""
    return np.einsum("...abef,...efcd->...abcd", T, U)


def transport(T: np.ndarray, V: np.ndarray) -> np.ndarray:
    """𝒯V + V𝒯ᵀ for an operator T and a symmetric four-index V (docs/gonly.md#v4); (..., P,P,P,P)."""
    TV = compose(T, V)
    return TV + np.einsum("...abcd->...cdab", TV)
