"""G-only failure findings (docs/failure.md) for the tanh two-input example, measured (issue 4): a script, not a test.

    python bench/gonly_tanh_check.py [--width 64] [--samples 300000] [--depth 50] [--workers 2]

Prints K0 accuracy (max |z| of E[G] − K0 over depths), the K1 source mismatch at l = 0 against ½ℋ:(K_in∘K_in),
the G-only K1 against simulation at t = T (z-scores), the V4 error and its split by term, validity windows.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from kerneleft.config import Network
from kerneleft.diagnostics import TERMS, diagnose
from kerneleft.tensors import circ
from kerneleft.theory.gonly import coefficients, from_pairs, tadpole, to_pairs4


def _norm(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(x ** 2, axis=tuple(range(1, x.ndim))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--samples", type=int, default=300_000)
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()
    net = Network(activation="tanh", C_W=2.0, C_b=0.0, T=2.0, depth=args.depth, K_in=[[1.0, 0.6], [0.6, 1.5]])
    t0 = time.perf_counter()
    d = diagnose(net, args.width, args.samples, args.seed, workers=args.workers)
    print(f"width {args.width}, samples {d.meta['samples']}, depth {args.depth}: {time.perf_counter() - t0:.0f} s")
    zK0 = (d["G_mean"] - d["K0"]) / d.se["G_mean"]
    dev = np.max(np.abs(d["G_mean"] - d["K0"])) / np.max(np.abs(d["K0"]))
    print(f"K0: max |z| of E[G] - K0 over all depths/entries = {np.abs(zK0).max():.2f}, max relative deviation "
          f"{dev:.2e} (the O(1/n) shift K1/n: max|K1_sim|/n/max|K0| = "
          f"{np.max(np.abs(d['K1'])) / args.width / np.max(np.abs(d['K0'])):.2e})")
    tad = from_pairs(tadpole(coefficients(net, net.K_in), to_pairs4(circ(net.K_in))), 2)
    mis, mis_se = d["k1_source_mismatch"][0], d.se["k1_source_mismatch"][0]
    print("K1 source mismatch (closure - exact) at l=0 [aa, ab, bb]:",
          " ".join(f"{m:+.4f}±{s:.4f}" for m, s in zip(mis[np.triu_indices(2)], mis_se[np.triu_indices(2)])))
    print("  z vs 0:", np.round((mis / mis_se)[np.triu_indices(2)], 1),
          " 1/2 H:(K_in∘K_in):", np.round(tad[np.triu_indices(2)], 4),
          " z vs it:", np.round(((mis - tad) / mis_se)[np.triu_indices(2)], 2))
    K1, se, th = d["K1"][-1], d.se["K1"][-1], d["K1_gonly"][-1]
    print("K1 at t=T [aa, ab, bb]: sim", np.round(K1[np.triu_indices(2)], 4), "±", np.round(se[np.triu_indices(2)], 4),
          " G-only", np.round(th[np.triu_indices(2)], 4), " z", np.round(((K1 - th) / se)[np.triu_indices(2)], 1))
    V4, V4se, V4th = d["V4"][-1], d.se["V4"][-1], d["V4_gonly"][-1]
    print(f"V4 at t=T: rel. error max|th - sim|/max|sim| = {d.meta['relative_error']['V4'][-1]:.4f};"
          f" V4[ab,ab] sim {V4[0, 1, 0, 1]:.3f}±{V4se[0, 1, 0, 1]:.3f}, G-only {V4th[0, 1, 0, 1]:.3f}")
    L = args.depth
    rows = [("total", d["v4_residual"])] + [(k, d.meta["v4_residual_by_term"][k]) for k in TERMS]
    print("V4 residual, Frobenius norm at t =", np.round(net.t[::L // 4], 2))
    for k, v in rows:
        print(f"  {k:9s}", np.round(_norm(v)[::L // 4], 3))
    print("  V4_sim - V4_gonly", np.round(_norm(d["V4"] - d["V4_gonly"])[::L // 4], 3))
    print("validity window (threshold 5 %):", d.meta["validity_window"])


if __name__ == "__main__":
    main()
