"""Exact finite-width path samplers (docs/model.md#network, docs/exact.md#conditional-gaussianity).

A path sampler ``f(net, width, size, rng) -> (G, Sigma)`` draws ``size`` independent networks and returns
the empirical kernels ``G[s, l] = hᵀh/n`` and ``Sigma[s, l] = φ(h)ᵀφ(h)/n`` at every layer l = 0..L, both of
shape (size, L+1, P, P).

- :func:`weights_paths`: the network (docs/model.md#network) with explicit W^l (n x n) and b^l — the reference,
  O(n² P) per block.
- :func:`conditional_paths`: the neuron-level sampler (docs/exact.md#conditional-gaussianity)
  ``h^{l+1} = h^l + √ε Z Aᵀ``, ``AAᵀ = S^l``, O(n P²) per block; the same law as :func:`weights_paths`.
- :func:`block_law_step`: the block law (docs/exact.md#block-law), one step of ``G`` given ``(G^l, S^l)``
  at O(P³) cost for any n.
- :func:`gonly_chain`: the G-only collective chain, the block law driven by the closure S^l -> S̄(G^l)
  (docs/gonly.md#coefficients) — a sampler of the G-only theory, not of the network.

Internal layout: pre-activations of a chunk are one array ``h[s, a, i]`` (sample s, input a, neuron i) so that
every per-layer operation is a single vectorised call over samples and neurons.
"""
from __future__ import annotations

import numpy as np

from .config import Network
from .gaussian import F
from .result import MAX_KERNEL, overflow_error
from .validate import check_int, check_positive
from .errors import InputError

__all__ = ["psd_factor", "conditional_paths", "weights_paths", "block_law_step", "gonly_chain", "check_layer",
           "wishart_identity"]



def psd_factor(S: np.ndarray) -> np.ndarray:
    """A with A Aᵀ = S for symmetric PSD S (..., P, P): batched Cholesky, eigh fallback if any S is singular."""
    try:
        return np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        lam, U = np.linalg.eigh(S)
        return U * np.sqrt(np.clip(lam, 0.0, None))[..., None, :]


def check_layer(net: Network, l: int, G_l: np.ndarray, *more: np.ndarray) -> None:
    """InputError naming T (docs/numerics.md#overflow) if layer l's sampled G (or another array of that layer) is
    not finite, or G is beyond 1e150, where the second moments that make V4 = n Cov[G] overflow float64."""
    if not (all(np.isfinite(a).all() for a in (G_l, *more)) and np.abs(G_l).max() <= MAX_KERNEL):
        raise overflow_error(net.t[l], "the network's kernel G")


def _phi_into(act, x: np.ndarray, out: np.ndarray) -> None:
    """out[...] = φ(x), written in place when φ is a numpy ufunc."""
    if isinstance(act.phi, np.ufunc):
        act.phi(x, out=out)
    else:
        out[...] = act.phi(x)


def _record(buf: np.ndarray, P: int, n: int, G_l: np.ndarray, Sigma_l: np.ndarray) -> None:
    """From buf (size, 2P, n) = [h; φ(h)] store G_l = hhᵀ/n and Sigma_l = φφᵀ/n, (size, P, P), in one matmul."""
    gram = np.matmul(buf, buf.transpose(0, 2, 1))
    gram *= 1.0 / n
    G_l[...] = gram[:, :P, :P]
    Sigma_l[...] = gram[:, P:, P:]


def _paths(net: Network, width: int, size: int, rng: np.random.Generator, increment) -> tuple:
    """Shared layer loop: h^0 rows iid N(0, K_in) (docs/model.md#network); ``increment(h, phi, Sigma_l)`` adds
    √ε Δ to h in place.

    InputError naming T at the first layer whose G leaves float64 (docs/numerics.md#overflow), no RuntimeWarnings.
    """
    n, P, L = width, net.P, net.depth
    G = np.empty((size, L + 1, P, P))
    Sigma = np.empty((size, L + 1, P, P))
    buf = np.empty((size, 2 * P, n))
    h, phi = buf[:, :P], buf[:, P:]
    h[...] = np.matmul(psd_factor(net.K_in), rng.standard_normal((size, P, n)))
    with np.errstate(over="ignore", invalid="ignore"):
        for l in range(L + 1):
            _phi_into(net.phi, h, phi)
            _record(buf, P, n, G[:, l], Sigma[:, l])
            check_layer(net, l, G[:, l], Sigma[:, l])
            if l < L:
                increment(h, phi, Sigma[:, l])
    return G, Sigma


def conditional_paths(net: Network, width: int, size: int, rng: np.random.Generator):
    """Exact sampler (docs/exact.md#conditional-gaussianity): ``h^{l+1} = h^l + √ε Z Aᵀ`` with
    ``AAᵀ = S^l = C_W Σ^l + C_b 11ᵀ``; returns (G, Sigma), each (size, L+1, P, P). Cost O(size·n·P²) per block (the normals dominate)."""
    P, n = net.P, width
    Z = np.empty((size, P, n))
    dh = np.empty((size, P, n))

    def increment(h, _phi, Sigma_l):
        A = psd_factor(net.eps * (net.C_W * Sigma_l + net.C_b))   # (size, P, P), A Aᵀ = ε S^l
        rng.standard_normal(out=Z)
        np.matmul(A, Z, out=dh)                                    # dh[s, a, i] = Σ_c A[s,a,c] Z[s,c,i]
        h += dh

    return _paths(net, width, size, rng, increment)


def weights_paths(net: Network, width: int, size: int, rng: np.random.Generator):
    """Reference (docs/model.md#network): ``h^{l+1}_i = h^l_i + √ε (Σ_j W_ij φ(h^l_j) + b_i)`` with explicit
    ``W ~ N(0, C_W/n)`` (n x n) and ``b ~ N(0, C_b)``; returns (G, Sigma), each (size, L+1, P, P). Cost O(size·n²·P) per block."""
    n = width
    W = np.empty((size, n, n))
    w_scale, b_scale, s = np.sqrt(net.C_W / n), np.sqrt(net.C_b), np.sqrt(net.eps)

    def increment(h, phi, _Sigma_l):
        rng.standard_normal(out=W)
        b = rng.standard_normal((size, 1, n))
        Delta = np.matmul(phi, W.transpose(0, 2, 1))               # Delta[s, a, i] = Σ_j W[s,i,j] φ[s,a,j]
        Delta *= w_scale
        Delta += b_scale * b
        h += s * Delta

    return _paths(net, width, size, rng, increment)


def wishart_identity(rng: np.random.Generator, dof: int, shape: tuple, P: int) -> np.ndarray:
    """Draws of Wishart_P(dof, I), shape + (P, P): Bartlett factor if dof >= P (O(P²), any dof), else YᵀY with
    Y (dof x P) standard normal (O(dof·P²) < O(P³))."""
    if dof >= P:
        B = np.tril(rng.standard_normal(shape + (P, P)), -1)
        diag = np.sqrt(rng.chisquare(dof - np.arange(P), size=shape + (P,)))
        B[..., np.arange(P), np.arange(P)] = diag
        return np.matmul(B, B.swapaxes(-1, -2))
    Y = rng.standard_normal(shape + (dof, P))
    return np.matmul(Y.swapaxes(-1, -2), Y)


def _gram_factor(G: np.ndarray, width: int) -> np.ndarray:
    """V (..., n, P) with VᵀV = G for G of rank <= n < P (top-n eigenpairs); ValueError if rank(G) > n."""
    lam, U = np.linalg.eigh(G)
    P = G.shape[-1]
    lam = np.clip(lam, 0.0, None)
    if np.any(lam[..., : P - width] > 1e-10 * np.max(lam, axis=-1, keepdims=True)):
        raise InputError(f"G: rank must be <= width = {width} when width < P (G is a Gram of n vectors)")
    top_lam, top_U = lam[..., P - width:], U[..., P - width:]
    return np.sqrt(top_lam)[..., :, None] * top_U.swapaxes(-1, -2)


def block_law_step(rng: np.random.Generator, G: np.ndarray, S: np.ndarray, width: int, eps: float) -> np.ndarray:
    """One exact block-law step ``G^{l+1} = G + √ε (X + Xᵀ) + ε Q`` given ``(G^l, S^l)``; G, S (..., P, P).
    docs/exact.md#block-law.

    width >= P: ``X = Rᵀ E1 Aᵀ/√n``, ``Q = A (E1ᵀE1 + W̃) Aᵀ/n`` with ``RᵀR = G``, ``AAᵀ = S``, E1 (P x P) standard
    normal and ``W̃ ~ Wishart_P(n−P, I)`` — cost O(P³), independent of n.
    width < P: G has rank <= n, so ``h = √n V`` with ``VᵀV = G`` (V n x P) is drawn against a direct n x P normal
    ``Z``: ``X = Vᵀ Z Aᵀ/√n``, ``Q = A ZᵀZ Aᵀ/n`` — also exact.
    """
    check_int("width", width, 1)
    check_positive("eps", eps)
    G, S = np.asarray(G, dtype=float), np.asarray(S, dtype=float)
    if G.shape != S.shape or G.ndim < 2 or G.shape[-1] != G.shape[-2]:
        raise InputError(f"G: shape {G.shape} must equal S shape {S.shape} and end in (P, P)")
    P, shape, n = G.shape[-1], G.shape[:-2], int(width)
    A = psd_factor(S)
    At = A.swapaxes(-1, -2)
    if n >= P:
        Rt = psd_factor(G)
        E1 = rng.standard_normal(shape + (P, P))
        X = Rt @ E1 @ At / np.sqrt(n)
        inner = np.matmul(E1.swapaxes(-1, -2), E1) + wishart_identity(rng, n - P, shape, P)
    else:
        Z = rng.standard_normal(shape + (n, P))
        X = _gram_factor(G, n).swapaxes(-1, -2) @ Z @ At / np.sqrt(n)
        inner = np.matmul(Z.swapaxes(-1, -2), Z)
    Q = A @ inner @ At / n
    return G + np.sqrt(eps) * (X + X.swapaxes(-1, -2)) + eps * Q


def gonly_chain(net: Network, width: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The G-only collective chain (docs/gonly.md), a path sampler: returns G, Sigma, each (size, L+1, P, P).

    G^0 ~ Wishart_P(n, K_in)/n (I3, docs/exact.md#identities), drawn as one block-law step of length 1 from h = 0
    with S = K_in;
    then G^{l+1} = block-law step from (G^l, S̄(G^l)) and Sigma^l := F(G^l). Exact Markov chain of the closure at
    width n, cost independent of n. InputError naming T if the chain overflows float64.
    """
    P, L = net.P, net.depth
    G = np.empty((size, L + 1, P, P))
    Sigma = np.empty_like(G)
    G[:, 0] = block_law_step(rng, np.zeros((size, P, P)), np.broadcast_to(net.K_in, (size, P, P)), width, 1.0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for l in range(L + 1):
            check_layer(net, l, G[:, l])
            Sigma[:, l] = F(net.phi, G[:, l])
            if l < L:
                G[:, l + 1] = block_law_step(rng, G[:, l], net.C_W * Sigma[:, l] + net.C_b, width, net.eps)
    return G, Sigma
