"""theory.solve: dispatch, validation, and exact merging of identical inputs."""
import numpy as np
import pytest

from kerneleft import network_from_dict
from kerneleft.theory import distinct_inputs, solve

BASE = {"C_W": 2.0, "T": 1.0, "depth": 10}


def test_distinct_inputs():
    K = np.array([[1.0, 1.0, 0.3], [1.0, 1.0, 0.3], [0.3, 0.3, 2.0]])
    assert distinct_inputs(K).tolist() == [0, 0, 1]
    assert distinct_inputs(np.array([[1.0, 0.999], [0.999, 1.0]])).tolist() == [0, 1]


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("closure", ["g-only", "sigma"])
def test_identical_inputs_are_exact_and_finite(act, closure):
    K3 = [[1.0, 1.0, 0.3], [1.0, 1.0, 0.3], [0.3, 0.3, 2.0]]
    net = network_from_dict(BASE | {"activation": act, "K_in": K3})
    res = solve(net, closure, depth_model="discrete")
    ref = solve(net.replace(K_in=[[1.0, 0.3], [0.3, 2.0]]), closure, depth_model="discrete")
    for k in ("K0", "V4", "K1"):
        assert np.all(np.isfinite(res[k]))
    np.testing.assert_allclose(res.K1[:, 1:, 1:], ref.K1, rtol=1e-12)
    np.testing.assert_allclose(res.V4[:, 0, 2, 0, 2], ref.V4[:, 0, 1, 0, 1], rtol=1e-12)
    np.testing.assert_allclose(res.V4[:, 0, 0, 1, 1], res.V4[:, 0, 1, 0, 1], rtol=1e-12)
    assert res.meta["merged_inputs"] == [0, 0, 1]


def test_bad_closure_and_singular_sigma():
    net = network_from_dict(BASE | {"activation": "tanh", "K_in": [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 2.0]]})
    with pytest.raises(ValueError, match="^closure:"):
        solve(net, "bogus")
    with pytest.raises(ValueError, match="^K_in:"):
        solve(net, "sigma")


def test_closure_registry_and_options():
    from kerneleft.errors import InputError
    from kerneleft.theory import CLOSURES, make_options
    from kerneleft.theory.gonly import GOnlyOptions, solve_gonly
    from kerneleft.theory.sigma import SigmaOptions, solve_sigma

    assert {n: (c.solve, c.options_type) for n, c in CLOSURES.items()} == \
        {"g-only": (solve_gonly, GOnlyOptions), "sigma": (solve_sigma, SigmaOptions)}
    assert make_options("sigma", tol=1e-4) == SigmaOptions(tol=1e-4)
    assert make_options("g-only", GOnlyOptions(rtol=1e-6), atol=1e-12) == GOnlyOptions(1e-6, 1e-12)
    with pytest.raises(InputError, match=r"^g-only option 'tol': unknown \(allowed: rtol, atol\)$"):
        make_options("g-only", tol=1e-3)
    with pytest.raises(InputError, match=r"^sigma option 'rtol': unknown \(allowed: degree, tol, grid, substeps, "
                                         r"max_levels\)$"):
        make_options("sigma", rtol=1e-3)
    with pytest.raises(InputError, match="^options: must be a SigmaOptions"):
        make_options("sigma", GOnlyOptions())


@pytest.mark.parametrize("kw,field", [
    ({"tol": 0.6}, "tol"), ({"tol": float("nan")}, "tol"), ({"tol": 1e-11}, "tol"), ({"tol": "1e-3"}, "tol"),
    ({"degree": 0}, "degree"), ({"degree": "cubic"}, "degree"), ({"degree": True}, "degree"),
    ({"grid": 2}, "grid"), ({"substeps": 0}, "substeps"), ({"max_levels": 1}, "max_levels"),
])
def test_sigma_options_validated_on_construction(kw, field):
    from kerneleft.errors import InputError
    from kerneleft.theory.sigma import SigmaOptions

    with pytest.raises(InputError) as info:
        SigmaOptions(**kw)
    assert str(info.value).startswith(f"{field}:") and "\n" not in str(info.value)


def test_gonly_options_validated_and_frozen():
    import dataclasses
    from kerneleft.errors import InputError
    from kerneleft.theory.gonly import GOnlyOptions

    for kw, field in (({"rtol": 0.5}, "rtol"), ({"rtol": 1e-14}, "rtol"), ({"atol": 0.0}, "atol"),
                      ({"atol": float("inf")}, "atol")):
        with pytest.raises(InputError, match=f"^{field}:"):
            GOnlyOptions(**kw)
    with pytest.raises(dataclasses.FrozenInstanceError):
        GOnlyOptions().rtol = 1e-3


def test_solve_takes_an_options_object_and_checks_depth_model_once():
    from kerneleft.errors import InputError
    from kerneleft.theory.gonly import GOnlyOptions

    net = network_from_dict({"activation": "tanh", "C_W": 1.0, "T": 1.0, "depth": 3, "K_in": [[1.0, 0.3], [0.3, 1.0]]})
    a = solve(net, "g-only", options=GOnlyOptions(rtol=1e-5))
    b = solve(net, "g-only", rtol=1e-5)
    assert a.meta["rtol"] == b.meta["rtol"] == 1e-5 and np.array_equal(a.V4, b.V4)
    for closure in ("g-only", "sigma"):
        with pytest.raises(InputError, match="^depth_model: must be 'continuous' or 'discrete', got 'euler'$"):
            solve(net, closure, depth_model="euler")
