"""Verified caches (issue 13, docs/numerics.md#caches): every entry holds its key and a checksum; a truncated,
empty, corrupt, foreign (copied from another key) or old-format entry is recomputed after one warning line, never
trusted; concurrent writers never leave a mixed entry."""
import json
import shutil
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from conftest import SMALL

from kerneleft.reproduce.cache import CacheWarning, ResultCache, payload_checksum
from kerneleft.result import KernelResult
from kerneleft.sweep import parse_sweep, run_sweep

FIELDS = {"config": {"depth": 2}, "method": "conditional", "width": 8, "samples": 64, "seed": 3, "chunk_size": 64}


def _result(value: float, seed: int = 3) -> KernelResult:
    return KernelResult(np.arange(3.0), {"K1": np.full((3, 2, 2), value), "V4": np.full((3, 2, 2, 2, 2), value)},
                        {"K1": np.full((3, 2, 2), 0.1)}, {"seed": seed, "samples": 64, "interrupted": False})


def _get(cache, fields, value):
    """cache.get with a compute that records its calls; returns (result, was_cached, calls)."""
    calls = []
    res, hit = cache.get("simulate", fields, lambda: calls.append(1) or _result(value, fields["seed"]))
    return res, hit, len(calls)


def _truncate(path, other):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path, other):
    path.write_bytes(b"")


def _foreign(path, other):
    shutil.copyfile(other, path)          # a valid entry of another key (another seed) copied over this one


def _tampered(path, other):
    """Valid zip, valid format, but an array changed after the checksum was computed."""
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    data["a:K1"] = data["a:K1"] + 1e-12
    with open(path, "wb") as fh:
        np.savez(fh, **data)


def _old_format(path, other):
    """An entry as the previous kerneleft wrote it: no key, no checksum."""
    res = _result(9.0)
    with open(path, "wb") as fh:
        np.savez(fh, t=res.t, meta=np.array(json.dumps(res.meta)), **{f"a:{k}": v for k, v in res.arrays.items()})


@pytest.mark.parametrize("damage,reason", [
    (_truncate, "unreadable"), (_empty, "unreadable"), (_foreign, "belongs to another key"),
    (_tampered, "checksum mismatch"), (_old_format, "not a kerneleft-cache/2 entry"),
])
def test_damaged_entry_is_recomputed_with_one_warning(tmp_path, damage, reason):
    cache = ResultCache(tmp_path)
    other = {**FIELDS, "seed": 4}
    _get(cache, FIELDS, 1.0)
    _get(cache, other, 2.0)
    path = cache.path("simulate", FIELDS)
    damage(path, cache.path("simulate", other))
    with pytest.warns(CacheWarning, match=rf"^cache: .*{path.name}: {reason}.*; recomputing it$") as caught:
        res, hit, calls = _get(cache, FIELDS, 1.0)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert (hit, calls, cache.rejected) == (False, 1, 1)
    assert res.meta["seed"] == 3 and np.all(res["K1"] == 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # the rewritten entry verifies: no warning, a hit
        again, hit, calls = _get(cache, FIELDS, 1.0)
    assert (hit, calls) == (True, 0) and np.array_equal(again["V4"], res["V4"])


def test_key_records_chunking_and_version_and_partial_results_are_never_stored(tmp_path):
    cache = ResultCache(tmp_path)
    assert cache.path("simulate", FIELDS) != cache.path("simulate", {**FIELDS, "chunk_size": 32})
    assert json.loads(cache.key("simulate", FIELDS))["kerneleft"]
    partial = _result(1.0)
    partial.meta["interrupted"] = True
    res, hit = cache.get("simulate", FIELDS, lambda: partial)
    assert not hit and res.meta["interrupted"] and not cache.path("simulate", FIELDS).exists()
    assert list(tmp_path.iterdir()) == []                  # nor a temporary file


def test_checksum_covers_names_dtypes_shapes_and_bytes():
    a = {"x": np.arange(4.0), "y": np.array("meta")}
    assert payload_checksum(a) == payload_checksum(dict(reversed(list(a.items()))))
    for b in ({"x": np.arange(4.0).reshape(2, 2), "y": a["y"]}, {"x": np.arange(4), "y": a["y"]},
              {"z": a["x"], "y": a["y"]}, {"x": a["x"] + 1e-300, "y": a["y"]}):
        assert payload_checksum(b) != payload_checksum(a)


def test_concurrent_writers_and_readers_never_see_a_mixed_entry(tmp_path):
    """8 threads write the same key with different payloads while others read: every read is one whole write."""
    cache = ResultCache(tmp_path)
    cache.get("simulate", FIELDS, lambda: _result(0.0))
    path, key = cache.path("simulate", FIELDS), cache.key("simulate", FIELDS)
    seen, errors = [], []

    def write(i):
        for j in range(10):
            ResultCache.store(path, key, _result(float(10 * i + j)))

    def read():
        for _ in range(40):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                try:
                    res = ResultCache.load(path, key)
                except Exception as err:                   # noqa: BLE001 - any failure is the test's failure
                    errors.append(err)
                    continue
            seen.append({float(v) for a in res.arrays.values() for v in np.unique(a)})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)] + \
              [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(seen) == 80 and all(len(s) == 1 for s in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]     # no temporary files left


# --- the sweep's per-cell cache ----------------------------------------------------------------------------------
SPEC = {"base": SMALL,
        "axes": {"seed": [1, 2]}, "ensemble": {"samples": 40, "width": 8, "chunk_size": 20}}


def _edit_number(path, other):
    """Valid JSON with its old checksum, one simulated number changed."""
    d = json.loads(path.read_text())
    d["K1"][-1][0][0] += 1e-9
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("damage,reason", [
    (lambda p, o: p.write_text(p.read_text()[:100]), "unreadable"),
    (lambda p, o: p.write_text(""), "unreadable"),
    (lambda p, o: shutil.copyfile(o, p), "belongs to another cell"),
    (_edit_number, "checksum mismatch"),
])
def test_sweep_cell_damaged_is_recomputed_with_a_warning(tmp_path, damage, reason):
    sweep = parse_sweep(SPEC)
    first = run_sweep(sweep, tmp_path, progress=False)
    a, b = (tmp_path / "cells" / f"{c.id}.json" for c in sweep.cells)
    good = json.loads(a.read_text())
    damage(a, b)
    with pytest.warns(CacheWarning, match=rf"^cache: .*{a.name}: {reason}.*; recomputing it$"):
        again = run_sweep(sweep, tmp_path, progress=False)
    assert again.computed == [sweep.cells[0].id] and again.cached == [sweep.cells[1].id]
    redone = json.loads(a.read_text())
    assert len(first.computed) == 2 and all(redone[q] == good[q] for q in good["sweep"]["arrays"])


@pytest.mark.slow
def test_cli_prints_a_recomputed_entry_as_one_warning_line(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('[base]\nactivation = "tanh"\nC_W = 1.0\nT = 1.0\ndepth = 2\nK_in = [[1.0, 0.5], [0.5, 1.2]]\n'
                    '[ensemble]\nsamples = 20\nwidth = 8\nseed = 1\n')
    cmd = [sys.executable, "-m", "kerneleft", "sweep", str(toml), "--out", str(tmp_path / "o")]
    subprocess.run(cmd, check=True, capture_output=True)
    (cell,) = (tmp_path / "o" / "cells").glob("*.json")
    cell.write_text("")
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    warned = [ln for ln in run.stderr.splitlines() if "warn" in ln.lower()]
    assert warned == [f"warning: cache: {cell}: unreadable (JSONDecodeError: Expecting value: line 1 column 1 "
                      f"(char 0)); recomputing it"], run.stderr
