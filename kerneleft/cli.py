"""Command-line interface (docs/reference.md#cli): thin click wrappers over the Python API.

Every command that computes writes one JSON object with ``--json PATH`` and prints a short summary.
Bad input -> exit code 2 and one line ``error: <field>: <what is wrong>`` on stderr, no traceback.
Ctrl-C and SIGTERM -> the finished work is written marked ``interrupted``, exit code 130
(docs/numerics.md#interrupts).
"""
from __future__ import annotations

import signal
import sys
import threading
import warnings
from contextlib import contextmanager

import click
import numpy as np

from .config import load_config
from .ensemble import METHODS, check_ensemble_size
from .kernel import DEPTH_MODELS
from .theory import CLOSURES, ORDER2_TOL, ORDERS, finite_width, make_options, solve
from .theory.gonly import GOnlyOptions
from .theory.sigma import SigmaOptions
from .estimators import MIN_COV_SAMPLES
from .result import write_json
from .validate import (MAX_SEED, check_int, check_output_dir, check_output_file,
                       check_positive, check_workers)
from .errors import EXIT_CODES, InputError, Interrupted, KerneleftError

__all__ = ["main", "cli"]


def _degree(value: str):
    if value in ("auto", "quadratic"):
        return value
    try:
        degree = int(value)
    except ValueError:
        degree = None
    if degree is None or degree < 1:
        raise InputError(f"--degree: must be 'auto', 'quadratic' or an integer >= 1, got {value!r}")
    return degree


def _option(argument: str) -> str:
    """The option of an API argument: ``chunk_size`` -> ``--chunk-size``; ``pool`` (and ``workers``) ->
    ``--workers``."""
    return "--workers" if argument == "pool" else "--" + argument.replace("_", "-")


def _sweep_location(point: dict):
    """Name of an ensemble setting of a sweep cell: ``axes.width`` or ``ensemble.width``; ``--workers`` (an option)."""
    return lambda a: "--workers" if a == "workers" else f"{'axes' if a in point else 'ensemble'}.{a}"


@contextmanager
def _pool(scheduler: str | None, workers: int):
    """The ``pool`` of ``--scheduler``/``--workers`` (checked already): a DaskMap on the scheduler that waits for
    ``workers`` workers (closed on exit), else the number of local processes."""
    if scheduler is None:
        yield workers
        return
    from .distributed import DaskMap

    with _as_options("scheduler"), DaskMap(scheduler, min_workers=workers) as dmap:
        yield dmap


@contextmanager
def _as_options(*arguments: str):
    """Rename an InputError that the API raises for one of ``arguments`` (which came from options) to the
    option: ``tol: ...`` -> ``--tol: ...``. Every other exception passes unchanged."""
    try:
        yield
    except InputError as err:
        field, sep, rest = str(err).partition(":")
        if not sep or field not in arguments:
            raise
        raise InputError(f"{_option(field)}:{rest}") from None


def _span(v) -> str:
    """A truncation value for the summary: a run of consecutive degrees ``[1, ..., 38]`` as ``1..38``."""
    if isinstance(v, list):
        if not v:
            return "none"
        if len(v) > 2 and v == list(range(v[0], v[-1] + 1)):
            return f"{v[0]}..{v[-1]}"
    return str(v)


def _summary(res, names=("K0",)) -> str:
    lines = [f"depth grid: {len(res.t)} points, t in [0, {res.t[-1]:g}]"]
    for n in names:
        if n in res:
            a = np.asarray(res[n])
            lines.append(f"{n}[t=T] = {np.array2string(a[-1], precision=5, max_line_width=120)}")
    if res.meta.get("error_estimate") is not None:       # sigma: relative change of V4, K1 at the last refinement
        ref = ", ".join(f"{k} {_span(v)}" for k, v in res.meta.get("error_estimate_from", {}).items()) \
            or "the last refinement"
        lines.append(f"error estimate: {res.meta['error_estimate']:.2g} (relative change of V4, K1 from {ref})")
    if res.meta.get("closure") == "sigma" and "next_order" in res.meta:
        info = res.meta["next_order"]
        how = ("an exact recursion, rounding only" if info.get("representation") == "recursion" else
               "relative change of K2, V4_1 at the last refinement")
        lines.append(f"next order: error estimate {info['error_estimate']:.2g} ({how})")
    return "\n".join(lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kerneleft")
def cli():
    """kerneleft: collective kernel EFT for finite-width pre-activation ResNets."""


@cli.command()
@click.argument("config", type=str)
@click.option("--depth-model", type=click.Choice(list(DEPTH_MODELS)), default="discrete",
              show_default=True, help="discrete: the depth-L recursion; continuous: dK0/dt = S̄(K0).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), required=True, help="Output JSON file.")
def kernel(config, depth_model, json_out):
    """Infinite-width kernel K0 on the depth grid (docs/gonly.md#k0)."""
    net = load_config(config)
    check_output_file("--json", json_out)
    from .kernel import kernel as kernel_api

    with _as_options("depth_model"):
        res = kernel_api(net, depth_model=depth_model)
    write_json(res, json_out)
    click.echo(_summary(res))


#: theory flags -> the closure whose option they set (each flag is refused for the other closure); ``tol2`` is an
#: argument of ``solve`` (the next order's tolerance), the others fields of the closure's options
_THEORY_FLAGS = {"degree": "sigma", "tol": "sigma", "tol2": "sigma", "rtol": "g-only", "atol": "g-only"}


def _theory_options(closure: str, flags: dict) -> dict:
    """The values of the flags given explicitly (not None); InputError ``--tol: applies to --closure sigma only``
    for a flag of the other closure."""
    opts = {}
    for name, value in flags.items():
        if value is None:
            continue
        if _THEORY_FLAGS[name] != closure:
            raise InputError(f"{_option(name)}: applies to --closure {_THEORY_FLAGS[name]} only")
        opts[name] = _degree(value) if name == "degree" else value
    return opts


@cli.command()
@click.argument("config", type=str)
@click.option("--closure", type=click.Choice(list(CLOSURES)), required=True,
              help="g-only: the paper's closure (docs/gonly.md#coefficients); "
                   "sigma: the sigma-kernel theory (docs/sigma.md#equations).")
@click.option("--depth-model", type=click.Choice(list(DEPTH_MODELS)), default=None,
              help="continuous: the ODEs; discrete: the depth-L recursions [default: continuous; discrete for an MLP, "
                   "which has no continuous model].")
@click.option("--order", type=click.Choice([str(o) for o in ORDERS]), default="1", show_default=True,
              help="Order in 1/n: 1 (K1, V4) or 2 (adds K2 with E[G] = K0 + K1/n + K2/n² and V4_1 with "
                   "n Cov[G] = V4 + V4_1/n; one input of the default block).")
@click.option("--width", type=int, default=None,
              help="Also write the finite-width predictions G_mean_pred = K0 + K1/N (+ K2/N²) and "
                   "V4_pred = V4 (+ V4_1/N) at this width N (>= 1).")
@click.option("--degree", type=str, default=None,
              help="sigma only: 'auto' (plane-grid resummation, refined to --tol; the default), an integer D "
                   "(Hermite/Galerkin truncation at total degree D) or 'quadratic'.")
@click.option("--tol", type=float, default=None,
              help=f"sigma only: relative change of V4 and K1 at which 'auto' stops refining [default: "
                   f"{SigmaOptions.tol:g}].")
@click.option("--tol2", type=float, default=None,
              help=f"sigma with --order 2 only: relative change of K2 and V4_1 at which the next-order grids stop "
                   f"refining [default: {ORDER2_TOL:g}].")
@click.option("--rtol", type=float, default=None,
              help=f"g-only only: ODE relative tolerance [default: {GOnlyOptions.rtol:g}].")
@click.option("--atol", type=float, default=None,
              help=f"g-only only: ODE absolute tolerance [default: {GOnlyOptions.atol:g}].")
@click.option("--workers", type=int, default=1, show_default=True,
              help="sigma only: processes for the plane grids (independent sub-problems; same numbers).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), required=True)
def theory(config, closure, depth_model, order, width, degree, tol, tol2, rtol, atol, workers, json_out):
    """Finite-width theory: K0, V4 = n Cov[G], K1 with E[G] ≈ K0 + K1/n; with --order 2 also K2 and V4_1
    (docs/nextorder.md#scope); with --width N the predictions at width N (docs/nextorder.md#predictions)."""
    net = load_config(config)
    order = int(order)
    check_workers("--workers", workers)
    if workers != 1 and closure != "sigma":
        raise InputError("--workers: applies to --closure sigma only")
    if width is not None:
        check_int("--width", width, 1)
    with _as_options(*_THEORY_FLAGS):
        opts = _theory_options(closure, {"degree": degree, "tol": tol, "tol2": tol2, "rtol": rtol, "atol": atol})
        if "tol2" in opts and order != 2:
            raise InputError("--tol2: applies to --order 2 only")
        tol2 = opts.pop("tol2", ORDER2_TOL)
        options = make_options(closure, **opts)
    if depth_model is None:
        depth_model = "continuous" if net.residual else "discrete"
    check_output_file("--json", json_out)
    with _as_options("depth_model", "order", "tol2"):
        res = solve(net, closure=closure, depth_model=depth_model, options=options, pool=workers, order=order,
                    tol2=tol2)
    if width is not None:
        res = finite_width(res, width)
    write_json(res, json_out)
    click.echo(_summary(res, ("K0", "K1", "K2", "G_mean_pred")))


@cli.command()
@click.argument("config", type=str)
@click.option("--width", type=int, required=True, help="Network width n (>= 1).")
@click.option("--samples", type=int, required=True, help="Number of independent networks (>= 2).")
@click.option("--seed", type=int, required=True, help="Root seed (numpy SeedSequence).")
@click.option("--method", type=click.Choice(list(METHODS)), default="conditional",
              show_default=True,
              help="Exact neuron-level sampler, explicit weights, or the G-only chain (docs/gonly.md#chain).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Worker processes (with --scheduler: Dask workers to wait for).")
@click.option("--scheduler", type=str, default=None, metavar="ADDRESS",
              help="Run the seed chunks on this Dask scheduler (tcp://host:8786 or a scheduler file).")
@click.option("--chunk-size", type=int, default=None,
              help="Networks per seeded chunk (default: a rule of method, width and P; changing it changes the draws).")
@click.option("--stop-se", type=float, default=None,
              help="Stop after the first whole chunk at which the largest standard error of K1 is <= this.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), required=True)
def simulate(config, width, samples, seed, method, workers, scheduler, chunk_size, stop_se, progress, json_out):
    """Exact finite-width ensemble statistics with standard errors (docs/estimators.md#standard-errors)."""
    net = load_config(config)
    check_int("--width", width, 1)
    check_int("--samples", samples, MIN_COV_SAMPLES, " (standard errors of V4 need 3)")
    check_int("--seed", seed, 0, maximum=MAX_SEED)
    check_workers("--workers", workers, local=scheduler is None)
    if chunk_size is not None:
        check_int("--chunk-size", chunk_size, 1)
    if stop_se is not None:
        check_positive("--stop-se", stop_se)
    check_ensemble_size(net, method, width, samples, chunk_size, 1 if scheduler else workers, name=_option)
    check_output_file("--json", json_out)
    from .ensemble import simulate as simulate_api

    with _pool(scheduler, workers) as pool, \
            _as_options("width", "samples", "seed", "pool", "method", "chunk_size", "stop_se", "scheduler"):
        res = simulate_api(net, width=width, samples=samples, seed=seed, method=method, pool=pool,
                           chunk_size=chunk_size, stop_se=stop_se, progress=progress)
    write_json(res, json_out)
    if res.meta["interrupted"]:
        raise Interrupted(f"simulate: interrupted after {res.meta['samples']} of {samples} networks (whole "
                          f"chunks); they are in {json_out}, marked interrupted")
    click.echo(_summary(res, ("G_mean", "K1")))


@cli.command()
@click.argument("config", type=str)
@click.option("--width", type=int, required=True)
@click.option("--samples", type=int, required=True)
@click.option("--seed", type=int, required=True)
@click.option("--threshold", type=float, default=0.05, show_default=True,
              help="Relative error that closes the validity window.")
@click.option("--workers", type=int, default=1, show_default=True)
@click.option("--batches", type=int, default=16, show_default=True,
              help="Independent seeded batches (their spread gives the standard errors).")
@click.option("--method", type=click.Choice(list(METHODS)), default="conditional",
              show_default=True, help="Sampler of the exact ensemble.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), required=True)
def diagnose(config, width, samples, seed, threshold, workers, batches, method, json_out):
    """G-only closure diagnostics: each closed term against its exact counterpart (docs/failure.md#validity-window)."""
    net = load_config(config)
    check_int("--width", width, 1)
    check_int("--samples", samples, 2 * MIN_COV_SAMPLES, " (two batches of three)")
    check_int("--seed", seed, 0, maximum=MAX_SEED)
    check_positive("--threshold", threshold)
    check_workers("--workers", workers)
    check_int("--batches", batches, 2)
    B = min(batches, samples // MIN_COV_SAMPLES)
    check_ensemble_size(net, method, width, -(-samples // B), None, workers, batches=B, name=_option)
    check_output_file("--json", json_out)
    from .diagnostics import diagnose as diagnose_api

    try:
        with _as_options("width", "samples", "seed", "pool", "method", "threshold", "batches"):
            res = diagnose_api(net, width=width, samples=samples, seed=seed, threshold=threshold, pool=workers,
                               batches=batches, method=method)
    except Interrupted as err:
        if err.result is None:
            raise
        write_json(err.result, json_out)
        raise Interrupted(f"{err}; written to {json_out}, marked interrupted") from None
    write_json(res, json_out)
    click.echo(_summary(res, ()))
    for k, v in res.meta.get("validity_window", {}).items():
        click.echo(f"validity window ({k}): {'beyond T' if v is None else f't = {v:g}'}")


@cli.command()
@click.argument("sweep_file", metavar="SWEEP.toml", type=str)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output directory.")
@click.option("--scheduler", type=str, default=None, metavar="ADDRESS",
              help="Dask scheduler (tcp://host:8786 or a scheduler file); default: this machine.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Local worker processes (with --scheduler: Dask workers to wait for).")
def sweep(sweep_file, out, scheduler, workers):
    """Grid of ensembles and theory solves -> OUT/results.parquet + OUT/cells/*.json (cached)."""
    check_workers("--workers", workers, local=scheduler is None)
    from .sweep import SUMMARY, TABLE, load_sweep, run_sweep

    spec = load_sweep(sweep_file)
    for cell in (c for c in spec.cells if c.kind == "ensemble"):
        p = cell.params
        chunk = p["chunk_size"] if "chunk_size" in cell.point or spec.ensemble.get("chunk_size") else None
        check_ensemble_size(cell.net, p["method"], p["width"], p["samples"], chunk, 1 if scheduler else workers,
                            name=_sweep_location(cell.point))
    check_output_dir("--out", out, files=(TABLE, SUMMARY), dirs=("cells",))
    with _pool(scheduler, workers) as pool, _as_options("pool", "scheduler"):
        summary = run_sweep(spec, out, pool=pool)
    click.echo(f"sweep: {len(summary.cells)} cells, {len(summary.computed)} computed, "
               f"{len(summary.cached)} cached; {summary.rows} rows in {summary.table}")


@cli.command()
@click.option("--quick", is_flag=True,
              help="Small ensembles (about 3.5 min on 2 cores; the full run about 16 min) instead of the full run.")
@click.option("--config", type=str, default=None,
              help="TOML config (default: the embedded tanh network with two inputs).")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Output directory: report.md, results.json, figures/, cache/.")
@click.option("--workers", type=int, default=2, show_default=True, help="Worker processes per ensemble.")
@click.option("--seed", type=int, default=None, help="Root seed of all ensembles (default: fixed).")
def reproduce(quick, config, out, workers, seed):
    """The main job: G-only and sigma theories against exact ensembles; writes report.md, results.json, figures."""
    check_workers("--workers", workers)
    if seed is not None:
        check_int("--seed", seed, 0, maximum=MAX_SEED)
    if config is not None:
        with _as_options("config"):
            load_config(config)
    check_output_dir("--out", out, files=("report.md", "results.json"), dirs=("figures", "cache"))
    from .reproduce import findings_text, reproduce as reproduce_api

    with _as_options("config", "seed"):
        res = reproduce_api(out, quick=quick, config=config, pool=workers, seed=seed)
    click.echo("\n\n".join(findings_text(res.analysis)))
    click.echo(f"\nreport: {out}/report.md  results: {out}/results.json  figures: {out}/figures/")


_ARGUMENTS = {"sweep_file": "sweep"}


def _click_message(err: click.ClickException) -> str:
    """A click usage error as ``<option>: <what>``: ``--width: 'x' is not a valid integer.``"""
    if isinstance(err, click.NoSuchOption):
        hint = f" (did you mean {', '.join(err.possibilities)}?)" if err.possibilities else ""
        return f"{err.option_name}: no such option{hint}"
    param = getattr(err, "param", None)
    if param is None:
        where = err.ctx.command_path if getattr(err, "ctx", None) is not None else "kerneleft"
        return f"{where}: {err.format_message()}"
    option = isinstance(param, click.Option)
    name = max(param.opts, key=len) if option else _ARGUMENTS.get(param.name, param.name)
    if isinstance(err, click.MissingParameter):
        return f"{name}: required {'option' if option else 'argument'} is missing"
    return f"{name}: {err.message}"


def _sigterm(signum, frame):
    """SIGTERM takes the Ctrl-C path: finished work is kept and written marked ``interrupted``."""
    raise KeyboardInterrupt


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as one ``warning:`` line (e.g. a cache entry that is recomputed)."""
    return f"warning: {str(message).splitlines()[0]}\n"


def main(argv=None) -> int:
    """Entry point: run the click group; map the package's own errors to exit codes (docs/reference.md#errors).

    InputError -> 2, ConvergenceError -> 3, interrupt (Ctrl-C or SIGTERM) -> 130, each as one ``error:`` line on
    stderr; anything else is a bug and propagates with its traceback (exit 1). Warnings print as one line.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _sigterm) if main_thread else None
    formatwarning, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        return _run(argv)
    finally:
        warnings.formatwarning = formatwarning
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(argv) -> int:
    try:
        cli.main(args=argv, prog_name="kerneleft", standalone_mode=False)
    except click.exceptions.Abort as err:
        if not isinstance(err.__cause__, KeyboardInterrupt):     # click wraps EOFError in Abort too: a bug
            raise err.__cause__ or err
        click.echo("error: interrupted", err=True)
        return EXIT_CODES[Interrupted]
    except (KeyboardInterrupt, Interrupted) as err:
        detail = str(err).splitlines()[0] if isinstance(err, Interrupted) and str(err) else "interrupted"
        click.echo(f"error: {detail}", err=True)
        return EXIT_CODES[Interrupted]
    except click.ClickException as err:
        click.echo(f"error: {_click_message(err)}".replace("\n", " "), err=True)
        return 2
    except KerneleftError as err:
        click.echo(f"error: {err}".splitlines()[0], err=True)
        return next(code for kind, code in EXIT_CODES.items() if isinstance(err, kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
