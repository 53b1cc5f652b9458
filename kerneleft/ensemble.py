"""Exact finite-width ensembles: chunked, reproducible, parallel Monte Carlo (THEORY §2, §7).

Modelled on QuTiP's multi-trajectory solver. The ``samples`` networks are cut into fixed-size *chunks*
(size fixed by method, width and P — never by the number of workers); chunk i draws from the i-th child of
``np.random.SeedSequence(seed)`` (``SeedSequence(seed, spawn_key=(i,))`` is exactly ``.spawn(..)[i]``).
Consecutive chunks are grouped into *tasks* handed to a pluggable ``map(fn, tasks) -> iterator`` (serial,
:class:`ProcessMap`, or e.g. a Dask map); each task returns one :class:`Partial` (sufficient statistics) per
chunk and the main process folds them in chunk order. Hence the numbers are bit-identical for any workers and
any grouping, memory does not grow with ``samples``, and a stop rule or Ctrl-C ends the run after whole chunks.

Interrupts (docs/numerics.md#interrupts): Ctrl-C (or SIGTERM, which the CLI turns into Ctrl-C) makes
:func:`simulate` return the chunks folded so far with ``meta['interrupted'] = True``; pipelines built on it
(diagnose, reproduce, sweep) stop and raise :class:`~kerneleft.errors.Interrupted`. Worker processes never outlive
the process that started them (:func:`_worker_init`).
"""
from __future__ import annotations

import builtins
import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing import connection as _mp_connection
from typing import Callable

import numpy as np
from tqdm import tqdm

from .config import Network
from .estimators import MIN_COV_SAMPLES, Moments, drift_control_variate, extrapolate_K1, merge, pair_index
from .gaussian import jacobian
from .kernel import K0_discrete
from .result import KernelResult
from .samplers import conditional_paths, weights_paths
from .validate import check_ensemble_size, check_int, check_positive, check_workers
from .errors import InputError

__all__ = ["METHODS", "register_method", "get_method", "default_chunk_size", "Partial", "chunk_statistics",
           "transport_ops", "run_task", "ProcessMap", "statistics", "simulate", "extrapolate_K1"]

PathSampler = Callable  # f(net, width, size, rng) -> (G, Sigma), each (size, L+1, P, P)

METHODS: dict[str, PathSampler] = {"conditional": conditional_paths, "weights": weights_paths}
_LAZY_METHODS = {"g-only-chain": "kerneleft.theory.gonly"}   # modules that register themselves on import
_CHUNK_RULES: dict[str, Callable[[Network, int], int]] = {
    # ~2^16 floats per (size, P, n) buffer: cache-resident, per-layer Python overhead amortised.
    "conditional": lambda net, n: 2 ** 16 // (n * net.P),
    # ~2^21 floats (16 MiB) for the (size, n, n) weight buffer.
    "weights": lambda net, n: 2 ** 21 // (n * n),
}
_DEFAULT_CHUNK = 256
_MAX_CHUNK = 1024
_MIN_STOP_SAMPLES = 64


def register_method(name: str, fn: PathSampler, chunk_size: Callable[[Network, int], int] | None = None) -> None:
    """Register a path sampler ``fn(net, width, size, rng) -> (G, Sigma)``; ``chunk_size(net, width)`` optional."""
    METHODS[name] = fn
    if chunk_size is not None:
        _CHUNK_RULES[name] = chunk_size


def get_method(name: str) -> PathSampler:
    """The registered path sampler ``name`` (importing a lazily registered one); ValueError if unknown."""
    if not isinstance(name, str):
        raise InputError(f"method: must be a method name, got {type(name).__name__}")
    if name not in METHODS and name in _LAZY_METHODS:
        importlib.import_module(_LAZY_METHODS[name])
        if name not in METHODS:
            raise InputError(f"method: {name!r} is not available ({_LAZY_METHODS[name]} did not register it)")
    if name not in METHODS:
        allowed = ", ".join(sorted(set(METHODS) | set(_LAZY_METHODS)))
        raise InputError(f"method: unknown method {name!r} (allowed: {allowed})")
    return METHODS[name]


def default_chunk_size(method: str, net: Network, width: int) -> int:
    """Samples per chunk (the unit of seeding and reduction): a function of method, width and P only."""
    rule = _CHUNK_RULES.get(method)
    return _DEFAULT_CHUNK if rule is None else int(np.clip(rule(net, width), 1, _MAX_CHUNK))


@dataclass(frozen=True)
class Partial:
    """Sufficient statistics of a set of networks (§7), per layer.

    ``gs``: Moments of x[l] = (G^l_ab, Σ^l_ab over a <= b), leading shape (L+1,), d = P(P+1).
    ``drift``: Moments of (D^l, D^l − Y^l) over a <= b for l = 1..L, leading (L,), d = P(P+1): the drift
    integral D^l = K_in + ε Σ_{k<l} S^k (§7) and the same minus its control variate Y^l
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
    a, b = np.triu_indices(net.P)
    S = net.C_W * Sigma + net.C_b                                        # (size, L+1, P, P)
    D = net.K_in + net.eps * np.cumsum(S[:, :-1], axis=1)                # D^1..D^L
    Y = drift_control_variate(G, S, net.K_in, Tr, net.eps)
    x = np.concatenate([G[..., a, b], Sigma[..., a, b]], axis=-1)        # (size, L+1, 2k)
    drift = np.concatenate([D[..., a, b], (D - Y)[..., a, b]], axis=-1)  # (size, L, 2k)
    return Partial(Moments.from_samples(x), Moments.from_samples(drift))


def transport_ops(net: Network, K0: np.ndarray) -> np.ndarray:
    """𝒯_k = C_W DF(K0^k) for k = 0..L−1 (§5), (L, P,P,P,P)."""
    return net.C_W * jacobian(net.phi, K0[:-1])


def run_task(task: tuple) -> list[Partial]:
    """Worker entry point: ``task = (sampler, net, width, Tr, seed, first_chunk, sizes)`` → one
    Partial per chunk, chunk i seeded by ``SeedSequence(seed, spawn_key=(i,))``."""
    sampler, net, width, Tr, seed, first, sizes = task
    return [chunk_statistics(sampler, net, width, size, np.random.SeedSequence(seed, spawn_key=(first + j,)), Tr)
            for j, size in enumerate(sizes)]


_PR_SET_PDEATHSIG = 1          # linux/prctl.h
_WATCH_PARENT_S = 0.5
# fork on Linux (fast; the worker's parent is this process), spawn elsewhere
_MP = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _set_pdeathsig() -> bool:
    """Ask the Linux kernel to SIGKILL this process when its parent exits; False where prctl is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    """Exit this process as soon as its parent ``parent`` is gone (it is re-parented); polls os.getppid()."""
    while os.getppid() == parent:
        time.sleep(_WATCH_PARENT_S)
    os._exit(1)


def _worker_init(parent: int) -> None:
    """Worker start-up: ignore SIGINT (a terminal's Ctrl-C goes to the whole process group; the parent decides
    when to stop and kills its workers) and die with the parent ``parent`` — PR_SET_PDEATHSIG(SIGKILL), else a
    watchdog thread polling os.getppid()."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not _set_pdeathsig():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="kerneleft-watch-parent").start()
    if os.getppid() != parent:     # the parent died before the worker was armed
        os._exit(1)


def _worker_main(conn, parent: int) -> None:
    """A :class:`ProcessMap` worker: for each ``(fn, task)`` received on ``conn`` send back ``(True, fn(task))``
    or ``(False, (exception, traceback text))``; ``None`` or a closed pipe ends it."""
    _worker_init(parent)
    try:
        while (msg := conn.recv()) is not None:
            fn, task = msg
            try:
                reply = (True, fn(task))
            except Exception as err:                      # re-raised in the parent
                reply = (False, (err, traceback.format_exc()))
            try:
                conn.send(reply)
            except Exception as err:                      # an unpicklable result or exception
                conn.send((False, (RuntimeError(f"{type(err).__name__}: {err}"), traceback.format_exc())))
    except EOFError:
        pass


class ProcessMap:
    """``map(fn, tasks)`` over ``workers`` processes, results in task order, at most ``2·workers`` tasks running
    or waiting to be yielded.

    Each worker has its own pipe, so a worker can be killed at any moment without disturbing the others or the
    parent. Workers ignore SIGINT (Ctrl-C reaches only the main process) and die with their parent
    (:func:`_worker_init`); a worker ended by SIGTERM (sent to the whole process group, as batch systems do)
    counts as Ctrl-C. On Ctrl-C the finished results at the head of the order are still yielded before
    KeyboardInterrupt propagates; on any early exit (Ctrl-C, an error, the consumer closing the iterator) the
    workers are killed at once, not waited for.
    """

    def __init__(self, workers: int):
        self.workers = workers

    def __call__(self, fn, tasks):
        tasks = enumerate(tasks)
        workers, finished = [], False
        try:
            for _ in range(self.workers):
                ours, theirs = _MP.Pipe()
                proc = _MP.Process(target=_worker_main, args=(theirs, os.getpid()), daemon=True,
                                   name="kerneleft-worker")
                proc.start()
                theirs.close()
                workers.append((proc, ours))
            idle = list(workers)
            busy, done = {}, {}          # connection -> (process, task index); task index -> result not yet yielded
            nxt = submitted = 0
            exhausted = False
            try:
                while True:
                    while idle and not exhausted and submitted - nxt < 2 * self.workers:
                        item = next(tasks, None)
                        if item is None:
                            exhausted = True
                            break
                        proc, conn = idle.pop()
                        conn.send((fn, item[1]))
                        busy[conn] = (proc, item[0])
                        submitted += 1
                    while nxt in done:
                        nxt += 1
                        yield done.pop(nxt - 1)
                    if not busy:
                        if exhausted:
                            break
                        continue
                    for conn in _mp_connection.wait(list(busy)):
                        proc, i = busy.pop(conn)
                        done[i] = _reply(proc, conn)
                        idle.append((proc, conn))
            except KeyboardInterrupt:
                for conn in [c for c in busy if c.poll()]:      # replies already sent (or being sent)
                    proc, i = busy.pop(conn)
                    done[i] = _reply(proc, conn)
                while nxt in done:
                    nxt += 1
                    yield done.pop(nxt - 1)
                raise
            finished = True
        finally:
            for proc, conn in workers:
                if finished:
                    conn.send(None)
                elif proc.is_alive():
                    proc.kill()
            for proc, conn in workers:
                proc.join()
                conn.close()


def _reply(proc, conn):
    """The result a worker sent on ``conn``; its exception (with the worker's traceback as a note) re-raised;
    KeyboardInterrupt if SIGTERM or SIGINT ended the worker, else RuntimeError if it died."""
    try:
        ok, value = conn.recv()
    except (EOFError, OSError):
        proc.join(1)
        if proc.exitcode in (-signal.SIGTERM, -signal.SIGINT):
            raise KeyboardInterrupt from None
        raise RuntimeError(f"worker process {proc.pid} died (exit code {proc.exitcode})") from None
    if ok:
        return value
    err, tb = value
    err.add_note(f"in worker process {proc.pid}:\n{tb}")
    raise err


def _tensor(c: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(..., k, k) over pairs a <= b -> full (..., P, P, P, P)."""
    return c[..., idx[:, :, None, None], idx[None, None, :, :]]


def statistics(part: Partial, net: Network, width: int, K0: np.ndarray) -> tuple[dict, dict]:
    """Arrays and standard errors of :func:`simulate` from merged sufficient statistics (§7)."""
    P, n = net.P, width
    k, idx = P * (P + 1) // 2, pair_index(P)
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


def simulate(net: Network, width: int, samples: int, seed: int, method: str = "conditional", workers: int = 1, *,
             chunk_size: int | None = None, progress: bool = True, map: Callable | None = None,
             stop_se: float | None = None, chunks_per_task: int = 1, scheduler=None) -> KernelResult:
    """Exact ensemble statistics of ``samples`` independent width-``width`` networks (§2, §7).

    Returns a KernelResult with arrays (and ``se`` for all but K0): ``G_mean``, ``Sigma_mean`` (L+1,P,P);
    ``V4 = n Cov[G]``, ``covGSigma = n Cov[G_ab, Σ_cd]``, ``covSigma = n Cov[Σ]`` (L+1,P,P,P,P);
    ``K1 = n(E[G] − K0_discrete)`` by the drift integral E[G^l] = K_in + ε Σ_{k<l} E[S^k] (§7, I1);
    ``K1_cv``: the same with the linear-response control variate subtracted (exactly unbiased, smaller SE);
    ``K1_naive = n(mean G − K0_discrete)``; ``K0`` (discrete).

    ``chunk_size``: samples per seeded chunk (default :func:`default_chunk_size`; changing it changes the draws).
    ``chunks_per_task`` (grouping) and ``workers``/``map`` never change the numbers. ``map(fn, tasks)`` must yield
    ``fn(task)`` in order. ``stop_se``: stop after the first whole chunk at which max K1 SE <= stop_se
    (checked from 64 samples on). Ctrl-C returns the chunks finished so far with ``meta['interrupted'] = True``
    and ``meta['samples']`` the networks in them (``samples_requested`` the asked number); with fewer than
    three networks folded it raises KeyboardInterrupt. Callers that must not continue on partial data check
    ``meta['interrupted']`` (docs/numerics.md#interrupts).
    ``scheduler``: a ``dask.distributed.Client`` or scheduler address — the chunks run as Dask tasks
    (:class:`kerneleft.distributed.DaskMap`; ``workers`` is then the number of Dask workers to wait for).
    """
    if not isinstance(net, Network):
        raise InputError(f"net: must be a kerneleft Network, got {type(net).__name__}")
    sampler = get_method(method)
    width = check_int("width", width, 1)
    samples = check_int("samples", samples, MIN_COV_SAMPLES, " (standard errors of V4 need 3)")
    seed = check_int("seed", seed, 0)
    workers = check_workers("workers", workers, local=scheduler is None and map is None)
    chunks_per_task = check_int("chunks_per_task", chunks_per_task, 1)
    chunk = default_chunk_size(method, net, width) if chunk_size is None else check_int("chunk_size", chunk_size, 1)
    if stop_se is not None:
        check_positive("stop_se", stop_se)
    check_ensemble_size(net, method, width, samples, chunk_size, workers if scheduler is None else 1)
    if scheduler is not None:
        if map is not None:
            raise InputError("scheduler: give either map or scheduler, not both")
        from .distributed import DaskMap

        with DaskMap(scheduler, min_workers=workers) as dask_map:
            res = simulate(net, width, samples, seed, method, workers, chunk_size=chunk_size, progress=progress,
                           map=dask_map, stop_se=stop_se, chunks_per_task=chunks_per_task)
            res.meta["scheduler"] = dask_map.address
        return res
    if map is None:
        map = builtins.map if workers == 1 else ProcessMap(workers)
    K0 = K0_discrete(net)
    Tr = transport_ops(net, K0)

    k = net.P * (net.P + 1) // 2
    n_chunks = -(-samples // chunk)
    sizes = [min(chunk, samples - i * chunk) for i in range(n_chunks)]
    tasks = ((sampler, net, width, Tr, seed, i, sizes[i:i + chunks_per_task])
             for i in range(0, n_chunks, chunks_per_task))

    total, done, interrupted, stopped = None, 0, False, False
    start = time.perf_counter()
    results = map(run_task, tasks)
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
            "samples_requested": samples, "seed": seed, "config": net.to_dict(), "workers": workers,
            "chunk_size": chunk, "chunks": done, "chunks_per_task": chunks_per_task,
            "interrupted": interrupted, "stop_se": stop_se, "stopped_early": stopped,
            "timings": {"wall_s": wall, "per_sample_s": wall / total.gs.count}}
    return KernelResult(net.t, arrays, se, meta)
