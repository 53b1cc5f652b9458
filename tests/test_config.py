"""Network specification and validation (docs/model.md#network, docs/reference.md#errors)."""
import warnings

import numpy as np
import pytest

import kerneleft.config as config_module
from kerneleft import Network, get_activation, load_config, network_from_dict
from kerneleft.activations import ACTIVATION_NAMES
from kerneleft.config import MAX_KERNEL, input_kernel
from kerneleft.errors import InputError

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
    assert {"linear", "relu", "tanh", "erf", "gelu", "silu", "sin", "softplus"} <= set(ACTIVATION_NAMES)


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


# --- strict types, finite values, bugs are not user errors (issue 13) ----------------------------------------
STRICT = [
    ({"K_in": [[True, 0.0], [0.0, 1.0]]}, "K_in"),
    ({"K_in": [["1.0", 0.0], [0.0, 1.0]]}, "K_in"),
    ({"K_in": np.eye(2, dtype=bool)}, "K_in"),
    ({"K_in": [[1.0, 0.6], [0.6]]}, "K_in"),
    ({"K_in": [[[1.0]]]}, "K_in"),
    ({"K_in": [[10 ** 400]]}, "K_in"),
    ({"K_in": [[1.7e308, 0.0], [0.0, -1.7e308]]}, "K_in"),
    ({"K_in": [[1.7e308, 1e308], [1e308, 1.7e308]]}, "K_in"),
    ({"C_W": "2.0"}, "C_W"),
    ({"C_W": True}, "C_W"),
    ({"C_W": 10 ** 400}, "C_W"),
    ({"C_b": np.bool_(False)}, "C_b"),
    ({"T": "2"}, "T"),
    ({"T": False}, "T"),
    ({"depth": 4.0}, "depth"),
    ({"depth": True}, "depth"),
    ({"depth": "4"}, "depth"),
    ({"depth": float("inf")}, "depth"),
    ({"T": 1e-320, "depth": 1000}, "T"),
]
NO_K = {k: v for k, v in BASE.items() if k != "K_in"}
STRICT_INPUTS = [
    ({"inputs": [[True, 1.0]]}, "inputs"),
    ({"inputs": [["1", 1.0]]}, "inputs"),
    ({"inputs": [[1e200, 1e200]]}, "inputs"),
    ({"inputs": [[1e100, 1.0]]}, "inputs"),
    ({"inputs": [[1.0, 2.0]], "C_in": True}, "C_in"),
    ({"inputs": [[1.0, 2.0]], "C_in": 1e308, "C_b_in": 1e308}, "inputs"),
    ({"inputs": [[1.0, 2.0]], "C_b_in": "0"}, "C_b_in"),
]


@pytest.mark.parametrize("change,field", [(BASE | c, f) for c, f in STRICT] + [(NO_K | c, f) for c, f in STRICT_INPUTS])
def test_strict_types_and_finite_values(change, field):
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # no overflow RuntimeWarning on the way to the error
        with pytest.raises(InputError) as info:
            network_from_dict(change)
    msg = str(info.value)
    assert msg.startswith(field + ":") and "\n" not in msg, msg


def test_direct_construction_raises_input_error():
    with pytest.raises(InputError, match="^K_in: entry"):
        Network(activation="tanh", C_W=1.0, T=1.0, depth=2, K_in=[[True]])
    with pytest.raises(InputError, match="^depth: required"):
        Network(activation="tanh", C_W=1.0, T=1.0, K_in=[[1.0]])
    with pytest.raises(InputError, match="^foo: unknown config field"):
        Network(activation="tanh", C_W=1.0, T=1.0, depth=2, K_in=[[1.0]], foo=1)


def test_large_but_representable_kernels_are_stored_finite():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = network_from_dict(BASE | {"K_in": [[MAX_KERNEL, 0.0], [0.0, 1.0]]})
        net2 = network_from_dict(NO_K | {"inputs": [[1e75, 0.0], [0.0, 1.0]]})
    assert np.all(np.isfinite(net.K_in)) and net.K_in[0, 0] == MAX_KERNEL
    assert net2.K_in[0, 0] == pytest.approx(0.5e150, rel=1e-15) and net2.K_in[1, 1] == 0.5
    net3 = network_from_dict(BASE | {"K_in": np.array([[1.0, 0.6], [0.6, 1.5]]), "C_W": np.float32(2.0),
                                     "depth": np.int64(3)})
    assert net3.K_in.tolist() == [[1.0, 0.6], [0.6, 1.5]] and net3.depth == 3 and type(net3.depth) is int


def test_validation_bug_is_not_an_input_error(monkeypatch):
    """A numpy failure inside validation (LinAlgError is a ValueError) propagates as itself: it is a bug."""
    def broken(_a):
        raise np.linalg.LinAlgError("eigenvalue algorithm did not converge")
    monkeypatch.setattr(np.linalg, "eigvalsh", broken)
    with pytest.raises(np.linalg.LinAlgError) as info:
        network_from_dict(BASE)
    assert not isinstance(info.value, InputError)


def test_binary_and_oversized_config_files(tmp_path, monkeypatch):
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(InputError, match="^config: .* is not UTF-8 text"):
        load_config(p)
    p.write_text("# padding\n" * 20)
    monkeypatch.setattr(config_module, "MAX_CONFIG_BYTES", 100)
    with pytest.raises(InputError, match="^config: .* larger than"):
        load_config(p)
    with pytest.raises(InputError, match="^config: cannot read"):
        load_config(tmp_path)
