"""Hermite/Galerkin representation of the response functionals R^{ab} (:mod:`.sigma`), docs/sigma.md#representations.

``R^{num,ab}_t(g) = Σ_β ω[ab, β] E_{μ_t}[∂^β g]`` over a set A of multi-indices β ∈ ℕ^P (total degree 1..D,
or only degree 2 for the G-only "quadratic" sector). The heat flow transports E_{μ_t}[∂^β g] into itself, so only
the source moves ω:  dω/dt = 𝒯 ω + ½ C_W Π C,  with Π[r, α] = E_μ[∂^α p_r] and the Gaussian covariance in
multi-index form  Cov_μ(u, g) = Σ_{|α|=|β|≥1} E[∂^α u] C_αβ E[∂^β g],  C_αβ = [x^α] (Kx)^β / β!.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from ..gaussian import diag_moments, pair_moments
from ..pairs import pair_basis
from .. import limits
from ._sigma_march import layer_node, march

__all__ = ["multi_indices", "covariance_blocks", "derivative_table", "hermite_pairings"]


def multi_indices(P: int, degree: int) -> np.ndarray:
    """All α ∈ ℕ^P with |α| = degree, shape (n_k, P), in a fixed order."""
    combos = itertools.combinations_with_replacement(range(P), degree)
    return np.array([np.bincount(c, minlength=P) for c in combos], dtype=int).reshape(-1, P)


def covariance_blocks(K: np.ndarray, D: int) -> list[np.ndarray]:
    """C_k[..., α, β] = [x^α] Π_j (Σ_i K_ji x_i)^{β_j} / β! for |α| = |β| = k, k = 0..D; K (..., P, P).

    Built degree by degree: (Kx)^β = (K_j·x)(Kx)^{β−e_j} with j the first index where β_j > 0.
    """
    P = K.shape[-1]
    idx = [multi_indices(P, k) for k in range(D + 1)]
    lookup = [{tuple(al): i for i, al in enumerate(ix)} for ix in idx]
    M = [np.ones(K.shape[:-2] + (1, 1))]
    for k in range(1, D + 1):
        beta = idx[k]
        j = np.argmax(beta > 0, axis=1)
        bprev = np.array([lookup[k - 1][tuple(be - np.eye(P, dtype=int)[jj])] for be, jj in zip(beta, j)])
        Mk = np.zeros(K.shape[:-2] + (beta.shape[0],) * 2)
        for i in range(P):
            rows = np.array([lookup[k - 1].get(tuple(al - np.eye(P, dtype=int)[i]), -1) for al in beta])
            ok = rows >= 0
            Mk[..., ok, :] += K[..., j, i][..., None, :] * M[-1][..., rows[ok][:, None], bprev[None, :]]
        M.append(Mk)
    fact = [np.array([math.prod(math.factorial(x) for x in be) for be in ix], dtype=float) for ix in idx]
    return [Mk / f for Mk, f in zip(M, fact)]


def derivative_table(act, K: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Π[..., r, i] = E_{z~N(0,K)}[∂^{α_i}(φ(z_a) φ(z_b))] for pairs r = (a <= b); K (..., P, P), alphas (n, P)."""
    P = K.shape[-1]
    pb = pair_basis(P)
    a, b, off = pb.a, pb.b, pb.off
    order = int(alphas.sum(axis=1).max())
    kd = np.diagonal(K, axis1=-2, axis2=-1)
    Dm = diag_moments(act, kd, order)                                            # (..., P, o+1)
    Mm = pair_moments(act, kd[..., a[off]], kd[..., b[off]], K[..., a[off], b[off]], order)  # (..., n_off, o+1, o+1)
    out = np.zeros(K.shape[:-2] + (a.size, alphas.shape[0]))
    mask = np.ones(P, dtype=bool)
    off_pos = np.cumsum(off) - 1
    for r in range(a.size):
        mask[:] = True
        mask[[a[r], b[r]]] = False
        ok = ~np.any(alphas[:, mask] > 0, axis=1)
        if a[r] == b[r]:
            out[..., r, ok] = Dm[..., a[r], alphas[ok, a[r]]]
        else:
            out[..., r, ok] = Mm[..., off_pos[r], alphas[ok, a[r]], alphas[ok, b[r]]]
    return out


def _table(act, K: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """:func:`derivative_table` over the nodes K (T, P, P) in chunks, with progress/refusal (option ``degree``)."""
    T = K.shape[0]
    step = max(1, T // 16)
    out = np.empty((T, K.shape[-1] * (K.shape[-1] + 1) // 2, alphas.shape[0]))
    order = int(alphas.sum(axis=1).max())
    with limits.Budget("degree", T, f"Hermite moments of order {order} at {T} nodes") as budget:
        for i in range(0, T, step):
            out[i:i + step] = derivative_table(act, K[i:i + step], alphas)
            budget.step(min(i + step, T))
    return out


def hermite_pairings(act, C_W: float, tg, truncations: list[list[int]]):
    """March ω over the time grid ``tg`` (a :class:`.sigma.TimeGrid`) for each truncation set of degrees.

    Returns, per truncation, the same tuple as :func:`._sigma_grid.plane_pairings` for all targets: Npp_st
    (M, S, N, N), N2_st (M, S, N), Npp (L+1, N, N), Cpp (L+1, N, N) (Cov_μ truncated to the same degrees), None
    (no stage covariances: the Hermite form serves the default branch only); an empty truncation gives zeros (R^num = 0). The moment tables of the largest set are computed once and sliced.
    """
    K = tg.K
    P = K.shape[-1]
    pb = pair_basis(P)
    a, b, mult = pb.a, pb.b, pb.mult
    N, T, D = pb.N, K.shape[0], max(max(d, default=0) for d in truncations)
    A = np.concatenate([multi_indices(P, k) for k in range(1, D + 1)]) if D else np.zeros((0, P), dtype=int)
    nA = A.shape[0]
    limits.check_bytes("degree", 8.0 * T * (nA * nA + 2 * N * N * nA + 2 * N * nA),
                       f"the Hermite truncation at degree {D} (P = {P}, {nA} multi-indices, {T} time nodes)")
    blocks = covariance_blocks(K, D)
    shifted = np.stack([A + np.bincount([a[p], b[p]], minlength=P) for p in range(N)])      # (N, nA, P)
    table = _table(act, K, np.concatenate([A, shifted.reshape(-1, P)])) if nA else np.zeros((T, N, 0))
    Pi_all = table[..., :nA]                                                         # (T, N, nA)
    Pi2_all = table[..., nA:].reshape(K.shape[:-2] + (N, N, nA))                     # (T, r, p, nA)
    deg = A.sum(axis=1)
    steps = tg.steps
    out = []
    for degrees in truncations:
        keep = np.isin(deg, degrees)
        Pi, Pi2 = Pi_all[..., keep], Pi2_all[..., keep]
        C = np.zeros(K.shape[:-2] + (int(keep.sum()),) * 2)
        start = 0
        for k in sorted(degrees):
            nk = blocks[k].shape[-1]
            C[..., start:start + nk, start:start + nk] = blocks[k]
            start += nk
        S = 0.5 * C_W * Pi @ C                                                       # (T, N, nA)

        def f(_n, _s, i, w, Pi=Pi, Pi2=Pi2, S=S):
            return C_W * tg.Jp[i] @ w + S[i], (w @ Pi[i].T, np.einsum("p,pb,rpb->r", mult, w, Pi2[i]))

        def at_layer(l, w, Pi=Pi, C=C):
            i = layer_node(tg.scheme, tg.stride, l)
            return w @ Pi[i].T, Pi[i] @ C[i] @ Pi[i].T

        (Npp_st, N2_st), (Npp, Cpp) = march(f, None, np.zeros((N, Pi.shape[-1])), steps, tg.h, tg.stride,
                                            tg.scheme, at_layer)
        out.append((Npp_st, N2_st, Npp, Cpp, None))
    return out
