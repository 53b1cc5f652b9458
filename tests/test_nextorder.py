"""The next order in 1/n (docs/nextorder.md): exact identities, limits, consistency with the leading order,
refusals, and simulation (a width fit over four widths that accepts the sigma V4_1 and rejects the G-only one)."""
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from kerneleft.config import Network
from kerneleft.errors import ConvergenceError, InputError
from kerneleft.ensemble import simulate
from kerneleft.estimators import extrapolate_width
from kerneleft.theory import finite_width, solve
from kerneleft.theory.nextorder import (cluster_layers, cluster_march, gonly_continuous, gonly_discrete,
                                        mlp_next_order, sigma_next_order, source_closure)


def one(act="tanh", **kw):
    base = dict(activation=act, C_W=1.0, C_b=0.1, T=1.0, depth=6, K_in=np.array([[1.0]]))
    base.update(kw)
    return Network(**base)


def linear_exact(C_W, C_b, K, T):
    """Linear φ: S = C_W G + C_b exactly, so dE[G] = E[S], d Var = 2C_W Var + (4/n)E[G S]: closed moment ODEs."""
    def f(_t, y):
        K0, V, V1 = y
        return [C_W * K0 + C_b, 2 * C_W * V + 4 * (C_W * K0 ** 2 + C_b * K0), 2 * C_W * V1 + 4 * C_W * V]
    return solve_ivp(f, (0, T), [K, 2 * K ** 2, 0.0], rtol=1e-12, atol=1e-12).y[:, -1]


def test_linear_continuous_is_exact():
    net = one("linear", C_W=1.0, C_b=0.1, depth=4)
    r = cluster_march(net, 48, 16)                # RK4: the error falls like (steps)^-4
    K0, V4, V41 = linear_exact(1.0, 0.1, 1.0, 1.0)
    assert abs(r["K2"][-1]) < 1e-6 and abs(r["K1"][-1]) < 1e-8
    assert r["V4"][-1] == pytest.approx(V4, rel=1e-6)
    assert r["V4_1"][-1] == pytest.approx(V41, rel=1e-6)
    g = gonly_continuous(net)               # for linear φ the G-only closure is exact at every order
    assert g["V4_1"][-1] == pytest.approx(V41, rel=1e-8) and abs(g["K2"][-1]) < 1e-12


def test_linear_discrete_is_exact():
    net = one("linear", C_W=0.8, C_b=0.2, depth=4)
    r, g = cluster_layers(net, 48), gonly_discrete(net)
    np.testing.assert_allclose(r["V4_1"], g["V4_1"], rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(r["V4"], g["V4"], rtol=1e-10)
    assert np.abs(r["K2"]).max() < 1e-6 and np.abs(g["K2"]).max() == 0


@pytest.mark.parametrize("depth_model", ["continuous", "discrete"])
def test_leading_order_of_the_clusters_is_the_sigma_theory(depth_model):
    net = one("gelu", C_W=1.5)
    ref = solve(net, "sigma", depth_model, tol=1e-6)
    r = cluster_march(net, 72, 8) if depth_model == "continuous" else cluster_layers(net, 72)
    np.testing.assert_allclose(r["K1"], ref.K1[:, 0, 0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(r["V4"], ref.V4[:, 0, 0, 0, 0], rtol=1e-7)


def test_discrete_tends_to_continuous():
    """The exact block map (derived by the cluster expansion) and the continuous equations (derived by hand) agree
    as L -> ∞: Richardson extrapolation of L = 8, 16, 32 (errors a/L + b/L²) against the ODEs."""
    kw = dict(activation="erf", C_W=2.0, T=1.5)
    d10, d20, d40 = (cluster_layers(one(depth=L, **kw), 72) for L in (8, 16, 32))
    c = cluster_march(one(depth=8, **kw), 72, 8)
    for k in ("K2", "V4_1", "K1"):
        r1, r2 = 2 * d20[k][-1] - d10[k][-1], 2 * d40[k][-1] - d20[k][-1]
        rich = (4 * r2 - r1) / 3
        assert rich == pytest.approx(c[k][-1], rel=3e-3), k
        assert abs(d40[k][-1] - c[k][-1]) > 10 * abs(rich - c[k][-1])     # the O(1/L) gap is real


def test_gonly_discrete_tends_to_continuous():
    kw = dict(activation="tanh", C_W=1.5, T=2.0)
    d1, d2 = (gonly_discrete(one(depth=L, **kw)) for L in (200, 400))
    c = gonly_continuous(one(depth=4, **kw))
    for k in ("K2", "V4_1", "T3"):
        assert 2 * d2[k][-1] - d1[k][-1] == pytest.approx(c[k][-1], rel=1e-4), k


def test_gonly_leading_order_is_the_gonly_theory():
    for net, dm in ((one("tanh", C_W=1.5), "continuous"), (one("relu", C_W=1.5), "discrete"),
                    (Network(architecture="mlp", activation="tanh", C_W=1.2, C_b=0.2, depth=5,
                             K_in=np.array([[0.7]])), "discrete")):
        ref = solve(net, "g-only", dm)
        r = gonly_next_order_arrays(net, dm)
        np.testing.assert_allclose(r["K1"], ref.K1[:, 0, 0], rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(r["V4"], ref.V4[:, 0, 0, 0, 0], rtol=1e-7)


def gonly_next_order_arrays(net, dm):
    if not net.residual:
        return mlp_next_order(net, "g-only")
    return gonly_discrete(net) if dm == "discrete" else gonly_continuous(net)


def test_relu_mlp_at_criticality_is_exact():
    """One input, C_W = 2, C_b = 0: n Var[G^l] = n K²[(1 + 5/n)^l (1 + 2/n) − 1], whose 1/n coefficient is
    V4_1 = K²(25 l(l−1)/2 + 10 l); K1 = K2 = 0 (E[G] = K exactly)."""
    K, L = 1.3, 7
    net = Network(architecture="mlp", activation="relu", C_W=2.0, C_b=0.0, depth=L, K_in=np.array([[K]]))
    res = solve(net, "sigma", "discrete", order=2)
    l = np.arange(L + 1)
    np.testing.assert_allclose(res["V4"][:, 0, 0, 0, 0], K ** 2 * (5 * l + 2), rtol=1e-12)
    np.testing.assert_allclose(res["V4_1"][:, 0, 0, 0, 0], K ** 2 * (12.5 * l * (l - 1) + 10 * l), rtol=1e-10)
    assert np.abs(res["K2"]).max() < 1e-12
    n = 1e6                                     # the exact form at large n: V4 + V4_1/n + O(n^-2)
    exact = n * K ** 2 * np.expm1(l * np.log1p(5 / n) + np.log1p(2 / n))
    np.testing.assert_allclose(res["V4"][:, 0, 0, 0, 0] + res["V4_1"][:, 0, 0, 0, 0] / n, exact, rtol=1e-9)


def test_mlp_leading_order_is_the_exact_recursion():
    net = Network(architecture="mlp", activation="tanh", C_W=1.0, C_b=0.2, depth=6, K_in=np.array([[1.0]]))
    res = solve(net, "sigma", "discrete", order=2)
    r = mlp_next_order(net, "sigma")
    np.testing.assert_allclose(r["K1"], res.K1[:, 0, 0], rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(r["V4"], res.V4[:, 0, 0, 0, 0], rtol=1e-8)


def test_identical_inputs_are_merged_and_predictions():
    net = one(K_in=np.array([[1.0, 1.0], [1.0, 1.0]]), depth=4)
    res = finite_width(solve(net, "g-only", "discrete", order=2), 32)
    assert res["K2"].shape == (5, 2, 2) and res["V4_1"].shape == (5, 2, 2, 2, 2)
    assert np.ptp(res["V4_1"][-1]) == 0
    np.testing.assert_allclose(res["G_mean_pred"], res.K0 + res.K1 / 32 + res["K2"] / 32 ** 2)
    np.testing.assert_allclose(res["V4_pred"], res.V4 + res["V4_1"] / 32)
    lead = finite_width(solve(net, "g-only", "discrete"), 32)
    np.testing.assert_allclose(lead["G_mean_pred"], lead.K0 + lead.K1 / 32)
    assert "K2" not in lead


@pytest.mark.parametrize("kw, match", [
    (dict(K_in=np.array([[1.0, 0.5], [0.5, 1.0]])), "order: 2 is implemented for one input"),
    (dict(branch=[{"layer": "phi"}, {"layer": "dense", "C_W": 1.0}, {"layer": "phi"}, {"layer": "dense", "C_W": 1.0}]),
     "order: 2 is implemented for the default"),
])
def test_unsupported_configs_are_refused(kw, match):
    base = dict(activation="tanh", C_W=1.0, C_b=0.1, T=1.0, depth=3, K_in=np.array([[1.0]]))
    base.update(kw)
    if "branch" in kw:
        base.pop("C_W"), base.pop("C_b")
    with pytest.raises(InputError, match=match):
        solve(Network(**base), "sigma", "discrete", order=2)


def test_bad_order_and_tol2():
    with pytest.raises(InputError, match="order: must be one of 1, 2"):
        solve(one(), "g-only", order=3)
    with pytest.raises(InputError, match="tol2"):
        solve(one(), "sigma", order=2, tol2=0.0)


def test_not_converged_is_loud():
    with pytest.raises(ConvergenceError, match="order 2: not converged"):
        sigma_next_order(one("relu", depth=2), "discrete", tol=1e-9, max_levels=2)


def test_simulation_width_fit_accepts_sigma_and_rejects_gonly():
    """relu block, one input, L = 6: y_n = n (n Var[G^L] − V4) at n = 16, 32, 64 fitted as B + C/n (V4, the
    exact leading order, fixed): B is the simulated V4_1. The sigma V4_1 lies within 3 SE; the G-only V4_1 and
    V4_1 = 0 are rejected (> 5 SE)."""
    net = one("relu", C_W=1.5, C_b=0.1, T=2.0, depth=6)
    sig = solve(net, "sigma", "discrete", order=2)
    go = solve(net, "g-only", "discrete", order=2)
    V4, V41, gV41 = sig["V4"][-1, 0, 0, 0, 0], sig["V4_1"][-1, 0, 0, 0, 0], go["V4_1"][-1, 0, 0, 0, 0]
    widths = [16, 32, 64]
    runs = [simulate(net, n, 240_000, seed=11 + n, progress=False) for n in widths]
    fit = extrapolate_width(widths, [n * (r["V4"][-1, 0, 0, 0, 0] - V4) for n, r in zip(widths, runs)],
                            [n * r.se["V4"][-1, 0, 0, 0, 0] for n, r in zip(widths, runs)], 1)
    B, se = fit.coef[0], fit.se[0]
    assert abs(B - V41) < 3 * se, (B, se, V41)
    assert abs(B - gV41) > 5 * se and abs(B) > 5 * se, (B, se, gV41)
    assert fit.chi2 < 9.0                               # one degree of freedom


def test_gonly_source_closure_term_by_term():
    """The K2 source (1/n² part of E[S]) against its G-only closure evaluated on the exact moments: equal for linear
    φ (the closure is exact there), wrong by far for tanh, where the cubic vertex times the Wishart skewness
    (T3 = 8K³ at t = 0) dominates the closure while the exact source starts near zero — the leading-order
    intra-neuron tadpole failure, one order up (docs/nextorder.md#gonly)."""
    lin = source_closure(one("linear", C_W=1.5, T=2.0, depth=6), "discrete")
    np.testing.assert_allclose(lin["closure"], lin["exact"], atol=1e-6 * np.abs(lin["T3"]).max() ** (1 / 3))
    np.testing.assert_allclose(lin["T3"], lin["T3_gonly"], rtol=1e-7)
    th = source_closure(one("tanh", C_W=1.5, T=2.0, depth=6), "discrete")
    assert np.all(np.abs(th["closure"][1:] - th["exact"][1:]) > 5 * np.abs(th["exact"][1:]))
    assert np.all(np.abs(th["cubic"][1:]) > np.abs(th["tadpole"][1:]) + np.abs(th["linear"][1:]))
    np.testing.assert_allclose(th["T3"][0], 8.0, rtol=1e-8)         # Wishart: 8 K_in³
