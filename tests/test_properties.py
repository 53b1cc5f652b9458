"""Property-based checks of every command's validation path (issue 13; docs/reference.md#errors).

- Random VALID configs and options (tiny depth, P <= 3, small width/samples) never crash and never write a
  non-finite number: kernel, theory (g-only, discrete), simulate, diagnose through ``cli.main`` in-process.
- Random INVALID configs, options, output paths, sweep files and reproduce options always end with exactly one
  ``error: <field or option>: ...`` line and exit 2 (CLI), or an InputError naming the field (API), before any
  computation: the slow entry points are replaced by a tripwire.

The examples are derandomized (profile ``kerneleft-ci``), so CI sees the same cases on every run.
"""
import json
import math
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from conftest import one_error as cli_error_line, toml_text

import kerneleft.diagnostics
import kerneleft.ensemble
import kerneleft.kernel
import kerneleft.reproduce
import kerneleft.sweep
import kerneleft.theory
from kerneleft import network_from_dict
from kerneleft.activations import ACTIVATION_NAMES
from kerneleft.cli import main
from kerneleft.diagnostics import diagnose
from kerneleft.ensemble import simulate
from kerneleft.errors import InputError
from kerneleft.estimators import MIN_COV_SAMPLES
from kerneleft.kernel import kernel
from kerneleft.theory import solve

settings.register_profile("kerneleft-ci", derandomize=True, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def ci(max_examples: int):
    """The fixed CI profile with a per-test example budget."""
    return settings(settings.get_profile("kerneleft-ci"), max_examples=max_examples)


# ------------------------------------------------------------------------------------------------ TOML writing
# ------------------------------------------------------------------------------------------------- valid configs
small = st.floats(-3.0, 3.0, allow_nan=False)


@st.composite
def valid_configs(draw) -> dict:
    """A valid config: K_in = A Aᵀ/m + δ I (well conditioned) or inputs (rows may coincide: merged inputs)."""
    P = draw(st.integers(1, 3))
    d = {"activation": draw(st.sampled_from(ACTIVATION_NAMES)), "C_W": draw(st.floats(0.0, 3.0)),
         "C_b": draw(st.floats(0.0, 1.0)), "T": draw(st.floats(0.05, 2.0)), "depth": draw(st.integers(1, 3))}
    if draw(st.booleans()):
        m = draw(st.integers(1, 3))
        A = np.array(draw(st.lists(st.lists(small, min_size=m, max_size=m), min_size=P, max_size=P)))
        K = A @ A.T / m + draw(st.floats(0.05, 1.0)) * np.eye(P)
        d["K_in"] = (0.5 * (K + K.T)).tolist()
    else:
        n0 = draw(st.integers(1, 3))
        rows = draw(st.lists(st.lists(small, min_size=n0, max_size=n0), min_size=P, max_size=P)
                    .filter(lambda X: np.max(np.abs(X)) > 0.1))
        row0 = draw(st.sampled_from([r for r in rows if np.max(np.abs(r)) > 0.1]))     # keeps a nonzero row
        d["inputs"] = [row0 if draw(st.integers(0, 4)) == 0 else r for r in rows]    # sometimes identical inputs
        d["C_in"] = draw(st.floats(0.1, 2.0))
        d["C_b_in"] = draw(st.floats(0.0, 1.0))
    return d


def assert_finite_json(path) -> dict:
    """Every array (list) in the written JSON holds only finite numbers (NaN/inf would be written as null)."""
    d = json.loads(path.read_text())

    def walk(x, where):
        if isinstance(x, list):
            for i, y in enumerate(x):
                assert y is not None, f"null at {where}[{i}]"
                walk(y, f"{where}[{i}]")
        elif isinstance(x, dict):
            for k, y in x.items():
                walk(y, f"{where}.{k}")
        elif isinstance(x, float):
            assert math.isfinite(x), where
    walk(d, "")
    return d


@st.composite
def valid_runs(draw) -> list[str]:
    """Options of one cheap valid command (the config path and --json are added by the test)."""
    command = draw(st.sampled_from(["kernel", "theory", "simulate", "diagnose"]))
    if command == "kernel":
        return ["kernel", "--depth-model", draw(st.sampled_from(["discrete", "continuous"]))]
    if command == "theory":
        return ["theory", "--closure", "g-only", "--depth-model", "discrete"]
    method = draw(st.sampled_from(["conditional", "weights", "g-only-chain"]))
    seed = str(draw(st.integers(0, 2 ** 63 - 1)))
    if command == "simulate":
        chunk = draw(st.sampled_from([[], ["--chunk-size", "2"], ["--chunk-size", "5"]]))
        samples = draw(st.integers(MIN_COV_SAMPLES, 8))
        return ["simulate", "--width", str(draw(st.integers(1, 6))), "--samples", str(samples),
                "--seed", seed, "--method", method, "--no-progress", *chunk]
    samples = draw(st.integers(2 * MIN_COV_SAMPLES, 10))
    return ["diagnose", "--width", str(draw(st.integers(1, 6))), "--samples", str(samples),
            "--seed", seed, "--method", method, "--batches", str(draw(st.integers(2, 3))),
            "--threshold", repr(draw(st.floats(0.01, 1.0)))]


EDGE = {"activation": "relu", "C_W": 2.0, "C_b": 0.0, "T": 1.0, "depth": 3,
        "inputs": [[1.0, 2.0], [1.0, 2.0], [0.5, -1.0]], "C_in": 1.0, "C_b_in": 0.0}


@ci(150)
@given(config=valid_configs(), run=valid_runs())
@example(config=EDGE, run=["diagnose", "--width", "1", "--samples", "6", "--seed", "1", "--method", "g-only-chain"])
@example(config=EDGE, run=["theory", "--closure", "g-only", "--depth-model", "discrete"])
@example(config={"activation": "linear", "C_W": 0.0, "C_b": 0.0, "T": 1.5119414085134004, "depth": 3,
                 "inputs": [[1.0]], "C_in": 1.0, "C_b_in": 0.0},
         run=["kernel", "--depth-model", "continuous"])    # t[L] = 3·(T/3) rounded past T: solve_ivp refused it
def test_valid_configs_run_and_write_finite_json(tmp_path, capsys, config, run):
    path, out = tmp_path / "c.toml", tmp_path / "o.json"
    path.write_text(toml_text(config))
    out.unlink(missing_ok=True)
    rc = main([run[0], str(path), *run[1:], "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    d = assert_finite_json(out)
    assert len(d["t"]) == config["depth"] + 1


@ci(100)
@given(config=valid_configs())
def test_valid_configs_api_roundtrip(config):
    net = network_from_dict(config)
    assert np.all(np.isfinite(net.K_in)) and np.array_equal(net.K_in, net.K_in.T)
    assert network_from_dict(net.to_dict()).to_dict() == net.to_dict()


# ----------------------------------------------------------------------------------------------- invalid configs
identifiers = st.text(string.ascii_letters + "_", min_size=1, max_size=8)
junk = st.one_of(st.booleans(), st.text(string.ascii_letters, max_size=5), st.lists(st.integers(0, 3), max_size=2),
                 st.dictionaries(identifiers, st.integers(0, 3), max_size=1))
not_finite = st.sampled_from([math.nan, math.inf, -math.inf, 10 ** 400])
neg = st.floats(max_value=-1e-12, allow_infinity=False, allow_nan=False)
matrices = {
    "non-symmetric": [[1.0, 0.5], [0.2, 1.0]],
    "not PSD": [[1.0, 2.0], [2.0, 1.0]],
    "zero": [[0.0, 0.0], [0.0, 0.0]],
    "not square": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
    "ragged": [[1.0, 0.0], [0.0]],
    "empty": [],
    "3-d": [[[1.0]]],
    "too large": [[1e200, 0.0], [0.0, 1.0]],
}


def entry_bad(v):
    """A 2 x 2 identity with one entry replaced by ``v`` (mirrored, so that only ``v`` is wrong)."""
    return [[v, 0.0], [0.0, 1.0]]


BAD_FIELDS = {
    "activation": st.one_of(identifiers.filter(lambda s: s not in ACTIVATION_NAMES), st.integers(), st.floats(),
                            st.lists(st.sampled_from(ACTIVATION_NAMES), min_size=1, max_size=1)),
    "C_W": st.one_of(neg, not_finite, junk),
    "C_b": st.one_of(neg, not_finite, junk),
    "T": st.one_of(st.floats(max_value=0.0, allow_nan=False), not_finite, junk, st.just(1e-320)),
    "depth": st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), junk),
    "K_in": st.one_of(st.sampled_from(list(matrices.values())), junk.filter(lambda v: not isinstance(v, list)),
                      st.one_of(st.booleans(), st.text(max_size=3), not_finite).map(entry_bad)),
}
BAD_INPUT_FIELDS = {
    "inputs": st.one_of(st.one_of(st.booleans(), st.text(string.digits, max_size=3), not_finite).map(
        lambda v: [[v, 1.0], [0.0, 1.0]]), st.just([[1.0, 2.0], [1.0]]), st.just([[1e200, 1e200]]), st.just([])),
    "C_in": st.one_of(st.floats(max_value=0.0, allow_nan=False), not_finite, junk),
    "C_b_in": st.one_of(neg, not_finite, junk),
}
REQUIRED = ("activation", "C_W", "T", "depth")


@st.composite
def invalid_configs(draw) -> tuple[dict, str]:
    """(config with exactly one thing wrong, the field its error must name)."""
    d = draw(valid_configs())
    kind = draw(st.sampled_from(["field", "unknown", "missing", "conflict"]))
    if kind == "unknown":
        name = draw(identifiers.filter(lambda s: s not in {"activation", "C_W", "C_b", "T", "depth", "K_in",
                                                           "inputs", "C_in", "C_b_in"}))
        return d | {name: draw(st.integers(0, 3))}, name
    if kind == "missing":
        name = draw(st.sampled_from(REQUIRED))
        return {k: v for k, v in d.items() if k != name}, name
    if kind == "conflict":
        if "inputs" in d:
            return d | {"K_in": [[1.0]]}, "K_in"
        return d | {"C_in": 1.0}, "C_in"
    table = BAD_INPUT_FIELDS if "inputs" in d else BAD_FIELDS
    name = draw(st.sampled_from(sorted(table)))
    return d | {name: draw(table[name])}, name


@ci(250)
@given(bad=invalid_configs())
def test_invalid_configs_api_raise_input_error(bad):
    config, field = bad
    with pytest.raises(InputError) as info:
        network_from_dict(config)
    msg = str(info.value)
    assert msg.startswith(f"{field}:") and "\n" not in msg, msg


def _tripwire(*args, **kwargs):
    raise AssertionError("computation started although the input is invalid")


@pytest.fixture
def no_compute(monkeypatch):
    """Replace every slow entry point the CLI calls: an invalid run must end before reaching them."""
    for module, name in [(kerneleft.ensemble, "simulate"), (kerneleft.diagnostics, "diagnose"),
                         (kerneleft.kernel, "kernel"), (kerneleft.theory, "solve"),
                         (kerneleft.reproduce, "reproduce"), (kerneleft.sweep, "run_sweep")]:
        monkeypatch.setattr(module, name, _tripwire)


def one_error(capsys, rc) -> str:
    line = cli_error_line(capsys, rc)
    assert line.startswith("error: "), line
    return line[len("error: "):]


COMMANDS = {
    "kernel": [],
    "theory": ["--closure", "g-only"],
    "simulate": ["--width", "4", "--samples", "4", "--seed", "1"],
    "diagnose": ["--width", "4", "--samples", "6", "--seed", "1"],
}


@ci(200)
@given(bad=invalid_configs(), command=st.sampled_from(sorted(COMMANDS)))
def test_invalid_configs_cli_one_line(tmp_path, capsys, no_compute, bad, command):
    config, field = bad
    path = tmp_path / "c.toml"
    path.write_text(toml_text(config))
    msg = one_error(capsys, main([command, str(path), *COMMANDS[command], "--json", str(tmp_path / "o.json")]))
    assert msg.startswith(f"{field}: "), msg


# ----------------------------------------------------------------------------------------------- invalid options
def text_not(pattern_ok):
    return st.text(string.ascii_letters + string.digits + ".-+", min_size=0, max_size=6).filter(
        lambda s: not pattern_ok(s))


def _parses(cast):
    """Predicate: the text converts with ``cast`` (int or float)."""
    def ok(s: str) -> bool:
        try:
            cast(s)
            return True
        except ValueError:
            return False
    return ok


def int_below(minimum: int):
    return st.one_of(st.integers(max_value=minimum - 1).map(str), text_not(_parses(int)))


bad_positive = st.one_of(st.sampled_from(["nan", "inf", "-inf", "0", "-0.0"]),
                         st.floats(max_value=0.0, allow_nan=False).map(repr), text_not(_parses(float)))
bad_seed = st.one_of(int_below(0), st.integers(min_value=2 ** 63).map(str))
bad_workers = st.one_of(int_below(1), st.integers(10 ** 4, 10 ** 9).map(str))

OPTIONS = {   # command -> option -> strategy of invalid values (each alone makes the command invalid)
    "kernel": {"--depth-model": text_not(lambda s: s in ("discrete", "continuous"))},
    "theory": {"--closure": text_not(lambda s: s in ("g-only", "sigma")),
               "--depth-model": text_not(lambda s: s in ("discrete", "continuous")),
               "--degree": text_not(lambda s: s in ("auto", "quadratic") or (_parses(int)(s) and int(s) >= 1)),
               "--tol": bad_positive, "--rtol": bad_positive, "--atol": bad_positive},
    "simulate": {"--width": st.one_of(int_below(1), st.integers(10 ** 10, 10 ** 15).map(str)),
                 "--samples": st.one_of(int_below(MIN_COV_SAMPLES), st.integers(10 ** 14, 10 ** 18).map(str)),
                 "--seed": bad_seed, "--workers": bad_workers, "--chunk-size": int_below(1),
                 "--stop-se": bad_positive,
                 "--method": text_not(lambda s: s in ("conditional", "weights", "g-only-chain"))},
    "diagnose": {"--width": st.one_of(int_below(1), st.integers(10 ** 10, 10 ** 15).map(str)),
                 "--samples": st.one_of(int_below(2 * MIN_COV_SAMPLES), st.integers(10 ** 14, 10 ** 18).map(str)),
                 "--seed": bad_seed, "--workers": bad_workers, "--threshold": bad_positive,
                 "--batches": int_below(2)},
}
GOOD = 'activation = "tanh"\nC_W = 2.0\nC_b = 0.1\nT = 1.0\ndepth = 2\nK_in = [[1.0, 0.3], [0.3, 1.2]]\n'


@st.composite
def invalid_options(draw) -> tuple[list[str], str]:
    command = draw(st.sampled_from(sorted(OPTIONS)))
    option = draw(st.sampled_from(sorted(OPTIONS[command])))
    args = dict(zip(COMMANDS[command][::2], COMMANDS[command][1::2]))
    args[option] = draw(OPTIONS[command][option])
    return [command, *(x for kv in args.items() for x in kv)], option


@ci(300)
@given(bad=invalid_options())
def test_invalid_options_one_line(tmp_path, capsys, no_compute, bad):
    argv, option = bad
    cfg = tmp_path / "c.toml"
    cfg.write_text(GOOD)
    out = tmp_path / "o.json"
    msg = one_error(capsys, main([*_equals([argv[0], str(cfg), *argv[1:]]), "--json", str(out)]))
    assert msg.startswith(f"{option}: "), msg
    assert not out.exists()


def _equals(argv: list[str]) -> list[str]:
    """``--opt value`` -> ``--opt=value`` so that a value starting with '-' is not taken for an option."""
    head, rest = argv[:2], argv[2:]
    return head + [f"{o}={v}" for o, v in zip(rest[::2], rest[1::2])]


@st.composite
def bad_output_paths(draw, tmp):
    """(path, expected fragment): an existing directory, a path below a file, or an empty path."""
    afile = tmp / "afile"
    afile.write_text("x")
    depth = draw(st.integers(0, 2))
    below = afile.joinpath(*["sub"] * depth, "o.json")
    return draw(st.sampled_from([(str(tmp), "directory"), (str(below), "not a directory"), ("", "path")]))


@ci(40)
@given(data=st.data(), command=st.sampled_from(sorted(COMMANDS)))
def test_invalid_json_paths_one_line(tmp_path, capsys, no_compute, data, command):
    cfg = tmp_path / "c.toml"
    cfg.write_text(GOOD)
    path, fragment = data.draw(bad_output_paths(tmp_path))
    msg = one_error(capsys, main([command, str(cfg), *COMMANDS[command], f"--json={path}"]))
    assert msg.startswith("--json: ") and fragment in msg, msg


# ------------------------------------------------------------------------------ invalid API arguments (no compute)
API_BAD = {
    "width": st.one_of(st.integers(max_value=0), st.floats(), junk, st.integers(10 ** 10, 10 ** 15)),
    "samples": st.one_of(st.integers(max_value=MIN_COV_SAMPLES - 1), st.floats(), junk,
                         st.integers(10 ** 15, 10 ** 18)),
    "seed": st.one_of(st.integers(max_value=-1), st.floats(), junk),
    "pool": st.one_of(st.integers(max_value=0), st.floats(), junk, st.integers(10 ** 4, 10 ** 9)),
    "chunk_size": st.one_of(st.integers(max_value=0), st.floats(), junk),
    "stop_se": st.one_of(st.floats(max_value=0.0), not_finite, junk),
    "method": st.one_of(identifiers.filter(lambda s: s not in ("conditional", "weights", "g-only-chain")), junk),
}


@ci(150)
@given(name=st.sampled_from(sorted(API_BAD)), data=st.data())
def test_invalid_simulate_arguments_api(name, data):
    net = network_from_dict({"activation": "tanh", "C_W": 1.0, "T": 1.0, "depth": 2, "K_in": [[1.0]]})
    kwargs = {"width": 2, "samples": 4, "seed": 1} | {name: data.draw(API_BAD[name])}
    with pytest.raises(InputError) as info:
        simulate(net, progress=False, **kwargs)
    assert str(info.value).startswith(f"{name}:"), str(info.value)


@ci(100)
@given(case=st.sampled_from(["depth_model", "closure", "rtol", "atol", "threshold", "batches", "seed"]),
       data=st.data())
def test_invalid_theory_and_diagnose_arguments_api(case, data):
    net = network_from_dict({"activation": "tanh", "C_W": 1.0, "T": 1.0, "depth": 2, "K_in": [[1.0]]})
    bad_text = st.one_of(identifiers, junk)
    if case == "depth_model":
        call = lambda: kernel(net, depth_model=data.draw(bad_text.filter(lambda s: s not in ("discrete",
                                                                                            "continuous"))))
    elif case == "closure":
        call = lambda: solve(net, closure=data.draw(bad_text.filter(lambda s: s not in ("g-only", "sigma"))))
    elif case in ("rtol", "atol"):
        call = lambda: solve(net, "g-only", depth_model="discrete",
                             **{case: data.draw(st.one_of(st.floats(max_value=0.0), not_finite, junk))})
    else:
        value = data.draw({"threshold": st.one_of(st.floats(max_value=0.0), not_finite, junk),
                           "batches": st.one_of(st.integers(max_value=1), st.floats(), junk),
                           "seed": st.one_of(st.integers(max_value=-1), st.floats(), junk)}[case])
        call = lambda: diagnose(net, **({"width": 2, "samples": 6, "seed": 1} | {case: value}))
    with pytest.raises(InputError) as info:
        call()
    assert str(info.value).startswith(f"{case}:"), str(info.value)


# ------------------------------------------------------------------------------ sweep files and reproduce options
ENSEMBLE = {"method": "conditional", "width": 4, "samples": 4, "seed": 1}
SWEEP_BAD = {   # location -> (strategy of invalid values, key path in the sweep mapping)
    "ensemble.width": st.one_of(st.integers(max_value=0), st.floats(), junk, st.integers(10 ** 11, 10 ** 15)),
    "ensemble.samples": st.one_of(st.integers(max_value=MIN_COV_SAMPLES - 1), st.floats(), junk),
    "ensemble.seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2 ** 63), st.floats(), junk),
    "ensemble.method": st.one_of(identifiers.filter(lambda s: s not in ("conditional", "weights", "g-only-chain")),
                                 st.integers()),
    "theory.closures": st.lists(identifiers.filter(lambda s: s not in ("g-only", "sigma")), min_size=1,
                                max_size=2),
    "axes.T": st.lists(st.one_of(st.floats(max_value=0.0), not_finite.filter(lambda v: v != 10 ** 400), junk),
                       min_size=1, max_size=1),
    "axes.depth": st.lists(st.one_of(st.integers(max_value=0), junk), min_size=1, max_size=1),
    "base.C_W": st.one_of(neg, not_finite, junk),
    "theory.g-only": st.fixed_dictionaries({"rtol": st.one_of(st.floats(max_value=0.0), not_finite, junk)}),
}


@ci(200)
@given(loc=st.sampled_from(sorted(SWEEP_BAD)), data=st.data())
def test_invalid_sweep_files_one_line(tmp_path, capsys, no_compute, loc, data):
    table, key = loc.split(".", 1)
    spec = {"base": {"activation": "tanh", "C_W": 1.0, "T": 1.0, "depth": 2, "K_in": [[1.0]]},
            "ensemble": dict(ENSEMBLE), "theory": {"closures": ["g-only"]}, "axes": {}}
    spec[table][key] = data.draw(SWEEP_BAD[loc])
    text = "".join(f"[{name}]\n{toml_text(body)}" for name, body in spec.items())
    path = tmp_path / "s.toml"
    path.write_text(text)
    msg = one_error(capsys, main(["sweep", str(path), "--out", str(tmp_path / "out")]))
    assert msg.startswith(f"{loc}: ") or msg.startswith(f"{loc}."), msg


@ci(100)
@given(option=st.sampled_from(["--seed", "--workers", "--config", "--out"]), data=st.data())
def test_invalid_reproduce_options_one_line(tmp_path, capsys, no_compute, option, data):
    afile = tmp_path / "afile"
    afile.write_text("x")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    value = data.draw({"--seed": bad_seed, "--workers": bad_workers,
                       "--config": st.sampled_from([str(tmp_path / "missing.toml"), str(binary), str(tmp_path)]),
                       "--out": st.sampled_from([str(afile), str(afile / "sub")])}[option])
    argv = ["reproduce", "--quick", f"--out={tmp_path / 'r'}", f"{option}={value}"]
    msg = one_error(capsys, main(argv))
    assert msg.startswith(f"{option}: "), msg
