"""Wall time of the next order in 1/n (issue 14; docs/nextorder.md#convergence): ``solve(..., order=2)`` for one
input, both closures and depth models, against the leading order alone, measured side by side.

    python bench/bench_next_order.py [--acts tanh relu gelu] [--depths 20 50]

Network: C_W = 1.5, C_b = 0.1, T = 2, K_in = 1. Prints seconds, the refinement history (grid: change) and the
self-reported error of K2, V4_1.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from kerneleft.config import Network
from kerneleft.theory import solve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--acts", nargs="+", default=["tanh", "relu", "gelu"])
    ap.add_argument("--depths", type=int, nargs="+", default=[20, 50])
    args = ap.parse_args()
    print("| φ | L | depth model | order 1 sigma (s) | order 2 sigma (s) | levels (grid: change) | error | "
          "order 2 G-only (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for act in args.acts:
        for L in args.depths:
            net = Network(activation=act, C_W=1.5, C_b=0.1, T=2.0, depth=L, K_in=np.array([[1.0]]))
            for dm in ("discrete", "continuous"):
                t0 = time.perf_counter()
                solve(net, "sigma", dm)
                t1 = time.perf_counter()
                r = solve(net, "sigma", dm, order=2)
                t2 = time.perf_counter()
                solve(net, "g-only", dm, order=2)
                t3 = time.perf_counter()
                info = r.meta["next_order"]
                lev = ", ".join(f"{h['grid']}: {'—' if h['change'] is None else format(h['change'], '.1e')}"
                                for h in info["levels"])
                print(f"| {act} | {L} | {dm} | {t1 - t0:.1f} | {t2 - t1:.1f} | {lev} | {info['error_estimate']:.1e} "
                      f"| {t3 - t2:.2f} |", flush=True)


if __name__ == "__main__":
    main()
