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

from .branch import Norm, Phi, Segment, is_default, kernel_map, segments
from .config import Network
from .errors import InputError
from .gaussian import diag_moments, pair_covariance, pair_moments
from .pairs import pair_basis
from .tensors import box, circ

__all__ = ["Derivatives", "LocalCoefficients", "Coefficients", "derivatives", "local_coefficients", "coefficients",
           "transport_matrix", "jacobian_pairs", "hessian_pairs", "tadpole", "source", "Jet", "segment_maps", "corr_jet",
           "phi_jet", "compose", "segment_jet", "segment_noise", "BranchStage", "branch_stages", "branch_jet", "propagate",
           "first_segment", "FirstSegment", "branch_coefficients", "gaussian_input_noise",
           "theory_supported", "kernel_jacobian_fd"]

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
    ``(ℋ:V4)_r = Σ_ij H_local[r, i, j] V[loc[r, i], loc[r, j]]`` (default branch; None otherwise).
    For other branches (docs/architectures.md#gonly-branches): ``H`` (..., N, N, N) the full ℋ (inner dense
    layers mix pairs), ``bias`` (..., N) and ``noise`` (..., N, N): n(E[S | G] − S̄(G)) and n Cov[S | G] from the
    inner layers' finite width (None: zero).
    """

    S_bar: np.ndarray
    T: np.ndarray
    H_local: np.ndarray | None
    H: np.ndarray | None = None
    bias: np.ndarray | None = None
    noise: np.ndarray | None = None


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
    """S̄(K), 𝒯 = C_W J(K) and ℋ = C_W H(K) at K (..., P, P), in the pair basis (docs/gonly.md#coefficients); for
    other branches the jets of the branch's kernel map and its inner-layer noise (docs/architectures.md#gonly-branches)."""
    if not is_default(net.branch):
        return branch_coefficients(net, K)
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
    if c.H_local is None:
        return 0.5 * np.einsum("...rst,...st->...r", c.H, V)
    loc = pair_basis(_inputs(V.shape[-1])).loc
    Vloc = V[..., loc[:, :, None], loc[:, None, :]]                                     # (..., N, 3, 3)
    return 0.5 * np.einsum("...pij,...pij->...p", c.H_local, Vloc)


def source(K0: np.ndarray, S_bar: np.ndarray) -> np.ndarray:
    """K0⊠S̄(K0) in the pair basis (docs/gonly.md#v4); K0 (..., P, P), S_bar (..., N) -> (..., N, N)."""
    p = pair_basis(K0.shape[-1])
    return p.vec4(box(K0, p.mat(S_bar)))


# ------------------------------------------------------------------------------ branches (jets of the kernel map)
# Jets of a branch's kernel map and its finite-width pieces, in the pair basis (docs/architectures.md#kernel-maps,
# #gonly-branches, #sigma-branches).
#
# A map x -> y between pair vectors (:mod:`kerneleft.pairs`, symmetric matrices as their upper triangles) is kept as
# its :class:`Jet` ``(y, D, D2)``: y(x + δ) = y + Dδ + ½ D2[δ, δ] + O(δ³), derivatives taken with respect to the
# N independent entries x_s (so ``D = T`` of :mod:`kerneleft.coefficients`: multiplicities folded in).
#
# The theories support a branch whose segments (the layers between dense layers, :func:`kerneleft.branch.segments`)
# are compositions of two elementary maps (docs/architectures.md#kernel-maps):
#
# - ``"phi"``: X = ⟨φφᵀ⟩ of the neurons, X̄ = F(K);
# - ``"corr"``: a norm (rms, or layernorm of a mean-zero field), X = corr(Ĝ) = Ĝ_ab/√(Ĝ_aa Ĝ_bb), X̄ = corr(K).
#
# Supported segment forms: [] (identity), [norms] (corr), [phi], [phi, rms...] (corr∘F). A norm before φ
# in the same segment, or layernorm after φ, is supported by K0 and the samplers but not by the theories
# (:func:`segment_maps` raises InputError naming the layer).
#
# Finite width (docs/architectures.md#sigma-branches): a segment applied to m iid N(0, K) neurons has
# E[X] = X̄ + b/m and Cov[X] = C/m + O(m⁻²), :func:`segment_noise` returns (b, C).


class Jet(NamedTuple):
    """y (..., N), D (..., N, N), D2 (..., N, N, N): y(x + δ) = y + Dδ + ½D2[δ, δ]."""

    y: np.ndarray
    D: np.ndarray
    D2: np.ndarray


def segment_maps(seg: Segment) -> tuple[str, ...]:
    """The elementary maps of a segment in application order ("corr", "phi"); InputError naming ``branch[i]`` for a
    form the theories do not support. A run of norms is one "corr": rms and layernorm of a mean-zero field agree
    to O(1/n) (docs/architectures.md#layernorm)."""
    maps, phi_seen = [], False
    for k, layer in enumerate(seg.ops):
        i = seg.index - len(seg.ops) + k
        if isinstance(layer, Phi):
            if maps:
                raise InputError(f"branch[{i}]: the theories do not support a norm before phi in the same segment "
                                 "(put a dense layer between them); K0 and the samplers do")
            maps.append("phi")
            phi_seen = True
        elif isinstance(layer, Norm):
            if phi_seen and layer.kind == "layernorm":
                raise InputError(f"branch[{i}]: the theories do not support layernorm after phi (the neuron mean of "
                                 "φ(h) is a new collective variable); K0 and the samplers do")
            if not maps or maps[-1] == "phi":
                maps.append("corr")
    return tuple(maps)


def corr_jet(x: np.ndarray, P: int) -> Jet:
    """Jet of c_r = x_r/√(x_aa x_bb) (1 on the diagonal) at pair vectors x (..., N)."""
    p = pair_basis(P)
    N = p.N
    da, db = x[..., p.index[p.a, p.a]], x[..., p.index[p.b, p.b]]
    if np.any(~(da > 0)) or np.any(~(db > 0)):
        raise InputError("branch: a norm layer's input has zero variance at infinite width")
    g = 1.0 / np.sqrt(da * db)
    c = x * g
    shape = x.shape[:-1]
    D = np.zeros(shape + (N, N))
    D2 = np.zeros(shape + (N, N, N))
    r = np.flatnonzero(p.off)
    ia, ib = p.index[p.a[r], p.a[r]], p.index[p.b[r], p.b[r]]
    c_r, g_r, xa, xb = c[..., r], g[..., r], da[..., r], db[..., r]
    D[..., r, r] = g_r
    D[..., r, ia] = -0.5 * c_r / xa
    D[..., r, ib] = -0.5 * c_r / xb
    D2[..., r, r, ia] = D2[..., r, ia, r] = -0.5 * g_r / xa
    D2[..., r, r, ib] = D2[..., r, ib, r] = -0.5 * g_r / xb
    D2[..., r, ia, ia] = 0.75 * c_r / xa ** 2
    D2[..., r, ib, ib] = 0.75 * c_r / xb ** 2
    D2[..., r, ia, ib] = D2[..., r, ib, ia] = 0.25 * c_r / (xa * xb)
    y = c.copy()
    y[..., ~p.off] = 1.0
    return Jet(y, D, D2)


def phi_jet(act, x: np.ndarray, P: int) -> Jet:
    """Jet of K -> F(K) at pair vectors x (..., N) (docs/gonly.md#coefficients)."""
    p = pair_basis(P)
    d = derivatives(act, p.mat(x))
    return Jet(d.F, transport_matrix(d.J), _hessian_matrix(d.H))


def compose(outer: Jet, inner: Jet) -> Jet:
    """Jet of outer∘inner (outer taken at inner.y)."""
    D = outer.D @ inner.D
    D2 = np.einsum("...rst,...su,...tv->...ruv", outer.D2, inner.D, inner.D) \
        + np.einsum("...rs,...suv->...ruv", outer.D, inner.D2)
    return Jet(outer.y, D, D2)


def _identity(x: np.ndarray) -> Jet:
    N = x.shape[-1]
    return Jet(x.copy(), np.broadcast_to(np.eye(N), x.shape + (N,)).copy(), np.zeros(x.shape + (N, N)))


def segment_jet(maps: tuple[str, ...], act, x: np.ndarray, P: int) -> Jet:
    """Jet of the segment's infinite-width map X̄ at its input kernel x (..., N)."""
    jet = _identity(x)
    for m in maps:
        step = phi_jet(act, jet.y, P) if m == "phi" else corr_jet(jet.y, P)
        jet = compose(step, jet)
    return jet


def segment_noise(maps: tuple[str, ...], act, x: np.ndarray, P: int) -> tuple[np.ndarray, np.ndarray]:
    """(b (..., N), C (..., N, N)): the segment on m iid N(0, K) neurons has m(E X − X̄) → b, m Cov[X] → C.

    The segment's first map sees the empirical measure of the neurons: Ĝ (Wishart, m Cov = K∘K) for "corr"/none,
    ⟨φφᵀ⟩ for "phi" (m Cov = Cov_K(p, p), :func:`kerneleft.gaussian.pair_covariance`, no bias). A layernorm's
    neuron mean changes Ĝ by −μμᵀ with m E[μμᵀ] = K, and Dcorr·K = 0 (corr is homogeneous of degree 0): no term at
    this order (docs/architectures.md#layernorm). Later maps act on the fluctuation by the delta method.
    """
    p = pair_basis(P)
    if not maps:
        return np.zeros_like(x), p.vec4(circ(p.mat(x)))
    first, rest = maps[0], maps[1:]
    if first == "phi":
        y = phi_jet(act, x, P).y
        b, C = np.zeros_like(x), pair_covariance(act, p.mat(x))
    else:
        jet = corr_jet(x, P)
        y, W = jet.y, p.vec4(circ(p.mat(x)))
        C = jet.D @ W @ np.swapaxes(jet.D, -1, -2)
        b = 0.5 * np.einsum("...rst,...st->...r", jet.D2, W)
    if rest:
        jet = segment_jet(rest, act, y, P)
        b = np.einsum("...rs,...s->...r", jet.D, b) + 0.5 * np.einsum("...rst,...st->...r", jet.D2, C)
        C = jet.D @ C @ np.swapaxes(jet.D, -1, -2)
    return b, C


class BranchStage(NamedTuple):
    """One segment after the first, at the infinite-width kernels (docs/architectures.md#sigma-branches):
    ``C_W`` of the dense layer before it, ``ratio`` that layer's width ratio m/n, the segment's jet at
    S̄_prev = C_W X̄_prev + C_b and its noise (b, C) for m iid neurons."""

    C_W: float
    ratio: float
    jet: Jet
    b: np.ndarray
    C: np.ndarray


class FirstSegment(NamedTuple):
    """The first segment (on the residual stream or, for an MLP, on the block's iid Gaussian input): its elementary
    ``maps`` and its jet at K."""

    maps: tuple
    jet: Jet


def first_segment(net, x: np.ndarray) -> FirstSegment:
    seg = segments(net.branch)[0]
    maps = segment_maps(seg)
    return FirstSegment(maps, segment_jet(maps, net.phi, x, net.P))


def branch_stages(net, X1: np.ndarray, noise: bool = True) -> list[BranchStage]:
    """The segments after the first, evaluated along the infinite-width chain starting from X̄_1 = ``X1``
    (..., N); ``noise=False`` skips their (b, C)."""
    segs = segments(net.branch)
    P = net.P
    out, X = [], X1
    for prev, seg in zip(segs[:-1], segs[1:]):
        maps = segment_maps(seg)
        S = prev.dense.C_W * X + prev.dense.C_b
        jet = segment_jet(maps, net.phi, S, P)
        b, C = segment_noise(maps, net.phi, S, P) if noise else (None, None)
        out.append(BranchStage(prev.dense.C_W, prev.dense.width_ratio, jet, b, C))
        X = jet.y
    return out


def gaussian_input_noise(net, first: FirstSegment, stages: list[BranchStage], x: np.ndarray) -> tuple:
    """(b, C) of the last dense layer's input Σ when the branch reads n iid N(0, K) neurons (x = K in the pair
    basis, (..., N)): its first segment's own noise (:func:`segment_noise`, m = n) propagated through the later
    segments with theirs (:func:`propagate`). The case of an MLP's block and of a resnet's first layer
    (docs/architectures.md#mlp, #sigma-branches)."""
    return propagate(stages, *segment_noise(first.maps, net.phi, x, net.P))


def branch_jet(first: Jet, stages: list[BranchStage]) -> Jet:
    """Jet of K -> Σ̄(K) (the last dense layer's input kernel) through all segments."""
    jet = first
    for st in stages:
        lin = Jet(st.C_W * jet.y, st.C_W * jet.D, st.C_W * jet.D2)
        jet = compose(st.jet, lin)
    return jet


def propagate(stages: list[BranchStage], b1: np.ndarray, C1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """n-scaled mean shift and covariance of Σ (the last dense input) from those of X_1 (docs/architectures.md
    #sigma-branches): through each later segment b <- D(C_W b) + ½D2:(C_W² C) + b_noise/ratio,
    C <- D (C_W² C) Dᵀ + C_noise/ratio. b1 (..., N) excludes the first-order response to the one-neuron law."""
    b, C = b1, C1
    for st in stages:
        D, D2 = st.jet.D, st.jet.D2
        CS = st.C_W ** 2 * C
        b = np.einsum("...rs,...s->...r", D, st.C_W * b) + 0.5 * np.einsum("...rst,...st->...r", D2, CS) \
            + st.b / st.ratio
        C = D @ CS @ np.swapaxes(D, -1, -2) + st.C / st.ratio
    return b, C


def branch_coefficients(net: Network, K: np.ndarray) -> Coefficients:
    """S̄ = C_W Σ̄ + C_b, 𝒯 = DS̄, full ℋ = D²S̄ and the inner layers' bias and noise of S given G, at K (..., P, P)
    (docs/architectures.md#gonly-branches)."""
    p = pair_basis(net.P)
    first = first_segment(net, p.vec(np.asarray(K, dtype=float)))
    stages = branch_stages(net, first.jet.y)
    jet = branch_jet(first.jet, stages)
    b, C = propagate(stages, np.zeros_like(jet.y), np.zeros_like(jet.D))
    C_W = net.C_W
    return Coefficients(C_W * jet.y + net.C_b, C_W * jet.D, None, C_W * jet.D2, C_W * b, C_W ** 2 * C)


def theory_supported(branch: tuple) -> bool:
    """True if every segment of ``branch`` has a form the theories support (:func:`segment_maps`)."""
    try:
        for seg in segments(branch):
            segment_maps(seg)
    except InputError:
        return False
    return True


def kernel_jacobian_fd(net: Network, K: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """D S̄ at K (..., P, P) by central differences of the branch's kernel map (relative step h per entry), in the
    pair basis (..., N, N); for branches outside :func:`theory_supported` (docs/architectures.md#kernel-maps)."""
    p = pair_basis(net.P)
    x = p.vec(np.asarray(K, dtype=float))
    step = h * np.maximum(np.abs(x), np.max(np.abs(x), axis=-1, keepdims=True))
    cols = []
    for s in range(p.N):
        e = np.zeros(p.N)
        e[s] = 1.0
        up = kernel_map(net.branch, net.phi, p.mat(x + step[..., s, None] * e))
        down = kernel_map(net.branch, net.phi, p.mat(x - step[..., s, None] * e))
        cols.append(p.vec(up - down) / (2 * step[..., s, None]))
    return np.stack(cols, axis=-1)
