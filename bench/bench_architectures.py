"""Architectures benchmark (issue 11): conditional vs weights sampler on the pre-LN transformer MLP block.

    python bench/bench_architectures.py [--samples 12]

Block h + √ε W2 gelu(W1 LN(h) + b1) + √ε b2, inner width 4n, n = 512, P = 2, depth 8 (docs/architectures.md#samplers).
Both samplers draw the same number of networks (``--samples``), measured side by side in one run (CPU time of this
process, since the machine may be shared; best of 5 for the conditional runs, one run of each weights timing):

1. weights / conditional per network, samplers alone (``weights_paths`` vs ``conditional_paths``): target >= 50.
2. the same end to end through ``simulate`` (K0, transport operators, reductions, default chunks).
3. each sampler / drawing its standard normals alone (numpy's default Generator, the same array shapes): how far
   each is above its RNG floor.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from kerneleft import Network
from kerneleft.branch import inner_widths
from kerneleft.ensemble import simulate
from kerneleft.samplers import conditional_paths, weights_paths

NET = Network(activation="gelu", T=1.0, depth=8, K_in=[[1.0, 0.6], [0.6, 1.5]],
              branch=[{"layer": "layernorm"}, {"layer": "dense", "C_W": 1.0, "C_b": 0.1, "width_ratio": 4.0},
                      {"layer": "phi"}, {"layer": "dense", "C_W": 1.0, "C_b": 0.1}])
WIDTH = 512
SAMPLERS = {"conditional": conditional_paths, "weights": weights_paths}


def normal_shapes(net: Network, n: int, size: int, method: str) -> list[tuple]:
    """The shapes of the standard-normal arrays a sampler draws for ``size`` networks, in order: h^0, then per
    layer l = 0..L every inner dense layer and (l < L) the last one — (size, P, m_out) for ``conditional``,
    W (size, m_out, m_in) and b (size, 1, m_out) for ``weights``."""
    outs = inner_widths(net.branch, n)
    ins = [n] + outs[:-1]
    dense = list(zip(outs, ins))
    shapes = [(size, net.P, n)]
    for l in range(net.depth + 1):
        for k, (m_out, m_in) in enumerate(dense):
            if k == len(dense) - 1 and l == net.depth:
                break
            shapes += [(size, net.P, m_out)] if method == "conditional" else [(size, m_out, m_in), (size, 1, m_out)]
    return shapes


def draw_normals(shapes: list[tuple], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for s in shapes:
        rng.standard_normal(s)


def best_cpu(fns: dict, repeat: dict) -> dict:
    """Interleaved best-of-``repeat[k]`` CPU time (s, this process) of each callable ``fns[k]``."""
    best = {k: np.inf for k in fns}
    for r in range(max(repeat.values())):
        for k, fn in fns.items():
            if r < repeat[k]:
                c0 = time.process_time()
                fn()
                best[k] = min(best[k], time.process_time() - c0)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=12, help="networks drawn by each sampler (default 12)")
    S = ap.parse_args().samples
    n, widths = WIDTH, inner_widths(NET.branch, WIDTH)
    print(f"pre-LN block, n = {n}, inner widths {widths}, P = {NET.P}, depth {NET.depth}, {S} networks per method")

    fns = {}
    for method, sampler in SAMPLERS.items():
        fns[method] = (lambda s=sampler: s(NET, n, S, np.random.default_rng(1)))
        fns[f"{method} normals"] = (lambda m=method: draw_normals(normal_shapes(NET, n, S, m), 1))
        fns[f"{method} simulate"] = (lambda m=method: simulate(NET, n, S, seed=1, method=m, progress=False))
    t = best_cpu(fns, {k: 1 if k.startswith("weights") else 5 for k in fns})
    for k, v in t.items():
        print(f"  {k:<22s} {v:8.3f} s CPU   {1e3 * v / S:9.3f} ms/network")
    rows = [("1. weights / conditional (samplers)", t["weights"] / t["conditional"], ">= 50"),
            ("2. weights / conditional (simulate)", t["weights simulate"] / t["conditional simulate"], ">= 50"),
            ("3. conditional / its normals", t["conditional"] / t["conditional normals"], "report"),
            ("3. weights / its normals", t["weights"] / t["weights normals"], "report")]
    for name, value, target in rows:
        ok = "" if target == "report" else ("ok" if value >= 50 else "MISSED")
        print(f"{name:<40s} {value:8.2f}   target {target:<7s} {ok}")


if __name__ == "__main__":
    main()
