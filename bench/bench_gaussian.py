"""Benchmark of the Gaussian-expectation engine (docs/numerics.md#closed-forms): time per call of F, jacobian (DF)
and hessian (D²F) for P = 16 inputs and for a single 2x2 block (P = 2), and their ratio (P = 16 has 120 pair blocks + 16 diagonals,
so a ratio well below ~136 means the vectorised batch beats block-by-block calls).

Usage: python bench/bench_gaussian.py [--repeat R]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from kerneleft import gaussian as g

ACTIVATIONS = ("tanh", "relu", "erf", "gelu")
FUNCTIONS = {"F": g.F, "jacobian": g.jacobian, "hessian": g.hessian}


def kernel(P: int, seed: int = 0) -> np.ndarray:
    """A generic P x P kernel: Gram matrix of P random inputs plus a bias (variances ~ 1.2, correlations ~ ±0.5)."""
    X = np.random.default_rng(seed).standard_normal((P, 8))
    return X @ X.T / 8 + 0.2


def per_call(fn, act, K, repeat: int) -> float:
    """Best-of-``repeat`` wall time of one call (seconds), after one warm-up call."""
    fn(act, K)
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(act, K)
        best = min(best, time.perf_counter() - t0)
    return best


def main(repeat: int) -> None:
    K16, K2 = kernel(16), kernel(2)
    print(f"{'activation':<10} {'map':<9} {'P=16 [ms]':>10} {'2x2 [ms]':>9} {'ratio':>6}")
    for act in ACTIVATIONS:
        for name, fn in FUNCTIONS.items():
            t16, t2 = per_call(fn, act, K16, repeat), per_call(fn, act, K2, repeat)
            print(f"{act:<10} {name:<9} {1e3 * t16:10.2f} {1e3 * t2:9.3f} {t16 / t2:6.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    main(parser.parse_args().repeat)
