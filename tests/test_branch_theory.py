"""Theories for branches and MLPs (docs/architectures.md): jets against the kernel map, reductions that must hold
to rounding, and the sigma theory against exact ensembles (z-tests, a wrong theory rejected)."""
from __future__ import annotations

import numpy as np
import pytest

from kerneleft.branch import kernel_map
from kerneleft.coefficients import branch_coefficients
from kerneleft.config import Network
from kerneleft.ensemble import simulate
from kerneleft.kernel import kernel
from kerneleft.errors import InputError
from kerneleft.pairs import pair_basis
from kerneleft.theory import solve

K2 = [[1.0, 0.5], [0.5, 0.8]]
HE = [{"layer": "phi"}, {"layer": "dense", "C_W": 1.5, "C_b": 0.1}, {"layer": "phi"},
      {"layer": "dense", "C_W": 1.2, "C_b": 0.05}]
PRE_LN = [{"layer": "layernorm"}, {"layer": "dense", "C_W": 1.0, "C_b": 0.1, "width_ratio": 2.0}, {"layer": "phi"},
          {"layer": "dense", "C_W": 1.0, "C_b": 0.05}]
PRE_RMS = [dict(d, layer="rms") if d["layer"] == "layernorm" else d for d in PRE_LN]
POST_RMS = [{"layer": "phi"}, {"layer": "rms"}, {"layer": "dense", "C_W": 1.3, "C_b": 0.2}]
DENSE_FIRST = [{"layer": "dense", "C_W": 1.2, "C_b": 0.1, "width_ratio": 0.5}, {"layer": "phi"},
               {"layer": "dense", "C_W": 1.1}]


def _net(branch, act="gelu", depth=4, K=K2, **kw):
    return Network(activation=act, branch=branch, depth=depth, K_in=K, **({"T": 1.0} | kw))


@pytest.mark.parametrize("act", ["tanh", "relu", "gelu"])
@pytest.mark.parametrize("branch", [HE, PRE_LN, POST_RMS, DENSE_FIRST], ids=["he", "pre-ln", "post-rms", "dense"])
def test_jets_are_the_derivatives_of_the_kernel_map(act, branch):
    """S̄, 𝒯, ℋ of the theories (coefficients jets) against finite differences of the samplers' kernel map (the
    Law rules of branch.py, an independent implementation): value to 1e-13, 𝒯 to 1e-8, ℋ to 1e-5 (FD error)."""
    net = _net(branch, act)
    p = pair_basis(2)
    K = np.array(K2)
    c = branch_coefficients(net, K)
    x = p.vec(K)

    def f(y):
        return p.vec(kernel_map(net.branch, net.phi, p.mat(y)))

    E, h, h2 = np.eye(3), 1e-5, 1e-3
    D = np.stack([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in E], -1)
    D2 = np.stack([np.stack([(f(x + h2 * (e + d)) - f(x + h2 * (e - d)) - f(x - h2 * (e - d)) + f(x - h2 * (e + d)))
                             / (4 * h2 * h2) for d in E], -1) for e in E], -1)
    assert np.max(np.abs(c.S_bar - f(x))) < 1e-13
    assert np.max(np.abs(c.T - D)) < 1e-8
    assert np.max(np.abs(c.H - D2)) < 1e-5


@pytest.mark.parametrize("depth_model, tol", [("discrete", 1e-11), ("continuous", 1e-6)])
def test_prenorm_block_sigma_equals_gonly(depth_model, tol):
    """With a norm first, Σ depends on the residual stream only through G: the G-only closure is the exact leading
    order and the sigma theory reduces to it (docs/architectures.md#gonly-branches)."""
    net = _net(PRE_RMS, depth=5)
    s, g = solve(net, "sigma", depth_model), solve(net, "g-only", depth_model)
    for k in ("V4", "K1"):
        assert np.max(np.abs(s[k] - g[k])) <= tol * np.max(np.abs(s[k]))
    assert np.max(np.abs(s["K1"][:, [0, 1], [0, 1]])) < 1e-12        # E[G_aa] is exactly K0_aa


def test_layernorm_equals_rms_at_order_one_over_n():
    """n E[μμᵀ] = K and Dcorr·K = 0: layernorm and RMSNorm of a mean-zero field agree at O(1/n)
    (docs/architectures.md#layernorm)."""
    a, b = (solve(_net(br), "sigma", "discrete") for br in (PRE_LN, PRE_RMS))
    for k in ("K0", "V4", "K1", "covSigma"):
        assert np.array_equal(a[k], b[k])


@pytest.mark.parametrize("closure", ["g-only", "sigma"])
@pytest.mark.parametrize("depth_model", ["discrete", "continuous"])
def test_explicit_default_branch_is_the_default_block(closure, depth_model):
    a = solve(Network(activation="tanh", C_W=1.3, C_b=0.2, T=1.0, depth=4, K_in=K2), closure, depth_model)
    b = solve(_net([{"layer": "phi"}, {"layer": "dense", "C_W": 1.3, "C_b": 0.2}], "tanh"), closure, depth_model)
    for k in a.arrays:
        assert np.array_equal(a[k], b[k])


def test_linear_branch_has_no_K1_and_the_linear_V4():
    """Linear φ: Σ is quadratic in h, the sigma theory equals G-only, and a two-layer linear branch with C_b = 0
    has K1 = 0 on every entry (E[G] = K0 exactly)."""
    br = [{"layer": "phi"}, {"layer": "dense", "C_W": 1.2}, {"layer": "phi"}, {"layer": "dense", "C_W": 0.9}]
    net = _net(br, "linear")
    s, g = solve(net, "sigma", "discrete"), solve(net, "g-only", "discrete")
    assert np.max(np.abs(s["K1"])) < 1e-12
    assert np.max(np.abs(s["V4"] - g["V4"])) < 1e-10 * np.max(np.abs(s["V4"]))


def test_unsupported_segments_are_refused_by_the_theories_only():
    net = _net([{"layer": "rms"}, {"layer": "phi"}, {"layer": "dense", "C_W": 1.0}])
    assert np.all(np.isfinite(kernel(net, "continuous")["K0"]))
    for closure in ("sigma", "g-only"):
        with pytest.raises(InputError, match=r"^branch\[1\]: the theories do not support a norm before phi"):
            solve(net, closure, "discrete")
    post_ln = _net([{"layer": "phi"}, {"layer": "layernorm"}, {"layer": "dense", "C_W": 1.0}])
    with pytest.raises(InputError, match=r"^branch\[1\]: the theories do not support layernorm after phi"):
        solve(post_ln, "sigma", "discrete")
    with pytest.raises(InputError, match=r"^degree: the Hermite representation serves the default resnet block"):
        solve(_net(HE), "sigma", "discrete", degree=6)
    mlp = Network(activation="tanh", C_W=1.0, depth=3, K_in=[[1.0]], architecture="mlp")
    with pytest.raises(InputError, match=r"^depth_model: an MLP"):
        solve(mlp, "sigma", "continuous")


def _z(theory, sim, se):
    return np.max(np.abs(theory - sim) / np.maximum(se, 1e-300))


@pytest.mark.slow
def test_sigma_matches_the_he_block_and_gonly_is_rejected():
    """He et al. two-layer block, P = 1, discrete depth: sigma V4, K1, n Cov[Σ] within 4 SE of a wide exact ensemble
    (n = 512, where the O(1/n) corrections are below the SE); the G-only V4 is rejected at > 5 SE (measured 6.1)."""
    net = _net(HE, "gelu", depth=3, K=[[1.0]])
    th, go = solve(net, "sigma", "discrete"), solve(net, "g-only", "discrete")
    sim = simulate(net, 512, 12000, 3, progress=False)
    assert _z(th["V4"], sim["V4"], sim.se["V4"]) < 4
    assert _z(th["covSigma"], sim["covSigma"], sim.se["covSigma"]) < 4
    assert _z(th["K1"], sim["K1_cv"], sim.se["K1_cv"]) < 4
    assert _z(go["V4"][-1], sim["V4"][-1], sim.se["V4"][-1]) > 5


def test_inner_width_ratio_enters_through_the_inner_noise():
    """The two-layer block's inner width m = r n: n Cov[Σ] = (transported part) + C/r. Simulation at n = 128 for
    r = 1 and 4 agrees with the theory for each r (|z| < 4) and rejects the other r's theory."""
    nets = {r: _net([{"layer": "phi"}, {"layer": "dense", "C_W": 1.5, "C_b": 0.1, "width_ratio": r}, {"layer": "phi"},
                     {"layer": "dense", "C_W": 1.2}], "tanh", depth=2, K=[[1.0]]) for r in (1.0, 4.0)}
    th = {r: solve(net, "sigma", "discrete")["covSigma"][-1] for r, net in nets.items()}
    for r, net in nets.items():
        sim = simulate(net, 128, 6000, 11, progress=False)
        other = th[4.0 if r == 1.0 else 1.0]
        assert _z(th[r], sim["covSigma"][-1], sim.se["covSigma"][-1]) < 4
        assert _z(other, sim["covSigma"][-1], sim.se["covSigma"][-1]) > 6


@pytest.mark.parametrize("net", [
    _net(PRE_LN, "gelu", depth=3),
    Network(activation="erf", C_W=1.5, C_b=0.1, depth=3, K_in=K2, architecture="mlp"),
], ids=["pre-ln", "mlp"])
def test_gonly_chain_samples_the_gonly_theory(net):
    """The G-only chain for a branch (first segment at its Gaussian value given G, inner layers drawn exactly) and
    for an MLP (Wishart steps) has the G-only theory's V4 and K1 at n = 128 (|z| < 4.5 over all layers)."""
    th = solve(net, "g-only", "discrete")
    sim = simulate(net, 128, 8000, 5, method="g-only-chain", progress=False)
    assert _z(th["V4"], sim["V4"], sim.se["V4"]) < 4.5
    assert _z(th["K1"], sim["K1_cv"], sim.se["K1_cv"]) < 4.5


@pytest.mark.parametrize("branch", [HE, POST_RMS], ids=["he", "post-rms"])
def test_continuous_and_discrete_branch_theories_differ_by_order_one_over_L(branch):
    """The continuous-depth sigma theory of a branch is the L -> ∞ limit of the discrete one (which the exact
    ensembles check): the gap at t = T shrinks like 1/L (ratio 4 from L = 10 to 40, measured 3.9–4.0)."""
    cont = solve(_net(branch, depth=10), "sigma", "continuous")

    def gap(L):
        d = solve(_net(branch, depth=L), "sigma", "discrete")
        return np.array([np.max(np.abs(d[k][-1] - cont[k][-1])) / np.max(np.abs(cont[k][-1]))
                         for k in ("V4", "K1", "covSigma", "covGSigma")])

    ratio = gap(10) / gap(40)
    assert np.all((3.4 < ratio) & (ratio < 4.6)), ratio
