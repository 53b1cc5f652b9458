"""CLI contract (INTERFACE.md): exit code 2 and one `error:` line naming the field, no traceback."""
import json
import subprocess
import sys

import numpy as np
import pytest

from kerneleft.cli import main

GOOD = 'activation = "tanh"\nC_W = 2.0\nC_b = 0.0\nT = 2.0\ndepth = 4\nK_in = [[1.0, 0.6], [0.6, 1.5]]\n'


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(GOOD)
    return p


def _write(tmp_path, text):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("replace,field", [
    (('"tanh"', '"swish"'), "activation"),
    (("C_W = 2.0", "C_W = -2.0"), "C_W"),
    (("C_b = 0.0", "C_b = -1.0"), "C_b"),
    (("T = 2.0", "T = 0.0"), "T"),
    (("depth = 4", "depth = 0"), "depth"),
    (("[0.6, 1.5]]", "[0.7, 1.5]]"), "K_in"),
    (("[0.6, 1.5]]", "[0.6, -1.5]]"), "K_in"),
    (("C_W = 2.0", "C_W = nan"), "C_W"),
    (("T = 2.0", "T = inf"), "T"),
])
def test_bad_config_exit_2_one_line(tmp_path, capsys, replace, field):
    path = _write(tmp_path, GOOD.replace(*replace))
    rc = main(["kernel", path, "--json", str(tmp_path / "o.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"error: {field}:"), err


@pytest.mark.parametrize("args,field", [
    (["--width", "0", "--samples", "10", "--seed", "1"], "width"),
    (["--width", "8", "--samples", "1", "--seed", "1"], "samples"),
    (["--width", "8", "--samples", "10", "--seed", "1", "--workers", "0"], "workers"),
])
def test_bad_simulate_options(cfg, tmp_path, capsys, args, field):
    rc = main(["simulate", str(cfg), *args, "--json", str(tmp_path / "o.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {field}:"), err


def test_unreadable_file_and_bad_choice(tmp_path, capsys):
    assert main(["kernel", str(tmp_path / "nope.toml"), "--json", str(tmp_path / "o.json")]) == 2
    assert capsys.readouterr().err.startswith("error: config:")
    assert main(["theory", str(tmp_path / "nope.toml"), "--closure", "bogus", "--json", "o.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "closure" in err[0]


def test_console_script_no_traceback(tmp_path):
    path = _write(tmp_path, GOOD.replace("depth = 4", "depth = -3"))
    proc = subprocess.run([sys.executable, "-m", "kerneleft", "kernel", path, "--json", str(tmp_path / "o.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: depth:") and "Traceback" not in proc.stderr


def test_kernel_command_writes_contract(cfg, tmp_path):
    out = tmp_path / "k.json"
    assert main(["kernel", str(cfg), "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert len(d["t"]) == 5 and len(d["K0"]) == 5 and len(d["K0"][0]) == 2
    assert d["t"][-1] == pytest.approx(2.0)
    assert d["K0"][0] == [[1.0, 0.6], [0.6, 1.5]]


def test_theory_and_simulate_commands(cfg, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["theory", str(cfg), "--closure", "sigma", "--depth-model", "discrete", "--json", str(out)]) == 0
    sig = json.loads(out.read_text())
    assert len(sig["V4"]) == 5 and len(sig["V4"][0][0][0][0]) == 2 and len(sig["K1"][0]) == 2
    assert sig["closure"] == "sigma" and sig["K1"][0] == [[0.0, 0.0], [0.0, 0.0]]
    assert main(["theory", str(cfg), "--closure", "g-only", "--rtol", "1e-9", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["closure"] == "g-only"
    assert main(["theory", str(cfg), "--closure", "sigma", "--degree", "many", "--json", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: degree:")
    sim = tmp_path / "s.json"
    assert main(["simulate", str(cfg), "--width", "8", "--samples", "64", "--seed", "3", "--no-progress",
                 "--chunk-size", "16", "--json", str(sim)]) == 0
    d = json.loads(sim.read_text())
    for key in ("t", "G_mean", "G_mean_se", "V4", "V4_se", "K1", "K1_se", "Sigma_mean", "Sigma_mean_se"):
        assert key in d, key
    assert (d["width"], d["samples"], d["seed"], d["method"]) == (8, 64, 3, "conditional")
    z = (np.array(d["G_mean"][0]) - [[1.0, 0.6], [0.6, 1.5]]) / np.array(d["G_mean_se"][0])
    assert np.all(np.abs(z) < 4.5), z                     # E[G^0] = K_in (I3)


def test_diagnose_command(cfg, tmp_path):
    out = tmp_path / "d.json"
    assert main(["diagnose", str(cfg), "--width", "8", "--samples", "64", "--seed", "1", "--batches", "4",
                 "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    for key in ("transport_exact", "transport_closure", "source_exact", "source_closure", "k1_source_exact",
                "k1_source_closure", "v4_residual", "v4_residual_by_term", "validity_window", "transport_exact_se"):
        assert key in d, key
    assert len(d["transport_exact"]) == 5 and set(d["validity_window"]) >= {"V4", "K1"}
