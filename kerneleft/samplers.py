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

from .branch import Dense, is_default, kernel_map, psd_factor, segments
from .config import Network
from .gaussian import F
from .result import MAX_KERNEL, overflow_error
from .validate import check_int, check_positive
from .errors import InputError

__all__ = ["psd_factor", "conditional_paths", "weights_paths", "block_law_step", "gonly_chain", "check_layer",
           "wishart_identity"]



def check_layer(net: Network, l: int, G_l: np.ndarray, *more: np.ndarray) -> None:
    """InputError naming T (docs/numerics.md#overflow) if layer l's sampled G (or another array of that layer) is
    not finite, or G is beyond 1e150, where the second moments that make V4 = n Cov[G] overflow float64."""
    if not (all(np.isfinite(a).all() for a in (G_l, *more)) and np.abs(G_l).max() <= MAX_KERNEL):
        raise overflow_error(net.t[l], "the network's kernel G")


def _run_branch(net: Network, h: np.ndarray, rng: np.random.Generator, method: str) -> np.ndarray:
    """The branch up to the input x (size, P, m) of its last dense layer, inner dense layers drawn by ``method``
    (docs/architectures.md#samplers)."""
    x = h
    for layer in net.branch[:-1]:
        x = layer.sample(x, act=net.phi, width=h.shape[-1], rng=rng, method=method)
    return x


def _gram(x: np.ndarray) -> np.ndarray:
    g = np.matmul(x, x.transpose(0, 2, 1))
    g *= 1.0 / x.shape[-1]
    return g


def _paths(net: Network, width: int, size: int, rng: np.random.Generator, method: str) -> tuple:
    """Shared layer loop (docs/model.md#network, docs/architectures.md#samplers): h^0 rows iid N(0, K_in); at each
    layer G = hhᵀ/n and Σ = xxᵀ/m of the last dense layer's input x; then h += √ε dense(x) (resnet) or
    h = dense(x) (MLP), the last dense layer drawn by ``method``.

    For the default branch (phi, dense) G and Σ come from one Gram of [h; φ(h)]. InputError naming T at the first
    layer whose G leaves float64 (docs/numerics.md#overflow), no RuntimeWarnings.
    """
    n, P, L = width, net.P, net.depth
    G = np.empty((size, L + 1, P, P))
    Sigma = np.empty((size, L + 1, P, P))
    last = net.branch[-1]
    h = np.matmul(psd_factor(net.K_in), rng.standard_normal((size, P, n)))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for l in range(L + 1):
            x = _run_branch(net, h, rng, method)
            if x.shape[-1] == n:
                gram = _gram(np.concatenate([h, x], axis=1))
                G[:, l], Sigma[:, l] = gram[:, :P, :P], gram[:, P:, P:]
            else:
                G[:, l], Sigma[:, l] = _gram(h), _gram(x)
            check_layer(net, l, G[:, l], Sigma[:, l])
            if l < L:
                if net.residual:
                    h += last.sample(x, width=n, rng=rng, method=method, scale=net.eps)
                else:
                    h = last.sample(x, width=n, rng=rng, method=method)
    return G, Sigma


def conditional_paths(net: Network, width: int, size: int, rng: np.random.Generator):
    """Exact sampler (docs/exact.md#conditional-gaussianity): every dense layer's output drawn given its input x as
    ``A Z`` with ``AAᵀ = C_W xxᵀ/m + C_b`` (times ε for the residual increment); returns (G, Sigma), each
    (size, L+1, P, P). Cost O(size·width·P²) per dense layer (the normals dominate)."""
    return _paths(net, width, size, rng, "conditional")


def weights_paths(net: Network, width: int, size: int, rng: np.random.Generator):
    """Reference (docs/model.md#network): every dense layer with explicit ``W ~ N(0, C_W/fan_in)`` (m_out x m_in)
    and ``b ~ N(0, C_b)``; returns (G, Sigma), each (size, L+1, P, P). Cost O(size·m_out·m_in·P) per dense layer."""
    return _paths(net, width, size, rng, "weights")


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


def _closure_sigma(net: Network, G: np.ndarray, width: int, rng: np.random.Generator) -> np.ndarray:
    """Σ given G under the G-only closure (docs/architectures.md#gonly-branches): the first segment at its
    infinite-width value X̄_1(G), the later layers drawn exactly on their round(ratio·n) neurons (conditional)."""
    if is_default(net.branch):
        return F(net.phi, G)
    segs = segments(net.branch)
    if len(segs) == 1:                                  # X̄_1 = the kernel map with the last layer C_W = 1, C_b = 0
        return kernel_map(net.branch[:-1] + (Dense(1.0),), net.phi, G)
    S1 = kernel_map(net.branch, net.phi, G, upto=1)
    first = segs[0].dense
    size, P = G.shape[0], G.shape[-1]
    x = np.matmul(psd_factor(S1), rng.standard_normal((size, P, first.width(width))))
    for layer in net.branch[segs[0].index + 1:-1]:
        x = layer.sample(x, act=net.phi, width=width, rng=rng, method="conditional")
    return _gram(x)


def gonly_chain(net: Network, width: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The G-only collective chain (docs/gonly.md), a path sampler: returns G, Sigma, each (size, L+1, P, P).

    G^0 ~ Wishart_P(n, K_in)/n (I3, docs/exact.md#identities), drawn as one block-law step of length 1 from h = 0
    with S = K_in; then G^{l+1} = block-law step from (G^l, S^l) with S^l = C_W Σ^l + C_b and Σ^l = F(G^l) (the
    closure), or for a branch Σ^l drawn by :func:`_closure_sigma`; an MLP's step is Wishart_P(n, S^l)/n
    (docs/architectures.md#mlp). Exact Markov chain of the closure at width n, cost independent of n for the
    default branch. InputError naming T if the chain overflows float64.
    """
    P, L = net.P, net.depth
    G = np.empty((size, L + 1, P, P))
    Sigma = np.empty_like(G)
    zero = np.zeros((size, P, P))
    G[:, 0] = block_law_step(rng, zero, np.broadcast_to(net.K_in, (size, P, P)), width, 1.0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for l in range(L + 1):
            check_layer(net, l, G[:, l])
            Sigma[:, l] = _closure_sigma(net, G[:, l], width, rng)
            if l < L:
                S = net.C_W * Sigma[:, l] + net.C_b
                G[:, l + 1] = block_law_step(rng, G[:, l], S, width, net.eps) if net.residual else \
                    block_law_step(rng, zero, S, width, 1.0)
    return G, Sigma
