"""§5 diagnostics on the exact tanh ensemble (two correlated inputs): the paper's three findings, measured."""
import numpy as np
import pytest

from kerneleft.config import Network
from kerneleft.diagnostics import TERMS, _batch_seeds, diagnose
from kerneleft.ensemble import simulate
from kerneleft.tensors import circ
from kerneleft.theory.gonly import coefficients, from_pairs, tadpole, to_pairs4

WIDTH, SAMPLES, BATCHES, SEED = 128, 32_000, 16, 4
NET = Network(activation="tanh", C_W=2.0, C_b=0.0, T=2.0, depth=10, K_in=[[1.0, 0.6], [0.6, 1.5]])


@pytest.fixture(scope="module")
def batches():
    return [simulate(NET, WIDTH, SAMPLES // BATCHES, s, progress=False) for s in _batch_seeds(SEED, BATCHES)]


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
    assert set(diag.meta["v4_residual_by_term"]) == set(TERMS)
    np.testing.assert_allclose(sum(diag.meta["v4_residual_by_term"].values()), diag["v4_residual"], atol=1e-12)
    assert diag.meta["samples"] == SAMPLES and diag.meta["batches"] == BATCHES


def test_K0_accurate_at_all_depths_and_a_wrong_K0_is_rejected(diag):
    assert np.max(np.abs(_z(diag, "G_mean", diag["K0"]))) < 4.5
    assert np.max(np.abs(_z(diag, "G_mean", 1.01 * diag["K0"]))) > 8


def test_k1_source_mismatch_at_l0_is_the_wishart_tadpole(diag):
    tad = from_pairs(tadpole(coefficients(NET, NET.K_in), to_pairs4(circ(NET.K_in))), NET.P)
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
