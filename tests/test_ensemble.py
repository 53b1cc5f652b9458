"""Ensemble runner and statistics (docs/exact.md#identities, docs/estimators.md): exact identities, K1 estimators, reproducibility, stop rule,
interruption, registry, input checks. Statistical comparisons are z-tests that a wrong answer must fail."""
import json
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from kerneleft import Network, ensemble, samplers
from kerneleft.ensemble import chunk_statistics, get_method, simulate, transport_ops
from kerneleft.cli import main
from kerneleft.estimators import extrapolate_K1
from kerneleft.gaussian import F
from kerneleft.kernel import K0_discrete
from kerneleft.result import KernelResult
from kerneleft.samplers import conditional_paths
from kerneleft.tensors import box, circ

K_IN = np.array([[1.0, 0.6], [0.6, 1.5]])
Z_OK, Z_BAD = 4.5, 8.0


def _net(act="tanh", **kw):
    return Network(**{"activation": act, "C_W": 2.0, "C_b": 0.1, "T": 1.0, "depth": 4, "K_in": K_IN, **kw})


def _z(res, key, exact, layers=slice(None)):
    """max |sim − exact| / SE over ``layers`` and entries with SE > 0 (exact broadcasts over layers)."""
    d = res[key][layers] - exact
    se = res.se[key][layers]
    return np.max(np.abs(np.divide(d, se, out=np.zeros_like(d), where=se > 0)))


# --- identities (docs/exact.md#identities) ---------------------------------------------------------------------------------------------
def test_t0_wishart_moments():
    """(I3): E[G^0] = K_in, n Cov[G^0] = K_in∘K_in, E[Σ^0] = F(K_in); a 20 % error in V4 is rejected."""
    net = _net("tanh", depth=1)
    r = simulate(net, 5, 20000, seed=11, progress=False)
    assert _z(r, "G_mean", K_IN, 0) < Z_OK
    assert _z(r, "V4", circ(K_IN), 0) < Z_OK
    assert _z(r, "Sigma_mean", F(net.phi, K_IN), 0) < Z_OK
    assert _z(r, "V4", 1.2 * circ(K_IN), 0) > Z_BAD


def linear_exact(net, n, corrections=True):
    """Exact finite-n moments of the linear network (I4: Σ = G, S = C_W G + C_b 11ᵀ), l = 0..L.

    m' = m + ε s̄,  s̄ = C_W m + C_b 11ᵀ;   V' = (1 + εC_W)² V + ε m⊠s̄ + ε² s̄∘s̄ + (2εC_W + ε²C_W²)/n · X(V),
    X(V)_abcd = V_acbd + V_adbc — from (I2) with E[G⊠S] = m⊠s̄ + C_W E[δG⊠δG] and E[S∘S] = s̄∘s̄ + C_W² E[δG∘δG],
    E[(δG⊠δG)_abcd] = 2 X(V)_abcd / n,  E[(δG∘δG)_abcd] = X(V)_abcd / n.
    """
    e, cw = net.eps, net.C_W
    m, V = net.K_in.copy(), circ(net.K_in)
    ms, Vs = [m], [V]
    for _ in range(net.depth):
        s = cw * m + net.C_b
        X = np.einsum("acbd->abcd", V) + np.einsum("adbc->abcd", V)
        V = (1 + e * cw) ** 2 * V + e * box(m, s) + e * e * circ(s) + corrections * (2 * e * cw + (e * cw) ** 2) / n * X
        m = m + e * s
        ms.append(m)
        Vs.append(V)
    return np.array(ms), np.array(Vs)


@pytest.mark.parametrize("width", [1, 3])
def test_linear_network_exact_recursions(width):
    """(I4) at every layer (width 1 < P included); dropping the exact 1/n terms of (I2) is rejected."""
    net = _net("linear", T=2.0)
    r = simulate(net, width, 40000, seed=12, progress=False)
    m, V = linear_exact(net, width)
    assert _z(r, "G_mean", m) < Z_OK
    assert _z(r, "V4", V) < Z_OK
    assert _z(r, "K1", 0.0) < Z_OK                       # linear: E[G^l] = K0^l exactly at every n
    # linear: the control variate is the exact fluctuation of D, so K1_cv is 0 up to rounding
    assert np.max(np.abs(r["K1_cv"])) < 1e-8 * width * np.max(np.abs(r["G_mean"]))
    assert np.array_equal(r["Sigma_mean"], r["G_mean"])
    # Σ = G sample by sample; their covariances are the same sums in different blocks of one BLAS product, whose
    # rounding depends on the CPU's kernel (OpenBLAS DYNAMIC_ARCH): equal to rounding, not bit for bit
    np.testing.assert_allclose(r["covSigma"], r["V4"], rtol=1e-12, atol=1e-12 * np.abs(r["V4"]).max())
    np.testing.assert_allclose(r["covGSigma"], r["V4"], rtol=1e-12, atol=1e-12 * np.abs(r["V4"]).max())
    _, V_wrong = linear_exact(net, width, corrections=False)
    assert _z(r, "V4", V_wrong) > Z_BAD


def test_K1_estimators_consistent_and_drift_cv_reduce_se():
    """docs/estimators.md: naive, drift-integral and control-variate K1 agree; SE(drift) < SE(naive)/2, SE(cv) < SE(drift)."""
    net = _net("tanh", C_b=0.0, T=2.0, depth=20)
    r = simulate(net, 16, 3000, seed=13, progress=False)
    drift = r.se["K1"][1:] / r.se["K1_naive"][1:]
    cv = r.se["K1_cv"][1:] / r.se["K1"][1:]
    print(f"SE ratios at t = T: drift/naive {drift[-1].ravel()}, cv/drift {cv[-1].ravel()}")
    assert np.max(drift) < 0.5 and np.max(cv) < 0.9
    for a, b in (("K1", "K1_naive"), ("K1_cv", "K1"), ("K1_cv", "K1_naive")):
        diff = np.abs(r[a] - r[b])[1:] / np.hypot(r.se[a], r.se[b])[1:]
        assert np.max(diff) < Z_OK


# --- reproducibility, streaming, stop rule, interruption -------------------------------------------------------
def _same(a, b):
    return (all(np.array_equal(a[k], b[k]) for k in a.arrays)
            and all(np.array_equal(a.se[k], b.se[k]) for k in a.se) and a.se.keys() == b.se.keys())


def test_bit_identical_for_any_workers_and_batching():
    net = _net("tanh", depth=3)
    kw = dict(width=8, samples=1000, seed=21, chunk_size=96, progress=False)
    base = simulate(net, **kw)
    assert _same(base, simulate(net, pool=2, **kw))
    assert _same(base, simulate(net, pool=2, chunks_per_task=4, **kw))
    assert _same(base, simulate(net, chunks_per_task=3, **kw))
    other = simulate(net, **{**kw, "seed": 22})
    assert not np.array_equal(base["G_mean"], other["G_mean"])


def test_chunk_i_is_drawn_from_the_ith_spawned_child():
    """simulate's chunk i draws from SeedSequence(seed).spawn(..)[i]: folding chunk statistics built here from the
    spawned children reproduces simulate bit for bit; the children in another order do not."""
    net = _net("tanh", depth=3)
    K0 = K0_discrete(net)
    Tr = transport_ops(net, K0)
    r = simulate(net, 8, 150, seed=7, chunk_size=50, progress=False)

    def folded(children):
        parts = [chunk_statistics(conditional_paths, net, 8, 50, c, Tr) for c in children]
        return ensemble.statistics(parts[0].merge(parts[1]).merge(parts[2]), net, 8, K0)[0]

    children = np.random.SeedSequence(7).spawn(3)
    assert all(np.array_equal(v, r[k]) for k, v in folded(children).items())
    assert not np.array_equal(folded(children[::-1])["V4"], r["V4"])


def test_cli_simulate_two_workers_default_chunk_size_bit_identical(tmp_path):
    """`kerneleft simulate --workers 2` with the default chunk size (3 chunks of 512, 512, 76) writes the same
    numbers as --workers 1."""
    cfg = tmp_path / "net.toml"
    cfg.write_text('activation = "tanh"\nC_W = 2.0\nC_b = 0.1\nT = 1.0\ndepth = 3\nK_in = [[1.0, 0.6], [0.6, 1.5]]\n')
    out = {}
    for w in (1, 2):
        path = tmp_path / f"w{w}.json"
        assert main(["simulate", str(cfg), "--width", "64", "--samples", "1100", "--seed", "3", "--workers", str(w),
                     "--no-progress", "--json", str(path)]) == 0
        out[w] = json.loads(path.read_text())
    assert ensemble.default_chunk_size("conditional", _net(), 64) == out[2]["chunk_size"] == 512
    assert out[2]["chunks"] == 3 and out[2]["workers"] == 2
    arrays = [k for k in out[1] if k.startswith(("G_mean", "Sigma_mean", "V4", "K1", "cov"))]
    assert len(arrays) == 16 and all(out[1][k] == out[2][k] for k in arrays)


def test_partial_size_independent_of_samples():
    net = _net("tanh", depth=3)
    Tr = transport_ops(net, K0_discrete(net))
    small = chunk_statistics(conditional_paths, net, 4, 10, np.random.SeedSequence(0), Tr)
    large = chunk_statistics(conditional_paths, net, 4, 500, np.random.SeedSequence(0), Tr)
    shapes = lambda p: [a.shape for m in (p.gs, p.drift) for a in (m.mean, m.M11, m.M21, m.M22)]
    assert shapes(small) == shapes(large)


def test_stop_se_stops_after_whole_chunks():
    net = _net("tanh", depth=3)
    kw = dict(width=8, samples=100000, seed=23, chunk_size=64, stop_se=1.5, progress=False)
    r = simulate(net, **kw)
    assert r.meta["stopped_early"] and r.meta["samples"] % 64 == 0 and r.meta["samples"] < 100000
    assert np.max(r.se["K1"]) <= 1.5
    assert _same(r, simulate(net, pool=2, chunks_per_task=3, **kw))


def test_interrupt_returns_finished_chunks():
    def interrupted_map(fn, tasks):
        for i, task in enumerate(tasks):
            if i == 3:
                raise KeyboardInterrupt
            yield fn(task)

    net = _net("tanh", depth=3)
    r = simulate(net, 8, 10000, seed=24, chunk_size=50, pool=interrupted_map, progress=False)
    assert r.meta["interrupted"] and r.meta["samples"] == 150
    assert _same(r, simulate(net, 8, 150, seed=24, chunk_size=50, progress=False))


def test_sigint_with_worker_processes_returns_partial():
    """Ctrl-C (SIGINT) during a 2-worker run, once the progress bar shows finished chunks, returns them."""
    # Python's own Ctrl-C handler even when the suite runs in a background job, whose children ignore SIGINT
    script = textwrap.dedent(f"""
        import json, signal
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from kerneleft import Network
        from kerneleft.ensemble import simulate
        net = Network(activation="tanh", C_W=2.0, T=1.0, depth=20, K_in={K_IN.tolist()})
        r = simulate(net, 64, 10**7, seed=1, pool=2, chunk_size=32, progress=True)
        print(json.dumps({{"interrupted": r.meta["interrupted"], "samples": r.meta["samples"]}}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err, deadline = b"", time.monotonic() + 120
    while not re.search(rb"\| *[1-9][0-9]*/10000000", err) and time.monotonic() < deadline:
        if select.select([proc.stderr], [], [], 1.0)[0]:
            err += os.read(proc.stderr.fileno(), 4096)
    proc.send_signal(signal.SIGINT)
    out, rest = proc.communicate(timeout=120)
    assert proc.returncode == 0, (err + rest)[-500:]
    meta = json.loads(out.decode().strip().splitlines()[-1])
    assert meta["interrupted"] and 0 < meta["samples"] < 10 ** 7 and meta["samples"] % 32 == 0


# --- registry and input checks ---------------------------------------------------------------------------------
def test_unknown_method_names_allowed_values():
    with pytest.raises(ValueError, match=r"^method: .*conditional.*g-only-chain.*weights"):
        get_method("nope")


def test_methods_are_listed_statically():
    """Every sampler is in METHODS as soon as ensemble is imported: no registration on import elsewhere."""
    assert ensemble.METHODS == {"conditional": samplers.conditional_paths, "weights": samplers.weights_paths,
                                "g-only-chain": samplers.gonly_chain}
    assert get_method("g-only-chain") is samplers.gonly_chain


@pytest.mark.parametrize("kw,field", [
    ({"width": 0}, "width"), ({"samples": 1}, "samples"), ({"pool": 0}, "pool"), ({"seed": -1}, "seed"),
    ({"method": "bogus"}, "method"), ({"chunk_size": 0}, "chunk_size"), ({"stop_se": -1.0}, "stop_se"),
])
def test_bad_input_one_line(kw, field):
    args = {"width": 4, "samples": 10, "seed": 0, **kw}
    with pytest.raises(ValueError) as err:
        simulate(_net(), progress=False, **args)
    msg = str(err.value)
    assert msg.startswith(f"{field}:") and "\n" not in msg


# --- extrapolation in 1/n --------------------------------------------------------------------------------------
def _fake(width, K1, se, t):
    return KernelResult(t, {"K1": K1}, {"K1": se}, {"width": width})


def test_extrapolate_K1_recovers_limit():
    rng = np.random.default_rng(3)
    t = np.arange(3.0)
    truth, slope = rng.standard_normal((3, 2, 2)), rng.standard_normal((3, 2, 2))
    truth, slope = truth + truth.swapaxes(1, 2), slope + slope.swapaxes(1, 2)
    truth[0] = slope[0] = 0.0
    fits = []
    for rep in range(200):
        res = []
        for n in (8, 16, 32, 64):
            se = np.full((3, 2, 2), 0.05)
            se[0] = 0.0
            noise = np.triu(rng.standard_normal((3, 2, 2)) * se)
            res.append(_fake(n, truth + slope / n + noise + np.triu(noise, 1).swapaxes(1, 2), se, t))
        fits.append(extrapolate_K1(res))
    est = np.array([f["K1"] for f in fits])
    z = (est.mean(0) - truth)[1:] / (fits[0].se["K1"][1:] / np.sqrt(len(fits)))
    assert np.max(np.abs(z)) < Z_OK
    assert np.allclose(est.std(0)[1:], fits[0].se["K1"][1:], rtol=0.2)      # the reported SE is right
    assert fits[0].se["K1"][0].max() == 0.0 and np.all(fits[0]["K1"][0] == 0.0)
    assert fits[0].meta["dof"] == 2 * 3 * 2
    with pytest.raises(ValueError, match="^results:"):
        extrapolate_K1(res[:1])
