"""Exact finite-width ensembles: chunked, reproducible, parallel Monte Carlo (docs/estimators.md#ensembles).

Modelled on QuTiP's multi-trajectory solver. The ``samples`` networks are cut into fixed-size *chunks*
(size fixed by method, width and P — never by the number of workers); chunk i draws from the i-th child of
``np.random.SeedSequence(seed)`` (``SeedSequence(seed, spawn_key=(i,))`` is exactly ``.spawn(..)[i]``).
Consecutive chunks are grouped into *tasks* handed to the ``pool``, a map ``m(fn, tasks) -> iterator``
(:func:`kerneleft.maps.as_map`: serial, local processes, or a Dask map); each task returns one :class:`Partial`
(sufficient statistics) per chunk and the main process folds them in chunk order. Hence the numbers are
bit-identical for any pool and any grouping, memory does not grow with ``samples``, and a stop rule or Ctrl-C ends the run after whole chunks.

Interrupts (docs/numerics.md#interrupts): Ctrl-C (or SIGTERM, which the CLI turns into Ctrl-C) makes
:func:`simulate` return the chunks folded so far with ``meta['interrupted'] = True``; pipelines built on it
(diagnose, reproduce, sweep) stop and raise :class:`~kerneleft.errors.Interrupted`. Worker processes never outlive
the process that started them (:mod:`kerneleft.maps`).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm import tqdm

from .config import Network
from .estimators import MIN_COV_SAMPLES, Moments, drift_control_variate, extrapolate_K1, merge
from .gaussian import jacobian
from .kernel import K0_discrete
from .maps import as_map, describe, local_workers
from .pairs import pair_basis
from .result import KernelResult
from .branch import inner_widths, is_default
from .coefficients import coefficients, kernel_jacobian_fd, theory_supported
from .samplers import conditional_paths, gonly_chain, weights_paths
from .limits import check_bytes
from .validate import check_int, check_positive
from .errors import InputError

__all__ = ["METHODS", "get_method", "default_chunk_size", "check_ensemble_size", "batch_seeds", "Partial",
           "chunk_statistics", "transport_ops", "run_task", "statistics", "simulate", "extrapolate_K1"]

PathSampler = Callable  # f(net, width, size, rng) -> (G, Sigma), each (size, L+1, P, P)

METHODS: dict[str, PathSampler] = {"conditional": conditional_paths, "weights": weights_paths,
                                   "g-only-chain": gonly_chain}


def _dense_shapes(net: Network, n: int) -> list[tuple[int, int]]:
    """(m_out, m_in) of every dense layer of the branch at width n (docs/architectures.md#samplers): the first
    reads the residual stream (n), each later one the previous dense layer's output."""
    outs = inner_widths(net.branch, n)
    return list(zip(outs, [n] + outs[:-1]))


def _max_width(net: Network, n: int) -> int:
    """The widest neuron buffer (size, P, m) of a block: the stream n or an inner dense layer's output."""
    return max(n, *inner_widths(net.branch, n))


def _max_weights(net: Network, n: int) -> int:
    """The largest weight matrix m_out·m_in of a block (n² for the default branch)."""
    return max(m_out * m_in for m_out, m_in in _dense_shapes(net, n))


_CHUNK_RULES: dict[str, Callable[[Network, int], int]] = {
    # ~2^16 floats per (size, P, m) buffer, m the widest layer: cache-resident, per-layer overhead amortised.
    "conditional": lambda net, n: 2 ** 16 // (_max_width(net, n) * net.P),
    # ~2^21 floats (16 MiB) for the largest (size, m_out, m_in) weight buffer.
    "weights": lambda net, n: 2 ** 21 // _max_weights(net, n),
}
_DEFAULT_CHUNK = 256
_MAX_CHUNK = 1024
_MIN_STOP_SAMPLES = 64


def get_method(name: str) -> PathSampler:
    """The registered path sampler ``name``; InputError if unknown."""
    if not isinstance(name, str):
        raise InputError(f"method: must be a method name, got {type(name).__name__}")
    if name not in METHODS:
        allowed = ", ".join(sorted(METHODS))
        raise InputError(f"method: unknown method {name!r} (allowed: {allowed})")
    return METHODS[name]


def default_chunk_size(method: str, net: Network, width: int) -> int:
    """Samples per chunk (the unit of seeding and reduction): a function of method, width, P and the branch's
    layer widths only (the default branch: of method, width and P)."""
    rule = _CHUNK_RULES.get(method)
    return _DEFAULT_CHUNK if rule is None else int(np.clip(rule(net, width), 1, _MAX_CHUNK))


BYTES_PER_CHUNK = 64
"""Bookkeeping per seeded chunk of an ensemble (list entry, seed, task tuple): bounds ``samples``."""


def check_ensemble_size(net, method: str, width: int, samples: int, chunk_size: int | None = None, workers: int = 1,
                        batches: int = 1, name: Callable[[str], str] = str) -> None:
    """Refuse up front (InputError naming the argument, with the estimate) an ensemble whose memory would exceed
    :data:`kerneleft.limits.MAX_BYTES`: the neuron buffers of one chunk in each worker (width, chunk_size,
    workers), its (chunk, L+1, P, P) paths (depth), the per-layer moments of ``batches`` results (depth) and the
    per-chunk bookkeeping (samples). The buffer sizes are those of :mod:`kerneleft.samplers`, for the widest
    layer m of the branch (inner widths, :func:`kerneleft.branch.inner_widths`) and its largest weight matrix;
    ``name`` maps an argument to the name reported (``lambda a: "--" + a`` for the CLI, ``"ensemble." + a`` for a
    sweep file).
    """
    chunk = min(chunk_size or default_chunk_size(method, net, width), samples)
    P, L1, d = net.P, net.depth + 1, net.P * (net.P + 1)
    m = _max_width(net, width)
    neurons = {"conditional": 4 * chunk * P * m,
               "weights": chunk * (_max_weights(net, width) + 3 * P * m)}.get(method, 0)
    what = f"one chunk of {chunk} networks of width {width}"
    check_bytes(name("chunk_size" if chunk_size else "width"), 8.0 * neurons, what)
    check_bytes(name("workers"), 8.0 * neurons * workers, f"{workers} workers, each holding {what}")
    check_bytes("depth", 8.0 * 2 * chunk * L1 * P * P, f"the paths of one chunk over depth = {net.depth} layers")
    check_bytes("depth", 8.0 * batches * L1 * (6 * P ** 4 + 4 * d * d),
                f"the moments of {batches} ensemble(s) over depth = {net.depth} layers")
    chunks = -(-samples // chunk)
    check_bytes(name("samples"), BYTES_PER_CHUNK * chunks, f"the bookkeeping of {chunks} chunks of {chunk} networks")


def batch_seeds(seed: int, batches: int, *, width: int | None = None) -> list[int]:
    """Seeds of ``batches`` independent ensembles: 63-bit integers drawn from ``SeedSequence(seed)``, or from
    ``SeedSequence([seed, width])`` when each width needs its own streams (``reproduce``)."""
    entropy = seed if width is None else [seed, width]
    return [int(s) for s in np.random.SeedSequence(entropy).generate_state(batches, dtype=np.uint64) >> np.uint64(1)]


@dataclass(frozen=True)
class Partial:
    """Sufficient statistics of a set of networks (docs/estimators.md#standard-errors), per layer.

    ``gs``: Moments of x[l] = (G^l_ab, Σ^l_ab over a <= b), leading shape (L+1,), d = P(P+1).
    ``drift``: Moments of (D^l, D^l − Y^l) over a <= b for l = 1..L, leading (L,), d = P(P+1): the drift
    integral D^l = K_in + ε Σ_{k<l} S^k (docs/estimators.md#drift-estimator) and the same minus its control
    variate Y^l
    (:func:`~kerneleft.estimators.drift_control_variate`); both have mean E[G^l].
    """

    gs: Moments
    drift: Moments

    def merge(self, other: "Partial") -> "Partial":
        return Partial(merge(self.gs, other.gs), merge(self.drift, other.drift))


def chunk_statistics(sampler: PathSampler, net: Network, width: int, size: int,
                     seed_seq: np.random.SeedSequence, Tr: np.ndarray) -> Partial:
    """Draw ``size`` networks with ``sampler`` from ``seed_seq`` and reduce them to a :class:`Partial`;
    Tr (L, P,P,P,P): transport operators 𝒯_k = C_W DF(K0^k) for the control variate."""
    G, Sigma = sampler(net, width, size, np.random.default_rng(seed_seq))
    p = pair_basis(net.P)
    S = net.C_W * Sigma + net.C_b                                        # (size, L+1, P, P)
    D = net.K_in + net.eps * np.cumsum(S[:, :-1], axis=1) if net.residual else S[:, :-1]   # D^1..D^L
    Y = drift_control_variate(G, S, net.K_in, Tr, net.eps, net.residual)
    x = np.concatenate([p.vec(G), p.vec(Sigma)], axis=-1)               # (size, L+1, 2k)
    drift = np.concatenate([p.vec(D), p.vec(D - Y)], axis=-1)           # (size, L, 2k)
    return Partial(Moments.from_samples(x), Moments.from_samples(drift))


def transport_ops(net: Network, K0: np.ndarray) -> np.ndarray:
    """𝒯_k = DS̄(K0^k) = C_W DF(K0^k) for k = 0..L−1 (docs/gonly.md#coefficients; a branch's jets,
    docs/architectures.md#gonly-branches), (L, P,P,P,P) over ordered pairs. For a branch the theories do not support,
    a finite-difference Jacobian of its kernel map: the control variate has mean zero for any operator
    (docs/estimators.md#control-variate), a rougher one only makes it less effective."""
    if is_default(net.branch):
        return net.C_W * jacobian(net.phi, K0[:-1])
    p = pair_basis(net.P)
    T = coefficients(net, K0[:-1]).T if theory_supported(net.branch) else kernel_jacobian_fd(net, K0[:-1])
    return np.ascontiguousarray(p.mat4(T / p.mult))     # contiguous: the workers' einsum rounds like the parent's


def run_task(task: tuple) -> list[Partial]:
    """Worker entry point: ``task = (sampler, net, width, Tr, seed, first_chunk, sizes)`` → one
    Partial per chunk, chunk i seeded by ``SeedSequence(seed, spawn_key=(i,))``."""
    sampler, net, width, Tr, seed, first, sizes = task
    return [chunk_statistics(sampler, net, width, size, np.random.SeedSequence(seed, spawn_key=(first + j,)), Tr)
            for j, size in enumerate(sizes)]


def _tensor(c: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(..., k, k) over pairs a <= b -> full (..., P, P, P, P)."""
    return c[..., idx[:, :, None, None], idx[None, None, :, :]]


def statistics(part: Partial, net: Network, width: int, K0: np.ndarray) -> tuple[dict, dict]:
    """Arrays and standard errors of :func:`simulate` from merged sufficient statistics
    (docs/estimators.md#standard-errors)."""
    P, n = net.P, width
    k, idx = P * (P + 1) // 2, pair_basis(P).index
    lo, hi = slice(0, k), slice(k, None)              # gs: (G, Σ) columns; drift: (D, D − Y) columns
    mean, mean_se = part.gs.mean, part.gs.mean_se()
    cov, cov_se = n * part.gs.cov(), n * part.gs.cov_se()
    drift, drift_se = part.drift.mean, part.drift.mean_se()
    at_0 = lambda v, l0: np.concatenate([l0[None], v])                  # prepend l = 0 (D^0 = K_in exactly)
    arrays = {"G_mean": mean[:, lo][:, idx], "Sigma_mean": mean[:, hi][:, idx], "K0": K0}
    se = {"G_mean": mean_se[:, lo][:, idx], "Sigma_mean": mean_se[:, hi][:, idx]}
    for name, cols in (("K1", lo), ("K1_cv", hi)):
        arrays[name] = n * (at_0(drift[:, cols][:, idx], net.K_in) - K0)
        se[name] = n * at_0(drift_se[:, cols][:, idx], np.zeros((P, P)))
    arrays["K1_naive"] = n * (arrays["G_mean"] - K0)
    se["K1_naive"] = n * se["G_mean"]
    for name, (r, c) in {"V4": (lo, lo), "covGSigma": (lo, hi), "covSigma": (hi, hi)}.items():
        arrays[name] = _tensor(cov[:, r, c], idx)
        se[name] = _tensor(cov_se[:, r, c], idx)
    return arrays, se


def _argument(name: str) -> str:
    """The simulate argument behind a :func:`check_ensemble_size` name (``workers`` is ``pool``)."""
    return "pool" if name == "workers" else name


def simulate(net: Network, width: int, samples: int, seed: int, method: str = "conditional", pool=None, *,
             chunk_size: int | None = None, progress: bool = True, stop_se: float | None = None,
             chunks_per_task: int = 1) -> KernelResult:
    """Exact ensemble statistics of ``samples`` independent width-``width`` networks
    (docs/exact.md#conditional-gaussianity, docs/estimators.md#standard-errors).

    Returns a KernelResult with arrays (and ``se`` for all but K0): ``G_mean``, ``Sigma_mean`` (L+1,P,P);
    ``V4 = n Cov[G]``, ``covGSigma = n Cov[G_ab, Σ_cd]``, ``covSigma = n Cov[Σ]`` (L+1,P,P,P,P);
    ``K1 = n(E[G] − K0_discrete)`` by the drift integral E[G^l] = K_in + ε Σ_{k<l} E[S^k]
    (I1; docs/estimators.md#drift-estimator);
    ``K1_cv``: the same with the linear-response control variate subtracted (exactly unbiased, smaller SE);
    ``K1_naive = n(mean G − K0_discrete)``; ``K0`` (discrete).

    ``chunk_size``: samples per seeded chunk (default :func:`default_chunk_size`; changing it changes the draws).
    ``pool``: where the chunks run (:func:`kerneleft.maps.as_map`): None or 1 serial, an int k >= 2 local
    processes, or a map object ``m(fn, tasks)`` yielding ``fn(task)`` in order (e.g. a
    :class:`kerneleft.distributed.DaskMap`). ``chunks_per_task`` (grouping) and ``pool`` never change the numbers;
    meta records ``pool`` (``serial``, ``processes(2)``, ``dask(tcp://...)``) and ``workers`` (local processes).
    ``stop_se``: stop after the first whole chunk at which max K1 SE <= stop_se (checked from 64 samples on).
    Ctrl-C returns the chunks finished so far with ``meta['interrupted'] = True`` and ``meta['samples']`` the
    networks in them (``samples_requested`` the asked number); with fewer than
    three networks folded it raises KeyboardInterrupt. Callers that must not continue on partial data check
    ``meta['interrupted']`` (docs/numerics.md#interrupts).
    """
    if not isinstance(net, Network):
        raise InputError(f"net: must be a kerneleft Network, got {type(net).__name__}")
    sampler = get_method(method)
    width = check_int("width", width, 1)
    samples = check_int("samples", samples, MIN_COV_SAMPLES, " (standard errors of V4 need 3)")
    seed = check_int("seed", seed, 0)
    pool = as_map(pool)
    chunks_per_task = check_int("chunks_per_task", chunks_per_task, 1)
    chunk = default_chunk_size(method, net, width) if chunk_size is None else check_int("chunk_size", chunk_size, 1)
    if stop_se is not None:
        check_positive("stop_se", stop_se)
    check_ensemble_size(net, method, width, samples, chunk_size, local_workers(pool), name=_argument)
    K0 = K0_discrete(net)
    Tr = transport_ops(net, K0)

    k = net.P * (net.P + 1) // 2
    n_chunks = -(-samples // chunk)
    sizes = [min(chunk, samples - i * chunk) for i in range(n_chunks)]
    tasks = ((sampler, net, width, Tr, seed, i, sizes[i:i + chunks_per_task])
             for i in range(0, n_chunks, chunks_per_task))

    total, done, interrupted, stopped = None, 0, False, False
    start = time.perf_counter()
    results = pool(run_task, tasks)
    bar = tqdm(total=samples, unit="net", desc=f"simulate[{method}, n={width}]", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    try:
        for part in (p for parts in results for p in parts):
            total = part if total is None else total.merge(part)
            done += 1
            bar.update(part.gs.count)
            if stop_se is not None and total.gs.count >= _MIN_STOP_SAMPLES and \
                    width * np.max(total.drift.mean_se()[:, :k]) <= stop_se:
                stopped = True
                break
    except KeyboardInterrupt:
        if total is None or total.gs.count < MIN_COV_SAMPLES:
            raise
        interrupted = True
    finally:
        bar.close()
        if hasattr(results, "close"):
            results.close()
    wall = time.perf_counter() - start

    arrays, se = statistics(total, net, width, K0)
    meta = {"kind": "simulation", "method": method, "width": width, "samples": total.gs.count,
            "samples_requested": samples, "seed": seed, "config": net.to_dict(), "pool": describe(pool),
            "workers": local_workers(pool),
            "chunk_size": chunk, "chunks": done, "chunks_per_task": chunks_per_task,
            "interrupted": interrupted, "stop_se": stop_se, "stopped_early": stopped,
            "timings": {"wall_s": wall, "per_sample_s": wall / total.gs.count}}
    if hasattr(pool, "address"):                     # a Dask map: the scheduler that ran the chunks
        meta["scheduler"] = pool.address
    return KernelResult(net.t, arrays, se, meta)
