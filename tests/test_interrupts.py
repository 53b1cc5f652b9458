"""Interrupts and worker lifetime (issue 13, docs/numerics.md#interrupts): Ctrl-C/SIGTERM keep the finished
chunks, write them marked ``interrupted`` and exit 130; a partial batch is never cached, so a rerun gives the numbers
of an uninterrupted run; pool workers die with their parent, even under ``kill -9``."""
import json
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import kerneleft.ensemble as ensemble
import kerneleft.reproduce.figures as figures
import kerneleft.maps as maps
import kerneleft.sweep as sweep_mod
from kerneleft import Network
from kerneleft.cli import main
from kerneleft.diagnostics import diagnose
from kerneleft.errors import Interrupted
from kerneleft.reproduce import reproduce
from kerneleft.sweep import parse_sweep, run_sweep

CFG = {"activation": "tanh", "C_W": 1.5, "C_b": 0.0, "T": 1.0, "depth": 4, "K_in": [[1.0, 0.5], [0.5, 1.2]]}
TOML = 'activation = "tanh"\nC_W = 1.5\nC_b = 0.0\nT = 1.0\ndepth = 4\nK_in = [[1.0, 0.5], [0.5, 1.2]]\n'
SIZES = {"widths": (8, 16), "samples": 96, "batches": 4, "diag_width": 16,     # 8 batches of 24 networks
         "next_widths": ()}                                                       # next order: test_reproduce
_real_simulate = ensemble.simulate


def _stop_after(chunks: int):
    """A ``pool`` map that runs ``chunks`` tasks, then raises KeyboardInterrupt as Ctrl-C would."""
    def map_(fn, tasks):
        for i, task in enumerate(tasks):
            if i == chunks:
                raise KeyboardInterrupt
            yield fn(task)
    return map_


def _interrupt_call(monkeypatch, module, k: int, chunks: int, chunk_size: int = 8) -> list:
    """Patch ``module.simulate`` so that its k-th call (1-based) is cut by Ctrl-C after ``chunks`` chunks of
    ``chunk_size`` (one chunk per task); returns the list of calls made."""
    calls = []

    def simulate(*args, **kwargs):
        calls.append(kwargs.get("seed"))
        if len(calls) == k:
            kwargs = {**kwargs, "chunk_size": chunk_size, "chunks_per_task": 1, "pool": _stop_after(chunks)}
        return _real_simulate(*args, **kwargs)

    monkeypatch.setattr(module, "simulate", simulate)
    return calls


# --- reproduce ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_reproduce_interrupted_then_rerun_gives_the_uninterrupted_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "make_figures", lambda results, out: [])          # figures are not under test
    kw = dict(config=CFG, sizes=SIZES, pool=1, progress=False)
    ref = reproduce(tmp_path / "ref", **kw).to_dict()

    out = tmp_path / "run"
    _interrupt_call(monkeypatch, ensemble, k=6, chunks=2)       # batch 6 of 8 (width 16, batch 2) cut at 16 of 24
    with pytest.raises(Interrupted, match=r"^reproduce: interrupted in stage 'ensembles.*' after 5 of 8 ensemble "
                                          r"batches \(136 networks\).*rerun the same command"):
        reproduce(out, **kw)
    partial = json.loads((out / "results.json").read_text())
    assert partial["interrupted"] is True and partial["samples"] == {"8": 96, "16": 40}
    assert partial["batches_finished"] == {"8": 4, "16": 1} and partial["samples_requested"] == {"8": 96, "16": 96}
    assert "interrupted" in (out / "report.md").read_text()
    assert len(list((out / "cache").glob("simulate-*.npz"))) == 5                 # the cut batch is not cached
    assert not list((out / "cache").glob(".*"))                                    # nor a temporary file

    monkeypatch.setattr(ensemble, "simulate", _real_simulate)
    res = reproduce(out, **kw).to_dict()
    assert res["cache"]["simulations_run"] == 3 and res["cache"]["rejected"] == 0
    assert json.loads((out / "results.json").read_text()).get("interrupted") is None
    for n in (8, 16):
        for q in ("K1", "V4", "G_mean", "Sigma_mean"):
            np.testing.assert_array_equal(res["simulation"]["ensembles"][n][q], ref["simulation"]["ensembles"][n][q])
    for q in ("K1", "V4", "V4_cv", "G_mean"):
        np.testing.assert_array_equal(res["simulation"]["extrapolated"][q], ref["simulation"]["extrapolated"][q])
    np.testing.assert_array_equal(res["diagnostics"]["v4_residual"], ref["diagnostics"]["v4_residual"])


# --- diagnose ----------------------------------------------------------------------------------------------------
def test_diagnose_interrupted_keeps_finished_chunks_marks_them_and_raises(monkeypatch):
    net = Network(**CFG)
    calls = _interrupt_call(monkeypatch, ensemble, k=3, chunks=1, chunk_size=5)   # batch 3 of 4 keeps 5 of 15
    with pytest.raises(Interrupted, match=r"^diagnose: interrupted after 35 of 60 networks") as err:
        diagnose(net, width=8, samples=60, seed=2, batches=4)
    res = err.value.result
    assert len(calls) == 3 and res.meta["interrupted"] and res.meta["samples"] == 35 and res.meta["batches"] == 3
    assert np.all(np.isfinite(res["v4_residual"])) and np.all(res.se["V4"] > 0)
    calls = _interrupt_call(monkeypatch, ensemble, k=2, chunks=0)                   # nothing in batch 2
    with pytest.raises(Interrupted, match=r"after 15 of 60 networks, before two batches") as err:
        diagnose(net, width=8, samples=60, seed=2, batches=4)
    assert err.value.result is None and len(calls) == 2


def test_diagnose_cli_interrupted_writes_marked_json_and_exits_130(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TOML)
    _interrupt_call(monkeypatch, ensemble, k=3, chunks=1, chunk_size=5)
    out = tmp_path / "d.json"
    rc = main(["diagnose", str(cfg), "--width", "8", "--samples", "60", "--seed", "2", "--batches", "4",
               "--json", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and len(err) == 1
    assert re.fullmatch(rf"error: diagnose: interrupted after 35 of 60 networks .*; written to {re.escape(str(out))}, "
                        r"marked interrupted", err[0])
    d = json.loads(out.read_text())
    assert d["interrupted"] is True and d["samples"] == 35 and len(d["v4_residual"]) == 5


# --- sweep -------------------------------------------------------------------------------------------------------
def test_sweep_interrupted_keeps_finished_cells_and_rerun_completes(tmp_path, monkeypatch):
    spec = {"base": CFG, "axes": {"seed": [1, 2, 3]}, "ensemble": {"samples": 40, "width": 8, "chunk_size": 10}}
    ref = run_sweep(parse_sweep(spec), tmp_path / "ref", progress=False)
    _interrupt_call(monkeypatch, sweep_mod, k=2, chunks=2, chunk_size=10)
    out = tmp_path / "run"
    with pytest.raises(Interrupted, match=r"^sweep: interrupted with 1 of 3 cells finished") as err:
        run_sweep(parse_sweep(spec), out, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and [c["status"] for c in summary["cells"]] == ["computed", "pending", "pending"]
    assert err.value.result.rows > 0 and len(list((out / "cells").glob("*.json"))) == 1
    monkeypatch.setattr(sweep_mod, "simulate", _real_simulate)
    again = run_sweep(parse_sweep(spec), out, progress=False)
    assert len(again.computed) == 2 and len(again.cached) == 1 and not again.interrupted
    import pyarrow.parquet as pq
    assert pq.read_table(out / "results.parquet").equals(pq.read_table(tmp_path / "ref" / "results.parquet"))
    assert len(ref.computed) == 3


# --- the process pool and the Dask map --------------------------------------------------------------------------
def _sleep_square(x: float) -> float:
    time.sleep(x)
    return x * x


def test_process_map_ctrl_c_yields_the_finished_head_of_the_queue_in_order():
    """Ctrl-C while the consumer holds task 0: tasks 1 and 2, running meanwhile on the two workers, are finished
    and still yielded in order; then KeyboardInterrupt."""
    gen = maps.ProcessMap(2)(_sleep_square, [0.01, 0.02, 0.03, 30.0, 30.0])
    assert next(gen) == 0.01 ** 2
    time.sleep(1.5)
    drained, propagated = [], False
    try:
        drained.append(gen.throw(KeyboardInterrupt))     # Ctrl-C while the consumer holds task 0's result
        drained.extend(gen)
    except KeyboardInterrupt:                            # caught here so that a failure cannot stop pytest
        propagated = True
    assert propagated and drained == [x * x for x in (0.02, 0.03)]


def test_process_map_closed_early_kills_its_workers_instead_of_waiting():
    gen = maps.ProcessMap(2)(_sleep_square, [0.01, 60.0, 60.0, 60.0])
    assert next(gen) == 0.01 ** 2
    time.sleep(0.5)
    start = time.monotonic()
    gen.close()
    assert time.monotonic() - start < 10


def test_dask_map_abort_stops_a_running_call_from_another_thread():
    distributed = pytest.importorskip("distributed")
    from kerneleft.distributed import DaskMap

    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None,
                            set_as_default=False) as client:
        dmap, seen, raised = DaskMap(client), [], []

        def consume():
            try:
                seen.extend(dmap(_sleep_square, [0.01] + [0.5] * 40))
            except Interrupted as err:
                raised.append(err)

        thread = threading.Thread(target=consume)
        thread.start()
        while not seen:
            time.sleep(0.01)
        start = time.monotonic()
        dmap.abort()
        thread.join(10)
        assert not thread.is_alive() and time.monotonic() - start < 2
        assert len(raised) == 1 and len(seen) < 10


# --- the CLI and real signals ------------------------------------------------------------------------------------
def _children(pid: int) -> set[int]:
    """Live (not zombie) child processes of ``pid``, from /proc."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in "ZX":
            out.add(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _start(args: list[str], pattern: bytes, timeout: float = 120) -> tuple[subprocess.Popen, bytes]:
    """Start a process and read its stderr until ``pattern`` appears (a progress bar with finished chunks)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err, deadline = b"", time.monotonic() + timeout
    while not re.search(pattern, err) and time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stderr], [], [], 0.5)[0]:
            err += os.read(proc.stderr.fileno(), 4096)
    assert re.search(pattern, err), err[-2000:]
    return proc, err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_cli_simulate_exits_130_with_json_marked_interrupted(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TOML.replace("depth = 4", "depth = 20"))
    out = tmp_path / "s.json"
    proc, _ = _start([sys.executable, "-m", "kerneleft", "simulate", str(cfg), "--width", "64", "--samples",
                      "10000000", "--seed", "1", "--workers", "2", "--chunk-size", "32", "--json", str(out)],
                     rb"\| *[1-9][0-9]*/10000000")
    workers = _children(proc.pid)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert time.monotonic() - sent < 10
    assert re.search(rb"error: simulate: interrupted after [0-9]+ of 10000000 networks", err)
    d = json.loads(out.read_text())
    assert d["interrupted"] is True and 0 < d["samples"] < 10 ** 7 and d["samples"] % 32 == 0
    assert len(workers) == 2 and not any(_alive(w) for w in workers)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("guard", ["prctl", "watchdog"])
def test_pool_workers_die_after_kill_9_of_parent(guard):
    """PR_SET_PDEATHSIG, or where it is unavailable the getppid watchdog, ends the workers of a killed parent."""
    script = textwrap.dedent(f"""
        import kerneleft.ensemble as e
        import kerneleft.maps as m
        if {guard!r} == "watchdog":
            m.set_pdeathsig = lambda: False
        net = e.Network(activation="tanh", C_W=2.0, T=1.0, depth=20, K_in=[[1.0, 0.6], [0.6, 1.5]])
        e.simulate(net, 64, 10**7, seed=1, pool=2, chunk_size=32)
    """)
    proc, _ = _start([sys.executable, "-c", script], rb"\| *[1-9][0-9]*/10000000")
    workers = _children(proc.pid)
    assert len(workers) == 2
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [w for w in workers if _alive(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive


def test_eof_error_is_a_bug_not_an_interrupt(tmp_path, monkeypatch):
    """click wraps EOFError like Ctrl-C; the CLI must not report it as 'interrupted' (exit 130)."""
    def broken(*args, **kwargs):
        raise EOFError("No data left in file")

    monkeypatch.setattr("kerneleft.cli.load_config", broken)
    with pytest.raises(EOFError):
        main(["kernel", "x.toml", "--json", str(tmp_path / "k.json")])
