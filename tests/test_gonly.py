"""G-only EFT (docs/gonly.md): exactness for linear φ (I4), discrete recursions vs the G-only chain, depth models."""
import numpy as np
import pytest

from kerneleft.coefficients import coefficients, derivatives, hessian_pairs, jacobian_pairs, tadpole
from kerneleft.config import Network
from kerneleft.ensemble import get_method, simulate
from kerneleft.gaussian import F, hessian, jacobian
from kerneleft.pairs import pair_basis
from kerneleft.samplers import gonly_chain
from kerneleft.tensors import apply, box, circ
from kerneleft.theory import solve
from kerneleft.theory.gonly import solve_gonly
from kerneleft.theory.sigma import time_grid

PB2, PB3 = pair_basis(2), pair_basis(3)

K_IN = [[1.0, 0.6], [0.6, 1.5]]


def _net(act="tanh", depth=20, C_W=2.0, C_b=0.0, T=2.0, K_in=K_IN):
    return Network(activation=act, C_W=C_W, C_b=C_b, T=T, depth=depth, K_in=K_in)


def _rearrange(V, four=True):
    """V[a,c,b,d] + V[a,d,b,c] (+ V[b,c,a,d] + V[b,d,a,c]): the 1/n parts of E[G⊠S], E[S∘S] (docs/model.md#tensor-conventions)."""
    R = np.einsum("acbd->abcd", V) + np.einsum("adbc->abcd", V)
    return R + np.einsum("bcad->abcd", V) + np.einsum("bdac->abcd", V) if four else R


def _exact_linear(net, n):
    """Exact finite-n E[G], n Cov[G] of the linear network from I1–I2 (S = C_W G + C_b closes, I4)."""
    e, c = net.eps, net.C_W
    m, V = [net.K_in], [circ(net.K_in)]
    for _ in range(net.depth):
        s = c * m[-1] + net.C_b
        V.append((1 + e * c) ** 2 * V[-1] + e * (box(m[-1], s) + c * _rearrange(V[-1]) / n)
                 + e ** 2 * (circ(s) + c ** 2 * _rearrange(V[-1], four=False) / n))
        m.append(m[-1] + e * s)
    return np.array(m), np.array(V)


def _z(sim, se, theory):
    return np.abs(sim - theory) / np.where(se > 0, se, np.inf)


def test_linear_discrete_is_the_large_n_limit_of_the_exact_moments():
    net = _net("linear", depth=10, C_W=1.5, C_b=0.2)
    th = solve_gonly(net, "discrete")
    assert np.all(th.K1 == 0)
    diffs = {n: _exact_linear(net, n)[1] - th.V4 for n in (1e3, 2e3, 1e12)}
    np.testing.assert_allclose(_exact_linear(net, 5)[0], th.K0, rtol=1e-13)         # the mean closes exactly
    assert np.max(np.abs(diffs[1e12])) < 1e-9 * np.max(np.abs(th.V4))
    np.testing.assert_allclose(2e3 * diffs[2e3], 1e3 * diffs[1e3], rtol=2e-3, atol=1e-9)   # O(1/n) exactly


def test_linear_continuous_closed_form():
    net = _net("linear", depth=8, C_W=1.3)
    th = solve(net, "g-only", "continuous", rtol=1e-10, atol=1e-12)
    ct = net.C_W * net.t[:, None, None, None, None]
    np.testing.assert_allclose(th.V4, np.exp(2 * ct) * (1 + 2 * ct) * circ(net.K_in), rtol=1e-8)
    np.testing.assert_allclose(th.K0, net.K_in * np.exp(net.C_W * net.t)[:, None, None], rtol=1e-9)
    assert np.max(np.abs(th.K1)) < 1e-12


def test_linear_chain_reproduces_exact_finite_width_and_rejects_leading_order():
    net, n = _net("linear", depth=6, C_W=1.0, C_b=0.1, T=1.5), 3
    r = simulate(net, n, 40_000, seed=11, method="g-only-chain", progress=False)
    m, V = _exact_linear(net, n)
    assert _z(r["G_mean"], r.se["G_mean"], m).max() < 4.5
    assert _z(r.V4, r.se["V4"], V).max() < 4.5
    assert _z(r.K1, r.se["K1"], 0.0).max() < 4.5
    assert _z(r.V4, r.se["V4"], solve_gonly(net, "discrete").V4).max() > 8        # O(1/n) is visible at n = 3


def _no_eps2(net):
    """A wrong discrete V4: the discrete G-only recursion without its ε² S̄∘S̄ term."""
    K0 = solve_gonly(net, "discrete").K0
    c = coefficients(net, K0[:-1])
    A = np.eye(3) + net.eps * c.T
    V = [PB2.vec4(circ(net.K_in))]
    for l in range(net.depth):
        V.append(A[l] @ V[-1] @ A[l].T + net.eps * PB2.vec4(box(K0[l], PB2.mat(c.S_bar[l]))))
    return PB2.mat4(np.array(V))


def test_discrete_recursions_match_gonly_chain_and_wrong_theories_are_rejected():
    net = _net("erf", depth=4)                                  # ε = 0.5: the ε² terms matter
    r = simulate(net, 1000, 150_000, seed=5, method="g-only-chain", progress=False)
    th = solve_gonly(net, "discrete")
    for q in ("V4", "K1"):
        assert _z(r[q], r.se[q], th[q]).max() < 4.5, q
    assert _z(r.V4, r.se["V4"], solve_gonly(net, "continuous").V4).max() > 10
    assert _z(r.V4, r.se["V4"], _no_eps2(net)).max() > 10


def test_continuous_and_discrete_differ_by_order_one_over_L():
    errs = []
    for L in (25, 50, 100):
        net = _net("tanh", depth=L)
        d, c = solve_gonly(net, "discrete"), solve(net, "g-only")
        errs.append([np.max(np.abs(d[q][-1] - c[q][-1])) for q in ("K0", "V4", "K1")])
    ratio = np.array(errs[:-1]) / np.array(errs[1:])
    np.testing.assert_allclose(ratio, 2.0, rtol=0.05)


@pytest.mark.parametrize("act", ["tanh", "relu", "erf", "gelu"])
def test_pair_coefficients_equal_full_engine_tensors(act):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3, 5))
    K = X @ X.T / 5 + 0.1
    net = _net(act, K_in=K, C_W=1.7, C_b=0.3)
    c = coefficients(net, K)
    Y = rng.standard_normal((3, 3))
    Y = Y + Y.T
    V4 = circ(Y) + box(K, Y)
    np.testing.assert_allclose(c.S_bar, PB3.vec(1.7 * F(act, K) + 0.3), rtol=1e-13)
    np.testing.assert_allclose(c.T @ PB3.vec(Y), PB3.vec(1.7 * apply(jacobian(act, K), Y)), rtol=1e-12,
                               atol=1e-13)
    H = 1.7 * hessian(act, K)
    np.testing.assert_allclose(tadpole(c, PB3.vec4(V4)), PB3.vec(0.5 * np.einsum("abefgh,efgh->ab", H, V4)),
                               rtol=1e-12, atol=1e-13)
    # the sigma solver's Jp, Hp are the same operators without C_W: 𝒯 = C_W·Jp, ½ℋ:V = C_W/8 Hp:V
    d = derivatives(act, K)
    np.testing.assert_array_equal(c.T, 1.7 * jacobian_pairs(d))
    Hp = hessian_pairs(d)
    np.testing.assert_allclose(tadpole(c, PB3.vec4(V4)), 1.7 / 8 * np.einsum("rsu,su->r", Hp, PB3.vec4(V4)),
                               rtol=1e-12, atol=1e-13)


def test_sigma_transport_is_the_gonly_transport():
    """The sigma solver's time grid carries Jp with 𝒯 = C_W·Jp, bit for bit the G-only transport matrix."""
    net = _net("tanh", depth=4, K_in=np.eye(3) + 0.3)
    tg = time_grid(net, "discrete")
    np.testing.assert_array_equal(net.C_W * tg.Jp, coefficients(net, tg.K).T)
    assert not np.array_equal(tg.Jp, coefficients(net, tg.K).T)          # C_W = 2 is not folded into Jp


def test_pair_basis_round_trips_and_multiplicities():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4, 4))
    X = X + X.T
    p = pair_basis(4)
    assert p.N == 10 and pair_basis(4) is p and not p.a.flags.writeable
    np.testing.assert_array_equal(p.mat(p.vec(X)), X)
    V4 = circ(X)
    np.testing.assert_array_equal(p.mat4(p.vec4(V4)), V4)
    Y = rng.standard_normal((4, 4))
    Y = Y + Y.T
    np.testing.assert_allclose(p.vec4(V4) @ (p.mult * p.vec(Y)), p.vec(apply(V4, Y)), rtol=1e-12)   # ordered sums
    np.testing.assert_array_equal(p.weight, p.mult[p.loc] * np.where(p.off[:, None], 1.0, [1.0, 0.0, 0.0]))


def test_p8_shapes_symmetries_and_depth_models_agree():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 12))
    net = _net("erf", depth=400, K_in=X @ X.T / 12, C_b=0.1)
    c, d = solve_gonly(net), solve_gonly(net, "discrete")
    assert c.V4.shape == (401,) + (8,) * 4 and c.K1.shape == (401, 8, 8)
    for V in (c.V4, d.V4):
        np.testing.assert_array_equal(V, V.transpose(0, 2, 1, 3, 4))
        np.testing.assert_allclose(V, V.transpose(0, 3, 4, 1, 2), rtol=1e-10)
    for q in ("K0", "V4", "K1"):
        assert np.max(np.abs(c[q] - d[q])) < 0.02 * np.max(np.abs(c[q]))


def test_chain_registered_and_consistent():
    assert get_method("g-only-chain") is gonly_chain
    net = _net("tanh", depth=3, K_in=np.eye(3) + 0.2)
    G, Sigma = gonly_chain(net, 2, 5, np.random.default_rng(0))                  # width < P: rank-2 Gram
    assert G.shape == Sigma.shape == (5, 4, 3, 3)
    np.testing.assert_allclose(Sigma, F("tanh", G), rtol=1e-12)
    assert np.all(np.linalg.matrix_rank(G[:, 0]) == 2)


def test_bad_input():
    net = _net(depth=2)
    with pytest.raises(ValueError, match="^depth_model:"):
        solve_gonly(net, "euler")
    with pytest.raises(ValueError, match="^closure:"):
        solve(net, "gauss")
    with pytest.raises(ValueError, match="^rtol:"):
        solve(net, "g-only", rtol=-1.0)
