"""Resummed representation of the response functionals R^{ab} (:mod:`.sigma`): densities on planes.

docs/sigma.md#representations.

R^{num,ab}_t is a signed measure on ℝ^P with density r^{ab} obeying
``∂_t r^{ab} = ½ S̄:∂² r^{ab} + Σ_ef 𝒯[ab,ef] r^{ef} + ½ C_W (p_ab − F_ab) μ_t``, r(0) = 0.
Every pairing the theory needs, R(p_cd) and Σ_ab R^{ab}(∂_ab p_cd), involves a test function of (x_c, x_d) only,
so only the marginals of r on the coordinate planes {c, d} are needed; marginalisation commutes with the heat
flow and with 𝒯. Each plane (a line for P = 1) carries all P(P+1)/2 marginal densities on a periodic grid;
the heat flow is exact in Fourier space (integrating-factor RK4), sources are Gaussian densities times
the conditional expectation of p_ab given the plane coordinates (a 1-D Gaussian smoothing of φ or φ² for the
one out-of-plane coordinate when P = 3; for two, P >= 4, Mehler's series, :func:`_two_coordinate`), computed at
the source nodes ``tg.sources`` and interpolated in t between them (:func:`_lagrange`). Truncation parameters:
points per axis ``n``, the box half-width ``box`` in standard deviations and the source nodes; spectral for
smooth φ, O(h²) for relu.

Whitened coordinates (docs/sigma.md#representations, docs/numerics.md#ill-conditioned). The grid lives in
y = A⁻¹x with A Aᵀ = K_T, the plane block of the largest kernel K0(T) (K0 is non-decreasing in t, so every μ_t
fits): the box is the ±box·σ parallelogram of the covariance ellipse, and densities are stored per unit y-volume.
For two nearly identical inputs the plane is a thin ellipse (width ~ √(1−ρ)); an axis-aligned grid would need
~1/√(1−ρ) points per axis, the whitened one resolves it like any other. Derivatives map as ∂_x = A⁻ᵀ∂_y.
"""
from __future__ import annotations

from functools import lru_cache
from itertools import combinations
from typing import NamedTuple

import numpy as np

from .._gauss_quad import hermite_1d
from ..errors import InputError
from ..pairs import pair_basis
from ._sigma_march import layer_node, march

__all__ = ["Plane", "planes", "plane_pairings", "LAGRANGE_POINTS"]

_Z = np.linspace(-10.0, 10.0, 801)     # trapezoid nodes of the 1-D Gaussian smoothing (error ~1e-4 on a kink)
_WZ = np.exp(-0.5 * _Z ** 2) * (_Z[1] - _Z[0]) / np.sqrt(2.0 * np.pi)
_MEHLER_RHO = 0.5       # |conditional correlation| up to which a two-coordinate source is Mehler's series
_MEHLER_EPS = 1e-13     # its truncation: |ρ|^terms <= eps relative to (E[φ²(x_i)|y] E[φ²(x_j)|y])^½
LAGRANGE_POINTS = 6     # source nodes per interpolation in t (degree 5; docs/sigma.md#convergence)


class Plane(NamedTuple):
    """One coordinate plane (or line) with its whitened grid.

    axes : (Q,) global coordinates of the plane, Q = 1 or 2.   G = A⁻¹ with A Aᵀ = K_T (the plane block).
    y : (Q, *grid) whitened node coordinates, x = A y : (Q, *grid) the nodes in the plane.
    k : Q arrays broadcastable to the rfftn spectrum (angular wavenumbers in y); kd : the same, Nyquist zeroed.
    dV : cell volume in y.   targets : pair numbers r = (c <= d) whose pairings are read on this plane.
    g : (n_targets, *grid) test functions p_r = φ(x_c) φ(x_d).
    """

    axes: tuple
    G: np.ndarray
    y: np.ndarray
    x: np.ndarray
    k: tuple
    kd: tuple
    dV: float
    targets: np.ndarray
    g: np.ndarray


def _whitening(B: np.ndarray) -> np.ndarray:
    """A = U Λ^{1/2} with B = U Λ Uᵀ (principal axes), so that A Aᵀ = B; B (Q, Q) positive definite."""
    lam, U = np.linalg.eigh(B)
    if lam[0] <= 0.0:
        raise InputError("K_in: a 2x2 block of the kernel is singular; the sigma theory needs linearly "
                         "independent inputs (identical inputs are merged automatically)")
    return U * np.sqrt(lam)


def planes(act, K: np.ndarray, n: int, box: float) -> list[Plane]:
    """Planes {c < d} (the line {0} if P = 1) for kernels K (T, P, P): n nodes per whitened axis on [−box, box)."""
    P = K.shape[-1]
    pb = pair_basis(P)
    a, b = pb.a, pb.b
    all_axes = [(0,)] if P == 1 else [(c, d) for c in range(P) for d in range(c + 1, P)]
    owner = {r: next(i for i, ax in enumerate(all_axes) if {a[r], b[r]} <= set(ax)) for r in range(a.size)}
    h = 2.0 * box / n
    out = []
    for i, axes in enumerate(all_axes):
        Q = len(axes)
        A = _whitening(K[-1][np.ix_(axes, axes)])
        y = np.stack(np.meshgrid(*[-box + h * np.arange(n)] * Q, indexing="ij"))
        x = np.tensordot(A, y, axes=1)
        k = [2 * np.pi * np.fft.fftfreq(n, h)] * (Q - 1) + [2 * np.pi * np.fft.rfftfreq(n, h)]
        kd = [np.where(np.arange(kj.size) == n // 2, 0.0, kj) for kj in k]
        shape = lambda j: tuple(-1 if m == j else 1 for m in range(Q))  # noqa: E731
        targets = np.array([r for r in range(a.size) if owner[r] == i], dtype=int)
        pos = {c: j for j, c in enumerate(axes)}
        phi = act(x)
        g = np.stack([phi[pos[a[r]]] * phi[pos[b[r]]] for r in targets])
        out.append(Plane(axes, np.linalg.inv(A), y, x, tuple(kj.reshape(shape(j)) for j, kj in enumerate(k)),
                         tuple(kj.reshape(shape(j)) for j, kj in enumerate(kd)), h ** Q, targets, g))
    return out


def _smoothed(act, m: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(E φ(m + σZ), E φ²(m + σZ)) at the points m: cubic-spline table (spacing <= σ/4) of a trapezoid rule in Z."""
    lo, hi = float(m.min()) - 1.0, float(m.max()) + 1.0
    size = max(4 * np.sqrt(m.size), 4 * (hi - lo) / max(sigma, 1e-12))
    tab = np.linspace(lo, hi, int(np.clip(size, 64, 20000)))
    from scipy.interpolate import CubicSpline               # at first use: keeps importing the CLI fast

    f = act(tab[:, None] + sigma * _Z)
    return CubicSpline(tab, f @ _WZ)(m), CubicSpline(tab, (f * f) @ _WZ)(m)


def _factors(act, pl: Plane, K: np.ndarray) -> np.ndarray:
    """E[p_r(x) | plane coordinates] for every pair r, on the grid; K (P, P) -> (N, *grid).

    An out-of-plane coordinate o given x = A y has mean K_op K_pp⁻¹ x = wᵀ M⁻¹ y and variance
    K_oo − wᵀ M⁻¹ w, with w = G K_po and M = G K_pp Gᵀ (whitened, so a thin plane does not lose digits). A pair of
    two out-of-plane coordinates (P >= 4) is :func:`_joint`.
    """
    P = K.shape[-1]
    pb = pair_basis(P)
    a, b = pb.a, pb.b
    ax = list(pl.axes)
    phi = act(pl.x)
    pos = {c: j for j, c in enumerate(ax)}
    M = pl.G @ K[np.ix_(ax, ax)] @ pl.G.T
    cond, lin = {}, {}
    for o in sorted(set(range(P)) - set(ax)):                     # the out-of-plane coordinates
        w = pl.G @ K[ax, o]
        beta = np.linalg.solve(M, w)
        var = max(K[o, o] - beta @ w, 0.0)
        lin[o] = (np.tensordot(beta, pl.y, axes=1), var, beta, w)
        cond[o] = _smoothed(act, lin[o][0], np.sqrt(var))
    two = _two_coordinate(act, lin, K, cond)
    f = []
    for r in range(a.size):
        i, j = a[r], b[r]
        if i in pos and j in pos:
            f.append(phi[pos[i]] * phi[pos[j]])
        elif i == j:
            f.append(cond[i][1])
        elif i in pos or j in pos:
            inside, out = (i, j) if i in pos else (j, i)
            f.append(phi[pos[inside]] * cond[out][0])
        else:
            f.append(two[i, j])
    return np.stack(f)


def _two_coordinate(act, lin: dict, K: np.ndarray, cond: dict) -> dict:
    """E[φ(x_i) φ(x_j) | plane] for every pair i < j of out-of-plane coordinates (P >= 4), keyed (i, j).

    ``lin[o]`` = (m, var, β, w) of :func:`_factors`; the conditional covariance is c = K_ij − β_iᵀ w_j and
    ρ = c/(s_i s_j). Mehler's formula for |ρ| <= 1/2: E = Σ_k ρ^k c_k(i) c_k(j) with the Hermite coefficients
    c_k(o) = E[φ(m_o + s_o Z) He_k(Z)]/√k! (:func:`_hermite_coefficients`, one table per coordinate shared by all
    its pairs), truncated after |ρ|^terms <= 1e-13, a bound on the tail relative to (E[φ²(x_i)|y] E[φ²(x_j)|y])^½
    (Cauchy–Schwarz and Parseval): O(n_grid² · terms) per pair. Larger |ρ|: :func:`_joint`.
    """
    rho, terms, need = {}, {}, {}
    for i, j in combinations(sorted(lin), 2):
        bound = np.sqrt(lin[i][1] * lin[j][1])                     # Cauchy–Schwarz: |c| <= s_i s_j
        rho[i, j] = float(np.clip(K[i, j] - lin[i][2] @ lin[j][3], -bound, bound)) / bound if bound > 0 else 0.0
        if abs(rho[i, j]) <= _MEHLER_RHO:
            terms[i, j] = _terms(rho[i, j])
            for o in (i, j):
                need[o] = max(need.get(o, 0), terms[i, j])
    coef = {o: _hermite_coefficients(act, lin[o][0].ravel(), lin[o][1], k) for o, k in need.items()}
    out, outer = {}, {}
    for (i, j), r in rho.items():
        if (i, j) in terms:
            k = terms[i, j]
            out[i, j] = ((coef[i][:, :k] * coef[j][:, :k]) @ r ** np.arange(k)).reshape(lin[i][0].shape)
        else:
            if i not in outer:                                    # shared by every pair (i, j), j > i
                outer[i] = _outer(act, lin[i])
            out[i, j] = _joint(act, lin[i], lin[j], K[i, j], cond[j][0], outer[i])
    return out


def _terms(rho: float) -> int:
    """Terms of Mehler's series for the correlation ρ (|ρ| <= 1/2): the fewest with |ρ|^terms <= 1e-13."""
    return 1 if rho == 0.0 else max(1, int(np.ceil(np.log(_MEHLER_EPS) / np.log(abs(rho)))))


def _hermite_coefficients(act, m: np.ndarray, var: float, k: int) -> np.ndarray:
    """c_n = E[φ(m + sZ) He_n(Z)]/√n!, n < k, at the points m (G,) -> (G, k); s = √var, the
    expectation by :func:`_rule` at scale s (its spacing also resolves He_n e^{−z²/2} for n < 44: aliasing
    < 1e-13); c = (φ(m), 0, ...) when var = 0."""
    if var <= 0.0:
        return np.concatenate([act(m)[:, None], np.zeros((m.size, k - 1))], axis=1)
    s = np.sqrt(var)
    z, wz = _rule(act, s)
    return act(m[:, None] + s * z) @ (wz[:, None] * hermite_1d(z, k - 1))


def _outer(act, li: tuple) -> tuple | None:
    """(z, w, φ(m_i + s_i z)) of :func:`_joint` for the out-of-plane coordinate i; None if x_i is fixed by the
    plane (s_i = 0)."""
    m_i, var_i = li[0], li[1]
    if var_i <= 0.0:
        return None
    s_i = np.sqrt(var_i)
    z, wz = _rule(act, s_i)
    return z, wz, act(m_i[..., None] + s_i * z)


def _joint(act, li: tuple, lj: tuple, K_ij: float, smoothed_j: np.ndarray, outer: tuple | None) -> np.ndarray:
    """E[φ(x_i) φ(x_j) | plane] for two out-of-plane coordinates with |ρ| > 1/2 (:func:`_two_coordinate`): with
    (m, var, β, w) of each and the conditional covariance c = K_ij − β_iᵀ w_j, x_i = m_i + s_i Z and
    x_j = m_j + (c/s_i) Z + s' Z', so
    E = E_Z[φ(m_i + s_i Z) h(m_j + (c/s_i) Z)] with h(u) = E φ(u + s' Z') (:func:`_smoothed_mean`); both
    Z-integrals by :func:`_rule` at their scale; ``outer`` = :func:`_outer` of i."""
    (m_i, var_i, beta_i, _), (m_j, var_j, _, w_j) = li, lj
    if outer is None:
        return act(m_i) * smoothed_j
    z, wz, phi_i = outer
    bound = np.sqrt(var_i * var_j)                         # Cauchy–Schwarz: |c| <= s_i s_j, also after rounding
    c = float(np.clip(K_ij - beta_i @ w_j, -bound, bound))
    s2 = np.sqrt(max(var_j - c * c / var_i, 0.0))
    u = m_j[..., None] + (c / np.sqrt(var_i)) * z
    return (phi_i * _smoothed_mean(act, u, s2)) @ wz


def _rule(act, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of E over Z ~ N(0, 1) for an integrand φ(m + scale·Z)·(smooth): the trapezoid on [−10, 10]
    (exponentially accurate for analytic integrands) with spacing min(0.5, δ/(4·scale), π/(scale + 7)), δ the
    activation's transition scale (distance of its nearest complex singularity, 1 for a user callable): 1e-10 or
    better for tanh at scale 6, where 40-node Gauss–Hermite errs by 3e-2. Kinked φ: the 801-node trapezoid."""
    if not act.smooth:
        return _Z, _WZ
    delta = act.profile.delta if act.profile is not None else 1.0
    h = min(0.5, delta / (4.0 * max(scale, 1e-12)), np.pi / (scale + 7.0))
    n = 2 * int(np.ceil(10.0 / h)) + 1
    return _trapezoid(n)


@lru_cache(maxsize=64)
def _trapezoid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n-node trapezoid on [−10, 10] with the standard normal density folded into the weights."""
    z = np.linspace(-10.0, 10.0, n)
    return z, np.exp(-0.5 * z ** 2) * (z[1] - z[0]) / np.sqrt(2.0 * np.pi)


def _smoothed_mean(act, u: np.ndarray, sigma: float) -> np.ndarray:
    """E φ(u + σZ) at the points u (any shape): cubic-spline table with spacing <= σ/4 (at least 64 points)."""
    lo, hi = float(u.min()) - 1.0, float(u.max()) + 1.0
    tab = np.linspace(lo, hi, int(np.clip(4 * (hi - lo) / max(sigma, 1e-12), 64, 20000)))
    z, wz = _rule(act, sigma)
    from scipy.interpolate import CubicSpline               # at first use: keeps importing the CLI fast

    return CubicSpline(tab, act(tab[:, None] + sigma * z) @ wz)(u)


def _gauss(pl: Plane, K: np.ndarray) -> np.ndarray:
    """Density per unit y-volume of N(0, K restricted to the plane): N(y; 0, M), M = G K_pp Gᵀ."""
    M = pl.G @ K[np.ix_(pl.axes, pl.axes)] @ pl.G.T
    q = np.einsum("i...,ij,j...->...", pl.y, np.linalg.inv(M), pl.y)
    return np.exp(-0.5 * q) / np.sqrt(np.linalg.det(2 * np.pi * M))


def _source(pl: Plane, K: np.ndarray, f: np.ndarray) -> np.ndarray:
    """(f_r − F_r) μ(x) on the grid for f = E[p_r | x] (:func:`_factors`, N x grid), F_r its grid mean so that every
    source has zero mass; (N, *grid)."""
    mu = _gauss(pl, K)
    axes = tuple(range(1, f.ndim))
    F = (f * mu).sum(axis=axes, keepdims=True) / mu.sum()
    return (f - F) * mu


def _lagrange(nodes: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Interpolation at node i from the source nodes (increasing node indices, >= :data:`LAGRANGE_POINTS` of them):
    the window of LAGRANGE_POINTS consecutive ones around i and its Lagrange weights, node indices as the time
    variable (the nodes are equispaced in t). Weights (0, .., 1, .., 0) at a source node (docs/sigma.md#convergence).
    """
    n = LAGRANGE_POINTS
    j0 = int(np.clip(np.searchsorted(nodes, i) - n // 2, 0, nodes.size - n))
    x = nodes[j0:j0 + n].astype(float)
    d = x[:, None] - x
    np.fill_diagonal(d, 1.0)
    return nodes[j0:j0 + n], np.array([np.prod(np.delete(i - x, a)) for a in range(n)]) / d.prod(axis=1)


def _mix(T, u: np.ndarray) -> np.ndarray:
    """Σ_q T[p, q] u[q] for T (N, N) a scipy sparse array: 𝒯 of the default block mixes a pair ab only with aa and
    bb (3 nonzeros per row), so O(N) instead of O(N²) per grid point; u (N, ...) complex (its real and imaginary
    parts as one real matrix)."""
    v = np.ascontiguousarray(u).reshape(u.shape[0], -1).view(float)
    return (T @ v).view(complex).reshape(u.shape)


def _second(pl: Plane, X: np.ndarray, nyquist: bool) -> np.ndarray:
    """Fourier symbol of −Σ_ij X_ij ∂_{x_i}∂_{x_j} = Σ_jk (G X Gᵀ)_jk k_j k_k on the spectrum; X (Q, Q) in x.

    ``nyquist=False`` zeroes the Nyquist mode in the mixed terms j != k (odd first derivatives), as for a real
    mixed derivative; the heat-flow exponent keeps it (``True``).
    """
    Y = pl.G @ X @ pl.G.T
    Q = len(pl.axes)
    k = pl.k if nyquist else pl.kd
    return sum(Y[j, m] * (pl.k[j] ** 2 if j == m else k[j] * k[m]) for j in range(Q) for m in range(Q))


def _quad(pl: Plane, dK: np.ndarray) -> np.ndarray:
    """½ Σ_ij k_i k_j dK_ij on the spectrum of the plane (x-wavenumbers k_x = Gᵀ k_y)."""
    return 0.5 * _second(pl, dK[np.ix_(pl.axes, pl.axes)], True)


def _unit(Q: int, i: int, j: int) -> np.ndarray:
    """X (Q, Q) with Σ_ef X_ef ∂_e∂_f = Σ over ordered pairs of ∂_a∂_b for the pair (a, b): e_i e_jᵀ + e_j e_iᵀ."""
    X = np.zeros((Q, Q))
    X[i, j] += 1.0
    X[j, i] += 1.0
    return X if i != j else X / 2


def plane_pairings(act, C_W: float, tg, pl: Plane):
    """March this plane's densities over the time grid ``tg`` (a :class:`.sigma.TimeGrid`): mixing ``tg.T`` (𝒯),
    source ½C_W(p − F)μ, or ½ tg.Msrc (p − F)μ for a branch (docs/architectures.md#sigma-branches). The conditional
    expectations E[p | plane] are computed at the source nodes ``tg.sources`` (None: every node) and interpolated
    between them (:func:`_lagrange`); μ and F at every node.

    Returns, for the plane's targets r: Npp_st (M, S, N, n_r) = R^{num,p}(p_r) and N2_st (M, S, n_r) =
    Σ_ab R^{num,ab}(∂_ab p_r) at the S stages of every step, and Npp (L+1, N, n_r), Cpp (L+1, N, n_r) =
    Cov_μ(p_p, p_r) at the layers; with ``tg.stage_cov`` also Cpp_st (M, S, N, n_r) at the stages.
    """
    P = tg.K.shape[-1]
    pb = pair_basis(P)
    a, b = pb.a, pb.b
    Q = len(pl.axes)
    axes = tuple(range(-Q, 0))
    idx = "xy"[:Q]
    shape = pl.x.shape[1:]
    pos = {c: j for j, c in enumerate(pl.axes)}
    lap = [(r, _second(pl, _unit(Q, pos[a[r]], pos[b[r]]), False))
           for r in range(a.size) if a[r] in pos and b[r] in pos]

    def fft(x):
        return np.fft.rfftn(x, axes=axes)

    def ifft(u):
        return np.fft.irfftn(u, s=shape, axes=axes)

    def pair(r_grid):
        return np.einsum(f"...{idx},t{idx}->...t", r_grid, pl.g) * pl.dV

    from scipy.sparse import csr_array                  # at first use: keeps importing the CLI fast

    @lru_cache(maxsize=LAGRANGE_POINTS + 1)             # the march visits the nodes in order
    def factors(i):
        return _factors(act, pl, tg.K[i])

    @lru_cache(maxsize=1)
    def window(js):                                     # (LAGRANGE_POINTS, N, *grid)
        return np.stack([factors(j) for j in js])

    def conditional(i):
        if tg.sources is None or i in tg.sources:
            return factors(i)
        js, w = _lagrange(tg.sources, i)
        return np.tensordot(w, window(tuple(int(j) for j in js)), axes=1)

    @lru_cache(maxsize=4)
    def src(i):
        s = _source(pl, tg.K[i], conditional(i))
        return s, fft(s)

    @lru_cache(maxsize=2)
    def mixing(i):
        return csr_array(tg.T[i]), None if tg.Msrc is None else csr_array(tg.Msrc[i])

    def f(_n, _s, i, u):
        T, Msrc = mixing(i)
        source = 0.5 * C_W * src(i)[1] if Msrc is None else 0.5 * _mix(Msrc, src(i)[1])
        du = _mix(T, u) + source
        m_hat = -sum(w * u[r] for r, w in lap)
        out = (pair(ifft(u)), pair(ifft(m_hat)))
        return du, out + (pair(src(i)[0]),) if tg.stage_cov else out

    def decay(i, j):
        return np.exp(-_quad(pl, tg.K[j] - tg.K[i]))

    def at_layer(l, u):
        i = layer_node(tg.scheme, tg.stride, l)
        return pair(ifft(u)), pair(src(i)[0])

    steps = tg.steps
    stage, (Npp, Cpp) = march(f, decay, np.zeros_like(src(0)[1]), steps, tg.h, tg.stride, tg.scheme, at_layer)
    return stage[0], stage[1], Npp, Cpp, (stage[2] if tg.stage_cov else None)
