"""Ill-conditioned and extreme inputs (docs/numerics.md#ill-conditioned, #overflow): nearly identical inputs are
continuous in ρ, solvers converge or fail loudly, overflow is an error naming T, long work is refused or shown."""
import json
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

from kerneleft import limits
from kerneleft import gaussian as g
from kerneleft.cli import main
from kerneleft.config import Network
from kerneleft.diagnostics import diagnose
from kerneleft.ensemble import simulate
from kerneleft.gaussian import block_det
from kerneleft.errors import ConvergenceError, InputError
from kerneleft.kernel import K0_discrete, kernel
from kerneleft.result import KernelResult, require_finite, to_jsonable
from kerneleft.theory import make_options, merge_rtol, solve
from kerneleft.theory.sigma import solve_sigma

DELTAS = (1e-4, 1e-6, 1e-8, 1e-11)         # 1 − ρ


def near(act, d, **kw):
    rho = 1.0 - d
    return Network(**({"activation": act, "C_W": 2.0, "C_b": 0.1, "T": 1.0, "depth": 10,
                       "K_in": [[1.0, rho], [rho, 1.0]]} | kw))


def gaps(results, ref):
    """max over V4, K1 of |X(ρ) − X(1)| / scale, scale = max(|X(1)|, 1e-2 |V4(1)|) (relu's K1 may vanish)."""
    s = {k: max(np.max(np.abs(ref[k])), 1e-2 * np.max(np.abs(ref.V4))) for k in ("V4", "K1")}
    return [max(np.max(np.abs(r[k] - ref[k])) / s[k] for k in ("V4", "K1")) for r in results]


# --- nearly identical inputs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth_model", ["discrete", "continuous"])
@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_gonly_continuous_in_rho(act, depth_model):
    """G-only at ρ = 1 − δ approaches the identical-input answer linearly in δ (slope <= 5, measured 2.1 for tanh),
    monotonically down to rounding, at δ = 1e-11 too (the relu
    hessian entries there are ~1e5 and cancel in ℋ:V4; before the compensated det, K1₁₂ jumped to 0.07–0.6)."""
    ref = solve(near(act, 0.0), "g-only", depth_model)
    res = [solve(near(act, d), "g-only", depth_model) for d in DELTAS]
    assert all(r.meta.get("merged_inputs") is None for r in res)            # solved as two inputs, not merged
    gap = gaps(res, ref)
    assert all(x <= 5.0 * d + 1e-8 for d, x in zip(DELTAS, gap)), gap
    assert gap == sorted(gap, reverse=True) or max(gap[1:]) < 1e-8


@pytest.mark.parametrize("act,depth_model", [("relu", "discrete"), ("tanh", "discrete"), ("gelu", "discrete"),
                                             ("tanh", "continuous")])
def test_sigma_continuous_in_rho(act, depth_model):
    """Sigma theory: 1 − ρ = 1e-4 is solved on whitened plane grids, smaller gaps are merged (τ = 0.01·tol); all
    agree with identical inputs within the tolerance, and the gap shrinks with δ (no jump at the merge)."""
    tol = 1e-3
    ref = solve(near(act, 0.0), "sigma", depth_model, tol=tol)
    res = [solve(near(act, d), "sigma", depth_model, tol=tol) for d in DELTAS]
    assert res[0].meta.get("merged_inputs") is None and res[1].meta["merged_inputs"] == [0, 0]
    gap = gaps(res, ref)
    assert gap[0] < 2 * tol and all(x <= gap[0] for x in gap[1:])
    assert max(r.meta["seconds"] for r in res) < 30


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_sigma_whitened_grid_resolves_a_thin_plane(act):
    """Without merging, ρ = 1 − 1e-8 converges in at most three levels to the identical-input answer (the
    axis-aligned grid of before needed > 7 levels at 1 − 1e-6 and returned K1 = −6.33 instead of −0.57)."""
    tol = 1e-3
    one = solve_sigma(near(act, 0.0).replace(K_in=[[1.0]]), "discrete", tol=tol)
    r = solve_sigma(near(act, 1e-8), "discrete", tol=tol)
    assert r.meta["converged"] and len(r.meta["levels"]) <= 3
    for two, ref in ((r.K1[:, 0, 1], one.K1[:, 0, 0]), (r.K1[:, 1, 1], one.K1[:, 0, 0]),
                     (r.V4[:, 0, 1, 0, 1], one.V4[:, 0, 0, 0, 0])):
        assert np.max(np.abs(two - ref)) < 2 * tol * np.max(np.abs(ref))


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_merge_error_is_below_tol(act):
    """Merging at the threshold τ = 0.01·tol moves V4, K1 by O(τ) (measured C ≈ 1), far below tol: the two-input
    solutions at 1 − ρ = 0.9τ and 1e-10 on the same fixed grid differ by < 0.1·tol."""
    tol = 1e-2
    tau = merge_rtol("sigma", make_options("sigma", tol=tol))
    assert tau == pytest.approx(0.01 * tol)
    assert solve(near(act, 0.9 * tau, T=2.0), "sigma", "discrete", tol=tol).meta["merged_inputs"] == [0, 0]
    a, b = (solve_sigma(near(act, d, T=2.0), "discrete", grid=96) for d in (0.9 * tau, 1e-10))
    assert gaps([a], b)[0] < 0.1 * tol


def test_relu_det_is_exact_and_hessian_cancels():
    """block_det is the determinant of the floating-point entries to a few ulp (the naive difference is wrong in
    most digits); with it, Σ_i C(4,i) E[relu^(i)(u) relu^(4−i)(v)] → E[(relu²)''''] = 0 as ρ -> 1 although
    every term is ~1/√det (1e6 at δ = 1e-14)."""
    k11, k22 = 1.3, 1.3 * (1 + 3e-9)
    k12 = (1 - 1e-13) * math.sqrt(k11 * k22)
    exact = Fraction(k11) * Fraction(k22) - Fraction(k12) ** 2
    assert abs(Fraction(float(block_det(k11, k22, k12))) / exact - 1) < 1e-14
    assert abs(Fraction(k11 * k22 - k12 * k12) / exact - 1) > 1e-4
    for d in (1e-6, 1e-10, 1e-14):
        M = g.pair_moments("relu", 1.0, 1.0, 1.0 - d, 4)
        assert abs(sum(math.comb(4, i) * M[i, 4 - i] for i in range(5))) < 1e-3 * d + 1e-14 * M[2, 2]


def test_gonly_continuous_falls_back_to_exact_coefficients():
    """At 1 − ρ = 1e-10 rounding of K0 makes relu's ℋ(t) rough: the Chebyshev path is not resolved and the ODE
    evaluates the coefficients exactly instead (same answer as the discrete-depth continuity test demands)."""
    r = solve(near("relu", 1e-10), "g-only", "continuous")
    assert r.meta["coefficients"] == "exact"
    assert gaps([r], solve(near("relu", 0.0), "g-only", "continuous"))[0] < 1e-8


def test_diagnose_merges_identical_inputs_like_theory():
    net = near("relu", 0.0, depth=4)
    d = diagnose(net, width=8, samples=8, seed=3, batches=2)
    th = solve(net, "g-only", "discrete")
    assert np.array_equal(d["K1_gonly"], th.K1)
    assert all(np.all(np.isfinite(v)) for v in [*d.arrays.values(), *d.se.values()])   # k1_source_closure too


# --- convergence: loud failures, honest estimates -------------------------------------------------------------------
def test_sigma_unconverged_raises_with_achieved_error():
    with pytest.raises(ConvergenceError, match=r"^sigma: not converged to tol 1e-09 after 2 refinements "
                                               r"\(achieved [0-9.e-]+, grid \d+"):
        solve_sigma(near("relu", 0.5), "discrete", tol=1e-9, max_levels=2)


def test_sigma_refuses_a_refinement_beyond_the_time_limit(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(limits, "MAX_SECONDS", 1e-3)
    cfg = tmp_path / "c.toml"
    cfg.write_text('activation = "relu"\nC_W = 2.0\nT = 1.0\ndepth = 5\nK_in = [[1.0, 0.5], [0.5, 1.0]]\n')
    out = tmp_path / "o.json"
    assert main(["theory", str(cfg), "--closure", "sigma", "--depth-model", "discrete", "--tol", "1e-9",
                 "--json", str(out)]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the next would take" in err and "achieved" in err and not out.exists()


def test_fixed_truncations_report_an_error_estimate(tmp_path, capsys):
    """Integer degree at P = 4 (the case that reported null while K1 was far off): the change from degree D − 2 is
    reported, bounds the change to D + 4, and the CLI prints it; a fixed grid reports its change from grid/1.5."""
    K = [[1.0, 0.3, 0.2, 0.1], [0.3, 1.0, 0.3, 0.2], [0.2, 0.3, 1.0, 0.3], [0.1, 0.2, 0.3, 1.0]]
    net = near("tanh", 0.0, depth=5, K_in=K)
    r4, r8 = (solve_sigma(net, "discrete", degree=D) for D in (4, 8))
    change = max(np.max(np.abs(r4[k] - r8[k])) / np.max(np.abs(r8[k])) for k in ("V4", "K1"))
    assert r4.meta["error_estimate_from"]["degrees"] == [1, 2] and r4.meta["error_estimate"] > change > 0.1
    assert solve_sigma(net, "discrete", degree="quadratic").meta["error_estimate"] > 0
    grid = solve_sigma(near("tanh", 0.5), "discrete", grid=48)
    assert grid.meta["error_estimate_from"]["grid"] == 32 and 0 < grid.meta["error_estimate"] < 1e-2
    assert "converged" not in grid.meta
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'activation = "tanh"\nC_W = 2.0\nC_b = 0.1\nT = 1.0\ndepth = 5\nK_in = {K}\n')
    assert main(["theory", str(cfg), "--closure", "sigma", "--degree", "4", "--depth-model", "discrete",
                 "--json", str(tmp_path / "o.json")]) == 0
    assert f"error estimate: {r4.meta['error_estimate']:.2g} (relative change of V4, K1 from degrees [1, 2]" \
        in capsys.readouterr().out
    assert json.loads((tmp_path / "o.json").read_text())["error_estimate"] == pytest.approx(r4.meta["error_estimate"])


@pytest.mark.parametrize("call,option", [(lambda n: solve_sigma(n, tol=1e-300), "tol"),
                                         (lambda n: solve_sigma(n, tol=0.9), "tol"),
                                         (lambda n: solve(n, "g-only", rtol=1e-300), "rtol")])
def test_unreachable_tolerances_are_refused(call, option):
    with pytest.raises(InputError, match=rf"^{option}: must be a number in \["):
        call(near("tanh", 0.5))


# --- overflow ---------------------------------------------------------------------------------------------------------
OVERFLOW = {"activation": "linear", "C_W": 500.0, "T": 1000.0, "depth": 50, "K_in": [[1.0, 0.6], [0.6, 1.5]]}


@pytest.mark.parametrize("run", [
    lambda n: kernel(n.replace(depth=400), "discrete"),
    lambda n: solve(n, "g-only", "discrete"),
    lambda n: solve(n, "sigma", "discrete"),
    lambda n: simulate(n, 8, 4, seed=1, progress=False),
    lambda n: simulate(n, 8, 4, seed=1, method="weights", progress=False),
    lambda n: simulate(n, 8, 4, seed=1, method="g-only-chain", progress=False),
], ids=["kernel", "gonly", "sigma", "sim-cond", "sim-weights", "sim-chain"])
def test_overflow_is_an_input_error_naming_T_without_warnings(run):
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # a RuntimeWarning on the way fails the test
        with pytest.raises(InputError, match=r"^T: .* overflows float64 by t = [0-9.e+]+; reduce T, C_W"):
            run(Network(**OVERFLOW))


def test_overflow_time_is_where_the_kernel_leaves_float64():
    """Linear φ: K0 = K_in e^{C_W t} passes 1e300 at t = ln(1e300/(1.5 s))/C_W (0.695 for K_in scaled by s = 1e149);
    discrete: 1.5 (1 + εC_W)^l. The continuous K0 and the G-only ODEs share one watched solve_ivp (solve_ode)."""
    net = Network(**(OVERFLOW | {"T": 20.0, "depth": 200}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=r"^T: the kernel K0 overflows float64 by t = 0\.695;"):
            kernel(net.replace(K_in=1e149 * net.K_in), "continuous")
    layer = math.ceil(math.log(1e300 / 1.5) / math.log(1 + net.eps * net.C_W))
    with pytest.raises(InputError, match=rf"by t = {net.t[layer]:.3g};"):
        K0_discrete(net)


def test_cli_overflow_is_one_line_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in OVERFLOW.items()))
    out = tmp_path / "o.json"
    assert main(["theory", str(cfg), "--closure", "g-only", "--depth-model", "discrete", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: T: the G-only solution (V4) overflows float64 by t = ") and err.count("\n") == 1
    assert not out.exists()


def test_json_never_writes_null_for_nonfinite():
    """to_jsonable refuses NaN/inf (a bug if reached: ValueError, not InputError) naming the array and layer;
    require_finite turns an overflow (±inf) into the InputError naming T, and a NaN among moderate values into a
    RuntimeError (a bug, not the user's)."""
    t = np.linspace(0, 1, 4)
    K = np.ones((4, 2, 2))
    K[2, 1, 0] = np.inf
    res = KernelResult(t, {"K0": K})
    with pytest.raises(ValueError, match=r"^K0: non-finite entry inf at index \[2, 1, 0\] \(layer 2\)") as e:
        res.to_dict()
    assert not isinstance(e.value, InputError)
    with pytest.raises(ValueError, match=r"^meta.error: non-finite"):
        to_jsonable({"meta": {"error": float("nan")}})
    with pytest.raises(InputError, match=r"^T: the kernel \(K0\) overflows float64 by t = 0.667"):
        require_finite(res)
    K[2, 1, 0] = np.nan
    with pytest.raises(RuntimeError, match="not an overflow") as e:
        require_finite(KernelResult(t, {"K0": K}))
    assert not isinstance(e.value, InputError)


# --- work limits -----------------------------------------------------------------------------------------------------
def test_enormous_depth_is_refused_up_front():
    net = near("tanh", 0.5, depth=10 ** 7)
    for run in (lambda: solve(net, "g-only", "discrete"), lambda: solve(net, "g-only", "continuous"),
                lambda: solve(net, "sigma", "discrete"), lambda: K0_discrete(near("tanh", 0.5, depth=10 ** 8))):
        with pytest.raises(InputError, match=r"^depth: .* would hold [0-9.e+]+ numbers"):
            run()


def test_long_loops_are_refused_with_an_estimate(monkeypatch):
    """The Budget extrapolates from the first SAMPLE_SECONDS: a K0 recursion or a Hermite table that would pass
    MAX_SECONDS is refused naming the option and the estimate (here with the limit lowered to 0.2 s)."""
    monkeypatch.setattr(limits, "MAX_SECONDS", 0.2)
    monkeypatch.setattr(limits, "SAMPLE_SECONDS", 0.02)
    with pytest.raises(InputError, match=r"^depth: K0 recursion over 1000000 layers would take ~[0-9.]+ (s|min|h) \("):
        K0_discrete(near("tanh", 0.5, depth=10 ** 6))
    with pytest.raises(InputError, match=r"^degree: Hermite moments of order 32 at \d+ nodes would take"):
        solve_sigma(near("tanh", 0.5), "discrete", degree=30)
