"""Sigma-kernel theory: the exact leading order in 1/n of E[G], n Cov[G], n Cov[Σ], n Cov[G, Σ] (docs/sigma.md).

Derivation (docs/sigma.md#equations; ordered-pair sums, docs/model.md#tensor-conventions; μ_t = N(0, K0(t));
ℒf = ½S̄:∂²f; p_ab = φ_aφ_b; q_ab = z_a z_b; 𝒯 = C_W J, docs/gonly.md#coefficients)
1. Arrow structure (docs/sigma.md#arrow-structure). In the W-equation only f's factor E_μ[∂_ab f] carries a
   source, so from W(0) = 0
       W(f, g) = Σ_ab ( E_μ[∂_ab f] R^{ab}(g) + R^{ab}(f) E_μ[∂_ab g] ),   R(0) = 0,
       dR^{ab}(g)/dt = R^{ab}(ℒg) + ½C_W [Cov_μ(p_ab, g) + W(p_ab, g)],
       W(p_ab, g) = Σ_gh ( 2J[ab,gh] R^{gh}(g) + Y[gh,ab] E_μ[∂_gh g] ),   Y[gh,ab] := R^{gh}(p_ab).
   (In the Hermite form (docs/sigma.md#representations), Ω_αβ = 0 unless |α| = 2 or |β| = 2: P(P+1)/2
   functionals, no matrix.)
2. m is slaved to R (docs/sigma.md#slaved-m): m(f) = Σ_ab R^{ab}(∂_ab f) + ½ Σ_ab K1_ab E_μ[∂_ab f] (both sides
   solve the m-equation, as ℒ commutes with ∂_ab). With f = p and I5 (docs/exact.md#identities):
   dK1/dt = 𝒯K1 + C_W Tad,  Tad_cd = Σ_ab R^{ab}(∂_ab p_cd);
   R(0) = 0 gives K1(0) = 0 and K1'(0) = 0.
3. R = R^num + Gaussian part (docs/sigma.md#rnum), R^{ab}(g) = R^{num,ab}(g) + Σ_gh Ybar[ab,gh] E_μ[∂_gh g],
   where only the explicit source drives R^num: dR^num(g)/dt = R^num(ℒg) + 𝒯R^num(g) + ½C_W Cov_μ(p, g). The rest is finite-dimensional,
   driven by Npp = R^num(p) and N2 = Σ_ab R^num,ab(∂_ab p):
       dYbar/dt = 𝒯Ybar + ½C_W Yᵀ,   Y = Npp + 2 Ybar Jᵀ,   Tad = N2 + 4H:Ybar,
       Nq := R^num(q): dNq/dt = 𝒯Nq + ½𝒯(K0∘K0) (Stein: Cov_μ(p, q) = J(K0∘K0)),   Z := R(q) = Nq + 2 Ybar,
       V4 = K0∘K0 + W(q,q) = K0∘K0 + 2(Z + Zᵀ),      K1 = m(q),
       n Cov[Σ] = Cov_μ(p,p) + 2JY + 2(JY)ᵀ,      n Cov[G, Σ] = (J(K0∘K0))ᵀ + 2Y + 2(JZ)ᵀ.
   Four-index objects are N x N matrices over pairs r = (a <= b) (:mod:`kerneleft.pairs`); an ordered sum over the
   second slot gives the multiplicity m_s ∈ {1, 2}: Jp[r, s] = m_s J[r, s], Hp[r, p, s] = 4 m_p m_s H[r, p, s], both
   from :mod:`kerneleft.coefficients`, whose G-only transport matrix is the same operator: 𝒯 = C_W·Jp.
4. Discrete depth (docs/sigma.md#discrete-depth; exact at O(1/n) for the depth-L net): the same with
   u_l → e^{εℒ}(u_l + ε u̇_l) (ℒ exact per layer, K0 discrete) plus, from the second order of e^{εL_S} in δS = S − S̄, Ybar += ε²C_W²/8 · n Cov[Σ].
5. Checks. R^num truncated to Hermite degree 2 ("quadratic": the G-only observables) has Npp = Nq Jᵀ and gives
   exactly the G-only V4 equation (docs/gonly.md#v4; both depth models), with dK1/dt = 𝒯K1 + ½ℋ:(V4 − K0∘K0):
   G-only minus the intra-neuron Wishart tadpole. Linear φ: p = q, Tad = 0: K1 = 0, V4 = the exact linear V4 (I4).

6. Branches (docs/architectures.md#sigma-branches): Σ is the last dense layer's input; its influence function
   σ = Mix·p (first segment starts with φ) or Mix·q (norms first) replaces p: 𝒯 = C_W J_σ, the source of R^num is
   ½C_W Mix (p − F)μ, Y = R^num(p) Mixᵀ + 2 Ybar J_σᵀ, Tad = Mix (N2 + Hp:Ybar), and dK1/dt gains C_W B, the mean
   shift of Σ beyond the linear response (second order of the norms, inner layers' noise). MLPs
   (docs/architectures.md#mlp): the finite recursion :func:`mlp_recursion`.

Representations of R^num, the only infinite-dimensional part:
- ``degree="auto"``: marginal densities on coordinate planes, exact heat flow by FFT (:mod:`._sigma_grid`);
  spectral in the grid for smooth φ; any P (planes are independent sub-problems, ``pool``). Refined until V4 and
  K1 change by < tol.
- ``degree=D``: Hermite/Galerkin, total degree 1..D (:mod:`._sigma_hermite`); ``"quadratic"``: degree 2 only.
  Slow for K1: Tad pairs the degree-k components of the source with ∂²p at degree k+2, a tail ~ Σ_k c_k/k.
Time (:mod:`._sigma_march`): integrating-factor RK4 with ``substeps`` steps per layer, or the layer recursion.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..branch import is_default, segments
from ..coefficients import (Jet, branch_jet, branch_stages, derivatives, first_segment, gaussian_input_noise,
                            jacobian_pairs, phi_jet, propagate, segment_jet, segment_maps)
from ..config import Network
from ..kernel import K0_continuous, K0_discrete, check_continuous, check_depth_model
from ..pairs import pair_basis
from ..result import KernelResult, require_finite
from ..tensors import circ
from . import _sigma_grid, _sigma_hermite
from ._sigma_march import default_substeps, layer_node, march, next_level_seconds, refinement_level
from ..validate import check_int
from .. import limits
from ..errors import ConvergenceError, InputError
from ..maps import as_map, describe

__all__ = ["SigmaOptions", "solve_sigma", "TimeGrid", "time_grid", "Pairings", "grid_pairings", "hermite_pairings",
           "collective", "assemble"]

def _grid0(P: int) -> int:
    """Nodes per axis at refinement level 0: 96 on the line (P = 1), 48 on the planes, 40 for P >= 4 (where the
    C(P, 2) planes dominate the cost; 40 -> 60 reaches tol 1e-3 for tanh and gelu in two levels)."""
    return 96 if P == 1 else 48 if P <= 3 else 40
_BOX = 8.0               # plane half-width in standard deviations
_SOURCE_INTERVALS = 12   # P >= 4: source intervals in t per e-fold of the largest variance at level 0
_MAX_LEVELS = 7
DEFAULT_TOL = 1e-3
_TOL_MIN, _TOL_MAX = 1e-10, 0.5    # below 1e-10 rounding in the FFTs and the marching dominates the level changes


class Branch(NamedTuple):
    """A branch's pieces at the nodes (docs/architectures.md#sigma-branches); leading axis the nodes.

    kind : "p" (the first segment starts with φ: its influence is D_first·p) or "q" (norms or nothing: D_first·q).
    first : the first segment's post/pre map (jet at F(K0) or K0), D_first = first.D.
    Mix (nodes, N, N) : σ = Mix·p (kind p) or Mix·q (kind q), Mix = D_rest·D_first, with D_rest the Jacobian of Σ̄
    with respect to X_1.   stages : the later segments (:class:`kerneleft.coefficients.BranchStage`).
    Jsig (nodes, N, N) : J_σ = ½E[∂²σ] = DΣ̄ (with multiplicities, as Jp).
    """

    kind: str
    first: Jet
    Mix: np.ndarray
    stages: list
    Jsig: np.ndarray


class TimeGrid(NamedTuple):
    """Coefficients at the nodes of the time marching (:mod:`._sigma_march`).

    scheme "rk4" (continuous): nodes t_i = i h/2, i = 0..2M, M = L·stride steps of size h = ε/stride.
    scheme "euler" (discrete): nodes t_l = l ε, h = ε, stride = 1, K the discrete K0 (docs/gonly.md#k0).
    K (nodes, P, P);  Jp (nodes, N, N);  H (nodes, N, 3, 3) = ¼E[∂⁴p] on the local slots of each pair (multiplicities
    included, :class:`kerneleft.coefficients.Derivatives`), so Hp:Ybar = :func:`_hessian_dot`;  C4 (nodes, N, N) =
    K0∘K0 (pair basis).
    T (nodes, N, N) : 𝒯 = C_W J_σ, J_σ = DΣ̄ (C_W·Jp for the default branch).
    Msrc : None (default branch: the source is ½C_W(p − F)μ) or (nodes, N, N) C_W·Mix (docs/architectures.md
    #sigma-branches).   br : None or the :class:`Branch`.   stage_cov : record Cov_μ(p, p) at the stages too.
    sources : None (the plane grids' conditional expectations at every node) or the increasing node indices where
    they are computed, interpolated in t between them (:func:`_source_nodes`, docs/sigma.md#convergence).
    """

    scheme: str
    h: float
    stride: int
    K: np.ndarray
    Jp: np.ndarray
    H: np.ndarray
    C4: np.ndarray
    T: np.ndarray
    Msrc: np.ndarray | None = None
    br: Branch | None = None
    stage_cov: bool = False
    sources: np.ndarray | None = None

    @property
    def steps(self) -> int:
        """Time steps: L (euler) or L·stride (rk4, two nodes per step)."""
        return (self.K.shape[0] - 1) // (1 if self.scheme == "euler" else 2)


class Pairings(NamedTuple):
    """R^num at the stages of every step (Npp_st (M,S,N,N), N2_st (M,S,N)) and at the layers (Npp, Cpp (L+1,N,N));
    Cpp_st (M,S,N,N) = Cov_μ(p, p) at the stages when the time grid asks for it (else None)."""

    Npp_st: np.ndarray
    N2_st: np.ndarray
    Npp: np.ndarray
    Cpp: np.ndarray
    Cpp_st: np.ndarray | None = None


def _branch(net: Network, K: np.ndarray, Jp: np.ndarray) -> Branch:
    """The :class:`Branch` at the kernels K (nodes, P, P) (docs/architectures.md#sigma-branches)."""
    p = pair_basis(net.P)
    x = p.vec(K)
    maps = segment_maps(segments(net.branch)[0])
    kind = "p" if maps and maps[0] == "phi" else "q"
    rest = maps[1:] if kind == "p" else maps
    X_in = phi_jet(net.phi, x, net.P).y if kind == "p" else x
    first = segment_jet(rest, net.phi, X_in, net.P)
    stages = branch_stages(net, first.y)
    N = p.N
    eye = np.broadcast_to(np.eye(N), first.D.shape)
    D_rest = branch_jet(Jet(first.y, eye, np.zeros(first.D.shape + (N,))), stages).D
    Mix = D_rest @ first.D
    return Branch(kind, first, Mix, stages, Mix @ Jp if kind == "p" else Mix)


def time_grid(net: Network, depth_model: str, stride: int = 1) -> TimeGrid:
    """K0, Jp, H, K0∘K0 and the branch's operators at the nodes: continuous (RK4, ``stride`` steps per layer) or
    discrete (per layer).

    J[r, s] = ½E[∂_s p_r], H[r, p, s] = ¼E[∂_p∂_s p_r] (docs/gonly.md#coefficients) from one engine call:
    :func:`kerneleft.coefficients.derivatives`, the source of the G-only 𝒯 = C_W·Jp and ℋ too.
    """
    p = pair_basis(net.P)
    N = p.N
    nodes = net.depth + 1 if depth_model == "discrete" else 2 * net.depth * stride + 1
    limits.check_bytes("depth", 8.0 * nodes * (net.P ** 2 + 5 * N ** 2 + 9 * N) + (0.0 if is_default(net.branch)
                       else 8.0 * nodes * 3 * N ** 3),
                       f"the sigma coefficients at {nodes} time nodes (depth = {net.depth})")
    if depth_model == "discrete":
        K, scheme, h, stride = K0_discrete(net), "euler", net.eps, 1
    else:
        M = net.depth * stride
        K, scheme, h = K0_continuous(net.replace(depth=2 * M)), "rk4", net.T / M
    d = derivatives(net.phi, K)
    Jp, C4 = jacobian_pairs(d), p.vec4(circ(K))
    if is_default(net.branch):
        return TimeGrid(scheme, h, stride, K, Jp, d.H, C4, net.C_W * Jp)
    br = _branch(net, K, Jp)
    Msrc = net.C_W * br.Mix if br.kind == "p" else None
    return TimeGrid(scheme, h, stride, K, Jp, d.H, C4, net.C_W * br.Jsig, Msrc, br,
                    stage_cov=br.kind == "p" and (bool(br.stages) or br.first.D2.any()) and scheme == "rk4")


def _source_nodes(K: np.ndarray, lev: int) -> np.ndarray | None:
    """Nodes at which the plane grids compute the sources' conditional expectations at refinement level ``lev``
    (docs/sigma.md#convergence), K (nodes, P, P): for P >= 4 (two-coordinate sources) ⌈12·1.5^lev·max(1, τ)⌉
    (at least 5) equispaced intervals over the nodes, τ = max_a ln(K0_aa(T)/K0_aa(0)) the e-folds of the largest
    variance, interpolated in t between them; None (every node) for P <= 3 or when that is every node anyway."""
    nodes, P = K.shape[0], K.shape[-1]
    d = np.diagonal(K, axis1=1, axis2=2)
    m = max(math.ceil(_SOURCE_INTERVALS * 1.5 ** lev * max(1.0, float(np.max(np.log(d[-1] / d[0]))))),
            _sigma_grid.LAGRANGE_POINTS - 1)
    return None if P <= 3 or m + 1 >= nodes else np.round(np.linspace(0, nodes - 1, m + 1)).astype(int)


def _plane_task(task: tuple):
    """Worker entry point: ``task = (act, C_W, tg, plane)`` -> (plane.targets, :func:`._sigma_grid.plane_pairings`)."""
    act, C_W, tg, pl = task
    return pl.targets, _sigma_grid.plane_pairings(act, C_W, tg, pl)


def grid_pairings(net: Network, tg: TimeGrid, n: int, box: float = _BOX, pool=None) -> Pairings:
    """Pairings of R^num from the plane-grid representation with n nodes per axis, any P (docs/sigma.md
    #representations): the planes are independent sub-problems, run through ``pool`` (:func:`kerneleft.maps.as_map`;
    the numbers do not depend on it), with a progress bar (and the time limit) over planes. A branch whose influence
    is quadratic (kind q, docs/architectures.md#sigma-branches) needs none: zeros."""
    N = tg.Jp.shape[-1]
    if tg.br is not None and tg.br.kind == "q":
        S, L1 = (1 if tg.scheme == "euler" else 4), tg.steps // tg.stride + 1
        return Pairings(np.zeros((tg.steps, S, N, N)), np.zeros((tg.steps, S, N)), np.zeros((L1, N, N)),
                        np.zeros((L1, N, N)))
    slim = tg._replace(Jp=None, H=None, C4=None, br=None)           # what a plane needs (docs/sigma.md#rnum)
    pls = _sigma_grid.planes(net.phi, tg.K, n, box)
    parts = []
    with limits.Budget("K_in", len(pls), f"sigma plane grids (P = {net.P}, {len(pls)} planes, grid {n})") as bud:
        for part in as_map(pool)(_plane_task, ((net.phi, net.C_W, slim, pl) for pl in pls)):
            parts.append(part)
            bud.step(len(parts))
    out = [None if x is None else np.empty(x.shape[:-1] + (N,)) for x in parts[0][1]]
    for r, arrays in parts:
        for o, x in zip(out, arrays):
            if o is not None:
                o[..., r] = x
    return Pairings(*out)


def hermite_pairings(net: Network, tg: TimeGrid, truncations: list[list[int]]) -> list[Pairings]:
    """Pairings of R^num from the Hermite/Galerkin representation, one per truncation (a list of degrees; [] is
    R^num = 0); the derivative tables are computed once for all."""
    return [Pairings(*pr) for pr in _sigma_hermite.hermite_pairings(net.phi, net.C_W, tg, truncations)]


def _first_cov(tg: TimeGrid, i, Ybar: np.ndarray, Npp: np.ndarray, Cpp: np.ndarray | None, Nq: np.ndarray):
    """n Cov[X_1] of the first segment's output and its mean shift b_1 beyond the linear response
    (docs/architectures.md#sigma-branches): kind p from n Cov[⟨p⟩] = Cov_μ(p, p) + W(p, p), kind q from V4."""
    br, Jp = tg.br, tg.Jp[i]
    if br.kind == "p":
        Yp = Npp + 2 * Ybar @ Jp.swapaxes(-1, -2)
        JY = Jp @ Yp
        Cin = Cpp + 2 * (JY + JY.swapaxes(-1, -2))
    else:
        Z = Nq + 2 * Ybar
        Cin = tg.C4[i] + 2 * (Z + Z.swapaxes(-1, -2))
    D, D2 = br.first.D[i], br.first.D2[i]
    return 0.5 * np.einsum("...rst,...st->...r", D2, Cin), D @ Cin @ D.swapaxes(-1, -2)


def _stages_at(br: Branch, i) -> list:
    return [st._replace(jet=Jet(*(x[i] for x in st.jet)), b=st.b[i], C=st.C[i]) for st in br.stages]


def _sigma_moments(tg: TimeGrid, i, Ybar, Npp, Cpp, Nq) -> tuple[np.ndarray, np.ndarray]:
    """(B, n Cov[Σ]) at node(s) i for a branch: B = n(E Σ − Σ̄) − m(σ), the second-order and inner-layer part of
    the mean shift of the last dense layer's input, and its covariance (docs/architectures.md#sigma-branches)."""
    b1, C1 = _first_cov(tg, i, Ybar, Npp, Cpp, Nq)
    return propagate(_stages_at(tg.br, i), b1, C1)


def _hessian_dot(H: np.ndarray, Ybar: np.ndarray, loc: np.ndarray) -> np.ndarray:
    """Hp:Ybar = Σ_ps Hp[r, p, s] Ybar[p, s] with Hp = 4 m_p m_s H, gathered on the local slots ``loc``
    (:attr:`kerneleft.pairs.PairBasis.loc`) of each row: H (N, 3, 3), Ybar (N, N) -> (N,) (docs/sigma.md#rnum).
    O(N) memory and work instead of O(N³)."""
    return 4.0 * np.einsum("rij,rij->r", H, Ybar[loc[:, :, None], loc[:, None, :]])


def collective(net: Network, tg: TimeGrid, pr: Pairings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """March (Ybar, Nq, k1) driven by the stage pairings; returns each at the layers: (L+1,N,N)², (L+1,N).

    Module doc step 3 with 𝒯 = ``tg.T`` (C_W·Jp) and Tad = N2 + Hp:Ybar (:func:`_hessian_dot`; docs/sigma.md#rnum).
    Discrete depth adds the exact O(ε²) term Ybar += ε² C_W²/8 · n Cov[Σ] per layer (module doc). A branch
    (docs/architectures.md#sigma-branches) replaces p by σ = Mix·p or Mix·q in Y and Tad and adds its mean shift B to
    dK1/dt.
    """
    C_W, N = net.C_W, tg.Jp.shape[-1]
    cut = [N * N, 2 * N * N]
    br = tg.br
    loc = pair_basis(net.P).loc

    def f(n, s, i, y):
        Ybar, Nq, k1 = y[:cut[0]].reshape(N, N), y[cut[0]:cut[1]].reshape(N, N), y[cut[1]:]
        T = tg.T[i]
        if br is None:
            Y = pr.Npp_st[n, s] + 2 * Ybar @ tg.Jp[i].T
            Tad = pr.N2_st[n, s] + _hessian_dot(tg.H[i], Ybar, loc)
            dYbar = T @ Ybar + 0.5 * C_W * Y.T
            if tg.scheme == "euler":
                JY = tg.Jp[i] @ Y
                dYbar = dYbar + tg.h * C_W ** 2 / 8 * (pr.Cpp[n] + 2 * (JY + JY.T))
        else:
            p_kind = br.kind == "p"
            Y = (pr.Npp_st[n, s] if p_kind else Nq) @ br.Mix[i].T + 2 * Ybar @ br.Jsig[i].T
            Tad = br.Mix[i] @ (pr.N2_st[n, s] + _hessian_dot(tg.H[i], Ybar, loc)) if p_kind else np.zeros(N)
            dYbar = T @ Ybar + 0.5 * C_W * Y.T
            if tg.scheme == "euler" or tg.stage_cov or not p_kind:      # else B = 0: no later stage, linear first
                Cpp = (pr.Cpp[n] if tg.scheme == "euler" else pr.Cpp_st[n, s]) if p_kind else None
                B, CS = _sigma_moments(tg, i, Ybar, pr.Npp_st[n, s] if p_kind else None, Cpp, Nq)
                Tad = Tad + B
                if tg.scheme == "euler":
                    dYbar = dYbar + tg.h * C_W ** 2 / 8 * CS
        dk1 = T @ k1 + C_W * Tad
        return np.concatenate([dYbar.ravel(), (T @ Nq + 0.5 * T @ tg.C4[i]).ravel(), dk1]), ()

    steps = pr.N2_st.shape[0]
    _, (y,) = march(f, None, np.zeros(cut[1] + N), steps, tg.h, tg.stride, tg.scheme, lambda l, u: (u,))
    return y[:, :cut[0]].reshape(-1, N, N), y[:, cut[0]:cut[1]].reshape(-1, N, N), y[:, cut[1]:]


def assemble(net: Network, tg: TimeGrid, pr: Pairings) -> dict[str, np.ndarray]:
    """K0, V4, K1, covSigma, covGSigma at the layers (shapes (L+1,P,P) and (L+1,P,P,P,P)); module doc step 3, with
    σ for a branch (docs/architectures.md#sigma-branches)."""
    Ybar, Nq, k1 = collective(net, tg, pr)
    lay = [layer_node(tg.scheme, tg.stride, l) for l in range(net.depth + 1)]
    Jp, C4, p = tg.Jp[lay], tg.C4[lay], pair_basis(net.P)
    Z = Nq + 2 * Ybar
    out = {"K0": tg.K[lay], "V4": p.mat4(C4 + 2 * (Z + Z.swapaxes(-1, -2))), "K1": p.mat(k1)}
    if tg.br is None:
        Y = pr.Npp + 2 * Ybar @ Jp.swapaxes(-1, -2)
        JY, JZ = Jp @ Y, Jp @ Z
        out.update(covSigma=p.mat4(pr.Cpp + 2 * (JY + JY.swapaxes(-1, -2))),
                   covGSigma=p.mat4((Jp @ C4).swapaxes(-1, -2) + 2 * Y + 2 * JZ.swapaxes(-1, -2)))
        return out
    br = tg.br
    Jsig = br.Jsig[lay]
    Mix = br.Mix[lay]
    Rnum = pr.Npp @ Mix.swapaxes(-1, -2) if br.kind == "p" else Nq @ Mix.swapaxes(-1, -2)
    Y = Rnum + 2 * Ybar @ Jsig.swapaxes(-1, -2)
    _, CS = _sigma_moments(tg, lay, Ybar, pr.Npp if br.kind == "p" else None, pr.Cpp, Nq)
    JZ = Jsig @ Z
    out.update(covSigma=p.mat4(CS),
               covGSigma=p.mat4((Jsig @ C4).swapaxes(-1, -2) + 2 * Y + 2 * JZ.swapaxes(-1, -2)))
    return out


def mlp_recursion(net: Network) -> dict[str, np.ndarray]:
    """The exact leading order for an MLP (docs/architectures.md#mlp): given S^{l−1}, the block's input neurons are
    iid N(0, S^{l−1}), so A^l = n Cov[S^l] and b^l = n(E S^l − S̄^l) obey the finite recursion (Roberts–Yaida for
    the default block) A^l = C_W²(D A^{l−1} Dᵀ + C^l), b^l = C_W(D b^{l−1} + ½D2:A^{l−1} + b_noise^l), with D, D2 the
    jets of K -> Σ̄(K) at K0^l and (b_noise, C) the branch's own finite-width noise (first segment on n neurons);
    V4^{l+1} = K0^{l+1}∘K0^{l+1} + A^l, K1^{l+1} = b^l, n Cov[Σ^l] = D A^{l−1} Dᵀ + C^l, n Cov[G^l, Σ^l] = V4^l Dᵀ.
    Returns K0, K1 (L+1,P,P), V4, covSigma, covGSigma (L+1,P,P,P,P)."""
    p = pair_basis(net.P)
    K = K0_discrete(net)
    x = p.vec(K)
    first = first_segment(net, x)
    stages = branch_stages(net, first.jet.y)
    jet = branch_jet(first.jet, stages)
    bN, CN = gaussian_input_noise(net, first, stages, x)
    L, N = net.depth, p.N
    V = np.empty((L + 1, N, N))
    k1 = np.zeros((L + 1, N))
    cS, cGS = np.empty((L + 1, N, N)), np.empty((L + 1, N, N))
    V[0] = p.vec4(circ(net.K_in))
    A, bS = np.zeros((N, N)), np.zeros(N)
    for l in range(L + 1):
        D = jet.D[l]
        cS[l] = D @ A @ D.T + CN[l]
        cGS[l] = V[l] @ D.T
        if l < L:
            bX = D @ bS + 0.5 * np.einsum("rst,st->r", jet.D2[l], A) + bN[l]
            A, bS = net.C_W ** 2 * cS[l], net.C_W * bX
            V[l + 1] = p.vec4(circ(K[l + 1])) + A
            k1[l + 1] = bS
    return {"K0": K, "V4": p.mat4(V), "K1": p.mat(k1), "covSigma": p.mat4(cS), "covGSigma": p.mat4(cGS)}


def _rel_change(new: dict, old: dict) -> float:
    """max over V4 and K1 of max|new − old| / max|new|, the scale floored at 1e-12·max|K0|^k (k = 2 for V4, 1 for
    K1): an exactly vanishing K1 (linear φ) is not refined on its rounding noise."""
    k0 = float(np.max(np.abs(new["K0"])))
    return max(float(np.max(np.abs(new[k] - old[k])) / max(np.max(np.abs(new[k])), 1e-12 * k0 ** e, 1e-300))
               for k, e in (("V4", 2), ("K1", 1)))


def _degrees(degree) -> list[int]:
    if degree == "quadratic":
        return [2]
    if isinstance(degree, (int, np.integer)) and not isinstance(degree, bool) and degree >= 1:
        return list(range(1, int(degree) + 1))
    raise InputError(f"degree: must be 'auto', 'quadratic' or an integer >= 1, got {degree!r}")


def _coarser(degrees: list[int]) -> list[int]:
    """The truncation one step below: degree D -> 1..D−2 (both parities drop by one step), quadratic -> none."""
    return [k for k in degrees if k <= max(degrees) - 2] if degrees != [2] else []


def _finite(net: Network, arrays: dict) -> dict:
    """``arrays`` if finite; else the overflow InputError of :func:`kerneleft.result.require_finite`."""
    require_finite(KernelResult(net.t, arrays), "the sigma solution")
    return arrays


def _hermite(net: Network, depth_model: str, degree, s0: int, meta: dict) -> dict:
    """Fixed Hermite truncation; its error estimate is the relative change of V4, K1 from :func:`_coarser`."""
    degrees = _degrees(degree)
    tg = time_grid(net, depth_model, s0)
    fine, coarse = (assemble(net, tg, pr) for pr in hermite_pairings(net, tg, [degrees, _coarser(degrees)]))
    _finite(net, fine)
    meta.update(representation="hermite", truncation={"degrees": degrees, "substeps": tg.stride},
                error_estimate=_rel_change(fine, coarse),
                error_estimate_from={"degrees": _coarser(degrees), "substeps": tg.stride})
    return fine


def _grid(net: Network, depth_model: str, n0: int, s0: int, first: int, levels: int, tol: float | None,
          t0: float, pool=None) -> tuple[dict, list, TimeGrid]:
    """Plane-grid runs at refinement levels first..first+levels−1, stopping early once the relative change of V4
    and K1 is < ``tol`` (None: run them all). Refuses (ConvergenceError) a next level whose time, extrapolated
    from the last two, would pass :data:`kerneleft.limits.MAX_SECONDS`."""
    history, arrays, tg, err = [], None, None, None
    for lev in range(first, first + levels):
        nl, s = refinement_level(n0, s0, lev)
        if len(history) >= 2 and tol is not None:
            ahead = next_level_seconds([0.0] + [h["seconds"] for h in history])
            if time.perf_counter() - t0 + ahead > limits.MAX_SECONDS:
                raise ConvergenceError(
                    f"sigma: not converged to tol {tol:g} after {len(history)} refinements (achieved {err:.2g}, grid "
                    f"{history[-1]['grid']}); the next would take ~{limits.duration(ahead)} (limit "
                    f"{limits.duration(limits.MAX_SECONDS)}): raise tol (--tol) or use a fixed --degree")
        tg = time_grid(net, depth_model, s) if tg is None or tg.scheme == "rk4" else tg
        tg = tg._replace(sources=_source_nodes(tg.K, lev))
        new = _finite(net, assemble(net, tg, grid_pairings(net, tg, nl, pool=pool)))
        err = None if arrays is None else _rel_change(new, arrays)
        history.append({"grid": nl, "substeps": tg.stride, "sources": tg.K.shape[0] if tg.sources is None
                        else tg.sources.size, "change": err, "seconds": time.perf_counter() - t0})
        arrays = new
        if tol is not None and err is not None and err < tol:
            break
    return arrays, history, tg


@dataclass(frozen=True)
class SigmaOptions:
    """Options of :func:`solve_sigma`, validated on construction (InputError naming the option).

    degree : "auto" (plane-grid resummation refined to ``tol``), "quadratic" or an int D >= 1 (Hermite degree D).
    tol : relative change of V4 and K1 at which "auto" stops refining, in [1e-10, 0.5].
    grid : a fixed plane grid (>= 4 nodes per axis) instead of the refinement; None: refine.
    substeps : RK4 steps per layer at the first level (>= 1); None: 32 steps over [0, T] at least.
    max_levels : refinement levels of "auto" (>= 2).
    """

    degree: str | int = "auto"
    tol: float = DEFAULT_TOL
    grid: int | None = None
    substeps: int | None = None
    max_levels: int = _MAX_LEVELS

    def __post_init__(self):
        if self.degree != "auto":
            _degrees(self.degree)
        object.__setattr__(self, "tol", limits.check_tolerance("tol", self.tol, _TOL_MIN, _TOL_MAX))
        for name, minimum in (("grid", 4), ("substeps", 1)):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_int(name, getattr(self, name), minimum))
        object.__setattr__(self, "max_levels", check_int("max_levels", self.max_levels, 2))


def solve_sigma(net: Network, depth_model: str = "continuous", degree="auto", tol: float = DEFAULT_TOL, *,
                grid: int | None = None, substeps: int | None = None, max_levels: int = _MAX_LEVELS,
                pool=None) -> KernelResult:
    """Sigma-kernel theory on t = net.t: arrays K0, K1 (L+1,P,P), V4, covSigma, covGSigma (L+1,P,P,P,P).

    depth_model : "continuous" (the ODEs of docs/sigma.md#equations) or "discrete" (the exact O(1/n) layer
    recursion of the depth-L net, docs/sigma.md#discrete-depth).
    The options are those of :class:`SigmaOptions`:
    degree : "auto" — plane-grid resummation (any P), refined (grid ×1.5, if continuous RK4 steps ×1.5, for P >= 4
        source intervals ×1.5) until V4 and K1 change by < ``tol`` (in [1e-10, 0.5]) relative; ConvergenceError
        (with the achieved change) if ``max_levels`` levels or the time limit do not suffice. With ``grid`` given:
        that fixed grid.
        int D — Hermite/Galerkin truncation at total degree D; "quadratic" — degree 2 only (G-only V4 exactly).
    substeps : RK4 steps per layer at the first level (continuous; default: 32 steps over [0, T] at least).
    pool : where the plane grids run (:func:`kerneleft.maps.as_map`: None or 1 serial, k processes, a map object);
        the numbers do not depend on it (meta ``pool``).
    meta: representation, truncation (grid, substeps, sources — the nodes with computed sources, or degrees),
    error_estimate (relative change of V4, K1 from the previous level, or for a fixed truncation from the next
    coarser one, ``error_estimate_from``: grid/1.5 and substeps/1.5 (and source intervals/1.5), or Hermite degree
    D−2), converged (auto only, always True), levels (auto history), seconds.
    docs/sigma.md#representations, #convergence; docs/numerics.md#ill-conditioned, #overflow.
    """
    check_depth_model("depth_model", depth_model)
    opts = SigmaOptions(degree, tol, grid, substeps, max_levels)
    degree, tol, grid, max_levels = opts.degree, opts.tol, opts.grid, opts.max_levels
    s0 = opts.substeps if opts.substeps is not None else default_substeps(net.depth)
    limits.check_result("depth", (net.depth + 1) * (3 * net.P ** 4 + 2 * net.P ** 2),
                        f"the sigma result over depth = {net.depth} layers")
    t0 = time.perf_counter()
    meta = {"kind": "theory", "closure": "sigma", "depth_model": depth_model, "config": net.to_dict(),
            "pool": describe(as_map(pool))}
    if not net.residual and depth_model == "continuous":
        check_continuous(net)
    if not (net.residual and is_default(net.branch)) and degree != "auto":
        raise InputError(f"degree: the Hermite representation serves the default resnet block only; use "
                         f"degree='auto' for this {'branch' if net.residual else 'MLP'}")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if not net.residual:
            arrays = _finite(net, mlp_recursion(net))
            meta.update(representation="recursion", error_estimate=0.0)
        elif degree != "auto":
            arrays = _hermite(net, depth_model, degree, s0, meta)
        elif grid is not None:                     # fixed grid: this level and the one below for the estimate
            arrays, history, tg = _grid(net, depth_model, grid, s0, -1, 2, None, t0, pool)
            meta.update(representation="grid", truncation={"grid": history[-1]["grid"], "substeps": tg.stride,
                                                           "sources": history[-1]["sources"], "box": _BOX},
                        error_estimate=history[-1]["change"],
                        error_estimate_from={k: history[0][k] for k in ("grid", "substeps")})
        else:
            arrays, history, tg = _grid(net, depth_model, _grid0(net.P), s0, 0, max_levels, tol, t0,
                                        pool)
            err = history[-1]["change"]
            if not err < tol:
                raise ConvergenceError(
                    f"sigma: not converged to tol {tol:g} after {len(history)} refinements (achieved {err:.2g}, grid "
                    f"{history[-1]['grid']}, substeps {tg.stride}); raise tol (--tol) or use a fixed --degree")
            meta.update(representation="grid", truncation={"grid": history[-1]["grid"], "substeps": tg.stride,
                                                           "sources": history[-1]["sources"], "box": _BOX},
                        error_estimate=err, converged=True, levels=history)
    meta["seconds"] = time.perf_counter() - t0
    return KernelResult(net.t, arrays, meta=meta)
