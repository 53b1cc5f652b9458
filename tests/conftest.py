"""Shared test fixtures and helpers.

Markers: ``slow`` marks end-to-end tests that take more than ~5 s each (Dask clusters, subprocess interrupts,
``reproduce``, hypothesis-heavy property tests). They run by default (CI runs everything); for a fast edit loop
run ``python -m pytest -m "not slow"``.

Helpers used by several test modules are imported from here (``from conftest import ...``): the small tanh
network ``SMALL`` (dict and TOML text), the TOML writer, the one-error-line check of the CLI and the
bit-identity checks of results and sweep tables, and the two-ensemble z statistic ``max_z``.
"""
import json
import math

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

# The small tanh network of the sweep, cache and Dask tests: depth 3, two inputs.
SMALL = {"activation": "tanh", "C_W": 1.0, "C_b": 0.1, "T": 1.0, "depth": 3, "K_in": [[1.0, 0.5], [0.5, 1.2]]}


def toml_text(d: dict) -> str:
    """TOML lines ``key = value`` for a flat mapping of numbers, strings and nested lists of numbers."""
    return "".join(f"{k} = {toml_value(v)}\n" for k, v in d.items())


def toml_value(v) -> str:
    """A TOML literal for bool, int, float (incl. nan/inf), str, list and dict values."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


SMALL_TOML = toml_text(SMALL)


def one_error(capsys, rc) -> str:
    """The CLI exited 2 and wrote exactly one stderr line; that line (with its ``error: `` prefix)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, (rc, err)
    return err[0]


def assert_identical(a, b):
    """Every array and standard error of two KernelResults is bit-identical."""
    assert set(a.arrays) == set(b.arrays) and set(a.se) == set(b.se)
    for k in a.arrays:
        assert np.array_equal(a.arrays[k], b.arrays[k]), k
    for k in a.se:
        assert np.array_equal(a.se[k], b.se[k]), k
    assert a.meta["samples"] == b.meta["samples"] and a.meta["chunks"] == b.meta["chunks"]


def assert_same_table(path_a, path_b):
    """Two result tables are identical; on failure name the columns, quantities and cells that differ."""
    a, b = pq.read_table(path_a), pq.read_table(path_b)
    if a.equals(b):
        return
    assert a.num_rows == b.num_rows and a.column_names == b.column_names, (a.num_rows, b.num_rows)
    diff = {}
    for col in a.column_names:
        bad = pc.invert(pc.fill_null(pc.equal(a[col], b[col]), False))
        both_null = pc.and_(pc.is_null(a[col]), pc.is_null(b[col]))
        bad = pc.and_(bad, pc.invert(both_null))
        if pc.any(bad).as_py():
            rows = a.filter(bad)
            diff[col] = (rows.num_rows, sorted(set(rows["quantity"].to_pylist())), sorted(set(rows["cell"].to_pylist())))
    raise AssertionError(f"tables differ: {diff}")


def max_z(a, b, keys):
    """max |a − b| / sqrt(se_a² + se_b²) over the arrays ``keys`` of two simulation results (0/0 -> 0)."""
    z = []
    for k in keys:
        se = np.hypot(a.se[k], b.se[k])
        d = a[k] - b[k]
        z.append(np.max(np.abs(np.divide(d, se, out=np.zeros_like(d), where=se > 0))))
    return max(z)
