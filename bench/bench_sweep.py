"""Benchmark of Dask execution (issue 7): sweep speed-up on 2 workers vs 1, and scheduling overhead per chunk.

    python bench/bench_sweep.py [--quick] [--repeat R] [--samples S] [--json OUT]

1. A 12-cell ensemble sweep (width × C_W = 3 × 4, tanh, depth 20, P = 2) on a loopback LocalCluster of 1 and of
   2 single-threaded worker processes (cluster start-up and the workers' first import of kerneleft not timed;
   a fresh output directory each time, so nothing is cached), plus the serial in-process run; all three tables
   must be identical.
2. Scheduling overhead: ``simulate`` with tiny chunks (chunk_size = 2, width 4, depth 2), serial vs Dask with 1
   and 2 workers; overhead per chunk = (Dask wall − serial wall) / chunks on 1 worker.

Each configuration runs ``--repeat`` times and the fastest run counts (the machine may be shared).
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import json
import logging
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import pyarrow.parquet as pq
from distributed import Client, LocalCluster

from kerneleft import network_from_dict
from kerneleft.ensemble import simulate
from kerneleft.sweep import parse_sweep, run_sweep

BASE = {"activation": "tanh", "C_W": 1.0, "C_b": 0.0, "T": 1.0, "depth": 20, "K_in": [[1.0, 0.6], [0.6, 1.5]]}


def cluster(n: int):
    """A loopback LocalCluster of n single-threaded workers, set up as ``kerneleft sweep --workers n`` does."""
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                            dashboard_address=None, silence_logs=logging.ERROR)


def warm_up(client) -> None:
    """Import kerneleft and its dependencies on every worker (a long sweep pays this once; not timed)."""
    client.run(importlib.import_module, "kerneleft.ensemble")
    client.run(importlib.import_module, "kerneleft.sweep")


def bench_sweep(samples: int, repeat: int, tmp: Path) -> dict:
    sweep = parse_sweep({"base": BASE, "axes": {"width": [32, 48, 64], "C_W": [0.5, 1.0, 1.5, 2.0]},
                         "ensemble": {"samples": samples, "seed": 1}})
    assert len(sweep.cells) == 12
    runs = itertools.count()

    def timed(**kw) -> tuple[float, Path]:
        out = tmp / f"run{next(runs)}"
        t = time.perf_counter()
        summary = run_sweep(sweep, out, progress=False, **kw)
        wall = time.perf_counter() - t
        assert len(summary.computed) == 12
        return wall, out / "results.parquet"

    walls, tables = {}, []
    results = [timed() for _ in range(repeat)]
    walls["serial"] = min(w for w, _ in results)
    tables += [p for _, p in results]
    for n in (1, 2):
        with cluster(n) as c, Client(c, set_as_default=False) as client:
            client.wait_for_workers(n)
            warm_up(client)
            results = [timed(scheduler=client) for _ in range(repeat)]
        walls[f"dask_{n}_workers"] = min(w for w, _ in results)
        tables += [p for _, p in results]
    reference = pq.read_table(tables[0])
    identical = all(reference.equals(pq.read_table(p)) for p in tables[1:])
    chunks = sum(c.tasks for c in sweep.cells)
    return {"cells": 12, "samples_per_cell": samples, "tasks": chunks, "repeat": repeat, "min_wall_s": walls,
            "speedup_2_vs_1": walls["dask_1_workers"] / walls["dask_2_workers"], "identical_tables": identical}


def bench_overhead(chunks: int, repeat: int) -> dict:
    net = network_from_dict({**BASE, "depth": 2})
    kw = dict(width=4, samples=2 * chunks, seed=0, chunk_size=2, progress=False)
    simulate(net, **{**kw, "samples": 20})                         # warm-up (imports, caches)

    def timed(**extra) -> tuple[float, object]:
        t = time.perf_counter()
        res = simulate(net, **kw, **extra)
        return time.perf_counter() - t, res

    serial, ref = min((timed() for _ in range(repeat)), key=lambda r: r[0])
    out = {"chunks": chunks, "repeat": repeat, "serial_s": serial, "serial_per_chunk_ms": 1e3 * serial / chunks}
    for n in (1, 2):
        with cluster(n) as c, Client(c, set_as_default=False) as client:
            client.wait_for_workers(n)
            warm_up(client)
            wall, res = min((timed(scheduler=client) for _ in range(repeat)), key=lambda r: r[0])
        assert all(np.array_equal(ref.arrays[k], res.arrays[k]) for k in ref.arrays)
        out[f"dask_{n}_workers_s"] = wall
        out[f"dask_{n}_workers_per_chunk_ms"] = 1e3 * wall / chunks
    out["overhead_per_chunk_ms"] = 1e3 * (out["dask_1_workers_s"] - serial) / chunks
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller ensembles (a smoke run)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per configuration; the fastest counts")
    ap.add_argument("--samples", type=int, default=32768, help="networks per sweep cell")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep = bench_sweep(1024 if args.quick else args.samples, args.repeat, Path(tmp))
    overhead = bench_overhead(200 if args.quick else 1000, args.repeat)
    w = sweep["min_wall_s"]
    print(f"12-cell sweep, {sweep['samples_per_cell']} samples/cell, {sweep['tasks']} chunk tasks "
          f"(fastest of {args.repeat}):")
    print(f"  serial {w['serial']:.2f} s | Dask 1 worker {w['dask_1_workers']:.2f} s | "
          f"Dask 2 workers {w['dask_2_workers']:.2f} s | speed-up 2 vs 1: {sweep['speedup_2_vs_1']:.2f}x | "
          f"tables identical: {sweep['identical_tables']}")
    print(f"scheduling overhead, {overhead['chunks']} chunks of 2 networks:")
    print(f"  serial {overhead['serial_per_chunk_ms']:.2f} ms/chunk | Dask 1 worker "
          f"{overhead['dask_1_workers_per_chunk_ms']:.2f} ms/chunk | Dask 2 workers "
          f"{overhead['dask_2_workers_per_chunk_ms']:.2f} ms/chunk | overhead "
          f"{overhead['overhead_per_chunk_ms']:.2f} ms/chunk")
    if args.json:
        args.json.write_text(json.dumps({"sweep": sweep, "overhead": overhead}, indent=2))


if __name__ == "__main__":
    main()
