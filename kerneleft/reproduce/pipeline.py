"""The ``reproduce`` pipeline: theories against exact finite-width ensembles, as a report (docs/reference.md#cli).

Stages (each timed and announced on stderr; simulations and theories cached under ``OUT/cache``):

1. ``K0``: infinite-width kernel, depth-L recursion and continuous ODE (docs/model.md#depth-grid).
   Any architecture (docs/architectures.md#branches); an MLP has only the discrete depth model
   (docs/architectures.md#mlp), so its continuous K0 and theories are skipped (None; the report says so).
2. ``theory g-only``: the G-only EFT (docs/gonly.md#coefficients), continuous ODEs and depth-L recursions.
3. ``theory sigma``: the sigma-kernel theory (docs/sigma.md#discrete-depth), depth-L recursion and ODEs.
4. ``ensembles``: exact conditional-sampler ensembles (docs/exact.md#conditional-gaussianity) at several widths,
   each drawn as ``batches`` independent seeded batches (:func:`kerneleft.ensemble.batch_seeds`; one cache entry
   each, so an interrupted run loses at most one batch) and pooled.
5. ``width extrapolation``: K1 by :func:`kerneleft.estimators.extrapolate_K1`.
6. ``diagnostics``: :func:`kerneleft.diagnostics.diagnose` on each width's batches (no re-simulation; cached).
7. ``next order``: the next order in 1/n of one input (docs/nextorder.md#validation): the first input alone (the
   one-input network with K_in = [[K_in[0, 0]]]), its sigma and G-only theories at order 2 (depth L) and its
   ensembles at ``next_widths`` (batches of their own seeds), fitted by :func:`kerneleft.estimators.fit_next_order`.
   Skipped (None; the report says why) when ``next_widths`` is empty or the network has no next order
   (docs/nextorder.md#scope).
8. ``analysis``: :func:`kerneleft.reproduce.analysis.analyse`.
9. ``figures`` (:mod:`kerneleft.reproduce.figures`), then ``results.json`` and ``report.md``.

A stage that fails is loud: ``results.json`` (``failed``: stage and error) and ``report.md`` say so, and the error
propagates (the CLI exits non-zero). Ctrl-C/SIGTERM writes partial results and raises
:class:`~kerneleft.errors.Interrupted` (docs/numerics.md#interrupts).
"""
from __future__ import annotations

import os
import platform
import sys
import time
import tomllib
from contextlib import contextmanager
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import scipy

from .. import ensemble as _ensemble
from .._version import __version__
from ..config import Network, load_config, network_from_dict
from ..diagnostics import diagnose
from ..errors import InputError, Interrupted
from ..estimators import MIN_COV_SAMPLES, NEXT_ORDER_WIDTHS, extrapolate_K1
from ..kernel import kernel
from ..limits import check_tolerance
from ..maps import as_map, describe
from ..result import KernelResult, write_json
from ..theory import ORDER2_TOL, solve
from ..theory.nextorder import check_supported
from ..validate import check_int, check_positive
from . import figures
from .analysis import NextOrderCheck, Plan, Results, Run, Theories, analyse, combine_batches, next_order_check
from .cache import ResultCache
from .rendering import render_report, render_stopped

__all__ = ["reproduce", "default_network", "resolve_network", "PLANS", "DEFAULT_SEED", "METHOD"]

#: Run sizes. ``samples``: networks per width (a multiple of ``batches``); ``diag_width``: the width whose
#: diagnostics are shown at finite n (figure k1_source, the diagnostics' own validity windows). Sampling cost grows
#: with width × samples (quick: 170 s CPU, 2.5 min wall on 2 busy cores; full: 8 × its sampling, 10.3 min wall).
#: The next-order check (stage 7): ``next_samples`` one-input networks at each of ``next_widths`` (>= 4 widths, or
#: () to skip it), the sigma next order refined to ``next_tol2``. Default network, measured on 2 busy cores: the
#: ensembles 30 s wall per 4 × 2^16 networks; the sigma next order 36–52 s to two grid levels (relative change
#: 0.098, within quick's tol2 = 0.1), 87 s to three (change 0.0016, full's 0.01).
PLANS: dict[str, dict[str, Any]] = {
    "full": {"widths": (32, 64, 128), "samples": 1 << 20, "batches": 16, "diag_width": 128,
             "next_widths": (16, 32, 64, 128), "next_samples": 1 << 19, "next_tol2": ORDER2_TOL},
    "quick": {"widths": (32, 64, 128), "samples": 1 << 17, "batches": 16, "diag_width": 128,
              "next_widths": (16, 32, 64, 128), "next_samples": 1 << 16, "next_tol2": 0.1},
}
DEFAULT_SEED = 20260101
METHOD = "conditional"
_FORMAT = Results.FORMAT


# ----------------------------------------------------------------------------------------------- configuration
def default_network() -> Network:
    """The embedded default configuration (``kerneleft/data/default.toml`` = examples/tanh_two_inputs.toml)."""
    text = resources.files("kerneleft").joinpath("data/default.toml").read_text()
    return network_from_dict(tomllib.loads(text))


def resolve_network(config) -> tuple[Network, str]:
    """``config`` (None: the default, a TOML path, a mapping or a Network) -> (Network, description of source)."""
    if config is None:
        return default_network(), "default (kerneleft/data/default.toml)"
    if isinstance(config, Network):
        return config, "Network object"
    if isinstance(config, Mapping):
        return network_from_dict(dict(config)), "mapping"
    if isinstance(config, (str, os.PathLike)):
        return load_config(config), str(config)
    raise InputError(f"config: must be None, a TOML path, a mapping or a Network, got {type(config).__name__}")


def _widths(name: str, widths, minimum: int) -> tuple[int, ...]:
    """``widths``: >= ``minimum`` distinct integers >= 1, sorted; InputError ``sizes.<name>: ...``."""
    if (not isinstance(widths, Sequence) or len(widths) < minimum or len(set(widths)) != len(widths)
            or any(isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1 for w in widths)):
        raise InputError(f"sizes.{name}: must be >= {minimum} distinct integers >= 1, got {widths!r}")
    return tuple(sorted(int(w) for w in widths))


def _samples(name: str, samples, widths: tuple, B: int) -> tuple[int, ...]:
    """``samples``: one or len(widths) multiples of B that are >= 3 B, one per width; InputError naming it."""
    out = (samples,) * len(widths) if isinstance(samples, (int, np.integer)) else tuple(samples)
    if len(out) != len(widths) or any(int(s) < MIN_COV_SAMPLES * B or int(s) % B for s in out):
        raise InputError(f"sizes.{name}: must be one or {len(widths)} multiples of batches={B} that are "
                         f">= {MIN_COV_SAMPLES * B}, got {samples!r}")
    return tuple(int(s) for s in out)


def _plan(quick: bool, sizes: Mapping | None) -> Plan:
    """Run sizes: PLANS['quick' or 'full'] updated by ``sizes``; validated, ``samples`` expanded per width."""
    plan = dict(PLANS["quick" if quick else "full"])
    if sizes:
        unknown = sorted(set(sizes) - set(plan))
        if unknown:
            raise InputError(f"sizes.{unknown[0]}: unknown key (allowed: {', '.join(sorted(plan))})")
        plan.update(sizes)
    widths = _widths("widths", plan["widths"], 2)
    B = check_int("sizes.batches", plan["batches"], 2)
    samples = _samples("samples", plan["samples"], widths, B)
    if plan["diag_width"] not in widths:
        raise InputError(f"sizes.diag_width: must be one of the widths {list(widths)}, got {plan['diag_width']!r}")
    skip = isinstance(plan["next_widths"], Sequence) and len(plan["next_widths"]) == 0
    next_widths = () if skip else _widths("next_widths", plan["next_widths"], NEXT_ORDER_WIDTHS)
    next_samples = _samples("next_samples", plan["next_samples"], next_widths, B) if next_widths else ()
    tol2 = check_tolerance("sizes.next_tol2", plan["next_tol2"], 1e-8, 0.5)
    return Plan(widths, samples, int(B), int(plan["diag_width"]), next_widths, next_samples, tol2)


# ------------------------------------------------------------------------------------------------ progress
class _Stages:
    """Announce and time the pipeline stages on stderr; ``current`` names the stage running (for the record of a
    run that stops)."""

    def __init__(self, total: int, verbose: bool):
        self.total, self.verbose, self.i = total, verbose, 0
        self.timings: dict[str, float] = {}
        self.current = "setup"

    def say(self, msg: str) -> None:
        if self.verbose:
            print(f"[kerneleft reproduce] {msg}", file=sys.stderr, flush=True)

    @contextmanager
    def __call__(self, name: str):
        self.i += 1
        self.current = name
        self.say(f"stage {self.i}/{self.total}: {name} ...")
        t0 = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t0
        self.say(f"stage {self.i}/{self.total}: {name} done in {self.timings[name]:.1f} s")


def _versions() -> dict[str, str]:
    import matplotlib
    return {"kerneleft": __version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "matplotlib": matplotlib.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


# ------------------------------------------------------------------------------------------------ stages
def _theories(net: Network, cache: ResultCache, log: _Stages, opts: Mapping[str, Mapping]) -> Theories:
    """K0 in both depth models and both closures in both depth models (cached; ``opts[closure]`` to the solver).
    An MLP has only the discrete depth model (docs/architectures.md#mlp): its continuous entries are None."""
    cfg = net.to_dict()

    def theory(closure: str, dm: str) -> KernelResult | None:
        if dm == "continuous" and not net.residual:
            return None
        fields = {"config": cfg, "closure": closure, "depth_model": dm, "opts": dict(opts[closure])}
        return cache.get("theory", fields, lambda: solve(net, closure, depth_model=dm, **opts[closure]))[0]

    mlp = "discrete only: an MLP has no continuous depth model"
    with log("K0 (discrete, continuous)" if net.residual else f"K0 ({mlp})"):
        K0d, K0c = kernel(net, "discrete").K0, kernel(net, "continuous").K0 if net.residual else None
    with log("theory g-only (continuous, discrete)" if net.residual else f"theory g-only ({mlp})"):
        g_cont, g_disc = theory("g-only", "continuous"), theory("g-only", "discrete")
    with log("theory sigma" if net.residual else f"theory sigma ({mlp})"):
        s_disc, s_cont = theory("sigma", "discrete"), theory("sigma", "continuous")
    return Theories(K0d, K0c, g_cont, g_disc, s_disc, s_cont)


def _simulate_width(net: Network, width: int, samples: int, seeds: Sequence[int], pool, cache: ResultCache,
                    log: _Stages, progress: bool, done: dict[str, dict[int, int]]) -> tuple[list[KernelResult], int]:
    """One seeded ensemble of ``samples // len(seeds)`` networks per seed at one width (cached one by one);
    returns (results, number cached).

    ``done['batches'][width]`` and ``done['samples'][width]`` count the finished batches and the networks simulated
    (a batch cut short included). A batch cut short by Ctrl-C is not cached and raises :class:`Interrupted`.
    """
    batches = len(seeds)
    per = samples // batches
    chunk = _ensemble.default_chunk_size(METHOD, net, width)
    out, cached = [], 0
    for b, s in enumerate(seeds):
        fields = {"config": net.to_dict(), "method": METHOD, "width": width, "samples": per, "seed": s,
                  "chunk_size": chunk}
        res, hit = cache.get("simulate", fields, lambda s=s: _ensemble.simulate(
            net, width=width, samples=per, seed=s, method=METHOD, pool=pool, chunk_size=chunk, progress=progress))
        done["samples"][width] += res.meta["samples"]
        if res.meta.get("interrupted"):
            raise Interrupted(f"batch {b + 1}/{batches} of width {width} cut short at {res.meta['samples']} of "
                              f"{per} networks")
        done["batches"][width] += 1
        cached += hit
        out.append(res)
    log.say(f"width n = {width}: {batches} batches x {per} networks ({cached} from cache)")
    return out, cached


def _one_input(net: Network, plan: Plan) -> tuple[Network | None, str | None]:
    """(network, None): the network of the next-order check, ``net`` itself for one input, else its first input
    alone (K_in = [[K_in[0, 0]]], the marginal law of G_00); (None, why) when the check is skipped."""
    if not plan.next_widths:
        return None, "sizes.next_widths is empty"
    one = net if net.P == 1 else net.replace(K_in=net.K_in[:1, :1])
    try:
        check_supported(one)
    except InputError as err:
        return None, "order 2" + str(err).removeprefix("order: 2")
    return one, None


def _next_order(net: Network, one: Network, plan: Plan, seed: int, pool, opts: Mapping[str, Mapping],
                cache: ResultCache, log: _Stages, progress: bool, done: dict) -> tuple[NextOrderCheck, int]:
    """Stage 7 for the one-input network ``one`` of ``net``: the order-2 theories (depth L, cached) and the
    ensembles at ``plan.next_widths``, each width's batches seeded by the ``plan.batches`` seeds after those of the
    main ensembles in its stream (:func:`kerneleft.ensemble.batch_seeds`), so the two sets are independent.
    Returns the check and the number of batches taken from the cache."""
    cfg = one.to_dict()
    theories = {}
    for closure in ("sigma", "g-only"):
        tol2 = {"tol2": plan.next_tol2} if closure == "sigma" else {}
        fields = {"config": cfg, "closure": closure, "depth_model": "discrete", "opts": dict(opts[closure]),
                  "order": 2, **tol2}
        theories[closure] = cache.get("theory", fields, lambda c=closure, t=tol2: solve(
            one, c, depth_model="discrete", order=2, **t, **opts[c]))[0]
    ensembles, n_cached = {}, 0
    B = plan.batches
    for n, N in zip(plan.next_widths, plan.next_samples):
        seeds = _ensemble.batch_seeds(seed, 2 * B, width=n)[B:]
        batches, hit = _simulate_width(one, n, N, seeds, pool, cache, log, progress, done)
        ensembles[n] = combine_batches(batches)
        n_cached += hit
    return next_order_check(cfg, net.P, theories["sigma"], theories["g-only"], ensembles), n_cached


def _diagnose(net: Network, batches: Sequence[KernelResult], seed: int, threshold: float,
              cache: ResultCache) -> KernelResult:
    """:func:`~kerneleft.diagnostics.diagnose` on one width's batches, cached under the batches' keys."""
    width = batches[0].meta["width"]
    fields = {"config": net.to_dict(), "method": METHOD, "width": width, "threshold": threshold,
              "batches": [[b.meta[k] for k in ("seed", "samples", "chunk_size")] for b in batches]}
    return cache.get("diagnostics", fields, lambda: diagnose(
        net, width=width, samples=sum(b.meta["samples"] for b in batches), seed=seed, threshold=threshold,
        ensemble=batches))[0]


def _stopped(out: Path, record: dict, title: str, message: str) -> None:
    """results.json (``record``) and a short report.md for a run that did not finish."""
    write_json(record, out / "results.json")
    (out / "report.md").write_text(render_stopped(title, message))


def _interrupted(out: Path, stage: str, record: dict, plan: Plan, done: dict, done_next: dict | None,
                 cache: ResultCache) -> Interrupted:
    """Write ``out/results.json`` (``interrupted: true``, the networks simulated per width, those of the one-input
    ensembles under ``next_order``) and a short ``out/report.md`` for a run stopped by Ctrl-C/SIGTERM in ``stage``;
    ``done_next``: the one-input ensembles' counts (None if the next-order check is skipped). Returns the error to
    raise."""
    parts = [(done, plan.widths)] + ([(done_next, plan.next_widths)] if done_next is not None else [])
    total = sum(len(widths) * plan.batches for _, widths in parts)
    finished = sum(sum(d["batches"].values()) for d, _ in parts)
    networks = sum(sum(d["samples"].values()) for d, _ in parts)
    kept = f"they are cached in {out / 'cache'}" if cache.enabled else "the cache is disabled, so they are lost"
    msg = (f"reproduce: interrupted in stage '{stage}' after {finished} of {total} ensemble batches ({networks} "
           f"networks); {kept}; {out / 'results.json'} is marked interrupted; rerun the same command to finish")
    nxt = {} if done_next is None else {"next_order": {
        "samples": done_next["samples"], "samples_requested": dict(zip(plan.next_widths, plan.next_samples)),
        "batches_finished": done_next["batches"]}}
    _stopped(out, {**record, "interrupted": True, "stage": stage, "samples": done["samples"],
                   "samples_requested": dict(zip(plan.widths, plan.samples)), "batches_finished": done["batches"],
                   **nxt, "message": msg, "cache": _cache_record(out, cache)}, "interrupted", f"{msg}.")
    return Interrupted(msg)


def _cache_record(out: Path, cache: ResultCache) -> dict[str, Any]:
    return {"dir": str(out / "cache"), "enabled": cache.enabled, "hits": cache.hits, "misses": cache.misses,
            "rejected": cache.rejected}


# ------------------------------------------------------------------------------------------------ reproduce
def reproduce(out: str | Path, quick: bool = False, config=None, *, sizes: Mapping | None = None,
              seed: int | None = None, pool=2, threshold: float = 0.05, progress: bool = True,
              use_cache: bool = True, gonly_opts: Mapping | None = None,
              sigma_opts: Mapping | None = None) -> Results:
    """Run the whole comparison and write ``out/results.json``, ``out/figures/*.png`` and ``out/report.md``.

    ``config``: None (the embedded default, a tanh network with two inputs), a TOML path, a mapping or a Network.
    ``quick``: the small plan :data:`PLANS` ['quick'] instead of 'full'; ``sizes`` overrides plan keys
    (``widths``, ``samples``, ``batches``, ``diag_width``; ``next_widths``, ``next_samples``, ``next_tol2`` of the
    next-order check, ``next_widths=()`` skips it). ``seed``: root seed of all ensembles (default
    :data:`DEFAULT_SEED`). ``pool``: where each ensemble's chunks run (:func:`kerneleft.maps.as_map`: None or 1
    serial, k processes, or a map object); it never changes the numbers. ``threshold``: relative error closing the
    validity windows. ``use_cache``: reuse/store simulations and theories in ``out/cache`` (:class:`ResultCache`).
    ``gonly_opts``, ``sigma_opts``: keyword options of the two theory solvers.

    Returns the typed :class:`~kerneleft.reproduce.analysis.Results` (``results.json`` is its ``to_dict()``).
    A failing stage writes ``failed`` (stage, error) into results.json and report.md and re-raises. Ctrl-C/SIGTERM
    (docs/numerics.md#interrupts): the batches finished so far stay cached (a batch cut short is dropped),
    ``results.json`` (``interrupted: true``, networks simulated per width) and a short ``report.md`` are written, and
    :class:`~kerneleft.errors.Interrupted` is raised; a rerun finishes the rest and gives the numbers of an
    uninterrupted run.
    """
    t_start = time.perf_counter()
    net, source = resolve_network(config)
    plan = _plan(quick, sizes)
    seed = DEFAULT_SEED if seed is None else check_int("seed", seed, 0)
    pool = as_map(pool)
    check_positive("threshold", threshold)
    opts = {"g-only": dict(gonly_opts or {}), "sigma": dict(sigma_opts or {})}
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    cache = ResultCache(out / "cache", enabled=use_cache)
    log = _Stages(9, progress)
    log.say(f"config: {source}; {net.phi.name}, P = {net.P}, depth L = {net.depth}, T = {net.T:g}; "
            f"widths {list(plan.widths)}, samples {list(plan.samples)}, pool {describe(pool)}; output {out}")
    mode = "quick" if quick else "full"
    record = {"format": _FORMAT, "mode": mode, "config": net.to_dict(), "config_source": source, "seed": seed,
              "pool": describe(pool), "method": METHOD, "plan": asdict(plan)}
    done = {"batches": {n: 0 for n in plan.widths}, "samples": {n: 0 for n in plan.widths}}
    one, skipped = _one_input(net, plan)
    done_next = None if one is None else {"batches": {n: 0 for n in plan.next_widths},
                                          "samples": {n: 0 for n in plan.next_widths}}
    try:
        theory = _theories(net, cache, log, opts)
        with log("ensembles (exact conditional sampler)"):
            batches, ensembles, n_cached = {}, {}, 0
            for n, N in zip(plan.widths, plan.samples):
                batches[n], hit = _simulate_width(net, n, N, _ensemble.batch_seeds(seed, plan.batches, width=n), pool,
                                                  cache, log, progress, done)
                ensembles[n] = combine_batches(batches[n])
                n_cached += hit
        with log("width extrapolation"):
            k1x = extrapolate_K1(ensembles.values())
        with log("diagnostics"):
            diags = {n: _diagnose(net, batches[n], seed, threshold, cache) for n in plan.widths}
        which = "the network" if net.P == 1 else "its first input alone"
        with log(f"next order (one input: {which})" if one is not None else f"next order (skipped: {skipped})"):
            nxt, next_cached = (None, 0) if one is None else _next_order(net, one, plan, seed, pool, opts, cache, log,
                                                                         progress, done_next)
        with log("analysis"):
            analysis = analyse(net, plan, theory, ensembles, k1x, diags, threshold, nxt, skipped)
        with log("figures"):
            names = tuple(figures.make_figures(analysis, out / "figures"))
    except (KeyboardInterrupt, Interrupted):
        raise _interrupted(out, log.current, record, plan, done, done_next, cache) from None
    except Exception as err:
        msg = f"reproduce: stage '{log.current}' failed: {type(err).__name__}: {err}"
        _stopped(out, {**record, "failed": {"stage": log.current, "error": f"{type(err).__name__}: {err}"},
                       "message": msg, "cache": _cache_record(out, cache)}, "failed", f"{msg}\n\nNo findings: the "
                 f"run stopped at this stage; the stages before it are cached in {out / 'cache'}.")
        raise
    timings = dict(log.timings, total=time.perf_counter() - t_start,
                   simulation_wall_s={n: e.meta["wall_s"] for n, e in ensembles.items()})
    run = Run(mode, dict(sizes or {}), net.to_dict(), source, seed, describe(pool), threshold, METHOD, opts,
              _versions(), {n: [b.meta["seed"] for b in batches[n]] for n in plan.widths},
              {**_cache_record(out, cache), "simulations_run": sum(len(b) for b in batches.values()) - n_cached
               + (0 if nxt is None else len(plan.next_widths) * plan.batches - next_cached)},
              names, timings)
    results = Results(analysis, run)
    write_json(results.to_dict(), out / "results.json")
    (out / "report.md").write_text(render_report(results))
    log.say(f"wrote {out / 'report.md'}, {out / 'results.json'}, {len(names)} figures in {timings['total']:.1f} s")
    return results
