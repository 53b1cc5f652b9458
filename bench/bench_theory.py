"""Solve times of the G-only theory (docs/gonly.md#chain), depth 100: targets < 0.2 s (P = 2) and < 2 s (P = 8).

    python bench/bench_theory.py [--activation tanh] [--repeat 3]

Prints the best of ``repeat`` wall times per (P, depth model) and the number of RHS evaluations.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from kerneleft.config import Network
from kerneleft.theory import solve

TARGET_S = {2: 0.2, 8: 2.0}


def _network(P: int, activation: str) -> Network:
    X = np.random.default_rng(P).standard_normal((P, P + 4))
    return Network(activation=activation, C_W=2.0, C_b=0.1, T=2.0, depth=100, K_in=X @ X.T / (P + 4))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--activation", default="tanh")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for P in (2, 8):
        net = _network(P, args.activation)
        for model in ("continuous", "discrete"):
            times, res = [], None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                res = solve(net, "g-only", depth_model=model)
                times.append(time.perf_counter() - t0)
            best = min(times)
            print(f"{args.activation} P={P} depth=100 {model:10s}: {best:.3f} s (target < {TARGET_S[P]} s: "
                  f"{'ok' if best < TARGET_S[P] else 'MISSED'}), nfev={res.meta.get('nfev', '-')}")


if __name__ == "__main__":
    main()
