"""G-only diagnostics (docs/failure.md) on the exact tanh ensemble (two correlated inputs): the paper's three findings, measured."""
import numpy as np
import pytest

from kerneleft.coefficients import coefficients, tadpole
from kerneleft.config import Network
from kerneleft.diagnostics import TERMS, diagnose
from kerneleft.ensemble import batch_seeds
from kerneleft.ensemble import simulate
from kerneleft.gaussian import F
from kerneleft.pairs import pair_basis
from kerneleft.result import KernelResult
from kerneleft.tensors import box, circ
from kerneleft.theory import solve

WIDTH, SAMPLES, BATCHES, SEED = 128, 32_000, 16, 4
NET = Network(activation="tanh", C_W=2.0, C_b=0.0, T=2.0, depth=10, K_in=[[1.0, 0.6], [0.6, 1.5]])


@pytest.fixture(scope="module")
def batches():
    return [simulate(NET, WIDTH, SAMPLES // BATCHES, s, progress=False) for s in batch_seeds(SEED, BATCHES)]


@pytest.fixture(scope="module")
def diag(batches):
    return diagnose(NET, WIDTH, SAMPLES, SEED, ensemble=batches)


def _z(d, name, ref=0.0):
    return (d[name] - ref) / np.where(d.se[name] > 0, d.se[name], np.inf)


def _norm(x):
    return np.sqrt(np.sum(x ** 2, axis=tuple(range(1, x.ndim))))


def test_contract_keys_and_shapes(diag):
    L1, P = NET.depth + 1, NET.P
    for k in ("transport_exact", "transport_closure", "source_exact", "source_closure", "v4_residual"):
        assert diag[k].shape == (L1, P, P, P, P), k
    for k in ("k1_source_exact", "k1_source_closure"):
        assert diag[k].shape == (L1, P, P), k
    assert set(diag.se) >= {"transport_exact", "transport_closure", "source_exact", "k1_source_exact",
                            "k1_source_closure", "v4_residual"}
    by, by_se = diag.meta["v4_residual_by_term"], diag.meta["v4_residual_by_term_se"]
    for k in TERMS:                          # each term's value is pinned by the linear test below
        assert by[k].shape == by_se[k].shape == (L1,) + (P,) * 4, k
    assert diag.meta["samples"] == SAMPLES and diag.meta["batches"] == BATCHES


def test_K0_accurate_at_all_depths_and_a_wrong_K0_is_rejected(diag):
    assert np.max(np.abs(_z(diag, "G_mean", diag["K0"]))) < 4.5
    assert np.max(np.abs(_z(diag, "G_mean", 1.01 * diag["K0"]))) > 8


def test_k1_source_mismatch_at_l0_is_the_wishart_tadpole(diag):
    p = pair_basis(NET.P)
    tad = p.mat(tadpole(coefficients(NET, NET.K_in), p.vec4(circ(NET.K_in))))
    assert np.max(np.abs(_z(diag, "k1_source_exact")[0])) < 4                  # E[Σ^0] = F(K_in) (I3)
    assert np.max(np.abs(_z(diag, "k1_source_mismatch", tad)[0])) < 4
    assert np.max(np.abs(_z(diag, "k1_source_mismatch")[0])) > 5


def test_gonly_K1_rejected_at_T(diag):
    assert np.max(np.abs(_z(diag, "K1", diag["K1_gonly"])[-1])) > 4


def test_transport_closure_exact_at_0_broken_at_T(diag):
    se = np.hypot(diag.se["transport_exact"], diag.se["transport_closure"])       # conservative: correlated
    z = (diag["transport_exact"] - diag["transport_closure"]) / se
    assert np.max(np.abs(z[0])) < 4 and np.max(np.abs(z[-1])) > 4


def test_v4_residual_grows_transport_dominates_and_accounts_for_the_error(diag):
    by = {k: _norm(v) for k, v in diag.meta["v4_residual_by_term"].items()}
    tr = by["transport"]
    assert np.all(np.diff(tr[NET.depth // 2:]) > 0) and tr[-1] > 2 * tr[NET.depth // 2]
    assert tr[-1] > 2 * max(by["source"][-1], by["eps2"][-1])
    assert np.max(_z(diag, "v4_residual")[-1]) > 5
    assert np.max(np.abs(_z(diag, "v4_unexplained")[1:])) < 4.5


# --- the linear network: every term in closed form (I4: Σ = G, S = C_W G + C_b, 𝒯 = C_W, ℋ = 0) ----------------
LIN, LIN_WIDTH = Network(activation="linear", C_W=2.0, C_b=0.2, T=3.0, depth=3, K_in=[[1.0, 0.6], [0.6, 1.5]]), 2
Z_OK, Z_BAD = 5.0, 8.0


def _X(V):
    """X(V)_abcd = V_acbd + V_adbc: E[δG⊠δG] = 2X(V)/n and E[δG∘δG] = X(V)/n for n Cov[G] = V."""
    return np.einsum("...acbd->...abcd", V) + np.einsum("...adbc->...abcd", V)


def _linear_closed_forms(net, n):
    """Exact per-layer quantities of the linear network at width n (from I1–I2, which close for φ = identity).

    E[G^l] = K0^l;  V4_n^{l+1} = A²V4_n + ε K0⊠S̄ + ε² S̄∘S̄ + (2εC_W + ε²C_W²) X(V4_n)/n,  A = 1 + εC_W;
    the G-only V4 is the same without X;  the closure's per-layer misses are exactly its 1/n parts: source
    2εC_W X(V4_n)/n, eps2 ε²C_W² X(V4_n)/n, transport 0 (𝒯V4 = C_W V4 = n Cov[G, S]), each accumulated as
    r' = A² r + d.
    """
    e, c, A2 = net.eps, net.C_W, (1 + net.eps * net.C_W) ** 2
    m, Vn, Vg = [net.K_in], [circ(net.K_in)], [circ(net.K_in)]
    for _ in range(net.depth):
        s = c * m[-1] + net.C_b
        Vn.append(A2 * Vn[-1] + e * box(m[-1], s) + e * e * circ(s) + (2 * e * c + (e * c) ** 2) / n * _X(Vn[-1]))
        Vg.append(A2 * Vg[-1] + e * box(m[-1], s) + e * e * circ(s))
        m.append(m[-1] + e * s)
    m, Vn, Vg = np.array(m), np.array(Vn), np.array(Vg)

    def accumulate(d):
        r = [np.zeros_like(d[0])]
        for l in range(net.depth):
            r.append(A2 * r[-1] + d[l])
        return np.array(r)

    return {"K0": m, "S": c * m + net.C_b, "V4": Vn, "V4_gonly": Vg, "transport": np.zeros_like(Vn),
            "source": accumulate(2 * e * c * _X(Vn) / n), "eps2": accumulate((e * c) ** 2 * _X(Vn) / n)}


@pytest.fixture(scope="module")
def lin():
    """diagnose on 32 x 4000 linear networks of width 2 (1/n effects of order one) and the closed forms."""
    return diagnose(LIN, LIN_WIDTH, 128_000, 1, batches=32), _linear_closed_forms(LIN, LIN_WIDTH)


def _zmax(x, se, ref):
    d = np.abs(x - ref)
    return np.max(np.where(se > 0, d / np.where(se > 0, se, 1.0), np.where(d > 1e-12 * np.max(np.abs(ref)), np.inf, 0)))


def test_linear_theory_terms_are_the_closed_forms(lin):
    d, ex = lin
    n, c = LIN_WIDTH, LIN.C_W
    np.testing.assert_allclose(d["K0"], ex["K0"], rtol=1e-13)
    np.testing.assert_allclose(d["V4_gonly"], ex["V4_gonly"], rtol=1e-12)
    assert np.all(d["K1_gonly"] == 0)
    np.testing.assert_allclose(d["source_closure"], box(ex["K0"], ex["S"]), rtol=1e-13)
    # transport: n Cov[G, S] = C_W V4 on both sides, identical to rounding
    np.testing.assert_allclose(d["transport_closure"], d["transport_exact"], rtol=1e-12, atol=0)
    assert _zmax(d["transport_exact"], d.se["transport_exact"], c * ex["V4"]) < Z_OK
    assert _zmax(d["source_exact"], d.se["source_exact"], box(ex["K0"], ex["S"]) + 2 * c * _X(ex["V4"]) / n) < Z_OK
    assert _zmax(d["source_exact"], d.se["source_exact"], box(ex["K0"], ex["S"])) > Z_BAD       # without its 1/n part
    # K1 source: E[S] = S̄(K0) exactly, and the closure 𝒯K1 + ½ℋ:V4 is C_W K1
    assert _zmax(d["k1_source_exact"], d.se["k1_source_exact"], 0.0) < Z_OK
    np.testing.assert_allclose(d["k1_source_closure"], c * d["K1"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d["k1_source_mismatch"], d["k1_source_closure"] - d["k1_source_exact"], rtol=1e-12)
    assert _zmax(d["V4"], d.se["V4"], ex["V4"]) < Z_OK


def test_linear_v4_residual_split_is_exact(lin):
    """Each term of the split against its closed form (a dropped or rescaled term is rejected), their sum against
    V4_n − V4_gonly, and the paired bookkeeping check: v4_unexplained = V4_sim − V4_gonly − residual has mean 0,
    precise enough that leaving the ε² term out of the residual is rejected."""
    d, ex = lin
    by, by_se = d.meta["v4_residual_by_term"], d.meta["v4_residual_by_term_se"]
    assert np.max(np.abs(by["transport"])) < 1e-12 * np.max(np.abs(ex["V4"]))
    for k in ("source", "eps2"):
        assert _zmax(by[k], by_se[k], ex[k]) < Z_OK, k
        assert _zmax(by[k], by_se[k], 0.0) > Z_BAD and _zmax(by[k], by_se[k], 0.5 * ex[k]) > Z_BAD, k
    assert _zmax(d["v4_residual"], d.se["v4_residual"], ex["V4"] - ex["V4_gonly"]) < Z_OK
    assert _zmax(d["v4_residual"], d.se["v4_residual"], ex["source"]) > Z_BAD
    assert _zmax(d["v4_unexplained"], d.se["v4_unexplained"], 0.0) < Z_OK
    assert _zmax(d["v4_unexplained"] + by["eps2"], d.se["v4_unexplained"], 0.0) > Z_BAD


def _pair_sym(M, swap=False):
    """Symmetrise (..., P,P,P,P) over a <-> b and c <-> d (and over the pairs if ``swap``)."""
    M = M + np.swapaxes(M, -3, -4)
    M = M + np.swapaxes(M, -1, -2)
    return M + np.einsum("...abcd->...cdab", M) if swap else M


def _i2_batch(net, n, rng):
    """Synthetic statistics that obey (I2) exactly: arbitrary E[G], E[Σ], n Cov[G,Σ], n Cov[Σ] per layer and
    n Cov[G^{l+1}] = n Cov[G^l + εS^l] + ε E[G⊠S] + ε² E[S∘S] with E[G⊠S] = E[G]⊠E[S] + R(n Cov[G,S])/n,
    E[S∘S] = E[S]∘E[S] + X(n Cov[S])/n (R, X the pair rearrangements), n Cov[G^0] = K_in∘K_in."""
    L1, P, e, cw = net.depth + 1, net.P, net.eps, net.C_W
    K0 = solve(net, "g-only", depth_model="discrete").K0
    noise = lambda *shape: 0.1 * rng.standard_normal(shape)                              # noqa: E731
    sym = lambda A: A + A.swapaxes(-1, -2)                                               # noqa: E731
    G, Sig = K0 + sym(noise(L1, P, P)), F(net.phi, K0) + sym(noise(L1, P, P))
    cGS, cS = _pair_sym(noise(L1, P, P, P, P)), _pair_sym(noise(L1, P, P, P, P), swap=True)
    S, C, CS = cw * Sig + net.C_b, cw * cGS, cw ** 2 * cS
    R = lambda X: _X(X) + np.einsum("...abcd->...bacd", _X(X))                           # noqa: E731
    V = [circ(net.K_in)]
    for l in range(net.depth):
        cov_sum = V[-1] + e * (C[l] + np.einsum("abcd->cdab", C[l])) + e * e * CS[l]
        V.append(cov_sum + e * (box(G[l], S[l]) + R(C[l]) / n) + e * e * (circ(S[l]) + _X(CS[l]) / n))
    arrays = {"K0": K0, "G_mean": G, "Sigma_mean": Sig, "V4": np.array(V), "covGSigma": cGS, "covSigma": cS,
              "K1": sym(noise(L1, P, P))}
    return KernelResult(net.t, arrays, {}, {"width": n, "samples": 100, "method": "synthetic"})


def test_v4_residual_accounts_exactly_for_any_statistics_obeying_I2():
    """Bookkeeping of the split, without sampling noise: whatever the simulated moments are, if they obey (I2) the
    accumulated residual is exactly V4 − V4_gonly (v4_unexplained = 0 to rounding) — for tanh, where 𝒯 changes
    from layer to layer, at width 8 where every 1/n rearrangement counts. A term left out, an O(1/n) part dropped
    or the residual transported with another layer's 𝒯 breaks it."""
    net = NET.replace(depth=6, C_b=0.1)
    rng = np.random.default_rng(0)
    d = diagnose(net, 8, 200, 0, ensemble=[_i2_batch(net, 8, rng) for _ in range(2)])
    assert np.max(np.abs(d["v4_unexplained"])) < 1e-12 * np.max(np.abs(d["V4"]))
    for k in TERMS:
        assert np.max(np.abs(d.meta["v4_residual_by_term"][k][1:])) > 1e-3 * np.max(np.abs(d["V4"])), k


def test_validity_window(batches, diag):
    assert diag.meta["validity_window"]["K1"] <= 0.2 * NET.T                        # wrong from the first layers
    assert diag.meta["validity_window"]["V4"] is None                              # V4 off by ~2 % < 5 %
    assert diagnose(NET, WIDTH, SAMPLES, SEED, threshold=10.0, ensemble=batches).meta["validity_window"] == \
        {"V4": None, "K1": None}


def test_diagnose_simulates_reproducibly():
    net = NET.replace(depth=2)
    a, b = (diagnose(net, 8, 64, 1, batches=4, method="g-only-chain") for _ in range(2))
    assert a.meta["batches"] == 4 and a.meta["method"] == "g-only-chain"
    np.testing.assert_array_equal(a["v4_residual"], b["v4_residual"])


@pytest.mark.parametrize("kw,field", [({"threshold": 0.0}, "threshold"), ({"samples": 3}, "samples"),
                                      ({"batches": 1}, "batches"), ({"ensemble": []}, "ensemble")])
def test_bad_input(kw, field):
    args = dict(net=NET, width=8, samples=64, seed=1) | kw
    with pytest.raises(ValueError, match=f"^{field}:"):
        diagnose(**args)
