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
