"""MLPs against the literature (docs/mlp.md): the exact relu chi-square law (docs/mlp.md#relu-exact), the
Roberts–Yaida single-input recursions (docs/mlp.md#roberts-yaida) and the sigma theory against width-extrapolated
exact ensembles (docs/mlp.md#recursion), with the G-only closure rejected where it fails.

Statistical tests are z-tests with the ensembles' own standard errors (docs/estimators.md#standard-errors), fixed
seeds, and each is paired with a wrong formula that the same data reject.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from kerneleft.config import Network
from kerneleft.ensemble import simulate
from kerneleft.estimators import extrapolate_width
from kerneleft.pairs import pair_basis
from kerneleft.theory import solve

Z_OK = 4.0          # max |z| accepted over all the layers and entries of one comparison
Z_REJECT = 6.0      # min max|z| at which a wrong formula counts as rejected

K_RELU = 1.3
RELU_CASES = {4: 2, 8: 3, 32: 6}    # width -> depth: l/n small enough that the SE of n Var[G] is reliable
RELU_SAMPLES = 40_000


def mlp(activation: str, C_W: float, C_b: float, depth: int, K_in) -> Network:
    return Network(activation=activation, C_W=C_W, C_b=C_b, architecture="mlp", depth=depth, K_in=K_in)


def relu_exact_nvar(n: int, l: np.ndarray, K: float) -> np.ndarray:
    """n Var[G^l] of the relu MLP at criticality, one input, exactly at width n (docs/mlp.md#relu-exact)."""
    return n * K ** 2 * ((1 + 5 / n) ** l * (1 + 2 / n) - 1)


# --- relu at criticality: the exact chi-square law ------------------------------------------------------------

def test_relu_critical_theory_is_the_leading_order_of_the_exact_law():
    """K0 = K, K1 = 0, V4 = K²(5l + 2) exactly; G-only: V4 = 2(l + 1)K², K1 = 0 (docs/mlp.md#relu-exact)."""
    L, K = 8, K_RELU
    net = mlp("relu", 2.0, 0.0, L, [[K]])
    l = np.arange(L + 1)
    sig, gon = solve(net, "sigma", "discrete"), solve(net, "g-only", "discrete")
    np.testing.assert_allclose(sig["K0"][:, 0, 0], K, rtol=1e-13)
    np.testing.assert_allclose(sig["K1"][:, 0, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(sig["V4"][:, 0, 0, 0, 0], K ** 2 * (5 * l + 2), rtol=1e-12)
    np.testing.assert_allclose(gon["V4"][:, 0, 0, 0, 0], K ** 2 * 2 * (l + 1), rtol=1e-12)
    np.testing.assert_allclose(gon["K1"][:, 0, 0], 0.0, atol=1e-12)
    # the 1/n coefficient of the exact form: n (n Var[G] − V4) → K²(25 l(l − 1)/2 + 10 l), with an O(1/n) rest
    n = 1e5
    np.testing.assert_allclose(n * (relu_exact_nvar(n, l, K) - K ** 2 * (5 * l + 2)),
                               K ** 2 * (12.5 * l * (l - 1) + 10 * l), rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def relu_ensembles():
    """Conditional-sampler ensembles of the relu MLP at criticality, one per width (RELU_CASES)."""
    return {n: simulate(mlp("relu", 2.0, 0.0, L, [[K_RELU]]), n, RELU_SAMPLES, seed=11 + n, progress=False)
            for n, L in RELU_CASES.items()}


def test_relu_critical_mean_is_exactly_K_in(relu_ensembles):
    """E[G^l] = K_in and n(E[G^l] − K0) = 0 at every width and layer (docs/mlp.md#relu-exact)."""
    for n, r in relu_ensembles.items():
        z_mean = (r["G_mean"] - K_RELU) / r.se["G_mean"]
        z_k1 = r["K1"][1:] / r.se["K1"][1:]
        assert np.abs(z_mean).max() < Z_OK, (n, z_mean.ravel())
        assert np.abs(z_k1).max() < Z_OK, (n, z_k1.ravel())


def test_relu_critical_variance_has_the_exact_finite_width_form(relu_ensembles):
    """n Var[G^l] = n K²[(1 + 5/n)^l (1 + 2/n) − 1] and n Var[S^l] = n K²[(1 + 5/n)^{l+1} − 1] (S = 2Σ) at every
    layer and width; the leading order K²(5L + 2) is rejected at the last layer of every width (it misses the 1/n
    and higher terms: at n = 4, L = 2 the exact value is 2.2 times it)."""
    for n, r in relu_ensembles.items():
        l = np.arange(RELU_CASES[n] + 1)
        v, se = r["V4"][:, 0, 0, 0, 0], r.se["V4"][:, 0, 0, 0, 0]
        z = (v - relu_exact_nvar(n, l, K_RELU)) / se
        assert np.abs(z).max() < Z_OK, (n, z)
        exact_S = n * K_RELU ** 2 * ((1 + 5 / n) ** (l + 1) - 1)
        z_S = (4 * r["covSigma"][:, 0, 0, 0, 0] - exact_S) / (4 * r.se["covSigma"][:, 0, 0, 0, 0])
        assert np.abs(z_S).max() < Z_OK, (n, z_S)
        z_lead = (v[-1] - K_RELU ** 2 * (5 * l[-1] + 2)) / se[-1]
        assert z_lead > Z_REJECT, (n, z_lead)


# --- Roberts–Yaida single-input recursions ---------------------------------------------------------------------

def _gauss(f, K: float) -> float:
    """⟨f⟩_K = E f(z), z ~ N(0, K), by adaptive quadrature in x = z/√K."""
    s = math.sqrt(K)
    val, _ = integrate.quad(lambda x: f(s * x) * math.exp(-0.5 * x * x), -math.inf, math.inf, epsabs=0.0,
                            epsrel=1e-13, limit=400)
    return val / math.sqrt(2 * math.pi)


def _he4(z, K):
    """The bracket of the Roberts–Yaida K1 source: (z² − K)² − 4K(z² − K) − 2K² = z⁴ − 6Kz² + 3K²."""
    return (z * z - K) ** 2 - 4 * K * (z * z - K) - 2 * K * K


def roberts_yaida(sigma, C_W: float, C_b: float, K_in: float, L: int, bracket=_he4) -> dict[str, np.ndarray]:
    """The single-input Roberts–Yaida recursions in their variables (docs/mlp.md#roberts-yaida): K^(ℓ), V^(ℓ),
    G^{1}(ℓ) for ℓ = 1..L+1 (ℓ = l + 1 of our layer l), with χ_∥ = C_W/(2K²)⟨σ²(z² − K)⟩ and the source
    C_W/(8K⁴)⟨σ² bracket(z, K)⟩V. Returns our K0, V4 = 2K² + V, K1 = G^{1}, each (L+1,)."""
    K, V, G1 = K_in, 0.0, 0.0
    out = {"K0": [K], "V4": [2 * K ** 2], "K1": [G1]}
    for _ in range(L):
        s2 = _gauss(lambda z: sigma(z) ** 2, K)
        s4 = _gauss(lambda z: sigma(z) ** 4, K)
        chi = C_W / (2 * K ** 2) * _gauss(lambda z: sigma(z) ** 2 * (z * z - K), K)
        src = C_W / (8 * K ** 4) * _gauss(lambda z: sigma(z) ** 2 * bracket(z, K), K)
        K, V, G1 = C_b + C_W * s2, C_W ** 2 * (s4 - s2 * s2) + chi * chi * V, chi * G1 + src * V
        out["K0"].append(K)
        out["V4"].append(2 * K ** 2 + V)
        out["K1"].append(G1)
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("C_W, C_b, K_in", [(1.0, 0.0, 1.0), (1.5, 0.2, 0.7)], ids=["critical", "bias"])
def test_tanh_single_input_matches_roberts_yaida(C_W, C_b, K_in):
    """The sigma theory's K0, V4, K1 for one input equal the Roberts–Yaida recursions to ~1e-8 relative. Rejected:
    the same recursions with the source bracket cut to (z² − K)², and the G-only closure (its K1 carries the
    spurious Wishart tadpole, docs/mlp.md#recursion)."""
    L = 6
    net = mlp("tanh", C_W, C_b, L, [[K_in]])
    ry = roberts_yaida(np.tanh, C_W, C_b, K_in, L)
    sig = solve(net, "sigma", "discrete")
    for key, tol in (("K0", 1e-12), ("V4", 1e-8)):
        np.testing.assert_allclose(sig[key].reshape(L + 1, -1)[:, 0], ry[key], rtol=tol, err_msg=key)
    k1 = sig["K1"][:, 0, 0]
    np.testing.assert_allclose(k1, ry["K1"], rtol=1e-8, atol=1e-8 * np.abs(ry["K1"]).max())
    wrong = roberts_yaida(np.tanh, C_W, C_b, K_in, L, bracket=lambda z, K: (z * z - K) ** 2)["K1"]
    gon = solve(net, "g-only", "discrete")["K1"][:, 0, 0]
    for bad in (wrong, gon):
        assert np.abs(bad - k1).max() > 0.05 * np.abs(k1).max()


# --- two inputs: sigma theory against width-extrapolated exact ensembles ----------------------------------------

TANH_P2 = dict(activation="tanh", C_W=1.0, C_b=0.0, depth=4, K_in=[[1.0, 0.6], [0.6, 0.8]])
P2_WIDTHS = (16, 32, 64)
P2_SAMPLES = 40_000


def test_gonly_mlp_covariance_is_below_the_exact_one():
    """V4_sigma − V4_G-only = Σ transported C_W² Cov(p^⊥, p^⊥) is PSD over pairs at every layer and nonzero after
    the first (docs/mlp.md#recursion); tanh with two inputs and relu at criticality."""
    for net in (mlp(**TANH_P2),
                mlp("relu", 2.0, 0.0, 5, [[1.0, 0.3], [0.3, 2.0]])):
        p = pair_basis(net.P)
        diff = p.vec4(solve(net, "sigma", "discrete")["V4"]) - p.vec4(solve(net, "g-only", "discrete")["V4"])
        eig = np.linalg.eigvalsh(0.5 * (diff + diff.swapaxes(-1, -2)))
        scale = np.abs(diff).max()
        assert eig[0].max() == pytest.approx(0.0, abs=1e-13)
        assert eig.min() > -1e-12 * scale and np.all(eig[1:, -1] > 1e-3 * scale)


@pytest.fixture(scope="module")
def tanh_p2_fits():
    """Per-entry fits y_n = y_∞ + c/n over P2_WIDTHS of the conditional-sampler V4 and K1 (control-variate
    drift estimator) of the critical tanh MLP with two inputs."""
    net = mlp(**TANH_P2)
    runs = [simulate(net, n, P2_SAMPLES, seed=2024 + n, progress=False) for n in P2_WIDTHS]
    fits = {key: extrapolate_width(P2_WIDTHS, [r[key] for r in runs], [r.se[key] for r in runs])
            for key in ("V4", "K1_cv")}
    return net, fits


def _z(fit, value: np.ndarray) -> np.ndarray:
    """(fit − value)/SE over the entries with a nonzero SE (the exact ones, SE 0, are skipped)."""
    m = fit.value_se > 0
    return (fit.value - value)[m] / fit.value_se[m]


def test_tanh_two_inputs_sigma_theory_matches_extrapolated_simulation(tanh_p2_fits):
    """Sigma theory V4 and K1 within Z_OK SE of the n → ∞ fit at every layer and entry; the G-only closure's K1 and
    V4 rejected (docs/mlp.md#recursion)."""
    net, fits = tanh_p2_fits
    sig, gon = solve(net, "sigma", "discrete"), solve(net, "g-only", "discrete")
    for key, theory in (("V4", "V4"), ("K1_cv", "K1")):
        z = _z(fits[key], sig[theory])
        assert np.abs(z).max() < Z_OK, (key, z)
        z_gonly = _z(fits[key], gon[theory])
        assert np.abs(z_gonly).max() > Z_REJECT, (key, z_gonly)
