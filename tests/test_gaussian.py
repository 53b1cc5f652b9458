"""Gaussian-expectation engine (docs/numerics.md): closed forms vs quadrature vs Mehler series vs Monte Carlo,
Price's theorem, derivative maps vs finite differences, degenerate kernels, batching, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss

from kerneleft import gaussian as g
from kerneleft.activations import ACTIVATION_NAMES, Activation, get_activation
from kerneleft.tensors import apply

SMOOTH = ("tanh", "erf", "gelu", "silu", "sin", "softplus")
VARIANCES = (0.01, 0.3, 1.0, 5.0, 50.0)
RHOS = (0.0, 0.3, -0.6, 0.9, 0.999, 1.0)


def _grid():
    k11, k22, rho = np.meshgrid(VARIANCES, VARIANCES, RHOS, indexing="ij")
    return k11, k22, rho * np.sqrt(k11 * k22)


def _cs_scale(name, k, order):
    """sqrt(E[φ^(i)(u)²]) for i = 0..order, u ~ N(0, k): the Cauchy–Schwarz scale of the moments; (*k, o+1)."""
    x, w = hermegauss(150)
    d = get_activation(name).derivs(np.sqrt(np.asarray(k))[..., None] * x, order)
    return np.moveaxis(np.sqrt(np.sum(w / math.sqrt(2 * math.pi) * d ** 2, axis=-1)), 0, -1)


def _random_kernel(P, seed, ridge=0.2):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, P + 2))
    return X @ X.T / (P + 2) + ridge * np.eye(P)


def _sym(P, seed):
    A = np.random.default_rng(seed).standard_normal((P, P))
    return 0.5 * (A + A.T)


# ----------------------------------------------------------------------------------------- closed vs quadrature
@pytest.mark.parametrize("name", ["erf", "sin"])
def test_quadrature_matches_closed_form(name):
    """Orders <= 4 (all that F, DF, D²F use), variances 0.01..50, ρ up to exactly 1: error < 1e-10 of the
    Cauchy–Schwarz scale sqrt(E[φ^(i)²] E[φ^(j)²]) (sin moments at large variance are e^{-k}-small, so an
    entrywise relative error is meaningless there), and entrywise relative < 1e-10 for F itself where F is not
    tiny. Diagonal moments: relative to the largest of the row."""
    k11, k22, k12 = _grid()
    Mq = g.pair_moments(name, k11, k22, k12, 4, method="quadrature")
    Mc = g.pair_moments(name, k11, k22, k12, 4, method="closed")
    assert np.all(np.isfinite(Mq))
    scale = _cs_scale(name, k11, 4)[..., :, None] * _cs_scale(name, k22, 4)[..., None, :]
    assert np.max(np.abs(Mq - Mc) / np.maximum(np.abs(Mc), scale)) < 1e-10
    big = np.abs(Mc[..., 0, 0]) > 1e-3
    assert np.max(np.abs(Mq - Mc)[..., 0, 0][big] / np.abs(Mc[..., 0, 0][big])) < 1e-10
    k = np.array(VARIANCES)
    Dq, Dc = g.diag_moments(name, k, 6, method="quadrature"), g.diag_moments(name, k, 6, method="closed")
    assert np.max(np.abs(Dq - Dc) / np.max(np.abs(Dc), axis=-1, keepdims=True)) < 1e-10


def test_closed_forms_known_values():
    """Arc-cosine, arcsine and sin kernels at hand-checked points."""
    k = 2.0
    assert g.F("relu", [[k, 0.0], [0.0, k]])[0, 1] == pytest.approx(k / (2 * np.pi))           # θ = π/2
    assert g.F("relu", [[k, k], [k, k]])[0, 1] == pytest.approx(k / 2)                        # E[relu²]
    M = g.pair_moments("relu", k, k, 0.0, 2)
    assert M[1, 1] == pytest.approx(0.25) and M[0, 1] == pytest.approx(np.sqrt(k) / (2 * np.sqrt(2 * np.pi)))
    assert g.F("erf", [[1.0, 0.5], [0.5, 2.0]])[0, 1] == pytest.approx(2 / np.pi * np.arcsin(1 / np.sqrt(15)))
    assert g.F("sin", [[1.0, 0.5], [0.5, 2.0]])[0, 1] == pytest.approx(np.exp(-1.5) * np.sinh(0.5))
    assert g.F("sin", [[1.0]])[0, 0] == pytest.approx(0.5 * (1 - np.exp(-2.0)))


def test_relu_jacobian_is_arc_cosine_derivative():
    """∂F_ab/∂K_ab (both orders of the pair) = (π − θ)/(2π) = E[Θ(u)Θ(v)] (Price)."""
    K = np.array([[1.2, 0.4, -0.3], [0.4, 0.8, 0.1], [-0.3, 0.1, 2.0]])
    J = g.jacobian("relu", K)
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        theta = np.arccos(K[a, b] / np.sqrt(K[a, a] * K[b, b]))
        assert J[a, b, a, b] + J[a, b, b, a] == pytest.approx((np.pi - theta) / (2 * np.pi), rel=1e-13)
        assert J[a, b, a, a] == pytest.approx(                                                  # ½ E[δ(u) relu(v)]
            0.5 * np.sqrt(K[b, b] - K[a, b] ** 2 / K[a, a]) / (2 * np.pi * np.sqrt(K[a, a])), rel=1e-13)


# ----------------------------------------------------------------------------------------- high orders: Mehler
def _hermite_coefficients(name, k, nmax):
    """â_n = E[φ(√k x) He_n(x)] / √n! by 170-node Gauss–Hermite (relu: exact), n = 0..nmax."""
    if name == "relu":
        c = np.zeros(nmax + 1)
        c[0], c[1] = 1 / math.sqrt(2 * math.pi), 0.5
        for n in range(2, nmax + 1, 2):
            p = n - 2
            c[n] = (-1) ** (p // 2) * math.prod(range(p - 1, 0, -2)) / math.sqrt(2 * math.pi * math.factorial(n))
        return math.sqrt(k) * c
    x, w = hermegauss(170)
    h = [np.ones_like(x), x]
    for n in range(1, nmax):
        h.append((x * h[n] - math.sqrt(n) * h[n - 1]) / math.sqrt(n + 1))
    f = w / math.sqrt(2 * math.pi) * get_activation(name)(math.sqrt(k) * x)
    return np.array([np.sum(f * hn) for hn in h])


def _mehler(name, k11, k22, rho, order, terms=90):
    """E[φ^(i)(u) φ^(j)(v)] = k11^{-i/2} k22^{-j/2} Σ_m a_{m+i} b_{m+j} ρ^m / m!  (Hermite coefficients a, b)."""
    a, b = _hermite_coefficients(name, k11, terms + order), _hermite_coefficients(name, k22, terms + order)
    lf = np.array([math.lgamma(n + 1) for n in range(terms + order + 1)])
    m = np.arange(terms)
    M = np.zeros((order + 1, order + 1))
    for i in range(order + 1):
        for j in range(order + 1 - i):
            t = a[m + i] * b[m + j] * np.exp(0.5 * (lf[m + i] + lf[m + j]) - lf[m]) * rho ** m
            M[i, j] = t.sum() * k11 ** (-i / 2) * k22 ** (-j / 2)
    return M


@pytest.mark.parametrize("name,tol", [("tanh", 1e-10), ("erf", 1e-12), ("gelu", 1e-10), ("sin", 1e-9),
                                      ("relu", 1e-12), ("softplus", 1e-10)])
def test_order_12_moments_match_mehler_series(name, tol):
    """All E[φ^(i)(u) φ^(j)(v)], i + j <= 12, on a non-degenerate block vs an independent Mehler-series value."""
    k11, k22, rho = 0.7, 1.3, -0.45
    M, err = g.pair_moments(name, k11, k22, rho * np.sqrt(k11 * k22), 12, with_error=True)
    R = _mehler(name, k11, k22, rho, 12)
    i, j = np.indices(M.shape)
    nz = (i + j <= 12) & (np.abs(R) > 1e-8 * np.abs(R).max())
    assert np.max(np.abs(M - R)[nz] / np.abs(R)[nz]) < tol
    assert np.all(err[nz] < 1e-3 * np.abs(R)[nz])


def test_high_order_quadrature_vs_erf_closed_form_and_error_bound():
    """Order 20: quadrature (every Hermite split) vs the exact erf derivatives; the returned rounding bound
    covers the actual error."""
    k11, k22, rho = np.meshgrid([0.1, 1.0, 4.0], [0.3, 2.0], [0.2, -0.7], indexing="ij")
    k12 = rho * np.sqrt(k11 * k22)
    Mq, err = g.pair_moments("erf", k11, k22, k12, 20, method="quadrature", with_error=True)
    Mc = g.pair_moments("erf", k11, k22, k12, 20)
    nz = np.abs(Mc) > 1e-250
    rel = np.abs(Mq - Mc)[nz] / np.abs(Mc)[nz]
    assert np.median(rel) < 1e-13 and rel.max() < 1e-9
    assert np.all(np.abs(Mq - Mc) <= err + 1e-15 * np.abs(Mc))


# ----------------------------------------------------------------------------------------- Price's theorem
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_price_theorem_and_heat_equation(name):
    """∂M_ij/∂k12 = M_{i+1,j+1}, 2 ∂M_ij/∂k11 = M_{i+2,j}, and 2 ∂D_m/∂k = D_{m+2} (central differences)."""
    k11, k22, k12, h = 0.8, 1.4, 0.5, 1e-5
    M = g.pair_moments(name, k11, k22, k12, 5)
    dk12 = (g.pair_moments(name, k11, k22, k12 + h, 3) - g.pair_moments(name, k11, k22, k12 - h, 3)) / (2 * h)
    dk11 = (g.pair_moments(name, k11 + h, k22, k12, 3) - g.pair_moments(name, k11 - h, k22, k12, 3)) / (2 * h)
    scale = np.max(np.abs(M))
    for i in range(3):
        for j in range(3 - i):
            assert dk12[i, j] == pytest.approx(M[i + 1, j + 1], abs=1e-7 * scale)
            assert 2 * dk11[i, j] == pytest.approx(M[i + 2, j], abs=1e-7 * scale)
    k = 0.9
    D = g.diag_moments(name, k, 5)
    dD = (g.diag_moments(name, k + h, 3) - g.diag_moments(name, k - h, 3)) / (2 * h)
    assert np.allclose(2 * dD, D[2:], rtol=1e-7, atol=1e-7 * np.max(np.abs(D)))


# ----------------------------------------------------------------------------------------- derivative maps
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_DF_D2F_match_finite_differences_of_F(name):
    """Symmetric perturbations X, Y: DF[X] and D²F[X, Y] vs central differences of F; J and H contract to them."""
    P = 3
    K, X, Y = _random_kernel(P, 1), _sym(P, 2), _sym(P, 3)
    h1, h2 = 1e-4, 2e-3
    fd1 = (g.F(name, K + h1 * X) - g.F(name, K - h1 * X)) / (2 * h1)
    fd2 = (g.F(name, K + h2 * (X + Y)) - g.F(name, K + h2 * (X - Y)) - g.F(name, K - h2 * (X - Y))
           + g.F(name, K - h2 * (X + Y))) / (4 * h2 ** 2)
    d1, d2 = g.DF(name, K, X), g.D2F(name, K, X, Y)
    assert np.allclose(d1, fd1, rtol=1e-6, atol=1e-7)
    assert np.allclose(d2, fd2, rtol=1e-4, atol=1e-5)
    assert np.allclose(apply(g.jacobian(name, K), X), d1, rtol=1e-12, atol=1e-14)
    H = g.hessian(name, K)
    assert np.allclose(np.einsum("abefgh,ef,gh->ab", H, X, Y), d2, rtol=1e-12, atol=1e-14)


def test_linear_activation_is_exact():
    """φ(x) = x: F(K) = K, J = identity on symmetric matrices, H = 0 (I4, docs/exact.md#identities)."""
    K = _random_kernel(4, 5)
    assert np.allclose(g.F("linear", K), K, rtol=1e-14)
    J = g.jacobian("linear", K)
    X = _sym(4, 6)
    assert np.allclose(apply(J, X), X, rtol=1e-14)
    assert np.allclose(J, np.swapaxes(J, -1, -2)) and np.all(g.hessian("linear", K) == 0)


# ----------------------------------------------------------------------------------------- Monte Carlo
def _mc_zscores(name, K, F_theory, n=200_000, seed=7):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, K.shape[0])) @ np.linalg.cholesky(K).T
    p = get_activation(name)(z)
    prod = p[:, :, None] * p[:, None, :]
    return (prod.mean(0) - F_theory) / (prod.std(0, ddof=1) / np.sqrt(n))


def test_F_agrees_with_large_monte_carlo_and_a_wrong_F_is_rejected():
    """|z| < 4.5 for all 6 entries x 8 activations (fixed seed); F of the kernel scaled by 1.05 gives |z| > 4.5."""
    K = np.array([[1.0, 0.6, -0.2], [0.6, 1.5, 0.3], [-0.2, 0.3, 0.7]])
    iu = np.triu_indices(3)
    for name in ACTIVATION_NAMES:
        assert np.max(np.abs(_mc_zscores(name, K, g.F(name, K))[iu])) < 4.5, name
        assert np.max(np.abs(_mc_zscores(name, K, g.F(name, 1.05 * K))[iu])) > 4.5, name


# ----------------------------------------------------------------------------------------- degenerate, P, batching
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
@pytest.mark.parametrize("P", [1, 2, 3, 16])
def test_every_P_and_identical_inputs_without_nan(name, P):
    """Inputs 0 and 1 identical (exactly degenerate block), plus a nearly degenerate pair for P >= 3.

    F, J, H contain no NaN; everything is finite except relu's second-order derivative moments (δ-type) at the
    exactly degenerate block, which truly diverge and are ±inf. F_01 equals the diagonal F_00."""
    K = _random_kernel(P, 11 + P)
    if P >= 2:
        K[1, :], K[:, 1] = K[0, :], K[:, 0]
        K[1, 1] = K[0, 0]
    if P >= 3:
        K[2, 0] = K[0, 2] = (1 - 1e-12) * np.sqrt(K[0, 0] * K[2, 2])
    Fv = g.F(name, K)
    if P >= 2:
        assert Fv[0, 1] == pytest.approx(Fv[0, 0], rel=1e-11)
    for A in (Fv, g.jacobian(name, K), g.hessian(name, K)):
        assert not np.any(np.isnan(A))
        if name != "relu" or A.ndim < 6:
            assert np.all(np.isfinite(A))
    if name == "relu" and P >= 2:
        H = g.hessian(name, K)
        assert np.isinf(H[0, 1, 0, 1, 0, 1]) and np.all(np.isfinite(np.delete(np.delete(H, 1, 0), 1, 1)))


@pytest.mark.parametrize("name", SMOOTH)
def test_degenerate_block_is_continuous_limit(name):
    """At ρ = 1 the quadrature has no inner integral; values must be the limit of ρ -> 1."""
    k11, k22 = 0.6, 2.2
    s = np.sqrt(k11 * k22)
    M1 = g.pair_moments(name, k11, k22, s, 4, method="quadrature")
    M0 = g.pair_moments(name, k11, k22, s * (1 - 1e-10), 4, method="quadrature")
    assert np.allclose(M1, M0, rtol=1e-8, atol=1e-9 * np.max(np.abs(M1)))


def test_batched_over_leading_axes():
    Ks = np.stack([_random_kernel(3, s) for s in range(4)]).reshape(2, 2, 3, 3)
    X = _sym(3, 9)
    for name in ("tanh", "relu"):
        Fb, Jb, Db = g.F(name, Ks), g.jacobian(name, Ks), g.D2F(name, Ks, X, X)
        for idx in np.ndindex(2, 2):
            assert np.allclose(Fb[idx], g.F(name, Ks[idx]), rtol=1e-14)
            assert np.allclose(Jb[idx], g.jacobian(name, Ks[idx]), rtol=1e-14)
            assert np.allclose(Db[idx], g.D2F(name, Ks[idx], X, X), rtol=1e-14)


def test_derivative_moment_multi_index():
    K = _random_kernel(4, 3)
    M = g.pair_moments("tanh", K[1, 1], K[3, 3], K[1, 3], 5)
    out = g.derivative_moment("tanh", K, (0, 2, 0, 3))
    assert out[1, 3] == out[3, 1] == pytest.approx(M[2, 3], rel=1e-14)
    assert np.count_nonzero(out) == 2
    single = g.derivative_moment("gelu", K, (0, 0, 4, 0))
    assert single[2, 2] == pytest.approx(g.diag_moments("gelu", K[2, 2], 4)[4], rel=1e-14)
    assert single[2, 0] == pytest.approx(g.pair_moments("gelu", K[2, 2], K[0, 0], K[2, 0], 4)[4, 0], rel=1e-14)
    assert single[0, 1] == 0.0
    assert np.all(g.derivative_moment("erf", K, (1, 1, 1, 0)) == 0)
    assert np.allclose(g.derivative_moment("erf", K, (0, 0, 0, 0)), g.F("erf", K))
    H = g.hessian("sin", K)
    assert 0.25 * g.derivative_moment("sin", K, (3, 1, 0, 0))[0, 1] == pytest.approx(H[0, 1, 0, 0, 0, 1])


# ----------------------------------------------------------------------------------------- user callables
def test_user_callable_uses_hermite_route():
    """A plain callable (no derivatives) reproduces tanh on non-degenerate blocks; with exact ``derivs`` it also
    works on an exactly degenerate block; without, derivative orders there are NaN (documented limitation)."""
    plain = get_activation(lambda x: np.tanh(x))
    K = _random_kernel(3, 4)
    assert np.allclose(g.F(plain, K), g.F("tanh", K), rtol=1e-12)
    assert np.allclose(g.jacobian(plain, K), g.jacobian("tanh", K), rtol=1e-10, atol=1e-12)
    assert np.allclose(g.hessian(plain, K), g.hessian("tanh", K), rtol=1e-9, atol=1e-11)
    assert np.allclose(g.diag_moments(plain, 0.7, 8), g.diag_moments("tanh", 0.7, 8), rtol=1e-10, atol=1e-12)
    assert np.isnan(g.pair_moments(plain, 1.0, 1.0, 1.0, 2)[1, 1])
    assert g.pair_moments(plain, 1.0, 1.0, 1.0, 0)[0, 0] == pytest.approx(g.F("tanh", [[1.0]])[0, 0])
    with_d = Activation("mytanh", np.tanh, derivs=get_activation("tanh").derivs)
    Kd = np.array([[1.0, 1.0], [1.0, 1.0]])
    assert np.allclose(g.hessian(with_d, Kd), g.hessian("tanh", Kd), rtol=1e-10)


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call,field", [
    (lambda: g.F("tanh", np.ones((2, 3))), "K"),
    (lambda: g.F("tanh", [[1.0, np.nan], [np.nan, 1.0]]), "K"),
    (lambda: g.F("tanh", [[1.0, 2.0], [2.0, 1.0]]), "K"),
    (lambda: g.pair_moments("tanh", 1.0, 1.0, 1.5, 1), "k12"),
    (lambda: g.pair_moments("tanh", -1.0, 1.0, 0.0, 1), "k11"),
    (lambda: g.F("tanh", [[-1.0]]), "K"),
    (lambda: g.diag_moments("tanh", -1.0, 1), "k"),
    (lambda: g.pair_moments("tanh", 1.0, 1.0, 0.0, -1), "order"),
    (lambda: g.pair_moments("tanh", 1.0, 1.0, 0.0, 2, method="magic"), "method"),
    (lambda: g.pair_moments("tanh", 1.0, 1.0, 0.0, 2, method="closed"), "method"),
    (lambda: g.derivative_moment("tanh", np.eye(2), (1, 2, 3)), "alpha"),
    (lambda: g.F("nope", np.eye(2)), "activation"),
])
def test_bad_input_names_the_field(call, field):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value).startswith(f"{field}:") and "\n" not in str(e.value)


def test_order_must_be_integer():
    with pytest.raises(TypeError, match="^order:"):
        g.pair_moments("tanh", 1.0, 1.0, 0.0, 1.5)
