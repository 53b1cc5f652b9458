"""Command-line interface (INTERFACE.md): thin click wrappers over the Python API.

Every command that computes writes one JSON object with ``--json PATH`` and prints a short summary.
Bad input -> exit code 2 and one line ``error: <field>: <what is wrong>`` on stderr, no traceback.
"""
from __future__ import annotations

import sys

import click
import numpy as np

from .config import load_config
from .result import write_json
from .validate import check_int, check_positive
from .errors import EXIT_CODES, InputError, Interrupted, KerneleftError

__all__ = ["main", "cli"]


def _degree(value: str):
    if value in ("auto", "quadratic"):
        return value
    try:
        return check_int("degree", int(value), 1)
    except ValueError:
        raise InputError(f"degree: must be 'auto', 'quadratic' or an integer >= 1, got {value!r}") from None


def _summary(res, names=("K0",)) -> str:
    lines = [f"depth grid: {len(res.t)} points, t in [0, {res.t[-1]:g}]"]
    for n in names:
        if n in res:
            a = np.asarray(res[n])
            lines.append(f"{n}[t=T] = {np.array2string(a[-1], precision=5, max_line_width=120)}")
    return "\n".join(lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kerneleft")
def cli():
    """kerneleft: collective kernel EFT for finite-width pre-activation ResNets."""


@cli.command()
@click.argument("config", type=str)
@click.option("--depth-model", type=click.Choice(["discrete", "continuous"]), default="discrete",
              show_default=True, help="discrete: the depth-L recursion; continuous: dK0/dt = S̄(K0).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), required=True, help="Output JSON file.")
def kernel(config, depth_model, json_out):
    """Infinite-width kernel K0 on the depth grid (THEORY §4)."""
    net = load_config(config)
    from .kernel import kernel as kernel_api

    res = kernel_api(net, depth_model=depth_model)
    write_json(res, json_out)
    click.echo(_summary(res))


@cli.command()
@click.argument("config", type=str)
@click.option("--closure", type=click.Choice(["g-only", "sigma"]), required=True,
              help="g-only: the paper's closure (§5); sigma: the sigma-kernel theory (§6).")
@click.option("--depth-model", type=click.Choice(["continuous", "discrete"]), default="continuous",
              show_default=True)
@click.option("--degree", type=str, default="auto", show_default=True,
              help="sigma only: 'auto' (plane-grid resummation, refined to --tol), an integer D (Hermite/Galerkin "
                   "truncation at total degree D) or 'quadratic'.")
@click.option("--tol", type=float, default=1e-3, show_default=True,
              help="sigma only: relative change of V4 and K1 at which 'auto' stops refining.")
@click.option("--rtol", type=float, default=1e-8, show_default=True, help="g-only only: ODE relative tolerance.")
@click.option("--atol", type=float, default=1e-10, show_default=True, help="g-only only: ODE absolute tolerance.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), required=True)
def theory(config, closure, depth_model, degree, tol, rtol, atol, json_out):
    """Leading-order theory: K0, V4 = n Cov[G], K1 with E[G] ≈ K0 + K1/n."""
    net = load_config(config)
    from .theory import solve

    if closure == "sigma":
        opts = {"degree": _degree(degree), "tol": check_positive("tol", tol)}
    else:
        opts = {"rtol": check_positive("rtol", rtol), "atol": check_positive("atol", atol)}
    res = solve(net, closure=closure, depth_model=depth_model, **opts)
    write_json(res, json_out)
    click.echo(_summary(res, ("K0", "K1")))


@cli.command()
@click.argument("config", type=str)
@click.option("--width", type=int, required=True, help="Network width n (>= 1).")
@click.option("--samples", type=int, required=True, help="Number of independent networks (>= 2).")
@click.option("--seed", type=int, required=True, help="Root seed (numpy SeedSequence).")
@click.option("--method", type=click.Choice(["conditional", "weights", "g-only-chain"]), default="conditional",
              show_default=True, help="Exact neuron-level sampler, explicit weights, or the G-only chain (§5).")
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
    """Exact finite-width ensemble statistics with standard errors (THEORY §2, §7)."""
    net = load_config(config)
    check_int("width", width, 1)
    check_int("samples", samples, 2)
    check_int("workers", workers, 1)
    from .ensemble import simulate as simulate_api

    res = simulate_api(net, width=width, samples=samples, seed=seed, method=method, workers=workers,
                       scheduler=scheduler, chunk_size=chunk_size, stop_se=stop_se, progress=progress)
    write_json(res, json_out)
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
@click.option("--method", type=click.Choice(["conditional", "weights", "g-only-chain"]), default="conditional",
              show_default=True, help="Sampler of the exact ensemble.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), required=True)
def diagnose(config, width, samples, seed, threshold, workers, batches, method, json_out):
    """THEORY §5 diagnostics: each G-only closed term against its exact counterpart."""
    net = load_config(config)
    check_int("width", width, 1)
    check_int("samples", samples, 2)
    check_int("workers", workers, 1)
    check_positive("threshold", threshold)
    check_int("batches", batches, 2)
    from .diagnostics import diagnose as diagnose_api

    res = diagnose_api(net, width=width, samples=samples, seed=seed, threshold=threshold, workers=workers,
                       batches=batches, method=method)
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
    check_int("workers", workers, 1)
    from .sweep import load_sweep, run_sweep

    summary = run_sweep(load_sweep(sweep_file), out, scheduler=scheduler, workers=workers)
    click.echo(f"sweep: {len(summary.cells)} cells, {len(summary.computed)} computed, "
               f"{len(summary.cached)} cached; {summary.rows} rows in {summary.table}")


@cli.command()
@click.option("--quick", is_flag=True, help="Small ensembles (< 2 min on 2 cores) instead of the full run.")
@click.option("--config", type=str, default=None,
              help="TOML config (default: the embedded tanh network with two inputs).")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Output directory: report.md, results.json, figures/, cache/.")
@click.option("--workers", type=int, default=2, show_default=True, help="Worker processes per ensemble.")
@click.option("--seed", type=int, default=None, help="Root seed of all ensembles (default: fixed).")
def reproduce(quick, config, out, workers, seed):
    """The main job: G-only and sigma theories against exact ensembles; writes report.md, results.json, figures."""
    check_int("workers", workers, 1)
    if seed is not None:
        check_int("seed", seed, 0)
    from .report import findings_text, reproduce as reproduce_api

    res = reproduce_api(out, quick=quick, config=config, workers=workers, seed=seed)
    click.echo("\n\n".join(findings_text(dict(res, config_P=len(res["config"]["K_in"])))))
    click.echo(f"\nreport: {out}/report.md  results: {out}/results.json  figures: {out}/figures/")


def main(argv=None) -> int:
    """Entry point: run the click group; map the package's own errors to exit codes (docs/reference.md#errors).

    InputError -> 2, ConvergenceError -> 3, interrupt -> 130, each as one ``error:`` line on stderr; anything
    else is a bug and propagates with its traceback (exit 1).
    """
    try:
        cli.main(args=argv, prog_name="kerneleft", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt, Interrupted) as err:
        detail = str(err).splitlines()[0] if isinstance(err, Interrupted) and str(err) else "interrupted"
        click.echo(f"error: {detail}", err=True)
        return EXIT_CODES[Interrupted]
    except click.ClickException as err:
        click.echo(f"error: {err.format_message()}".replace("\n", " "), err=True)
        return 2
    except KerneleftError as err:
        click.echo(f"error: {err}".splitlines()[0], err=True)
        return next(code for kind, code in EXIT_CODES.items() if isinstance(err, kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
