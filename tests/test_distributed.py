"""Dask execution (issue 7) on real loopback clusters: bit-identical to the serial run, also when a worker dies.

Clusters: a ``LocalCluster`` with 2 worker processes, and ``dask scheduler`` + two ``dask worker`` processes
started here on free 127.0.0.1 ports; every process started is killed (by process group) at teardown.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pytest
from distributed import Client, LocalCluster
from conftest import SMALL, SMALL_TOML, assert_identical, assert_same_table

import kerneleft.distributed as kdist
from kerneleft import network_from_dict
from kerneleft.cli import main
from kerneleft.distributed import DaskMap
from kerneleft.ensemble import simulate
from kerneleft.sweep import run_sweep

pytestmark = pytest.mark.slow          # Dask clusters: seconds to start each

CONFIG, CONFIG_TOML = SMALL, SMALL_TOML


def _sweep_toml(samples=240, chunk_size=24, widths=(8, 12), seeds=(1,), chunks_per_task=2):
    return (f"[base]\n{CONFIG_TOML}\n[axes]\nwidth = {list(widths)}\nseed = {list(seeds)}\nC_W = [0.5, 1.0]\n\n"
            f"[ensemble]\nsamples = {samples}\nchunk_size = {chunk_size}\nchunks_per_task = {chunks_per_task}\n\n"
            '[theory]\nclosures = ["g-only"]\ndepth_model = "discrete"\n')


def _free_slots(dmap):
    """How many of ``dmap``'s task slots are free now (acquires them all, then gives them back)."""
    n = 0
    while dmap.slots.acquire(blocking=False):
        n += 1
    for _ in range(n):
        dmap.slots.release()
    return n


@pytest.fixture(scope="module")
def net():
    return network_from_dict(CONFIG)


@pytest.fixture(scope="module")
def local_cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(2)
        yield cluster, client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaskProcesses:
    """``dask scheduler`` + ``dask worker`` subprocesses on loopback, each in its own process group."""

    def __init__(self, tmp: Path, n_workers: int):
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        self.scheduler_file = tmp / "scheduler.json"
        self.procs = []
        port = self.address.rsplit(":", 1)[1]
        self._spawn(tmp, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard",
                    "--scheduler-file", str(self.scheduler_file))
        self.workers = [self._spawn(tmp, "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                                    "--no-dashboard", "--local-directory", str(tmp / f"w{i}"))
                        for i in range(n_workers)]

    def _spawn(self, tmp, *args):
        log = open(tmp / f"{args[0]}-{len(self.procs)}.log", "w")
        p = subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def kill(self, proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def close(self):
        for p in reversed(self.procs):
            self.kill(p)


@pytest.fixture
def dask_processes(tmp_path):
    cluster = DaskProcesses(tmp_path, 2)
    try:
        with Client(cluster.address, timeout="30s", set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
            yield cluster, client
    finally:
        cluster.close()


# --- simulate on a LocalCluster ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["conditional", "weights"])
def test_localcluster_bit_identical_to_serial(net, local_cluster, method):
    _, client = local_cluster
    serial = simulate(net, 8, 300, 11, method, chunk_size=32, progress=False)
    dask_run = simulate(net, 8, 300, 11, method, chunk_size=32, progress=False, pool=DaskMap(client))
    assert serial.meta["chunks"] == 10
    assert_identical(serial, dask_run)
    assert dask_run.meta["scheduler"] == client.scheduler.address


def test_scheduler_address_string_and_chunk_grouping(net, local_cluster):
    cluster, _ = local_cluster
    serial = simulate(net, 8, 200, 3, chunk_size=16, progress=False)
    with DaskMap(cluster.scheduler_address, min_workers=2) as dmap:
        grouped = simulate(net, 8, 200, 3, chunk_size=16, progress=False, pool=dmap, chunks_per_task=3)
        other_seed = simulate(net, 8, 200, 4, chunk_size=16, progress=False, pool=dmap)
    assert grouped.meta["pool"] == f"dask({cluster.scheduler_address})"
    assert_identical(serial, grouped)
    assert not np.array_equal(serial.arrays["G_mean"], other_seed.arrays["G_mean"])   # the check can fail


def test_daskmap_yields_in_order_with_bounded_lookahead(local_cluster):
    _, client = local_cluster
    n, pulled = 12, []

    def slow_double(x):          # later tasks finish first
        time.sleep(0.005 * (n - x))
        return 2 * x

    def tasks():
        for i in range(n):
            pulled.append(i)
            yield i

    dmap = DaskMap(client, max_in_flight=2, max_ahead=3)
    out = []
    for k, r in enumerate(dmap(slow_double, tasks())):
        assert len(pulled) <= k + 3          # never more than max_ahead tasks beyond the consumer
        out.append(r)
    assert out == [2 * i for i in range(n)]
    assert dmap.max_in_flight == 2 and _free_slots(dmap) == 2     # every slot given back


def test_daskmap_task_error_propagates_and_cancels(local_cluster):
    _, client = local_cluster

    def fail_on_3(x):
        if x == 3:
            raise ValueError(f"boom {x}")
        return x

    dmap = DaskMap(client, max_in_flight=4)
    with pytest.raises(ValueError, match="boom 3"):
        list(dmap(fail_on_3, range(50)))
    assert _free_slots(dmap) == 4


def test_worker_version_mismatch_is_rejected(local_cluster, monkeypatch):
    _, client = local_cluster
    env = kdist.environment()
    monkeypatch.setattr(kdist, "environment", lambda: {**env, "numpy": "0.0.0"})  # the client runs another numpy
    dmap = DaskMap(client)
    with pytest.raises(ValueError, match=r"^scheduler: worker tcp://127\.0\.0\.1:\d+ has kerneleft .* bit-identical"):
        list(dmap(abs, [-1]))


def test_scheduler_argument_errors(net, tmp_path, capsys):
    with pytest.raises(TypeError, match="^scheduler: must be an address"):
        DaskMap(3)
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG_TOML)
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        rc = main(["simulate", str(cfg), "--width", "8", "--samples", "10", "--seed", "0",
                   "--scheduler", f"tcp://127.0.0.1:{_free_port()}", "--json", str(tmp_path / "o.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --scheduler: cannot connect to"), err
    rc = main(["simulate", str(cfg), "--width", "8", "--samples", "10", "--seed", "0",
               "--scheduler", str(tmp_path / "missing.json"), "--json", str(tmp_path / "o.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: --scheduler: scheduler file {str(tmp_path / 'missing.json')!r} does not exist"]


def test_missing_dask_is_a_one_line_error(net, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)          # as if dask.distributed were not installed
    with pytest.raises(ValueError, match=r"^scheduler: needs the optional dependency distributed \(pip install"):
        DaskMap("tcp://127.0.0.1:1")


# --- `dask scheduler` + two `dask worker` processes ---------------------------------------------------------------
def test_cli_on_dask_scheduler_and_workers(dask_processes, tmp_path, net):
    cluster, _ = dask_processes
    with DaskMap(cluster.address) as dmap:
        assert_identical(simulate(net, 12, 400, 9, "weights", chunk_size=40, progress=False),
                         simulate(net, 12, 400, 9, "weights", chunk_size=40, progress=False, pool=dmap))
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG_TOML)
    runs = {}
    for name, extra in [("local", []), ("dask", ["--scheduler", cluster.address, "--workers", "2"]),
                        ("file", ["--scheduler", str(cluster.scheduler_file)])]:
        out = tmp_path / f"{name}.json"
        args = ["simulate", str(cfg), "--width", "8", "--samples", "2500", "--seed", "5", "--json", str(out)]
        assert main(args + extra) == 0
        runs[name] = json.loads(out.read_text())
    local, remote = runs["local"], runs["dask"]
    assert local["chunks"] == 3 and remote["scheduler"] == cluster.address
    assert local["pool"] == "serial" and remote["pool"] == f"dask({cluster.address})"
    for name in ("dask", "file"):
        for k, v in local.items():
            if k not in ("timings", "workers", "pool"):
                assert runs[name][k] == v, k
    # the sweep command on the same cluster: the same table as the serial sweep
    (tmp_path / "s.toml").write_text(_sweep_toml())
    assert main(["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "serial")]) == 0
    assert main(["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "remote"),
                 "--scheduler", cluster.address]) == 0
    assert_same_table(tmp_path / "serial" / "results.parquet", tmp_path / "remote" / "results.parquet")


def test_sweep_survives_a_killed_worker(dask_processes, tmp_path):
    cluster, client = dask_processes
    (tmp_path / "s.toml").write_text(_sweep_toml(samples=480, chunk_size=8, seeds=(1, 2), chunks_per_task=1))
    reference = run_sweep(tmp_path / "s.toml", tmp_path / "serial", progress=False)

    victim_proc = cluster.workers[1]
    # the worker process is the nanny's child, in the process group that the nanny leads
    victim = next(a for a, pgid in client.run(os.getpgid, 0).items() if pgid == victim_proc.pid)
    result, errors = {}, []

    def run():
        try:
            with DaskMap(cluster.address) as dmap:
                result["summary"] = run_sweep(tmp_path / "s.toml", tmp_path / "dask", pool=dmap, progress=False)
        except Exception as err:                     # re-raised in the test thread below
            errors.append(err)

    sweeper = threading.Thread(target=run)
    sweeper.start()
    deadline = time.monotonic() + 60
    while not client.processing(workers=[victim]).get(victim) and time.monotonic() < deadline:
        time.sleep(0.002)
    assert sweeper.is_alive(), "the sweep finished before a worker could be killed"
    cluster.kill(victim_proc)                        # the whole worker (nanny + worker process) dies
    sweeper.join(timeout=120)
    assert not sweeper.is_alive() and not errors, errors

    removed = [msg for _, msg in client.get_events("all")
               if msg.get("action") == "remove-worker" and msg.get("worker") == victim]
    assert removed and (removed[0]["processing-tasks"] or removed[0]["lost-computed-tasks"])
    assert len(client.scheduler_info()["workers"]) == 1
    summary = result["summary"]
    assert len(summary.computed) == len(summary.cells) == len(reference.cells)
    assert_same_table(tmp_path / "serial" / "results.parquet", tmp_path / "dask" / "results.parquet")

