"""Sampler benchmarks (issue 3), measured side by side in one run; prints each timing and ratio vs target.

    python bench/bench_samplers.py

1. conditional ``simulate`` (tanh, n = 256, P = 2, L = 50, 20 000 samples, one process) / the time to draw the
   same number of normals with numpy's default Generator and evaluate tanh on them (same chunking): <= 1.5.
2. weights / conditional, per sample, n = 512, P = 2, L = 50: >= 50.
3. 1 worker / 2 workers for run 1 (numbers also checked bit-identical): >= 1.7.
4. block-law step (256 chains, P = 2) at n = 10^6 / at n = 64: within 1.2 (reported as max/min).
"""
from __future__ import annotations

import time

import numpy as np

from kerneleft import Network
from kerneleft.ensemble import default_chunk_size, simulate
from kerneleft.samplers import block_law_step

NET = Network(activation="tanh", C_W=2.0, C_b=0.0, T=2.0, depth=50, K_in=[[1.0, 0.6], [0.6, 1.5]])


def _best_of(fns: dict, repeat: int) -> tuple[dict, dict, dict]:
    """Interleaved best-of-``repeat`` wall and CPU times (s, this process only) of several callables, and the
    last value of each. On a loaded machine compare CPU times for single-process runs."""
    wall, cpu, out = {k: np.inf for k in fns}, {k: np.inf for k in fns}, {}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            out[k] = fn()
            wall[k] = min(wall[k], time.perf_counter() - t0)
            cpu[k] = min(cpu[k], time.process_time() - c0)
    return wall, cpu, out


def baseline_normals_phi(net, width, samples, seed=0):
    """Draw (L+1)·n·P standard normals per network into a preallocated chunk buffer and apply tanh in place."""
    chunk = default_chunk_size("conditional", net, width)
    rng = np.random.default_rng(seed)
    buf = np.empty((chunk, net.P, width))
    for start in range(0, samples, chunk):
        b = buf[: min(chunk, samples - start)]
        for _ in range(net.depth + 1):
            rng.standard_normal(out=b)
            np.tanh(b, out=b)


def bench_block_law(width, size=256, steps=500):
    """``steps`` block-law steps of ``size`` P = 2 chains at width n."""
    rng = np.random.default_rng(0)
    G = np.broadcast_to(NET.K_in, (size, 2, 2)).copy()
    for _ in range(steps):
        block_law_step(rng, G, 2.0 * G, width, NET.eps)


def main():
    rows = []

    def report(name, value, target, ok):
        rows.append((name, value, target, ok))
        print(f"{name:<58s} {value:9.3f}   target {target:<8s} {'ok' if ok else 'MISSED'}", flush=True)

    n, samples = 256, 20000
    t, c, r = _best_of({"base": lambda: baseline_normals_phi(NET, n, samples),
                        "cond": lambda: simulate(NET, n, samples, seed=1, progress=False),
                        "cond2": lambda: simulate(NET, n, samples, seed=1, pool=2, progress=False)}, repeat=2)
    same = all(np.array_equal(r["cond"][k], r["cond2"][k]) for k in r["cond"].arrays)
    print(f"baseline normals+tanh {t['base']:.2f} s (cpu {c['base']:.2f}), conditional simulate {t['cond']:.2f} s "
          f"(cpu {c['cond']:.2f}), 2 workers {t['cond2']:.2f} s (bit-identical to 1 worker: {same})")
    report("1. conditional / (normals + tanh), n=256 L=50 20k, wall", t["cond"] / t["base"], "<= 1.5",
           t["cond"] / t["base"] <= 1.5)
    report("1. same, CPU time", c["cond"] / c["base"], "<= 1.5", c["cond"] / c["base"] <= 1.5)
    report("3. speed-up 2 workers vs 1 (wall)", t["cond"] / t["cond2"], ">= 1.7",
           t["cond"] / t["cond2"] >= 1.7 and same)

    n = 512
    t, c, r = _best_of({"cond": lambda: simulate(NET, n, 2048, seed=2, progress=False),
                        "weights": lambda: simulate(NET, n, 32, seed=2, method="weights", progress=False)}, 1)
    per_c, per_w = c["cond"] / r["cond"].meta["samples"], c["weights"] / r["weights"].meta["samples"]
    print(f"n=512 CPU per network: conditional {per_c * 1e3:.2f} ms, weights {per_w * 1e3:.1f} ms")
    report("2. weights / conditional per network, n=512 L=50", per_w / per_c, ">= 50", per_w / per_c >= 50)

    t, c, _ = _best_of({w: (lambda w=w: bench_block_law(w, steps=500)) for w in (64, 10 ** 6)}, repeat=5)
    print(f"block-law step (256 chains), CPU: n=64 {c[64] / 500 * 1e6:.1f} us, n=1e6 {c[10 ** 6] / 500 * 1e6:.1f} us")
    ratio = max(c.values()) / min(c.values())
    report("4. block-law step cost n=1e6 vs n=64 (max/min CPU)", ratio, "<= 1.2", ratio <= 1.2)
    return rows


if __name__ == "__main__":
    main()
