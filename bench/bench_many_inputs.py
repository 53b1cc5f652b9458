"""Sigma theory (degree="auto", plane grids) for many inputs: wall time against P and the fitted exponent
(issue 12 targets, tanh, L = 50, tol 1e-3: P = 4 < 60 s, P = 8 < 10 min).

    python bench/bench_many_inputs.py [--P 4 5 6 8] [--depth 50] [--workers 2] [--models discrete continuous]

Inputs: P linearly independent unit-scale inputs with pairwise correlations 0.3–0.8; the time of each solve, its
refinement history and the self-reported error; then a least-squares fit time ∝ P^k per depth model.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from kerneleft.config import Network
from kerneleft.theory import solve


def inputs(P: int) -> np.ndarray:
    """A P x P input kernel of full rank: x_a = e_0 + 0.8·e_{a+1} rotated to distinct lengths (K_aa 1–1.6)."""
    X = np.hstack([np.ones((P, 1)), 0.8 * np.eye(P)]) * np.sqrt(np.linspace(1.0, 1.6, P))[:, None] / 1.28
    return X @ X.T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--P", type=int, nargs="+", default=[4, 5, 6, 8])
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["discrete", "continuous"])
    args = ap.parse_args()
    print("| P | planes | depth model | seconds | levels (grid: change) | error estimate |")
    print("|---|---|---|---|---|---|")
    times = {m: [] for m in args.models}
    for P in args.P:
        net = Network(activation="tanh", C_W=1.5, C_b=0.1, T=1.0, depth=args.depth, K_in=inputs(P))
        for m in args.models:
            t0 = time.perf_counter()
            r = solve(net, "sigma", m, pool=args.workers)
            dt = time.perf_counter() - t0
            times[m].append(dt)
            lev = ", ".join(f"{h['grid']}: {h['change'] if h['change'] is None else format(h['change'], '.1e')}"
                            for h in r.meta["levels"])
            print(f"| {P} | {P * (P - 1) // 2} | {m} | {dt:.1f} | {lev} | {r.meta['error_estimate']:.1e} |",
                  flush=True)
    for m, t in times.items():
        if len(t) >= 2:
            k, _ = np.polyfit(np.log(args.P), np.log(t), 1)
            print(f"{m}: time ∝ P^{k:.2f} over P = {args.P} ({args.workers} workers)")


if __name__ == "__main__":
    main()
