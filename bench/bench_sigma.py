"""Benchmark of the sigma-kernel solver: time to 1e-3 self-reported accuracy, and error vs truncation.

See docs/sigma.md#convergence.

1. ``solve_sigma(degree="auto", tol=1e-3)`` wall time for P = 2 (target < 30 s) and P = 3 (target < 5 min).
2. Error vs truncation for tanh, P = 2 (the examples/ config): Hermite/Galerkin degree D and plane-grid nodes n,
   relative to a tightly converged grid solution (max-norm over all layers and entries).
Run: ``python bench/bench_sigma.py [--out FILE]``; prints Markdown and writes it to FILE.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from kerneleft.config import Network
from kerneleft.theory.sigma import solve_sigma

K_IN = {2: [[1.0, 0.6], [0.6, 1.5]], 3: [[1.0, 0.6, 0.3], [0.6, 1.5, 0.2], [0.3, 0.2, 0.8]]}


def net_of(act: str, P: int) -> Network:
    return Network(activation=act, C_W=2.0, C_b=0.0, T=2.0, depth=50, K_in=K_IN[P])


def rel(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.max(np.abs(x - y)) / np.max(np.abs(y)))


def timings() -> list[str]:
    rows = ["| case | depth model | wall s | levels (grid/substeps) | self-reported error | converged |",
            "|---|---|---|---|---|---|"]
    for act, P in (("tanh", 2), ("relu", 2), ("gelu", 2), ("tanh", 3), ("relu", 3)):
        for dm in ("continuous", "discrete"):
            t0 = time.perf_counter()
            r = solve_sigma(net_of(act, P), dm, tol=1e-3)
            lv = " → ".join(f"{x['grid']}/{x['substeps']}" for x in r.meta["levels"])
            rows.append(f"| {act} P={P} | {dm} | {time.perf_counter() - t0:.1f} | {lv} | "
                        f"{r.meta['error_estimate']:.1e} | {r.meta['converged']} |")
            print(rows[-1], flush=True)
    return rows


def convergence() -> list[str]:
    net = net_of("tanh", 2)
    ref = solve_sigma(net, grid=160, substeps=4)
    rows = ["| representation | truncation | K1 rel error | V4 rel error | wall s |", "|---|---|---|---|---|"]
    runs = [("hermite", "degree", d, {"degree": d}) for d in (2, 4, 6, 8, 10, 14, 18, 24, 28)]
    runs += [("grid", "nodes/axis", n, {"grid": n}) for n in (24, 32, 48, 64, 96)]
    for rep, what, val, kw in runs:
        t0 = time.perf_counter()
        r = solve_sigma(net, **kw)
        rows.append(f"| {rep} | {what} = {val} | {rel(r.K1, ref.K1):.2e} | {rel(r.V4, ref.V4):.2e} | "
                    f"{time.perf_counter() - t0:.1f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).with_name("bench_sigma_results.md")))
    args = ap.parse_args()
    text = ["# Sigma-kernel solver benchmark", "",
            "C_W = 2, C_b = 0, T = 2, L = 50; K_in as in bench/validate_sigma.py.", "",
            "## Time to 1e-3 self-reported accuracy", ""] + timings()
    text += ["", "## Error vs truncation (tanh, P = 2, continuous; reference: grid 160, 4 substeps)", ""]
    text += convergence()
    Path(args.out).write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
