"""The next order in 1/n against exact simulation (issue 14; docs/nextorder.md#validation).

    python bench/validate_next_order.py [--acts relu gelu tanh] [--widths 16 32 64 128] [--samples 400000]
                                        [--depth 20] [--workers 2] [--json out.json]

One input (K_in = 1) of the default resnet block, C_W = 1.5, C_b = 0.1, T = 2, discrete depth L. For every width:
n Var[G^L] simulated (conditional sampler) against the leading order V4, the next order V4 + V4_1/n (sigma) and
the G-only next order, with relative errors and z-scores; n(E[G^L] − K0) (control-variate estimator) against
K1 + K2/n. Then weighted fits over the widths with the exact leading order fixed: y_n = n(n Var − V4) = B + C/n,
whose B estimates V4_1, and n(n(E G − K0) − K1) = K2 + c/n, whose intercept estimates K2.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from kerneleft.config import Network
from kerneleft.ensemble import simulate
from kerneleft.estimators import extrapolate_width
from kerneleft.theory import solve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--acts", nargs="+", default=["relu", "gelu", "tanh"])
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--samples", type=int, default=400_000)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    record = {}
    for act in args.acts:
        net = Network(activation=act, C_W=1.5, C_b=0.1, T=2.0, depth=args.depth, K_in=np.array([[1.0]]))
        t0 = time.perf_counter()
        sig = solve(net, "sigma", "discrete", order=2)
        ts = time.perf_counter() - t0
        go = solve(net, "g-only", "discrete", order=2)
        V4, V41, K1, K2 = (sig[k][-1].ravel()[0] for k in ("V4", "V4_1", "K1", "K2"))
        gV4, gV41, gK1, gK2 = (go[k][-1].ravel()[0] for k in ("V4", "V4_1", "K1", "K2"))
        print(f"\n### {act}: V4 {V4:.4g}, V4_1 {V41:.4g}, K1 {K1:.4g}, K2 {K2:.4g} (sigma, {ts:.1f} s, error "
              f"{sig.meta['next_order']['error_estimate']:.1e}); G-only V4 {gV4:.4g}, V4_1 {gV41:.4g}, "
              f"K1 {gK1:.4g}, K2 {gK2:.4g}")
        print("| n | n Var sim | leading (err, z) | next order (err, z) | G-only next (err) | n(E G − K0) sim "
              "| K1 + K2/n (z) | K1 (z) |")
        print("|---|---|---|---|---|---|---|---|")
        rows = []
        for n in args.widths:
            r = simulate(net, n, args.samples, seed=7000 + n, pool=args.workers, progress=False)
            v, se = r["V4"][-1].ravel()[0], r.se["V4"][-1].ravel()[0]
            k, kse = r["K1_cv"][-1].ravel()[0], r.se["K1_cv"][-1].ravel()[0]
            lead, nxt, gn = V4, V4 + V41 / n, gV4 + gV41 / n
            rows.append({"n": n, "nvar": v, "nvar_se": se, "k1": k, "k1_se": kse})
            print(f"| {n} | {v:.4g} ± {se:.2g} | {lead:.4g} ({(lead - v) / v:+.1%}, {(lead - v) / se:+.1f}) "
                  f"| {nxt:.4g} ({(nxt - v) / v:+.1%}, {(nxt - v) / se:+.1f}) | {gn:.4g} ({(gn - v) / v:+.1%}) "
                  f"| {k:.4g} ± {kse:.2g} | {K1 + K2 / n:.4g} ({(K1 + K2 / n - k) / kse:+.1f}) "
                  f"| {K1:.4g} ({(K1 - k) / kse:+.1f}) |", flush=True)
        ns = [r["n"] for r in rows]
        fit = extrapolate_width(ns, [n * (r["nvar"] - V4) for n, r in zip(ns, rows)],
                                [n * r["nvar_se"] for n, r in zip(ns, rows)], 1)
        kfit = extrapolate_width(ns, [n * (r["k1"] - K1) for n, r in zip(ns, rows)],
                                 [n * r["k1_se"] for n, r in zip(ns, rows)], 1)
        B, Bse, K2f, K2se = fit.coef[0], fit.se[0], kfit.coef[0], kfit.se[0]
        print(f"fit n(n Var − V4) = B + C/n: B = {B:.4g} ± {Bse:.2g} (chi² {fit.chi2:.2f}/{fit.dof}); sigma V4_1 "
              f"{V41:.4g} (z {(V41 - B) / Bse:+.1f}), G-only {gV41:.4g} (z {(gV41 - B) / Bse:+.1f})")
        print(f"fit n(n(E G − K0) − K1) = K2 + c/n: K2 = {K2f:.3g} ± {K2se:.2g} (chi² {kfit.chi2:.2f}/{kfit.dof}); "
              f"sigma {K2:.3g} (z {(K2 - K2f) / K2se:+.1f}), G-only {gK2:.3g} (z {(gK2 - K2f) / K2se:+.1f})")
        record[act] = {"theory": {"V4": V4, "V4_1": V41, "K1": K1, "K2": K2, "gonly_V4": gV4, "gonly_V4_1": gV41,
                                  "gonly_K1": gK1, "gonly_K2": gK2, "seconds": ts}, "sim": rows,
                       "fit": {"V4_1": B, "V4_1_se": Bse, "K2": K2f, "K2_se": K2se}}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(record, fh, default=float, indent=1)


if __name__ == "__main__":
    main()
