"""Sigma and G-only theories for every example architecture against width-extrapolated exact ensembles
(docs/architectures.md): the table of issue 11.

For each config: exact conditional ensembles at three widths, a weighted fit y_n = y_∞ + c/n per entry
(:func:`kerneleft.estimators.extrapolate_width`), and at layers L/4, L/2, L the extrapolated K1 (drift estimator with
control variate) and V4 against the discrete-depth theories (the depth-L network's own O(1/n) recursion). A theory
passes an entry if it is within 3 SE or (K1) 5 % / (V4) 2 % of the extrapolation.

    python bench/validate_architectures.py [--samples 40000] [--widths 32 64 128] [--workers 2] [--ratios]

``--ratios``: instead, the two-layer block [phi, dense(width_ratio r), phi, dense] (tanh, P = 2) for r = 0.5, 1, 2, 4:
the inner width enters through the inner layer's noise C/r (docs/architectures.md#gonly-branches).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from kerneleft.config import load_config
from kerneleft.ensemble import simulate
from kerneleft.estimators import extrapolate_width
from kerneleft.theory import solve

ROOT = Path(__file__).resolve().parents[1]
CASES = [("he_two_layer.toml", {}), ("pre_ln_transformer.toml", {}), ("rmsnorm_block.toml", {}),
         ("tanh_mlp_critical.toml", {"depth": 6}), ("relu_mlp_critical.toml", {"depth": 6}),
         ("he_two_layer.toml", {"K_in": [[1.0, 0.6, 0.3], [0.6, 1.5, 0.2], [0.3, 0.2, 0.8]], "depth": 10})]


def _entries(P: int):
    """(label, K1 index, V4 index) of the reported entries."""
    out = [(f"{a}{a}", (a, a), (a, a, a, a)) for a in range(P)]
    out += [(f"{a}{b}", (a, b), (a, b, a, b)) for a in range(P) for b in range(a + 1, P)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=40000)
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--ratios", action="store_true")
    args = ap.parse_args()
    if args.ratios:
        return ratios(args)
    fails = 0
    for name, change in CASES:
        net = load_config(ROOT / "examples" / name)
        if change:
            net = net.replace(**change)
        t0 = time.perf_counter()
        th = {c: solve(net, c, "discrete") for c in ("sigma", "g-only")}
        t_th = time.perf_counter() - t0
        sims = [simulate(net, n, args.samples, args.seed, pool=args.workers, progress=False) for n in args.widths]
        fit = {k: extrapolate_width(args.widths, [s[src] for s in sims], [s.se[src] for s in sims])
               for k, src in (("K1", "K1_cv"), ("V4", "V4"))}
        print(f"\n## {name} {change or ''}  (P = {net.P}, L = {net.depth}; theories {t_th:.1f} s, ensembles "
              f"{time.perf_counter() - t0 - t_th:.0f} s, {args.samples} networks at n = {args.widths})")
        print("| layer | entry | K1 sim (n→∞) | K1 sigma | K1 G-only | V4 sim (n→∞) | V4 sigma | V4 G-only |")
        print("|---|---|---|---|---|---|---|---|")
        L = net.depth
        for l in sorted({L // 4, L // 2, L}):
            for label, i1, i4 in _entries(net.P):
                cells = []
                for q, idx, rel in (("K1", i1, 0.05), ("V4", i4, 0.02)):
                    y, se = fit[q].coef[0][(l,) + idx], fit[q].se[0][(l,) + idx]
                    cells.append(f"{y:.4g} ± {se:.2g}")
                    for c in ("sigma", "g-only"):
                        v = th[c][q][(l,) + idx]
                        ok = abs(v - y) <= max(3 * se, rel * abs(y))
                        z = abs(v - y) / se if se > 0 else 0.0
                        fails += c == "sigma" and not ok
                        cells.append(f"{v:.4g} ({'ok' if ok else 'FAIL'}, z {z:.1f})")
                print(f"| {l} | {label} | " + " | ".join(cells[:3]) + " | " + " | ".join(cells[3:]) + " |")
    print(f"\nsigma entries failing: {fails}")


def ratios(args) -> None:
    """Table of the inner-width dependence (module doc)."""
    print("| r | layer | quantity | sim (n→∞) | sigma | G-only |")
    print("|---|---|---|---|---|---|")
    for r in (0.5, 1.0, 2.0, 4.0):
        net = load_config(ROOT / "examples" / "he_two_layer.toml").replace(
            activation="tanh", depth=8, branch=[{"layer": "phi"}, {"layer": "dense", "C_W": 1.5, "C_b": 0.1,
                                                                   "width_ratio": r},
                                                {"layer": "phi"}, {"layer": "dense", "C_W": 1.2, "C_b": 0.05}])
        th = {c: solve(net, c, "discrete") for c in ("sigma", "g-only")}
        sims = [simulate(net, n, args.samples, args.seed, pool=args.workers, progress=False) for n in args.widths]
        for q, src, idx in (("covSigma", "covSigma", (0, 0, 0, 0)), ("covSigma", "covSigma", (0, 1, 0, 1)),
                            ("V4", "V4", (0, 0, 0, 0)), ("K1", "K1_cv", (0, 1))):
            fit = extrapolate_width(args.widths, [s[src] for s in sims], [s.se[src] for s in sims])
            l = net.depth
            y, se = fit.coef[0][(l,) + idx], fit.se[0][(l,) + idx]
            go = th["g-only"][q][(l,) + idx] if q in th["g-only"].arrays else float("nan")
            print(f"| {r:g} | {l} | {q}{idx} | {y:.4g} ± {se:.2g} | {th['sigma'][q][(l,) + idx]:.4g} | {go:.4g} |")


if __name__ == "__main__":
    main()
