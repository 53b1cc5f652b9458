"""Architectures (docs/architectures.md): exact samplers for every layer kind, K0 of branches and MLPs, the
memory and chunk rules of branch ensembles, and config validation.

Statistical comparisons are z-tests with standard errors (docs/estimators.md#standard-errors) on fixed seeds, each
paired with a deliberately wrong variant that the same test rejects; K0 is checked against an independent
quadrature written here (layer by layer on quadrature nodes, docs/architectures.md#kernel-maps).
"""
import numpy as np
import pytest
from scipy import special
from scipy.integrate import solve_ivp

from conftest import assert_identical, max_z, one_error, toml_text
from kerneleft import Network, ensemble
from kerneleft.cli import main
from kerneleft.errors import InputError
from kerneleft.kernel import kernel
from kerneleft.limits import MAX_BYTES

K_IN = [[1.0, 0.6], [0.6, 1.5]]
KEYS = ("G_mean", "V4", "Sigma_mean", "covSigma")
Z_OK, Z_BAD = 4.5, 8.0
PHI, RMS, LN = {"layer": "phi"}, {"layer": "rms"}, {"layer": "layernorm"}


def D(C_W, C_b=0.0, **kw):
    return {"layer": "dense", "C_W": C_W, "C_b": C_b, **kw}


def _net(depth=3, **kw):
    return Network(K_in=K_IN, depth=depth, **kw)


def _max_z(a, b, keys=KEYS):
    """:func:`conftest.max_z` over G_mean, V4, Sigma_mean and covSigma by default."""
    return max_z(a, b, keys)


def _sim(net, width, samples, seed, method="conditional", **kw):
    return ensemble.simulate(net, width, samples, seed, method, progress=False, **kw)


# --- conditional vs weights, every layer kind (docs/architectures.md#samplers) -----------------------------------
# Each comparison: G_mean, Sigma_mean (L+1, P, P) and V4, covSigma (L+1, P,P,P,P) at depth 3, P = 2: 160 entries
# (72 distinct) at every layer l = 0..3.
BRANCHES = {
    "inner_x2": dict(activation="tanh", T=1.5, branch=[PHI, D(1.5, 0.1, width_ratio=2.0), PHI, D(1.0, 0.05)]),
    "inner_x0.5": dict(activation="relu", T=1.5, branch=[PHI, D(2.0, width_ratio=0.5), PHI, D(1.0, 0.1)]),
    "rms": dict(activation="tanh", T=1.5, branch=[RMS, D(1.2, 0.1), PHI, RMS, D(1.0, 0.05)]),
    "layernorm": dict(activation="gelu", T=1.5, branch=[LN, D(1.0, 0.1, width_ratio=2.0), PHI, D(1.0, 0.05)]),
    "mlp": dict(activation="relu", C_W=2.0, architecture="mlp"),
    "mlp_inner_x2": dict(activation="tanh", architecture="mlp", branch=[PHI, D(1.5, 0.1, width_ratio=2.0), PHI,
                                                                         D(2.0, 0.05)]),
}


@pytest.mark.parametrize("width", [4, 16])
@pytest.mark.parametrize("name", list(BRANCHES))
def test_conditional_matches_weights(name, width):
    net = _net(**BRANCHES[name])
    ref = _sim(net, width, 8000, seed=1, method="weights")
    assert _max_z(_sim(net, width, 8000, seed=2), ref) < Z_OK


@pytest.mark.parametrize("branch", [[RMS, PHI, D(1.2, 0.1)], [PHI, LN, D(1.2, 0.1)]], ids=["rms_phi", "phi_ln"])
def test_simulate_branches_outside_the_theories(branch):
    """A norm before phi, layernorm after phi: K0 and the samplers handle them (the control variate then uses a
    finite-difference transport operator)."""
    net = _net(activation="gelu", T=1.5, branch=branch)
    assert _max_z(_sim(net, 4, 4000, seed=2), _sim(net, 4, 4000, seed=1, method="weights")) < Z_OK


def test_layernorm_without_mean_subtraction_rejected():
    """rms instead of layernorm on the (mean-zero) stream: the means agree to O(1/n²), but the Gram of the
    normalised field has n − 1 instead of n degrees of freedom, so n Cov[Σ] differs at O(1/n)."""
    ln = _net(activation="tanh", T=3.0, branch=[LN, D(2.0, 0.1)])
    ref = _sim(ln, 3, 12000, seed=1, method="weights")
    assert _max_z(_sim(ln, 3, 12000, seed=2), ref) < Z_OK
    rms = _net(activation="tanh", T=3.0, branch=[RMS, D(2.0, 0.1)])
    assert _max_z(_sim(rms, 3, 12000, seed=2), ref) > Z_BAD


def test_wrong_inner_width_rejected_on_V4():
    """width_ratio 1 instead of 2: the inner layer's own noise (n/m) is part of V4 = n Cov[G]."""
    kw = dict(activation="tanh", architecture="mlp")
    right = _net(**kw, branch=[PHI, D(1.5, 0.1, width_ratio=2.0), PHI, D(2.0, 0.05)])
    wrong = _net(**kw, branch=[PHI, D(1.5, 0.1), PHI, D(2.0, 0.05)])
    ref = _sim(right, 16, 30000, seed=1, method="weights")
    assert _max_z(_sim(right, 16, 30000, seed=2), ref, ("V4",)) < Z_OK
    assert _max_z(_sim(wrong, 16, 30000, seed=2), ref, ("V4",)) > Z_BAD


# --- exact identities (docs/exact.md#identities) ------------------------------------------------------------------
def _gauss_mean(f, var):
    """E f(z), z ~ N(0, var), by the trapezoidal rule (geometric convergence for analytic f)."""
    z = np.arange(-12.0, 12.0 + 1e-9, 0.05)
    w = np.exp(-0.5 * z * z)
    return float(np.sum(w * f(np.sqrt(var) * z)) / np.sum(w))


def _z(mean, se, exact):
    return np.abs(mean - exact) / se


@pytest.mark.parametrize("norm", [RMS, LN], ids=["rms", "layernorm"])
def test_prenorm_diagonal_linear_in_depth(norm):
    """[norm, dense(C_W1, C_b1), phi, dense(C_W, C_b)]: the normalised input has diagonal 1 at every width, so the
    inner pre-activations are exactly N(0, C_W1 + C_b1) per neuron: E[Σ^l_aa] = X̄ = E φ(z)² and
    E[G^l_aa] = K_in,aa + l ε (C_W X̄ + C_b) at any width."""
    net = _net(depth=4, activation="tanh", T=2.0, branch=[norm, D(1.3, 0.2, width_ratio=2.0), PHI, D(1.5, 0.1)])
    r = _sim(net, 4, 20000, seed=5, method="weights")
    X = _gauss_mean(lambda z: np.tanh(z) ** 2, 1.3 + 0.2)
    a = np.arange(2)
    G_exact = np.diag(K_IN)[None] + np.arange(5)[:, None] * net.eps * (1.5 * X + 0.1)
    assert np.max(_z(r["G_mean"][1:, a, a], r.se["G_mean"][1:, a, a], G_exact[1:])) < Z_OK
    assert np.max(_z(r["Sigma_mean"][:, a, a], r.se["Sigma_mean"][:, a, a], X)) < Z_OK


@pytest.mark.parametrize("branch,gain", [(None, 1.3), ([PHI, D(0.8, width_ratio=2.0), PHI, D(1.5)], 1.2)],
                         ids=["default", "inner_x2"])
def test_linear_mlp_mean_kernel(branch, gain):
    """Linear MLP without biases: E[G^l] = gain^l K_in exactly (gain = product of the C_W), and Σ = G's input Gram."""
    kw = dict(branch=branch) if branch else dict(C_W=gain)
    net = _net(depth=3, activation="linear", architecture="mlp", **kw)
    r = _sim(net, 4, 20000, seed=6, method="weights")
    exact = gain ** np.arange(4)[:, None, None] * np.array(K_IN)
    assert np.max(_z(r["G_mean"][1:], r.se["G_mean"][1:], exact[1:])) < Z_OK
    Sigma_exact = exact * (0.8 if branch else 1.0)       # the last dense layer's input: W1 h (C_W1 = 0.8) or h
    assert np.max(_z(r["Sigma_mean"], r.se["Sigma_mean"], Sigma_exact)) < Z_OK


# --- reproducibility ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["layernorm", "mlp_inner_x2"])
def test_pool_bit_identical(name):
    net = _net(**BRANCHES[name])
    kw = dict(chunk_size=50)
    assert_identical(_sim(net, 8, 300, 3, **kw), _sim(net, 8, 300, 3, pool=2, chunks_per_task=2, **kw))


# --- chunk and memory rules (the largest buffers of the branch) ----------------------------------------------------
PRE_LN = dict(activation="gelu", T=1.0, branch=[LN, D(1.0, width_ratio=4.0), PHI, D(1.0)])


@pytest.mark.parametrize("P", [1, 2, 3])
@pytest.mark.parametrize("width", [1, 4, 64, 300, 4096])
def test_default_branch_chunk_sizes_unchanged(width, P):
    """The default branch keeps today's chunk sizes (and hence today's draws)."""
    net = Network(activation="tanh", C_W=1.0, T=1.0, depth=2, K_in=np.eye(P))
    assert ensemble.default_chunk_size("conditional", net, width) == int(np.clip(2 ** 16 // (width * P), 1, 1024))
    assert ensemble.default_chunk_size("weights", net, width) == int(np.clip(2 ** 21 // (width * width), 1, 1024))
    assert ensemble.default_chunk_size("g-only-chain", net, width) == 256


def test_branch_chunk_sizes_follow_the_widest_layer():
    net = _net(**PRE_LN)
    assert ensemble.default_chunk_size("conditional", net, 64) == 2 ** 16 // (256 * 2)
    assert ensemble.default_chunk_size("weights", net, 64) == 2 ** 21 // (256 * 64)
    narrow = _net(activation="tanh", T=1.0, branch=[PHI, D(1.0, width_ratio=0.25), PHI, D(1.0)])
    assert ensemble.default_chunk_size("conditional", narrow, 256) == 2 ** 16 // (256 * 2)
    assert ensemble.default_chunk_size("weights", narrow, 256) == 2 ** 21 // (64 * 256)


def test_memory_check_uses_inner_widths():
    """A width whose n x n weights fit is refused when the 4x inner layer's (4n x n) weights do not."""
    width = int(np.sqrt(MAX_BYTES / 8 / 2.5))           # n² < limit/8 < 4n²
    default = _net(activation="gelu", T=1.0, C_W=1.0)
    ensemble.check_ensemble_size(default, "weights", width, 10)
    with pytest.raises(InputError, match=r"^width: one chunk of 1 networks"):
        ensemble.check_ensemble_size(_net(**PRE_LN), "weights", width, 10)
    wide = _net(activation="gelu", T=1.0, branch=[LN, D(1.0, width_ratio=1024.0), PHI, D(1.0)])
    ensemble.check_ensemble_size(default, "conditional", 10 ** 6, 10)
    with pytest.raises(InputError, match=r"^width: "):
        ensemble.check_ensemble_size(wide, "conditional", 10 ** 6, 10)


# --- K0 against an independent quadrature (docs/architectures.md#kernel-maps) ---------------------------------------
PHIS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0),
        "gelu": lambda x: 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0)))}


def _trapezoid_nodes():
    """2-D tensor trapezoidal rule for N(0, I) on [−9, 9]², h = 1/8 (error < 1e-13 for tanh, gelu at std <= 2)."""
    z = np.arange(-9.0, 9.0 + 1e-9, 0.125)
    w = np.exp(-0.5 * z * z)
    Z = np.stack(np.meshgrid(z, z, indexing="ij"), -1).reshape(-1, 2)
    return Z, np.outer(w, w).ravel() / np.sum(w) ** 2


def _polar_nodes(L):
    """N(0, I) in polar coordinates for relu: a 2-point Gauss rule in r for the weight r e^{−r²/2} (exact for
    polynomials of degree <= 3; a relu segment is degree <= 1 in r) times Gauss–Legendre in the angle on each arc
    between the kinks of relu((L z)_a)."""
    m = [1.0, np.sqrt(np.pi / 2), 2.0, 3 * np.sqrt(np.pi / 2)]                 # ∫ r^k r e^{−r²/2} dr
    c = np.linalg.solve([[m[1], 1.0], [m[2], m[1]]], [-m[2], -m[3]])
    r = np.roots([1.0, *c])
    w2 = (m[1] - r[0]) / (r[1] - r[0])
    kinks = [(np.arctan2(L[a, 0], -L[a, 1]) + s) % (2 * np.pi) for a in range(2) for s in (0.0, np.pi)]
    edges = np.concatenate([[0.0], np.sort(kinks), [2 * np.pi]])
    g, gw = np.polynomial.legendre.leggauss(24)
    lo, hi = edges[:-1, None], edges[1:, None]
    t, tw = ((lo + hi) / 2 + (hi - lo) / 2 * g).ravel(), ((hi - lo) / 2 * gw).ravel() / (2 * np.pi)
    Z = r[:, None, None] * np.stack([np.cos(t), np.sin(t)], -1)[None]
    return Z.reshape(-1, 2), (np.array([1.0 - w2, w2])[:, None] * tw[None]).ravel()


TRAPEZOID = _trapezoid_nodes()


def _ref_kernel_map(branch, act, K):
    """S̄(K): for each segment (layers up to a dense layer) take x = L z ~ N(0, K) on the nodes, apply phi and the
    norms (moments by the same quadrature), then K <- C_W E[uuᵀ] + C_b."""
    ops = []
    for layer in branch:
        if layer["layer"] != "dense":
            ops.append(layer["layer"])
            continue
        L = np.linalg.cholesky(K)
        Z, W = _polar_nodes(L) if act == "relu" else TRAPEZOID
        u = Z @ L.T
        for op in ops:
            if op == "phi":
                u = PHIS[act](u)
                continue
            if op == "layernorm":
                u = u - W @ u
            u = u / np.sqrt(W @ (u * u))
        K = layer["C_W"] * np.einsum("m,ma,mb->ab", W, u, u) + layer.get("C_b", 0.0)
        ops = []
    return K


K0_CASES = {
    "he_two_layer": ("relu", [PHI, D(2.0, 0.1), PHI, D(1.5, 0.05)]),
    "he_two_layer_tanh": ("tanh", [PHI, D(2.0, 0.1), PHI, D(1.5, 0.05)]),
    "pre_ln_x4": ("gelu", [LN, D(1.0, 0.0, width_ratio=4.0), PHI, D(1.0)]),
    "phi_rms": ("tanh", [PHI, RMS, D(1.2, 0.1)]),
    "phi_rms_relu": ("relu", [PHI, RMS, D(1.2, 0.1)]),
    "phi_layernorm": ("gelu", [PHI, LN, D(1.2, 0.1)]),
    "phi_layernorm_relu": ("relu", [PHI, LN, D(1.2, 0.1)]),
    "rms_phi": ("tanh", [RMS, PHI, D(1.2, 0.1)]),
    "rms_phi_relu": ("relu", [RMS, PHI, D(1.2, 0.1)]),
}


@pytest.mark.parametrize("case", list(K0_CASES))
def test_K0_branch_matches_quadrature(case):
    act, branch = K0_CASES[case]
    net = _net(depth=5, activation=act, T=1.5, branch=branch)
    K = [np.array(K_IN)]
    for _ in range(net.depth):
        K.append(K[-1] + net.eps * _ref_kernel_map(branch, act, K[-1]))
    assert np.max(np.abs(kernel(net, "discrete")["K0"] - K)) < 1e-10 * np.max(np.abs(K))
    sol = solve_ivp(lambda t, y: _ref_kernel_map(branch, act, y.reshape(2, 2)).ravel(), (0.0, net.T),
                    np.ravel(K_IN), method="DOP853", t_eval=net.t, rtol=1e-12, atol=1e-14)
    K_cont = sol.y.T.reshape(-1, 2, 2)
    assert np.max(np.abs(kernel(net, "continuous")["K0"] - K_cont)) < 1e-8 * np.max(np.abs(K_cont))


@pytest.mark.parametrize("act,branch", [("tanh", [PHI, D(1.0)]), ("relu", [PHI, D(2.0)]),
                                        ("gelu", [PHI, D(1.5, 0.1, width_ratio=4.0), PHI, LN, D(1.0, 0.1)])],
                         ids=["tanh_critical", "relu_critical", "gelu_inner_layernorm"])
def test_K0_mlp_matches_quadrature(act, branch):
    net = _net(depth=6, activation=act, architecture="mlp", branch=branch)
    K = [np.array(K_IN)]
    for _ in range(net.depth):
        K.append(_ref_kernel_map(branch, act, K[-1]))
    assert np.max(np.abs(kernel(net)["K0"] - K)) < 1e-10 * np.max(np.abs(K))
    assert np.array_equal(net.t, np.arange(7.0))


# --- config validation: one InputError line naming the field, from the API and the CLI ------------------------------
GOOD = dict(activation="tanh", T=1.0, depth=2, K_in=K_IN)
BAD = [
    (dict(branch=[PHI, D(1.0), PHI, D(-1.0)]), "branch[3].C_W"),
    (dict(branch=[PHI, D(float("nan"))]), "branch[1].C_W"),
    (dict(branch=[PHI, {"layer": "dense"}]), "branch[1].C_W"),
    (dict(branch=[PHI, D(1.0, float("inf"))]), "branch[1].C_b"),
    (dict(branch=[PHI, D(1.0, width_ratio=0.0), PHI, D(1.0)]), "branch[1].width_ratio"),
    (dict(branch=[PHI, D(1.0, width_ratio=-2.0), PHI, D(1.0)]), "branch[1].width_ratio"),
    (dict(branch=[PHI, D(1.0, width_ratio="2"), PHI, D(1.0)]), "branch[1].width_ratio"),
    (dict(branch=[PHI, D(1.0, width_ratio=1e6), PHI, D(1.0)]), "branch[1].width_ratio"),
    (dict(branch=[PHI, D(1.0, width_ratio=2.0)]), "branch[1].width_ratio"),
    (dict(branch=[{"layer": "conv"}, D(1.0)]), "branch[0].layer"),
    (dict(branch=[{"C_W": 1.0}, D(1.0)]), "branch[0].layer"),
    (dict(branch=[{"layer": "phi", "gain": 2.0}, D(1.0)]), "branch[0].gain"),
    (dict(branch=[PHI, D(1.0, bias=0.1)]), "branch[1].bias"),
    (dict(branch=[D(1.0), PHI]), "branch[1]"),
    (dict(branch=[PHI, PHI, D(1.0)]), "branch[1]"),
    (dict(branch=[PHI, RMS, PHI, D(1.0)]), "branch[2]"),
    (dict(branch=[]), "branch"),
    (dict(branch=[PHI, D(1.0)], C_W=1.0), "C_W"),
    (dict(branch=[PHI, D(1.0)], C_b=0.1), "C_b"),
    (dict(branch=[PHI, D(1.0)], architecture="mlp"), "T"),
    (dict(branch=[PHI, D(1.0)], architecture="cnn"), "architecture"),
]
IDS = [f"{i}-{field}" for i, (_, field) in enumerate(BAD)]


@pytest.mark.parametrize("change,field", BAD, ids=IDS)
def test_bad_branch_api(change, field):
    with pytest.raises(InputError) as err:
        Network(**{**GOOD, **change})
    msg = str(err.value)
    assert msg.startswith(f"{field}:") and "\n" not in msg, msg


@pytest.mark.parametrize("change,field", BAD, ids=IDS)
def test_bad_branch_cli(tmp_path, capsys, change, field):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml_text({**GOOD, **change}))
    rc = main(["kernel", str(cfg), "--json", str(tmp_path / "o.json")])
    assert one_error(capsys, rc).startswith(f"error: {field}:")
