"""Four-point vertex ``gaussian.pair_covariance`` (kerneleft/_gauss_four.py): closed forms, independent quadrature
references (1-D quad, x-space orthant rules, the relu arc integral, plain Gauss–Legendre in whitened coordinates),
singular and nearly degenerate kernels, symmetry, PSD, Monte Carlo, errors."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from numpy.polynomial.legendre import leggauss
from scipy import integrate

from kerneleft.activations import get_activation
from kerneleft.errors import ConvergenceError, InputError
from kerneleft.gaussian import F, pair_covariance
from kerneleft.pairs import pair_basis
from kerneleft.tensors import circ

K4 = np.array([[1.0, 0.5, 0.2, 0.1], [0.5, 1.2, 0.3, -0.2], [0.2, 0.3, 0.8, 0.4], [0.1, -0.2, 0.4, 1.1]])


def _kernel(P, seed, ridge=0.2):
    X = np.random.default_rng(seed).standard_normal((P, P + 2))
    return X @ X.T / (P + 2) + ridge * np.eye(P)


def _fourth(name, K):
    """E4[r, s] = C[r, s] + F_r F_s from the public covariance (the moments the references compute)."""
    f = pair_basis(K.shape[-1]).vec(F(name, K))
    return pair_covariance(name, K) + f[..., :, None] * f[..., None, :]


def _entry(P, quad):
    """(r, s) of the pairs (a, b), (c, d) of an index quadruple."""
    idx = pair_basis(P).index
    return idx[quad[0], quad[1]], idx[quad[2], quad[3]]


def _quadruples(d):
    """Index quadruples over d coordinates using all of them, with their power pattern (one per pattern)."""
    out = {}
    for q in itertools.product(range(d), repeat=4):
        p = tuple(q.count(i) for i in range(d))
        if min(p) >= 1 and p not in out:
            out[p] = q
    return out


# ----------------------------------------------------------------------------------------------- references
def _orthant_moments(phi, K, patterns, n, positive_only=False, R=10.0):
    """E[Π φ(x_i)^{p_i}] for each pattern p, x ~ N(0, K) nonsingular: tensor Gauss–Legendre in x over each orthant
    (x-space, no factorisation; only the positive orthant for φ vanishing on x < 0)."""
    d = K.shape[0]
    t, w = leggauss(n)
    Kinv, norm = np.linalg.inv(K), 1.0 / math.sqrt((2 * math.pi) ** d * np.linalg.det(K))
    total = np.zeros(len(patterns))
    for sg in ([(1.0,) * d] if positive_only else itertools.product((1.0, -1.0), repeat=d)):
        half = [0.5 * R * math.sqrt(K[i, i]) for i in range(d)]
        X = np.stack(np.meshgrid(*[s * h * (t + 1) for s, h in zip(sg, half)], indexing="ij"), -1).reshape(-1, d)
        W = math.prod(half) * np.prod(np.stack(np.meshgrid(*[w] * d, indexing="ij"), -1).reshape(-1, d), axis=1)
        W = W * np.exp(-0.5 * np.einsum("ni,ij,nj->n", X, Kinv, X)) * norm
        vals = phi(X)
        total += [np.sum(W * np.prod(vals ** np.asarray(p), axis=1)) for p in patterns]
    return total


def _whitened_moments(phi, A, patterns, n, Y=10.0):
    """E[Π φ(a_i·z)^{p_i}], z ~ N(0, I_r), A (d, r): plain tensor Gauss–Legendre on [−Y, Y]^r (smooth φ)."""
    t, w = leggauss(n)
    r = A.shape[1]
    Z = np.stack(np.meshgrid(*[Y * t] * r, indexing="ij"), -1).reshape(-1, r)
    W = np.prod(np.stack(np.meshgrid(*[Y * w] * r, indexing="ij"), -1).reshape(-1, r), axis=1)
    W = W * np.exp(-0.5 * np.sum(Z * Z, axis=1)) / (2 * math.pi) ** (r / 2)
    vals = phi(Z @ A.T)
    return np.array([np.sum(W * np.prod(vals ** np.asarray(p), axis=1)) for p in patterns])


def _relu_arc_moment(A, powers):
    """E[Π relu(a_i·z)^{p_i}], z ~ N(0, I_2), Σp = 4: E|z|⁴ = 8 times the circle average (scipy quad, split at
    every kink angle) — exact for rank-2 relu integrands."""
    kinks = sorted({(math.atan2(a[1], a[0]) + s) % (2 * math.pi) for a in A for s in (0.5 * math.pi, 1.5 * math.pi)})
    edges = [0.0] + kinks + [2 * math.pi]

    def f(th):
        u = A @ np.array([math.cos(th), math.sin(th)])
        return float(np.prod(np.maximum(u, 0.0) ** np.asarray(powers)))

    total = sum(integrate.quad(f, lo, hi, epsabs=1e-14, epsrel=1e-13)[0] for lo, hi in zip(edges, edges[1:]))
    return 8.0 * total / (2 * math.pi)


def _check_moments(name, K, reference, tol):
    """Every E4 entry over all d = P coordinates against reference(patterns) (one value per pattern)."""
    P = K.shape[0]
    quads = _quadruples(P)
    ref = reference(list(quads))
    E4 = _fourth(name, K)
    got = np.array([E4[_entry(P, q)] for q in quads.values()])
    scale = np.max(np.diagonal(E4)[~pair_basis(P).off])                                    # max E[φ⁴]
    assert np.max(np.abs(got - ref)) / scale < tol, (got, ref)


# ----------------------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("P", [1, 2, 3, 4])
def test_linear_is_k_circ_k_closed_form_and_quadrature(P):
    """C[r, s] = K_ac K_bd + K_ad K_bc, both by Isserlis and by the quadrature (a polynomial integrand)."""
    K = K4[:P, :P]
    ref = pair_basis(P).vec4(circ(K))
    assert np.max(np.abs(pair_covariance("linear", K) - ref)) < 1e-13
    assert np.max(np.abs(pair_covariance("linear", K, method="quadrature") - ref)) < 1e-13


def test_sin_closed_form_matches_quadrature_including_tiny_variances():
    """The 16-exponential closed form vs the quadrature at K ~ 1e-6 (where a plain signed sum of e^{−q/2} would
    lose ~4 digits to cancellation) and K ~ 1."""
    for s in (1e-6, 1.0):
        K = s * K4[:3, :3]
        C, Cq = pair_covariance("sin", K), pair_covariance("sin", K, method="quadrature")
        assert np.max(np.abs(C - Cq)) < 1e-10 * np.max(np.abs(np.diag(C)))


@pytest.mark.parametrize("name", ["tanh", "relu", "gelu"])
def test_one_input_against_quad(name):
    """P = 1: C = E[φ⁴] − (E[φ²])², 1-D scipy quad, variances 0.01–10."""
    phi = get_activation(name).phi
    for k in (0.01, 1.0, 10.0):
        def m(p):
            return integrate.quad(lambda x: phi(x) ** p * math.exp(-x * x / (2 * k)) / math.sqrt(2 * math.pi * k),
                                  -np.inf, np.inf, epsabs=0, epsrel=1e-13, points=None)[0]
        ref = m(4) - m(2) ** 2
        assert abs(pair_covariance(name, [[k]])[0, 0] - ref) < 1e-10 * m(4)


def test_relu_one_input_exact():
    """E relu⁴ = 3K²/2 and (E relu²)² = K²/4: C = 5K²/4."""
    for k in (0.3, 1.0, 7.0):
        assert abs(pair_covariance("relu", [[k]])[0, 0] - 1.25 * k * k) < 1e-13 * k * k
        assert abs(_fourth("relu", np.array([[k]]))[0, 0] - 1.5 * k * k) < 1e-13 * k * k


# ----------------------------------------------------------------------------------------------- quadrature references
@pytest.mark.parametrize("name", ["tanh", "relu", "gelu"])
def test_two_inputs_against_orthant_rule(name):
    """P = 2, every pattern (3,1), (2,2), (1,3): x-space Gauss–Legendre per quadrant, 150 nodes, to 1e-9."""
    act = get_activation(name)
    for seed in (0, 1):
        K = _kernel(2, seed) * (3.0 if seed else 1.0)
        _check_moments(name, K, lambda pats: _orthant_moments(act.phi, K, pats, 150, not act.smooth), 1e-9)


@pytest.mark.parametrize("name", ["tanh", "relu"])
def test_three_inputs_against_orthant_rule(name):
    act = get_activation(name)
    K = _kernel(3, 2)
    _check_moments(name, K, lambda pats: _orthant_moments(act.phi, K, pats, 48, not act.smooth), 1e-9)


def test_four_inputs_against_slow_references():
    """P = 4, E[φ_1φ_2φ_3φ_4] and all other entries: x-space orthant rules (relu: positive orthant only)."""
    K = 0.6 * K4
    for name, n in (("relu", 30), ("tanh", 20)):
        act = get_activation(name)
        _check_moments(name, K, lambda pats: _orthant_moments(act.phi, K, pats, n, not act.smooth, R=8.0), 1e-9)


def test_nearly_degenerate_pair():
    """ρ = 0.9999: relu against the exact arc integral, tanh against plain whitened Gauss–Legendre (300 nodes)."""
    k1, k2, rho = 1.3, 0.7, 0.9999
    K = np.array([[k1, rho * math.sqrt(k1 * k2)], [rho * math.sqrt(k1 * k2), k2]])
    A = np.linalg.cholesky(K)
    _check_moments("relu", K, lambda pats: np.array([_relu_arc_moment(A, p) for p in pats]), 1e-10)
    _check_moments("tanh", K, lambda pats: _whitened_moments(np.tanh, A, pats, 300), 1e-10)


@pytest.mark.parametrize("eig", [0.0, 1e-12])
def test_singular_and_nearly_singular_three_inputs(eig):
    """x3 = (x1 − 2 x2)/√5 (+ an independent part of variance ``eig``): the rank-2 integral, exact (relu: arcs;
    tanh: whitened Gauss–Legendre); the 1e-12 eigenvalue changes the moments by O(1e-12) only."""
    A = np.array([[1.0, 0.0], [0.4, 0.9], [0.0, 0.0]])
    A[2] = (A[0] - 2 * A[1]) / math.sqrt(5)
    K = A @ A.T + eig * np.diag([0.0, 0.0, 1.0])
    _check_moments("relu", K, lambda pats: np.array([_relu_arc_moment(A, p) for p in pats]), 1e-10)
    _check_moments("tanh", K, lambda pats: _whitened_moments(np.tanh, A, pats, 200), 1e-10)


def test_duplicate_inputs_reduce_to_fewer_inputs():
    """Input 3 = input 1 (a zero eigenvalue): the P = 3 covariance restricted to the pairs of {1, 2} is the P = 2 one,
    and entries through input 3 repeat those through input 1."""
    K2 = _kernel(2, 5)
    K3 = K2[np.ix_([0, 1, 0], [0, 1, 0])]
    for name in ("tanh", "relu"):
        C2, C3 = pair_covariance(name, K2), pair_covariance(name, K3)
        i2, i3 = pair_basis(2).index, pair_basis(3).index
        pairs2 = [(a, b) for a in range(2) for b in range(2)]
        sub = C3[np.ix_([i3[p] for p in pairs2], [i3[p] for p in pairs2])]
        assert np.max(np.abs(sub - C2[np.ix_([i2[p] for p in pairs2], [i2[p] for p in pairs2])])) < 1e-11
        assert np.max(np.abs(C3[i3[0, 2]] - C3[i3[0, 0]])) < 1e-11


# ----------------------------------------------------------------------------------------------- structure
def test_relu_closed_innermost_axis_matches_generic_kink_quadrature():
    """relu's closed innermost axis vs the generic kinked quadrature (what a user's kinked φ gets), also with a
    pair at ρ = 0.9999 (kinks far out on the inner axis)."""
    rho = 0.9999
    for K in (_kernel(3, 7), np.array([[1.0, rho, 0.3], [rho, 1.0, 0.3], [0.3, 0.3, 1.0]])):
        C, Cq = pair_covariance("relu", K), pair_covariance("relu", K, method="quadrature")
        assert np.max(np.abs(C - Cq)) < 1e-11 * np.max(np.abs(C))


def test_symmetric_psd_and_batched():
    """C = Cᵀ exactly, PSD (a covariance matrix), and a (2, 2) batch equals the kernels one by one."""
    Ks = np.stack([_kernel(3, s) * c for s, c in ((10, 1.0), (11, 4.0), (12, 0.1), (13, 1.0))]).reshape(2, 2, 3, 3)
    for name in ("tanh", "relu", "gelu"):
        C = pair_covariance(name, Ks)
        assert C.shape == (2, 2, 6, 6)
        assert np.array_equal(C, np.swapaxes(C, -1, -2))
        lam = np.linalg.eigvalsh(C)
        assert np.all(lam > -1e-12 * lam[..., -1:])
        assert np.max(np.abs(C[1, 0] - pair_covariance(name, Ks[1, 0]))) < 1e-12 * np.max(np.abs(C[1, 0]))


def test_monte_carlo_z_test_and_a_wrong_vertex_is_rejected():
    """10^6 fixed-seed draws of x ~ N(0, K), P = 3, tanh: every sample covariance of the p_r within 5 SE of C; the
    raw fourth moment E[p_r p_s] (omitting −F_r F_s) is rejected."""
    K = _kernel(3, 3)
    x = np.random.default_rng(2024).standard_normal((1_000_000, 3)) @ np.linalg.cholesky(K).T
    pb = pair_basis(3)
    t = np.tanh(x)
    pc = t[:, pb.a] * t[:, pb.b]
    pc -= pc.mean(axis=0)
    n = len(pc)
    est = pc.T @ pc / n                                              # sample covariances of the p_r
    se = np.sqrt(((pc * pc).T @ (pc * pc) / n - est ** 2) / n)       # SE of each: sd of pc_r pc_s over sqrt(n)
    z_right = (est - pair_covariance("tanh", K)) / se
    z_wrong = (est - _fourth("tanh", K)) / se
    assert np.max(np.abs(z_right)) < 5
    assert np.max(np.abs(z_wrong)) > 5


# ----------------------------------------------------------------------------------------------- errors
def test_bad_input_and_non_convergence():
    with pytest.raises(InputError, match="^K: not positive semi-definite"):
        pair_covariance("tanh", [[1.0, 2.0], [2.0, 1.0]])
    K = np.array([[1.0, 0.5], [0.3, 1.0]])                          # the symmetric part is used, as by F
    assert np.array_equal(pair_covariance("tanh", K), pair_covariance("tanh", 0.5 * (K + K.T)))
    with pytest.raises(InputError, match="^nodes: "):
        pair_covariance("tanh", K4, nodes=5)
    with pytest.raises(InputError, match="^tol: "):
        pair_covariance("tanh", K4, tol=0.0)
    with pytest.raises(ConvergenceError, match="^nodes: .*relative error .* pass nodes="):
        pair_covariance("tanh", 3 * K4[:3, :3], nodes=6)          # 6 -> 9 -> 14 nodes: ~1e-8, not 1e-10
