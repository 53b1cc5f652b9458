"""Wall time of the theories for every example architecture (issue 11 target: sigma, P = 2, < 30 s each).

    python bench/bench_theory_architectures.py

Prints, per example config and depth model, the G-only and sigma (degree="auto", tol 1e-3) solve times and the
sigma solver's final refinement (grid, substeps, self-reported error).
"""
from __future__ import annotations

import time
from pathlib import Path

from kerneleft.config import load_config
from kerneleft.theory import solve

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["he_two_layer", "pre_ln_transformer", "rmsnorm_block", "tanh_mlp_critical", "relu_mlp_critical"]


def main() -> None:
    print("| example | P | L | depth model | G-only | sigma | sigma truncation | sigma error estimate |")
    print("|---|---|---|---|---|---|---|---|")
    for name in EXAMPLES:
        net = load_config(ROOT / "examples" / f"{name}.toml")
        for dm in ("continuous", "discrete") if net.residual else ("discrete",):
            t0 = time.perf_counter()
            solve(net, "g-only", dm)
            t1 = time.perf_counter()
            r = solve(net, "sigma", dm)
            t2 = time.perf_counter()
            print(f"| {name} | {net.P} | {net.depth} | {dm} | {t1 - t0:.2f} s | {t2 - t1:.2f} s | "
                  f"{r.meta.get('truncation', r.meta.get('representation'))} | {r.meta['error_estimate']:.1e} |")


if __name__ == "__main__":
    main()
