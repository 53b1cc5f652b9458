"""CLI contract (docs/reference.md#cli): exit code 2 and one `error:` line naming the field, no traceback."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import one_error

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
    (["--width", "0", "--samples", "10", "--seed", "1"], "--width"),
    (["--width", "8", "--samples", "1", "--seed", "1"], "--samples"),
    (["--width", "8", "--samples", "10", "--seed", "1", "--workers", "0"], "--workers"),
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
    assert capsys.readouterr().err.startswith("error: --degree:")
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


# --- every error names its option, one line, exit 2; output paths checked first (issue 13) ----------------------
SIM = ["--width", "8", "--samples", "10", "--seed", "1"]
OPTION_ERRORS = [
    (["simulate", *SIM[:-1], "-1"], "--seed"),
    (["simulate", *SIM[:-1], str(2 ** 63)], "--seed"),
    (["simulate", *SIM[:-1], "1e3"], "--seed"),
    (["simulate", *SIM[:4]], "--seed"),
    (["simulate", "--width", "10000000000", *SIM[2:]], "--width"),
    (["simulate", "--width", "100000", *SIM[2:], "--method", "weights"], "--width"),
    (["simulate", "--width", "8", "--samples", "100000000000000", "--seed", "1"], "--samples"),
    (["simulate", *SIM, "--workers", "100000"], "--workers"),
    (["simulate", *SIM, "--chunk-size", "0"], "--chunk-size"),
    (["simulate", *SIM, "--chunk-size", "x"], "--chunk-size"),
    (["simulate", *SIM, "--stop-se", "nan"], "--stop-se"),
    (["simulate", *SIM, "--method", "nope"], "--method"),
    (["simulate", *SIM, "--bogus", "1"], "--bogus"),
    (["diagnose", *SIM[:-1], "-1"], "--seed"),
    (["diagnose", *SIM, "--threshold", "inf"], "--threshold"),
    (["diagnose", *SIM, "--batches", "1"], "--batches"),
    (["diagnose", "--width", "8", "--samples", "5", "--seed", "1"], "--samples"),
    (["diagnose", "--width", "100000000000", *SIM[2:]], "--width"),
    (["theory", "--closure", "sigma", "--tol", "nan"], "--tol"),
    (["theory", "--closure", "sigma", "--tol", "1e-300"], "--tol"),
    (["theory", "--closure", "sigma", "--degree", "0"], "--degree"),
    (["theory", "--closure", "sigma", "--degree", "1e3"], "--degree"),
    (["theory", "--closure", "g-only", "--rtol", "-1"], "--rtol"),
    (["theory", "--closure", "g-only", "--atol", "inf"], "--atol"),
    (["theory", "--closure", "g-only", "--rtol", "1e-300"], "--rtol"),
    (["theory", "--closure", "bogus"], "--closure"),
    (["kernel", "--depth-model", "x"], "--depth-model"),
]


@pytest.mark.parametrize("args,option", OPTION_ERRORS)
def test_option_errors_name_the_option(cfg, tmp_path, capsys, args, option):
    out = tmp_path / "o.json"
    rc = main([args[0], str(cfg), *args[1:], "--json", str(out)])
    assert one_error(capsys, rc).startswith(f"error: {option}: "), option
    assert not out.exists()


def test_memory_refusal_gives_an_estimate(cfg, tmp_path, capsys):
    rc = main(["simulate", str(cfg), "--width", "10000000000", "--samples", "10", "--seed", "1", "--json",
               str(tmp_path / "o.json")])
    line = one_error(capsys, rc)
    assert "GiB of memory (limit" in line and "reduce --width" in line, line


@pytest.mark.parametrize("argv,name", [
    (["bogus"], "kerneleft"),
    (["kernel", "--json", "o.json"], "config"),
    (["sweep", "--out", "d"], "sweep"),
    (["reproduce", "--quick"], "--out"),
])
def test_usage_errors_are_one_line(capsys, argv, name):
    assert one_error(capsys, main(argv)).startswith(f"error: {name}: ")


def test_binary_config_file(tmp_path, capsys):
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    assert one_error(capsys, main(["kernel", str(p), "--json", str(tmp_path / "o.json")])).startswith(
        "error: config: ")
    assert one_error(capsys, main(["reproduce", "--quick", "--config", str(p), "--out", str(tmp_path / "r")])) \
        .startswith("error: --config: ")
    assert not (tmp_path / "r").exists()


SLOW = GOOD.replace("depth = 4", "depth = 3000").replace("K_in = [[1.0, 0.6], [0.6, 1.5]]",
                                                          "K_in = [[1.0, 0.6, 0.2], [0.6, 1.5, 0.1], [0.2, 0.1, 1.0]]")


#: "at once" for a refusal before minutes of work: generous, so that a loaded machine (lazy imports) does not fail it
_AT_ONCE_S = 5.0


def _bad_paths(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    paths = [(str(tmp_path), "is a directory"), (str(afile / "o.json"), "not a directory"),
             (str(afile / "sub" / "o.json"), "not a directory")]
    if sys.platform.startswith("linux"):
        paths.append(("/proc/kerneleft-no-such-dir/o.json", "cannot create directory"))
    return paths


@pytest.mark.parametrize("command", [
    ["simulate", "--width", "256", "--samples", "1000000", "--seed", "1"],
    ["diagnose", "--width", "256", "--samples", "1000000", "--seed", "1"],
    ["theory", "--closure", "sigma"],
    ["kernel", "--depth-model", "continuous"],
])
def test_bad_json_fails_before_computing(tmp_path, capsys, command):
    """A slow config (minutes of work) with an unusable --json: exit 2 at once (well under the minutes), nothing
    computed."""
    slow = tmp_path / "slow.toml"
    slow.write_text(SLOW)
    for path, why in _bad_paths(tmp_path):
        t0 = time.perf_counter()
        rc = main([command[0], str(slow), *command[1:], "--json", path])
        assert time.perf_counter() - t0 < _AT_ONCE_S
        line = one_error(capsys, rc)
        assert line.startswith("error: --json: ") and why in line, line


@pytest.mark.parametrize("command", [["reproduce", "--quick"], ["sweep", "SWEEP"]])
def test_bad_out_fails_before_computing(tmp_path, capsys, command):
    (tmp_path / "slow.toml").write_text(SLOW)
    sweep = tmp_path / "s.toml"
    sweep.write_text('base = "slow.toml"\n[ensemble]\nmethod = "conditional"\nwidth = 256\nsamples = 100000\n'
                     'seed = 1\n[theory]\nclosures = ["sigma"]\n')
    argv = [str(sweep) if a == "SWEEP" else a for a in command]
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cells").write_text("x")
    (tmp_path / "out" / "figures").write_text("x")
    for path, why in [(afile, "is a file"), (afile / "sub", "not a directory"),
                      (tmp_path / "out", "exists and is not a directory")]:
        t0 = time.perf_counter()
        rc = main([*argv, "--out", str(path)])
        assert time.perf_counter() - t0 < _AT_ONCE_S
        line = one_error(capsys, rc)
        assert line.startswith("error: --out: ") and why in line, line


def test_json_parents_are_created(cfg, tmp_path):
    out = tmp_path / "new" / "deeper" / "k.json"
    assert main(["kernel", str(cfg), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["K0"][0] == [[1.0, 0.6], [0.6, 1.5]]
    assert [p.name for p in out.parent.iterdir()] == ["k.json"]         # the write probe left nothing behind


def test_internal_error_is_a_bug_not_an_input_error(cfg, tmp_path, monkeypatch):
    """A ValueError that is not an InputError propagates with its traceback (exit 1 from the console script)."""
    import kerneleft.kernel

    def broken(net, depth_model="discrete"):
        raise ValueError("internal failure")
    monkeypatch.setattr(kerneleft.kernel, "kernel", broken)
    with pytest.raises(ValueError, match="internal failure"):
        main(["kernel", str(cfg), "--json", str(tmp_path / "o.json")])


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_json_paths(cfg, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "old.json").write_text("{}")
    (ro / "old.json").chmod(0o444)
    ro.chmod(0o555)
    try:
        line = one_error(capsys, main(["kernel", str(cfg), "--json", str(ro / "o.json")]))
        assert line.startswith("error: --json: cannot write in"), line
        line = one_error(capsys, main(["kernel", str(cfg), "--json", str(ro / "old.json")]))
        assert line.startswith("error: --json: ") and "not writable" in line, line
    finally:
        ro.chmod(0o755)


def test_write_probe_failure_is_one_line(cfg, tmp_path, capsys, monkeypatch):
    """Whatever makes the directory unwritable (permissions, read-only file system), the probe reports it."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    line = one_error(capsys, main(["kernel", str(cfg), "--json", str(tmp_path / "o.json")]))
    assert line == f"error: --json: cannot write in {str(tmp_path)!r}: Permission denied", line
    line = one_error(capsys, main(["reproduce", "--quick", "--out", str(tmp_path / "r")]))
    assert line.startswith("error: --out: cannot write in"), line


@pytest.mark.parametrize("closure,flag,value,owner", [
    ("g-only", "--tol", "1e-4", "sigma"), ("g-only", "--degree", "4", "sigma"), ("g-only", "--tol2", "0.1", "sigma"),
    ("sigma", "--rtol", "1e-6", "g-only"), ("sigma", "--atol", "1e-9", "g-only"),
])
def test_theory_flag_of_the_other_closure_refused(cfg, tmp_path, capsys, closure, flag, value, owner):
    """Every theory flag reaches the closure it names or is refused, before any work, for the other one."""
    out = tmp_path / "o.json"
    rc = main(["theory", str(cfg), "--closure", closure, flag, value, "--json", str(out)])
    assert rc == 2 and not out.exists()
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {flag}: applies to --closure {owner} only"]


def test_theory_rtol_reaches_gonly_and_unknown_flag_refused(cfg, tmp_path, capsys):
    runs, out = {}, str(tmp_path / "o.json")
    for rtol in ("1e-3", "1e-10"):
        assert main(["theory", str(cfg), "--closure", "g-only", "--rtol", rtol, "--json", out]) == 0
        runs[rtol] = json.loads((tmp_path / "o.json").read_text())
    assert runs["1e-3"]["rtol"] == 1e-3 and runs["1e-10"]["rtol"] == 1e-10
    assert runs["1e-3"]["V4"] != runs["1e-10"]["V4"]                            # the ODE solver saw the flag
    capsys.readouterr()
    assert main(["theory", str(cfg), "--closure", "g-only", "--tolerance", "1", "--json", out]) == 2
    assert capsys.readouterr().err.strip().splitlines()[0].startswith("error: --tolerance: no such option")


def test_method_and_closure_choices_come_from_the_registries():
    from kerneleft.cli import cli
    from kerneleft.ensemble import METHODS
    from kerneleft.theory import CLOSURES

    choices = {(c, p.name): list(p.type.choices) for c, cmd in cli.commands.items() for p in cmd.params
               if p.name in ("method", "closure")}
    assert choices[("simulate", "method")] == choices[("diagnose", "method")] == list(METHODS)
    assert choices[("theory", "closure")] == list(CLOSURES)
