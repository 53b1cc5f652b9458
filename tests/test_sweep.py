"""Sweeps (issue 7): schema, the tidy Parquet table, per-cell JSON, the cache, and the same numbers everywhere."""
import json
import sys

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import SMALL, SMALL_TOML, assert_same_table

from kerneleft import network_from_dict
from kerneleft.reproduce.cache import CacheWarning
from kerneleft.cli import main
from kerneleft.ensemble import simulate
from kerneleft.errors import InputError
from kerneleft.sweep import COLUMNS, load_sweep, parse_sweep, run_sweep
from kerneleft.theory import solve

BASE = SMALL
SPEC = {"base": BASE, "axes": {"width": [8, 12], "C_W": [0.5, 1.0]},
        "ensemble": {"samples": 120, "seed": 4, "chunk_size": 32},
        "theory": {"closures": ["g-only"], "depth_model": "discrete"}}
TOML = f"""
[base]
{SMALL_TOML}
[axes]
width = [8, 12]
C_W = [0.5, 1.0]

[ensemble]
samples = 120
seed = 4
chunk_size = 32

[theory]
closures = ["g-only"]
depth_model = "discrete"
"""


@pytest.fixture
def sweep_file(tmp_path):
    p = tmp_path / "sweep.toml"
    p.write_text(TOML)
    return p


def _array(table, cell, quantity, column="value"):
    """Rebuild a (L+1, P, ..., P) array of one cell from the long table."""
    rows = table.filter(pc.and_(pc.equal(table["cell"], cell), pc.equal(table["quantity"], quantity)))
    rows = rows.sort_by([("l", "ascending"), ("a", "ascending"), ("b", "ascending"), ("c", "ascending"),
                         ("d", "ascending")])
    r = sum(rows[k].null_count == 0 for k in "abcd")
    P = rows["P"][0].as_py()
    return rows[column].to_numpy(zero_copy_only=False).reshape((-1,) + (P,) * r)


def test_grid_expansion_and_stable_cell_ids(tmp_path, sweep_file):
    sweep = load_sweep(sweep_file)
    assert [c.id for c in sweep.cells] == [c.id for c in parse_sweep(SPEC).cells]
    kinds = [c.kind for c in sweep.cells]
    assert kinds.count("ensemble") == 4 and kinds.count("theory") == 2      # theory: one per config point
    assert len({c.id for c in sweep.cells}) == 6
    assert {(c.point["width"], c.point["C_W"]) for c in sweep.cells if c.kind == "ensemble"} == \
        {(8, 0.5), (8, 1.0), (12, 0.5), (12, 1.0)}
    again = parse_sweep(json.loads(json.dumps(SPEC)))
    assert [c.id for c in again.cells] == [c.id for c in sweep.cells]
    reseeded = parse_sweep({**SPEC, "ensemble": {**SPEC["ensemble"], "seed": 5}})
    ens = [c.id for c in sweep.cells if c.kind == "ensemble"]
    assert not set(ens) & {c.id for c in reseeded.cells}                    # the seed is part of the key
    assert [c.id for c in reseeded.cells if c.kind == "theory"] == [c.id for c in sweep.cells if c.kind == "theory"]
    (tmp_path / "base.toml").write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in BASE.items()))
    by_file = parse_sweep({**SPEC, "base": "base.toml"}, tmp_path)
    assert [c.id for c in by_file.cells] == [c.id for c in sweep.cells]


@pytest.mark.parametrize("change,message", [
    ({"extra": {}}, "extra: unknown sweep table"),
    ({"axes": {"width": 8}}, "axes.width: must be a non-empty list"),
    ({"axes": {"width": [8, 8]}}, "axes.width: duplicate value 8"),
    ({"axes": {"width": [8], "C_W": [1.0, -1.0]}}, "axes.C_W: must be >= 0"),
    ({"axes": {"width": [8], "widht": [8]}}, "axes.widht: unknown config field"),
    ({"axes": {"width": [0]}}, "axes.width: must be an integer >= 1"),
    ({"axes": {"method": ["exact"]}, "ensemble": {"width": 8, "samples": 10, "seed": 0}}, "axes.method: unknown"),
    ({"base": {**BASE, "depth": 0}}, "base.depth: must be an integer >= 1"),
    ({"base": None}, "base: required table"),
    ({"ensemble": {"seed": 1}}, "ensemble.samples: required"),
    ({"ensemble": {"samples": 1, "seed": 1}}, "ensemble.samples: must be an integer >= 3"),
    ({"ensemble": {"samples": 10, "seed": 1, "stop": 1}}, "ensemble.stop: unknown setting"),
    ({"ensemble": None, "theory": None}, "ensemble: a sweep needs"),
    ({"ensemble": None}, "axes.width: ensemble setting, but the sweep has no [ensemble] table"),
    ({"theory": {"closures": ["exact"]}}, "theory.closures: must be among"),
    ({"theory": {"closures": ["g-only"], "depth_model": "euler"}}, "theory.depth_model: must be"),
    ({"theory": {"closures": ["g-only"], "g-only": {"tolerance": 1}}},
     "theory.g-only.tolerance: unknown (allowed: rtol, atol)"),
    ({"theory": {"closures": ["sigma"], "sigma": {"tol": 2.0}}}, "theory.sigma.tol: must be a number in"),
    ({"theory": {"closures": ["sigma"], "sigma": {"tol": float("nan")}}}, "theory.sigma.tol: must not contain nan"),
    ({"axes": {"C_W": [1.0, float("inf")]}}, "axes.C_W: must not contain nan or inf"),
    ({"ensemble": {"samples": 10, "seed": 2 ** 63}}, "ensemble.seed: must be an integer in [0, "),
])
def test_bad_sweep_one_line_error_naming_the_field(change, message):
    spec = {k: v for k, v in {**SPEC, **change}.items() if v is not None}
    with pytest.raises(InputError) as info:
        parse_sweep(spec)
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)


def test_binary_sweep_and_base_files_one_line(tmp_path):
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match=r"^sweep: .* is not UTF-8 text"):
        load_sweep(tmp_path / "bin.toml")
    with pytest.raises(InputError, match=r"^base: .* is not UTF-8 text"):
        parse_sweep({**SPEC, "base": "bin.toml"}, tmp_path)


def test_cli_bad_sweep_exit_2(tmp_path, capsys):
    p = tmp_path / "s.toml"
    p.write_text(TOML.replace("width = [8, 12]", "width = [8, -1]"))
    rc = main(["sweep", str(p), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: axes.width: must be an integer >= 1"), err


def test_table_and_cell_json_hold_exactly_the_simulate_and_theory_numbers(tmp_path, sweep_file):
    summary = run_sweep(sweep_file, tmp_path / "out", progress=False)
    table = pq.read_table(tmp_path / "out" / "results.parquet")
    assert table.column_names == list(COLUMNS) and table.num_rows == summary.rows
    meta = json.loads(table.schema.metadata[b"kerneleft.sweep"])
    assert meta["sweep"]["axes"] == SPEC["axes"] and meta["columns"] == COLUMNS
    ens = next(c for c in summary.cells if c.kind == "ensemble" and c.point == {"width": 12, "C_W": 1.0})
    net = network_from_dict({**BASE, "C_W": 1.0})
    ref = simulate(net, 12, 120, 4, chunk_size=32, progress=False)
    for q in ref.arrays:
        assert np.array_equal(_array(table, ens.id, q), ref.arrays[q]), q
    for q in ref.se:
        assert np.array_equal(_array(table, ens.id, q, "se"), ref.se[q]), q
    stored = json.loads((tmp_path / "out" / "cells" / f"{ens.id}.json").read_text())
    assert np.array_equal(np.array(stored["V4"]), ref.V4) and stored["seed"] == 4 and stored["width"] == 12
    assert stored["sweep"]["key"]["chunk_size"] == 32 and stored["sweep"]["cell"] == ens.id
    theory = next(c for c in summary.cells if c.kind == "theory" and c.point["C_W"] == 1.0)
    th = solve(net, "g-only", "discrete")
    for q in th.arrays:
        assert np.array_equal(_array(table, theory.id, q), th.arrays[q]), q
    rows = table.filter(pc.equal(table["cell"], theory.id))
    assert rows["se"].null_count == rows.num_rows and rows["width"].null_count == rows.num_rows
    assert set(rows["closure"].to_pylist()) == {"g-only"} and set(rows["depth_model"].to_pylist()) == {"discrete"}
    assert not np.array_equal(_array(table, ens.id, "K1"), _array(table, theory.id, "K1"))   # the check can fail


def test_rerun_recomputes_nothing_and_extension_only_new_cells(tmp_path, sweep_file, capsys):
    out = tmp_path / "out"
    assert main(["sweep", str(sweep_file), "--out", str(out)]) == 0
    assert "6 cells, 6 computed, 0 cached" in capsys.readouterr().out
    first = pq.read_table(out / "results.parquet")
    assert main(["sweep", str(sweep_file), "--out", str(out)]) == 0
    assert "6 cells, 0 computed, 6 cached" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cached"] == 6 and summary["n_computed"] == 0
    assert {c["status"] for c in summary["cells"]} == {"cached"}
    assert pq.read_table(out / "results.parquet").equals(first)
    # a corrupt cell file is recomputed; a third width adds exactly its 2 ensemble cells
    victim = summary["cells"][0]["json"]
    (out / victim).write_text("{not json")
    sweep_file.write_text(TOML.replace("width = [8, 12]", "width = [8, 12, 16]"))
    with pytest.warns(CacheWarning, match=f"cache: .*{victim}: unreadable"):
        result = run_sweep(sweep_file, out, progress=False)
    assert len(result.computed) == 3 and len(result.cached) == 5
    recomputed = sorted(c.point["width"] for c in result.cells if c.id in result.computed)
    assert recomputed == sorted([summary["cells"][0]["point"]["width"], 16, 16])


@pytest.mark.slow
def test_localcluster_workers_give_the_serial_table(tmp_path, sweep_file):
    run_sweep(sweep_file, tmp_path / "serial", progress=False)
    summary = run_sweep(sweep_file, tmp_path / "dask", pool=2, progress=False)
    assert summary.scheduler.startswith("tcp://127.0.0.1:") and len(summary.computed) == 6
    assert_same_table(tmp_path / "serial" / "results.parquet", tmp_path / "dask" / "results.parquet")


def test_missing_pyarrow_fails_before_computing(tmp_path, sweep_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)      # as if pyarrow were not installed
    with pytest.raises(ValueError, match=r"^out: needs the optional dependency pyarrow"):
        run_sweep(sweep_file, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").glob("cells/*.json"))


def test_chunks_per_task_groups_tasks_without_changing_cells_or_numbers(tmp_path):
    one = parse_sweep({**SPEC, "ensemble": {**SPEC["ensemble"], "chunks_per_task": 1}})
    four = parse_sweep({**SPEC, "ensemble": {**SPEC["ensemble"], "chunks_per_task": 4}})
    assert [c.id for c in one.cells] == [c.id for c in four.cells]
    ens = [c for c in one.cells if c.kind == "ensemble"]
    assert [c.tasks for c in ens] == [4] * 4 and [c.tasks for c in four.cells if c.kind == "ensemble"] == [1] * 4
    assert parse_sweep(SPEC).cells[0].chunks_per_task == 22               # default ceil(64 / depth), depth 3
    run_sweep(one, tmp_path / "one", progress=False)
    run_sweep(four, tmp_path / "four", progress=False)
    assert_same_table(tmp_path / "one" / "results.parquet", tmp_path / "four" / "results.parquet")
