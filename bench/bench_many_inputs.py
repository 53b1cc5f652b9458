"""Sigma theory (degree="auto", plane grids) for many inputs: wall time against P, peak memory and the fitted exponent
(issue 12 targets, tanh, L = 50, tol 1e-3: P = 4 < 60 s, P = 8 < 10 min, P = 16 measurable).

    python bench/bench_many_inputs.py [--P 4 6 8] [--depth 50] [--workers 2] [--models discrete continuous]
                                      [--json out.json]

Inputs: P linearly independent unit-scale inputs with pairwise correlations 0.3–0.8; the time of each solve, its
refinement history (grid, source nodes, change) and the self-reported error; its CPU time (this process and its
workers: independent of other load on the machine); the peak resident memory of this process and of the largest
worker so far (ru_maxrss); then a least-squares fit time ∝ P^k per depth model (wall and CPU). The workers
share the CPUs as BLAS threads (kerneleft.maps.blas_threads), as in any solve with ``pool``.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from kerneleft.config import Network
from kerneleft.theory import solve


def inputs(P: int) -> np.ndarray:
    """A P x P input kernel of full rank: x_a = e_0 + 0.8·e_{a+1} rotated to distinct lengths (K_aa 1–1.6)."""
    X = np.hstack([np.ones((P, 1)), 0.8 * np.eye(P)]) * np.sqrt(np.linspace(1.0, 1.6, P))[:, None] / 1.28
    return X @ X.T


def peak_mb() -> tuple[float, float]:
    """Peak resident memory (MB) of this process and of the largest finished worker process so far."""
    return tuple(resource.getrusage(who).ru_maxrss / 1024 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished workers so far: the load-independent cost."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--P", type=int, nargs="+", default=[4, 5, 6, 8])
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["discrete", "continuous"])
    ap.add_argument("--json", help="also write the rows (and the fits) to this JSON file")
    args = ap.parse_args()
    print("| P | planes | depth model | seconds | CPU s | levels (grid/sources: change) | error estimate "
          "| peak MB (main/worker) |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for P in args.P:
        net = Network(activation="tanh", C_W=1.5, C_b=0.1, T=1.0, depth=args.depth, K_in=inputs(P))
        for m in args.models:
            t0, c0 = time.perf_counter(), cpu_seconds()
            r = solve(net, "sigma", m, pool=args.workers)
            dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            main_mb, worker_mb = peak_mb()
            lev = ", ".join(f"{h['grid']}/{h['sources']}: "
                            f"{h['change'] if h['change'] is None else format(h['change'], '.1e')}"
                            for h in r.meta["levels"])
            print(f"| {P} | {P * (P - 1) // 2} | {m} | {dt:.1f} | {cpu:.0f} | {lev} | {r.meta['error_estimate']:.1e} "
                  f"| {main_mb:.0f}/{worker_mb:.0f} |", flush=True)
            rows.append({"P": P, "depth": args.depth, "model": m, "workers": args.workers, "seconds": dt, "cpu": cpu,
                         "levels": r.meta["levels"], "error_estimate": r.meta["error_estimate"],
                         "peak_mb_main": main_mb, "peak_mb_worker": worker_mb})
    fits = {}
    for m in args.models:
        if len(args.P) >= 2:
            for kind in ("seconds", "cpu"):
                t = [row[kind] for row in rows if row["model"] == m]
                fits[f"{m} {kind}"], _ = np.polyfit(np.log(args.P), np.log(t), 1)
            print(f"{m}: time ∝ P^{fits[m + ' seconds']:.2f} (CPU P^{fits[m + ' cpu']:.2f}) over P = {args.P} "
                  f"({args.workers} workers)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "exponents": fits}, fh, indent=1)


if __name__ == "__main__":
    main()
