"""`kerneleft theory --order 2 [--tol2] [--width N]` (docs/reference.md#cli; ../shared/INTERFACE.md "Next order in
1/n"): the JSON keys and shapes, the finite-width predictions, and one-line errors naming the flag.

Plumbing is tested with the G-only closure (milliseconds); one sigma call checks that --tol2 reaches the solver.
"""
import json

import numpy as np
import pytest
from conftest import SMALL, one_error, toml_text

from kerneleft.cli import main
from kerneleft.config import network_from_dict
from kerneleft.theory import solve

ONE = {"activation": "tanh", "C_W": 1.5, "C_b": 0.1, "T": 1.0, "depth": 4, "K_in": [[1.0]]}
L = ONE["depth"]


def _cfg(tmp_path, d=ONE, name="c.toml"):
    p = tmp_path / name
    p.write_text(toml_text(d))
    return str(p)


def _theory(tmp_path, *args, d=ONE):
    out = tmp_path / "o.json"
    assert main(["theory", _cfg(tmp_path, d), *args, "--json", str(out)]) == 0
    return {k: np.asarray(v) if isinstance(v, list) else v for k, v in json.loads(out.read_text()).items()}


def test_order_1_is_todays_output(tmp_path):
    res = _theory(tmp_path, "--closure", "g-only", "--depth-model", "discrete")
    assert {"t", "K0", "V4", "K1"} <= set(res)
    assert not {"K2", "V4_1", "G_mean_pred", "V4_pred", "width", "next_order"} & set(res)
    again = _theory(tmp_path, "--closure", "g-only", "--depth-model", "discrete", "--order", "1")
    for k in ("K0", "V4", "K1"):
        np.testing.assert_array_equal(again[k], res[k])


def test_gonly_order_2_with_width(tmp_path, capsys):
    res = _theory(tmp_path, "--closure", "g-only", "--depth-model", "discrete", "--order", "2", "--width", "16")
    assert res["K2"].shape == (L + 1, 1, 1) and res["V4_1"].shape == (L + 1, 1, 1, 1, 1)
    assert res["G_mean_pred"].shape == (L + 1, 1, 1) and res["V4_pred"].shape == (L + 1, 1, 1, 1, 1)
    assert res["order"] == 2 and res["width"] == 16 and res["next_order"]["error_estimate"] == 0.0
    np.testing.assert_allclose(res["G_mean_pred"], res["K0"] + res["K1"] / 16 + res["K2"] / 256, rtol=1e-14)
    np.testing.assert_allclose(res["V4_pred"], res["V4"] + res["V4_1"] / 16, rtol=1e-14)
    assert np.max(np.abs(res["K2"][1:])) > 0 and np.max(np.abs(res["V4_1"][1:])) > 0    # a real correction
    api = solve(network_from_dict(ONE), "g-only", "discrete", order=2)                   # a thin layer over solve
    for k in ("K0", "K1", "V4", "K2", "V4_1"):
        np.testing.assert_allclose(res[k], api[k], rtol=1e-15, atol=0)
    assert "K2[t=T]" in capsys.readouterr().out


def test_width_at_order_1_is_the_leading_prediction(tmp_path):
    res = _theory(tmp_path, "--closure", "g-only", "--depth-model", "discrete", "--width", "8")
    assert "K2" not in res and res["width"] == 8
    np.testing.assert_allclose(res["G_mean_pred"], res["K0"] + res["K1"] / 8, rtol=1e-14)
    np.testing.assert_array_equal(res["V4_pred"], res["V4"])


def test_identical_inputs_are_one_input(tmp_path):
    """Two identical inputs are merged, so the next order applies; every entry is the one-input value."""
    two = dict(ONE, K_in=[[1.0, 1.0], [1.0, 1.0]])
    res = _theory(tmp_path, "--closure", "g-only", "--depth-model", "discrete", "--order", "2", d=two)
    one = solve(network_from_dict(ONE), "g-only", "discrete", order=2)
    assert res["K2"].shape == (L + 1, 2, 2) and res["V4_1"].shape == (L + 1, 2, 2, 2, 2)
    np.testing.assert_allclose(res["K2"], np.broadcast_to(one["K2"], (L + 1, 2, 2)), rtol=1e-12)
    np.testing.assert_allclose(res["V4_1"], np.broadcast_to(one["V4_1"], (L + 1, 2, 2, 2, 2)), rtol=1e-12)


@pytest.mark.slow
def test_sigma_order_2_tol2_reaches_the_solver(tmp_path):
    res = _theory(tmp_path, "--closure", "sigma", "--depth-model", "discrete", "--order", "2", "--tol2", "0.05",
                  "--width", "32")
    assert res["next_order"]["tol2"] == 0.05 and res["next_order"]["error_estimate"] <= 0.05
    assert res["K2"].shape == (L + 1, 1, 1) and res["V4_1"].shape == (L + 1, 1, 1, 1, 1)
    assert np.all(np.isfinite(res["K2"])) and np.all(np.isfinite(res["V4_1"]))
    np.testing.assert_allclose(res["G_mean_pred"], res["K0"] + res["K1"] / 32 + res["K2"] / 32 ** 2, rtol=1e-14)
    np.testing.assert_allclose(res["V4_pred"], res["V4"] + res["V4_1"] / 32, rtol=1e-14)


BRANCH = {"activation": "tanh", "T": 1.0, "depth": 4, "K_in": [[1.0]],
          "branch": [{"layer": "phi"}, {"layer": "dense", "C_W": 1.0}, {"layer": "phi"},
                     {"layer": "dense", "C_W": 1.0}]}


@pytest.mark.parametrize("config,args,expected", [
    (ONE, ["--closure", "g-only", "--width", "0"], "error: --width: must be an integer >= 1, got 0"),
    (ONE, ["--closure", "g-only", "--width", "x"], "error: --width: 'x' is not a valid integer."),
    (ONE, ["--closure", "g-only", "--order", "3"], "error: --order: '3' is not one of '1', '2'."),
    (ONE, ["--closure", "g-only", "--tol2", "0.1"], "error: --tol2: applies to --closure sigma only"),
    (ONE, ["--closure", "sigma", "--tol2", "0.1"], "error: --tol2: applies to --order 2 only"),
    (ONE, ["--closure", "sigma", "--order", "2", "--tol2", "2"], "error: --tol2: must be a number in [1e-08, 0.5]"),
    (SMALL, ["--closure", "g-only", "--depth-model", "discrete", "--order", "2"],
     "error: --order: 2 is implemented for one input"),
    (SMALL, ["--closure", "sigma", "--order", "2"], "error: --order: 2 is implemented for one input"),
    (BRANCH, ["--closure", "g-only", "--depth-model", "discrete", "--order", "2"],
     "error: --order: 2 is implemented for the default resnet block"),
])
def test_errors_name_the_flag(tmp_path, capsys, config, args, expected):
    out = tmp_path / "o.json"
    line = one_error(capsys, main(["theory", _cfg(tmp_path, config), *args, "--json", str(out)]))
    assert line.startswith(expected), line
    assert not out.exists()
