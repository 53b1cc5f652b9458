"""Network specification and validation (THEORY §1, INTERFACE.md "Errors")."""
import numpy as np
import pytest

from kerneleft import Network, get_activation, load_config, network_from_dict
from kerneleft.activations import ACTIVATION_NAMES
from kerneleft.config import input_kernel

BASE = {"activation": "tanh", "C_W": 2.0, "C_b": 0.0, "T": 2.0, "depth": 50, "K_in": [[1.0, 0.6], [0.6, 1.5]]}


def test_base_config_and_derived_fields():
    net = network_from_dict(BASE)
    assert net.P == 2 and net.depth == 50
    assert net.eps == pytest.approx(0.04)
    assert net.t.shape == (51,) and net.t[-1] == pytest.approx(2.0)
    assert net.phi.name == "tanh"
    assert network_from_dict(net.to_dict()).to_dict() == net.to_dict()


def test_inputs_give_K_in():
    x = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]])
    d = {k: v for k, v in BASE.items() if k != "K_in"} | {"inputs": x.tolist(), "C_in": 2.0, "C_b_in": 0.1}
    net = network_from_dict(d)
    np.testing.assert_allclose(net.K_in, 2.0 * x @ x.T / 3 + 0.1, rtol=1e-15)
    np.testing.assert_allclose(input_kernel(x), x @ x.T / 3)


def test_toml_roundtrip(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('activation = "relu"\nC_W = 1.5\nT = 1.0\ndepth = 4\nK_in = [[1.0]]\n')
    net = load_config(p)
    assert net.phi.name == "relu" and net.C_b == 0.0 and net.P == 1


def test_user_callable_activation():
    net = Network(activation=lambda x: x ** 3, C_W=1.0, T=1.0, depth=2, K_in=[[1.0]])
    assert net.phi(np.array([2.0])) == 8.0
    assert get_activation("erf").name == "erf"
    assert set(ACTIVATION_NAMES) == {"linear", "relu", "tanh", "erf", "gelu", "silu", "sin", "softplus"}


def test_degenerate_kernel_allowed():
    net = network_from_dict(BASE | {"K_in": [[1.0, 1.0], [1.0, 1.0]]})
    assert net.P == 2


BAD = [
    ({"activation": "swish2"}, "activation"),
    ({"activation": 3}, "activation"),
    ({"C_W": -1.0}, "C_W"),
    ({"C_b": -0.1}, "C_b"),
    ({"C_W": float("nan")}, "C_W"),
    ({"C_b": float("inf")}, "C_b"),
    ({"C_W": "big"}, "C_W"),
    ({"T": 0.0}, "T"),
    ({"T": -1.0}, "T"),
    ({"T": float("nan")}, "T"),
    ({"depth": 0}, "depth"),
    ({"depth": 2.5}, "depth"),
    ({"K_in": [[1.0, 0.5], [0.4, 1.0]]}, "K_in"),
    ({"K_in": [[1.0, 2.0], [2.0, 1.0]]}, "K_in"),
    ({"K_in": [[1.0, float("nan")], [float("nan"), 1.0]]}, "K_in"),
    ({"K_in": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]}, "K_in"),
    ({"K_in": [[0.0]]}, "K_in"),
    ({"K_in": "x"}, "K_in"),
    ({"unknown_field": 1}, "unknown_field"),
]


@pytest.mark.parametrize("change,field", BAD)
def test_bad_input_names_field(change, field):
    with pytest.raises((ValueError, TypeError)) as info:
        network_from_dict(BASE | change)
    msg = str(info.value)
    assert msg.startswith(field + ":"), msg
    assert "\n" not in msg


def test_missing_and_conflicting_fields():
    with pytest.raises(ValueError, match="^K_in:"):
        network_from_dict({k: v for k, v in BASE.items() if k != "K_in"})
    with pytest.raises(ValueError, match="^T:"):
        network_from_dict({k: v for k, v in BASE.items() if k != "T"})
    with pytest.raises(ValueError, match="^K_in:"):
        network_from_dict(BASE | {"inputs": [[1.0]]})
    with pytest.raises(ValueError, match="^C_in:"):
        network_from_dict({k: v for k, v in BASE.items() if k != "K_in"} | {"inputs": [[1.0]], "C_in": -1.0})
    with pytest.raises(ValueError, match="^C_b_in:"):
        network_from_dict({k: v for k, v in BASE.items() if k != "K_in"} | {"inputs": [[1.0]], "C_b_in": -1.0})
    with pytest.raises(ValueError, match="^inputs:"):
        network_from_dict({k: v for k, v in BASE.items() if k != "K_in"} | {"inputs": [[1.0, float("inf")]]})


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ValueError, match="^config:"):
        load_config(tmp_path / "missing.toml")
    p = tmp_path / "bad.toml"
    p.write_text("activation = \n")
    with pytest.raises(ValueError, match="^config:"):
        load_config(p)
