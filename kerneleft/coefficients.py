"""The G-only coefficients S̄, 𝒯 = DS̄ = C_W J, ℋ = D²S̄ = C_W H, the tadpole ½ℋ:V4 and the source K0⊠S̄(K0), in
the pair basis (docs/gonly.md#coefficients, #k1-tadpole, #v4).

Multiplicities are folded into the stored operators (:attr:`kerneleft.pairs.PairBasis.mult`, m_s = 2 for an
off-diagonal pair s): ``T[r, s] = m_s 𝒯[r, s]``, so (𝒯X)_r is ``T @ x``; ℋ is kept on the local slots
(aa, ab, bb) of each row r = (a, b), ``H_local[r, i, j] = m_i m_j ℋ[r, s_i, s_j]``, because F_ab depends only on the
{a, b} block of K. The sigma-kernel solver uses the same operators without the factor C_W (docs/sigma.md#rnum):
``Jp = m_s J`` (:func:`jacobian_pairs`, so ``T == C_W·Jp``) and ``Hp = 4 m_s m_u H`` (:func:`hessian_pairs`).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .config import Network
from .gaussian import diag_moments, pair_moments
from .pairs import pair_basis
from .tensors import box

__all__ = ["Derivatives", "LocalCoefficients", "Coefficients", "derivatives", "local_coefficients", "coefficients",
           "transport_matrix", "jacobian_pairs", "hessian_pairs", "tadpole", "source"]

# local slots (aa, ab, bb) of a pair block: number of derivatives on z_a in ∂_e∂_f
_SLOT_A = np.array([2, 1, 0])


class Derivatives(NamedTuple):
    """F and its derivatives J = DF, H = D²F at K (..., P, P) on the local slots, multiplicities included.

    F : (..., N).   J : (..., N, 3) ``m_i J[r, s_i]``.   H : (..., N, 3, 3) ``m_i m_j H[r, s_i, s_j]``.
    """

    F: np.ndarray
    J: np.ndarray
    H: np.ndarray


class LocalCoefficients(NamedTuple):
    """S̄ (..., N), 𝒯 (..., N, 3) and ℋ (..., N, 3, 3) at K on the local slots of each row (C_W times
    :class:`Derivatives`, S̄ = C_W F + C_b)."""

    S_bar: np.ndarray
    T_local: np.ndarray
    H_local: np.ndarray


class Coefficients(NamedTuple):
    """S̄, 𝒯 and ℋ at a kernel K (..., P, P), in the pair basis (docs/gonly.md#coefficients).

    S_bar : (..., N) S̄(K).   T : (..., N, N) 𝒯 = C_W J with multiplicities, so ``(𝒯X)_r = T @ x``.
    H_local : (..., N, 3, 3) ℋ restricted to the local slots of each row, multiplicities included, so
    ``(ℋ:V4)_r = Σ_ij H_local[r, i, j] V[loc[r, i], loc[r, j]]``.
    """

    S_bar: np.ndarray
    T: np.ndarray
    H_local: np.ndarray


def derivatives(phi, K: np.ndarray) -> Derivatives:
    """F, J, H of φ at K (..., P, P) on the local slots (:class:`Derivatives`).

    Off-diagonal rows a < b need M[i, j] = E[φ^(i)(z_a) φ^(j)(z_b)] of the {a,b} block up to i + j = 4
    (J[a,b,slot] = ½M[α], H[a,b,slot,slot'] = ¼M[α + α'] with α the multi-index of the slot); diagonal rows need
    D[m] = E[(φ²)^(m)(z_a)] (J = ½D[2], H = ¼D[4]). One batched call of each primitive (docs/gonly.md#coefficients).
    """
    p = pair_basis(K.shape[-1])
    a, b, d = p.a[p.off], p.b[p.off], p.a[~p.off]
    M = pair_moments(phi, K[..., a, a], K[..., b, b], K[..., a, b], 4)                  # (..., Npairs_off, 5, 5)
    D = diag_moments(phi, K[..., d, d], 4)                                              # (..., P, 5)
    batch = K.shape[:-2]
    na = _SLOT_A[:, None] + _SLOT_A[None, :]                                            # a-count of slot pairs

    F = np.empty(batch + (p.N,))
    F[..., p.off], F[..., ~p.off] = M[..., 0, 0], D[..., 0]
    J = np.zeros(batch + (p.N, 3))
    J[..., p.off, :], J[..., ~p.off, 0] = 0.5 * M[..., _SLOT_A, 2 - _SLOT_A], 0.5 * D[..., 2]
    H = np.zeros(batch + (p.N, 3, 3))
    H[..., p.off, :, :], H[..., ~p.off, 0, 0] = 0.25 * M[..., na, 4 - na], 0.25 * D[..., 4]
    J *= p.weight
    H *= p.weight[:, :, None] * p.weight[:, None, :]
    return Derivatives(F, J, H)


def local_coefficients(net: Network, K: np.ndarray) -> LocalCoefficients:
    """S̄(K), 𝒯 and ℋ at K (..., P, P) on the local slots (:class:`LocalCoefficients`)."""
    F, J, H = derivatives(net.phi, K)
    return LocalCoefficients(net.C_W * F + net.C_b, net.C_W * J, net.C_W * H)


def transport_matrix(T_local: np.ndarray) -> np.ndarray:
    """Scatter the slot rows T_local (..., N, 3) into the pair-basis operator (..., N, N)."""
    N = T_local.shape[-2]
    p = pair_basis(_inputs(N))
    T = np.zeros(T_local.shape[:-1] + (N,))
    rows = np.arange(N)
    for i in range(3):  # within one slot the (row, column) pairs are distinct, so += does not collide
        T[..., rows, p.loc[:, i]] += T_local[..., i]
    return T


def _hessian_matrix(H_local: np.ndarray) -> np.ndarray:
    """Scatter the slot blocks H_local (..., N, 3, 3) into the pair-basis tensor (..., N, N, N)."""
    N = H_local.shape[-3]
    p = pair_basis(_inputs(N))
    H = np.zeros(H_local.shape[:-2] + (N, N))
    rows = np.arange(N)
    for i in range(3):
        for j in range(3):
            H[..., rows, p.loc[:, i], p.loc[:, j]] += H_local[..., i, j]
    return H


def _inputs(N: int) -> int:
    """P for N = P(P+1)/2 pairs."""
    return int(round((np.sqrt(8 * N + 1) - 1) / 2))


def coefficients(net: Network, K: np.ndarray) -> Coefficients:
    """S̄(K), 𝒯 = C_W J(K) and ℋ = C_W H(K) at K (..., P, P), in the pair basis (docs/gonly.md#coefficients)."""
    S_bar, T_local, H_local = local_coefficients(net, K)
    return Coefficients(S_bar, transport_matrix(T_local), H_local)


def jacobian_pairs(d: Derivatives) -> np.ndarray:
    """Jp = m_s J (..., N, N), the sigma solver's form of J: 𝒯 = C_W·Jp (docs/sigma.md#rnum)."""
    return transport_matrix(d.J)


def hessian_pairs(d: Derivatives) -> np.ndarray:
    """Hp = 4 m_s m_u H (..., N, N, N), the sigma solver's form of H: Tad = N2 + Hp:Ybar (docs/sigma.md#rnum)."""
    return 4.0 * _hessian_matrix(d.H)


def tadpole(c: Coefficients | LocalCoefficients, V: np.ndarray) -> np.ndarray:
    """½ℋ:V4 in the pair basis (docs/gonly.md#k1-tadpole): V (..., N, N) -> (..., N)."""
    loc = pair_basis(_inputs(V.shape[-1])).loc
    Vloc = V[..., loc[:, :, None], loc[:, None, :]]                                     # (..., N, 3, 3)
    return 0.5 * np.einsum("...pij,...pij->...p", c.H_local, Vloc)


def source(K0: np.ndarray, S_bar: np.ndarray) -> np.ndarray:
    """K0⊠S̄(K0) in the pair basis (docs/gonly.md#v4); K0 (..., P, P), S_bar (..., N) -> (..., N, N)."""
    p = pair_basis(K0.shape[-1])
    return p.vec4(box(K0, p.mat(S_bar)))
