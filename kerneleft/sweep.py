"""Parameter sweeps: a grid of ensembles (docs/estimators.md#ensembles) and theory solves, cached, on any cluster.

A sweep file (TOML) has a ``[base]`` config (docs/reference.md#cli fields, or ``base = "config.toml"``), ``[axes]``
(lists to take the Cartesian product of: any config field and the ensemble settings ``width``, ``method``,
``samples``, ``seed``, ``chunk_size``), an optional ``[ensemble]`` table (fixed ensemble settings) and an
optional ``[theory]`` table (``closures``, ``depth_model``, per-closure options). Each grid point is an
ensemble *cell*; each distinct config × closure × depth model is a theory *cell*. See README.md,
"Sweeps and clusters".

Architectures (docs/architectures.md#branches) sweep like any field: ``branch`` (a list of branches, each a list of
layer tables) and ``architecture`` can be axes. A point's ``branch`` replaces the base's ``C_W``/``C_b`` (they
describe the default branch only) and ``architecture = "mlp"`` drops the base's ``T`` (an MLP has none). An MLP has
only the discrete depth model (docs/architectures.md#mlp): its theory cells are discrete whatever ``depth_model``
lists.

Every cell is identified by a hash of what determines its numbers (config, method, width, samples, seed, chunk
size, or closure, depth model and options, plus the kerneleft version). A finished cell is written atomically to
``OUT/cells/<id>.json`` (the ``simulate``/``theory`` JSON contract plus a ``sweep`` provenance object holding the
key and a sha256 checksum of the rest) and is never recomputed while it verifies; an entry that does not (truncated,
corrupt, another cell's) is recomputed after a one-line warning (docs/numerics.md#caches). Ctrl-C/SIGTERM stops
the sweep, keeps the finished cells, writes the table and ``summary.json`` marked ``interrupted`` and raises
:class:`~kerneleft.errors.Interrupted` (docs/numerics.md#interrupts). Ensembles run through
:func:`kerneleft.ensemble.simulate` with the sweep's ``pool`` — the very same chunks and reduce as a local run, so
the numbers are bit-identical; on a :class:`~.distributed.DaskMap` several cells run at once (one client thread
each); theory solves run as one task each. At the end all cells are gathered into one
tidy Parquet table ``OUT/results.parquet`` (:data:`COLUMNS`).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from .reproduce.cache import atomic_write, reject
from .branch import branch_to_dicts
from .config import Network, network_from_dict, read_toml
from .distributed import local_cluster, require
from .ensemble import check_ensemble_size, default_chunk_size, get_method, simulate
from .maps import ProcessMap, as_map, describe
from .estimators import MIN_COV_SAMPLES
from .result import KernelResult, write_json
from .kernel import check_depth_model
from .theory import CLOSURES, make_options, solve
from .validate import MAX_SEED, check_int
from .errors import InputError, Interrupted

__all__ = ["Cell", "Sweep", "SweepSummary", "parse_sweep", "load_sweep", "run_sweep", "cell_columns", "COLUMNS"]

ENSEMBLE_SETTINGS = ("method", "width", "samples", "seed", "chunk_size")
_ENSEMBLE_DEFAULTS = {"method": "conditional", "chunk_size": None}
# Chunks grouped into one task (never changes the numbers): a chunk holds ~2^16 sample·neuron·input floats per
# layer (ensemble._CHUNK_RULES), so ceil(_TASK_LAYERS / depth) chunks make a task of roughly 0.1 s, well above
# Dask's per-task overhead (a few ms of client and worker time).
_TASK_LAYERS = 64
TABLE = "results.parquet"
SUMMARY = "summary.json"

#: Columns of ``results.parquet`` (one row per cell × layer × quantity × matrix/tensor entry).
COLUMNS = {
    "cell": "cell id (hash of everything that determines its numbers); cells/<cell>.json holds its JSON",
    "kind": "'ensemble' (exact simulation) or 'theory'",
    "method": "ensemble sampler (null for theory)",
    "closure": "theory closure 'g-only' or 'sigma' (null for ensembles)",
    "depth_model": "theory depth model (null for ensembles: they are the depth-L network)",
    "options": "theory solver options as JSON ('{}' for ensembles)",
    "width": "network width n (null for theory)",
    "samples": "networks in the ensemble (null for theory)",
    "seed": "root seed (null for theory)",
    "chunk_size": "samples per seeded chunk (null for theory)",
    "activation": "config: activation", "architecture": "config: 'resnet' or 'mlp'",
    "branch": "config: the branch as JSON (list of layer tables; the default branch written out)",
    "C_W": "config: C_W (of the branch's last dense layer)", "C_b": "config: C_b (of the branch's last dense layer)",
    "T": "config: T (null for an MLP)",
    "depth": "config: number of blocks L", "P": "number of inputs", "K_in": "config: input kernel as JSON",
    "kerneleft_version": "kerneleft version that computed the cell",
    "numpy_version": "numpy version that computed the cell",
    "l": "layer 0..L", "t": "depth-time l*T/L",
    "quantity": "array name of the simulate/theory contract (K0, V4, K1, G_mean, ...)",
    "a": "first index (null for per-layer scalars)", "b": "second index", "c": "third index (4-index only)",
    "d": "fourth index (4-index only)",
    "value": "the entry", "se": "its Monte Carlo standard error (null for theory and K0)",
}


def _one_line_error(loc: str, err: Exception) -> Exception:
    """Re-raise a kerneleft ``field: message`` error located in the sweep file, e.g. ``axes.C_W: ...``."""
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    return type(err)(f"{loc}.{msg}" if not msg.startswith(f"{loc}.") else msg)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _check_finite(loc: str, value) -> None:
    """InputError naming ``loc`` if ``value`` holds a float nan or inf (TOML allows them; a cell key cannot)."""
    try:
        _canonical(value)
    except ValueError:
        raise InputError(f"{loc}: must not contain nan or inf, got {value!r}") from None


@dataclass(frozen=True, eq=False)
class Cell:
    """One unit of a sweep: an ensemble (``params``: method, width, samples, seed, chunk_size resolved) or a
    theory solve (``params``: closure, depth_model, options). ``point``: its axis values, for display."""

    kind: str
    net: Network
    params: dict
    point: dict
    chunks_per_task: int = 1     # ensemble chunks per Dask task; not part of the key (the numbers do not change)

    @cached_property
    def key(self) -> dict:
        """Everything that determines the cell's numbers."""
        from ._version import __version__

        return {"kind": self.kind, "config": self.net.to_dict(), **self.params, "kerneleft": __version__}

    @cached_property
    def id(self) -> str:
        return hashlib.sha256(_canonical(self.key).encode()).hexdigest()[:16]

    @property
    def tasks(self) -> int:
        """Tasks the cell submits: its chunks in groups of ``chunks_per_task`` (ensemble) or 1 (theory)."""
        if self.kind == "theory":
            return 1
        chunks = _ceil_div(self.params["samples"], self.params["chunk_size"])
        return _ceil_div(chunks, self.chunks_per_task)


@dataclass(frozen=True, eq=False)
class Sweep:
    """A parsed sweep file: ``base`` config mapping, ``axes`` (name -> list), ``ensemble`` settings (or None),
    ``theory`` settings (or None), and the resulting ``cells`` (ensembles first in grid order, then theories)."""

    base: dict
    axes: dict
    ensemble: dict | None
    theory: dict | None
    cells: tuple[Cell, ...] = field(repr=False)

    def spec(self) -> dict:
        """The sweep as a JSON-able mapping (provenance of the table)."""
        return {"base": self.base, "axes": self.axes, "ensemble": self.ensemble, "theory": self.theory}


def _as_list(loc: str, v) -> list:
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list) or not v:
        raise InputError(f"{loc}: must be a non-empty list, got {v!r}")
    return v


def _parse_axes(axes) -> dict:
    if not isinstance(axes, dict):
        raise InputError("axes: must be a table of name = [values, ...]")
    out = {}
    for name, values in axes.items():
        if not isinstance(values, list) or not values:
            raise InputError(f"axes.{name}: must be a non-empty list of values, got {values!r}")
        seen = set()
        for v in values:
            _check_finite(f"axes.{name}", v)
            c = _canonical(v)
            if c in seen:
                raise InputError(f"axes.{name}: duplicate value {v!r}")
            seen.add(c)
        out[name] = values
    return out


def _parse_theory(theory) -> dict:
    if not isinstance(theory, dict):
        raise InputError("theory: must be a table")
    unknown = sorted(set(theory) - {"closures", "depth_model", *CLOSURES})
    if unknown:
        raise InputError(f"theory.{unknown[0]}: unknown key (allowed: closures, depth_model, {', '.join(CLOSURES)})")
    if "closures" not in theory:
        raise InputError("theory.closures: required field is missing (e.g. closures = [\"g-only\"])")
    closures = _as_list("theory.closures", theory["closures"])
    for c in closures:
        if c not in CLOSURES:
            raise InputError(f"theory.closures: must be among {', '.join(CLOSURES)}, got {c!r}")
    models = _as_list("theory.depth_model", theory.get("depth_model", "continuous"))
    for m in models:
        check_depth_model("theory.depth_model", m)
    options = {}
    for c in closures:
        opts = theory.get(c, {})
        if not isinstance(opts, dict):
            raise InputError(f"theory.{c}: must be a table of solver options")
        for name, v in opts.items():
            _check_finite(f"theory.{c}.{name}", v)
        try:
            make_options(c, **opts)
        except InputError as err:
            raise _theory_option_error(c, err) from None
        options[c] = opts
    return {"closures": list(dict.fromkeys(closures)), "depth_model": list(dict.fromkeys(models)),
            "options": options}


def _theory_option_error(closure: str, err: InputError) -> InputError:
    """An options error of ``closure`` located in the sweep file: ``tol: ...`` -> ``theory.sigma.tol: ...``,
    ``sigma option 'x': unknown ...`` -> ``theory.sigma.x: unknown ...``."""
    msg = str(err).splitlines()[0]
    head, _, rest = msg.partition(": ")
    name = head.split("'")[1] if head.startswith(f"{closure} option '") else head
    return InputError(f"theory.{closure}.{name}: {rest}")


def parse_sweep(spec: dict, base_dir: str | Path = ".") -> Sweep:
    """Validate a sweep mapping (the parsed TOML) and expand it into cells; ``base_dir`` resolves ``base = "file"``.

    Raises ValueError/TypeError with one line naming the field (``axes.width: ...``).
    """
    if not isinstance(spec, dict):
        raise InputError("sweep: must be a mapping")
    unknown = sorted(set(spec) - {"base", "axes", "ensemble", "theory"})
    if unknown:
        raise InputError(f"{unknown[0]}: unknown sweep table (allowed: base, axes, ensemble, theory)")
    base = spec.get("base")
    if isinstance(base, str):
        base = read_toml("base", Path(base_dir) / base)
    if not isinstance(base, dict):
        raise InputError("base: required table (the config fields of docs/reference.md#cli) or a config file name")
    axes = _parse_axes(spec.get("axes", {}))
    ens, theory = spec.get("ensemble"), spec.get("theory")
    if ens is None and theory is None:
        raise InputError("ensemble: a sweep needs an [ensemble] table, a [theory] table, or both")
    if ens is not None:
        if not isinstance(ens, dict):
            raise InputError("ensemble: must be a table")
        for k in ens:
            if k not in (*ENSEMBLE_SETTINGS, "chunks_per_task"):
                raise InputError(f"ensemble.{k}: unknown setting (allowed: {', '.join(ENSEMBLE_SETTINGS)}, "
                                 f"chunks_per_task)")
        if "chunks_per_task" in ens:
            check_int("ensemble.chunks_per_task", ens["chunks_per_task"], 1)
        ens = {**_ENSEMBLE_DEFAULTS, **ens}
        for k in ENSEMBLE_SETTINGS:
            if k not in ens and k not in axes:
                raise InputError(f"ensemble.{k}: required (give it in [ensemble] or as a list in [axes])")
    else:
        for k in ENSEMBLE_SETTINGS:
            if k in axes:
                raise InputError(f"axes.{k}: ensemble setting, but the sweep has no [ensemble] table")
    theory = None if theory is None else _parse_theory(theory)
    cells = _expand(base, axes, ens, theory)
    return Sweep(base, axes, ens, theory, tuple(cells))


def _point_config(base: dict, point: dict) -> dict:
    """The config of a grid point: ``base`` updated by ``point``, without the base fields the point makes
    inapplicable (``C_W``, ``C_b`` under a point's ``branch``; ``T`` under a point's ``architecture = "mlp"``)."""
    drop = set()
    if "branch" in point:
        drop |= {"C_W", "C_b"}
    if point.get("architecture") == "mlp":
        drop.add("T")
    return {**{k: v for k, v in base.items() if k not in drop}, **point}


def _network(base: dict, axes: dict, point: dict) -> Network:
    try:
        return network_from_dict(_point_config(base, point))
    except InputError as err:
        field_name = str(err).split(":", 1)[0]
        loc = "axes" if field_name in axes else "base"
        raise _one_line_error(loc, err) from None


def _ensemble_params(ens: dict, axes: dict, point: dict, net: Network) -> dict:
    p = {k: point.get(k, ens.get(k)) for k in ENSEMBLE_SETTINGS}
    loc = {k: "axes" if k in point else "ensemble" for k in ENSEMBLE_SETTINGS}
    if not isinstance(p["method"], str):
        raise InputError(f"{loc['method']}.method: must be a method name, got {p['method']!r}")
    try:
        get_method(p["method"])
    except InputError as err:
        raise _one_line_error(loc["method"], err) from None
    for k, minimum, maximum in (("width", 1, None), ("samples", MIN_COV_SAMPLES, None), ("seed", 0, MAX_SEED)):
        check_int(f"{loc[k]}.{k}", p[k], minimum, maximum=maximum)
    explicit = p["chunk_size"]
    if explicit is not None:
        check_int(f"{loc['chunk_size']}.chunk_size", explicit, 1)
    check_ensemble_size(net, p["method"], p["width"], p["samples"], explicit,
                        name=lambda a: f"{loc.get(a, 'ensemble')}.{a}")
    if explicit is None:
        p["chunk_size"] = default_chunk_size(p["method"], net, p["width"])
    return p


def _expand(base: dict, axes: dict, ens: dict | None, theory: dict | None) -> list[Cell]:
    config_axes = {k: v for k, v in axes.items() if k not in ENSEMBLE_SETTINGS}
    cells: dict[str, Cell] = {}
    nets: dict[str, tuple[Network, dict]] = {}
    for values in itertools.product(*config_axes.values()):
        point = dict(zip(config_axes, values))
        net = _network(base, axes, point)
        nets.setdefault(_canonical(net.to_dict()), (net, point))
        if ens is None:
            continue
        ens_axes = {k: v for k, v in axes.items() if k in ENSEMBLE_SETTINGS}
        for ens_values in itertools.product(*ens_axes.values()):
            full = {**point, **dict(zip(ens_axes, ens_values))}
            group = ens.get("chunks_per_task", _ceil_div(_TASK_LAYERS, net.depth))
            cell = Cell("ensemble", net, _ensemble_params(ens, axes, full, net), full, group)
            cells.setdefault(cell.id, cell)
    if theory is not None:
        for net, point in nets.values():
            models = theory["depth_model"] if net.residual else ["discrete"]
            for closure, model in itertools.product(theory["closures"], models):
                opts = theory["options"][closure]
                params = {"closure": closure, "depth_model": model, "options": opts}
                cell = Cell("theory", net, params, {**point, "closure": closure, "depth_model": model})
                cells.setdefault(cell.id, cell)
    return list(cells.values())


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep TOML file."""
    return parse_sweep(read_toml("sweep", path), Path(path).parent)


# --- running ---------------------------------------------------------------------------------------------------
def _solve_theory(task: tuple) -> KernelResult:
    """Worker entry point of a theory cell: ``task = (config dict, closure, depth_model, options)``."""
    config, closure, depth_model, options = task
    return solve(network_from_dict(config), closure=closure, depth_model=depth_model, **options)


def _run_cell(cell: Cell, map_: Callable) -> KernelResult:
    """Compute one cell with the map ``map_``; same numbers for any map. An ensemble cut short by Ctrl-C raises
    :class:`Interrupted` (a partial cell is never stored)."""
    if cell.kind == "theory":
        p = cell.params
        (res,) = map_(_solve_theory, [(cell.net.to_dict(), p["closure"], p["depth_model"], p["options"])])
        return res
    p = cell.params
    res = simulate(cell.net, p["width"], p["samples"], p["seed"], p["method"], pool=map_, chunk_size=p["chunk_size"],
                   progress=False, chunks_per_task=cell.chunks_per_task)
    if res.meta["interrupted"]:
        raise Interrupted(f"cell {cell.id} cut short at {res.meta['samples']} of {p['samples']} networks")
    return res


def _cell_path(out: Path, cell: Cell) -> Path:
    return out / "cells" / f"{cell.id}.json"


def _checksum(d: dict) -> str:
    """sha256 of a stored cell's canonical JSON without its ``sweep.checksum``."""
    body = {**d, "sweep": {k: v for k, v in d["sweep"].items() if k != "checksum"}}
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


def _load_cached(out: Path, cell: Cell) -> dict | None:
    """The cell's stored JSON if it exists, is intact (checksum) and belongs to exactly this cell, else None; an
    existing entry that fails a check is reported by a one-line CacheWarning (it will be recomputed)."""
    path = _cell_path(out, cell)
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text())
        meta = d["sweep"]
        intact = meta["checksum"] == _checksum(d)
        ours = _canonical(meta["key"]) == _canonical(cell.key)
    except (OSError, ValueError, KeyError, TypeError) as err:
        reject(path, f"unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'empty'})")
        return None
    if not intact:
        reject(path, "checksum mismatch (corrupt or edited)")
    elif not ours:
        reject(path, "belongs to another cell (copied or stale entry)")
    else:
        return d
    return None


def _store(out: Path, cell: Cell, res: KernelResult) -> dict:
    """Write the cell's JSON (with key and checksum) atomically and return the stored dict."""
    res.meta["sweep"] = {"cell": cell.id, "kind": cell.kind, "key": cell.key, "point": cell.point,
                         "arrays": list(res.arrays), "numpy_version": np.__version__}
    d = res.to_dict()
    d["sweep"]["checksum"] = _checksum(d)
    text = json.dumps(d).encode()                 # d is already plain JSON data (write_json would convert again)
    atomic_write(_cell_path(out, cell), lambda fh: fh.write(text))
    return d


@contextmanager
def _pool_map(pool):
    """The map of the sweep's ``pool``: an int k >= 2 is a loopback Dask cluster of k worker processes (so that
    several cells run at once), closed on exit; anything else as :func:`kerneleft.maps.as_map`."""
    m = as_map(pool)
    if isinstance(m, ProcessMap) and not callable(pool):
        with local_cluster(m.workers, "pool") as dmap:
            yield dmap
    else:
        yield m


def _concurrent(m: Callable) -> bool:
    """Whether ``m`` takes concurrent calls from several threads (a DaskMap: ``worker_threads`` and ``abort``)."""
    return hasattr(m, "worker_threads") and hasattr(m, "abort")


@dataclass
class SweepSummary:
    """Outcome of :func:`run_sweep`: cell ids ``computed`` now and ``cached`` (found finished), the table path;
    ``interrupted``: stopped by Ctrl-C/SIGTERM (the cells in neither list are pending)."""

    cells: list[Cell]
    computed: list[str]
    cached: list[str]
    table: Path
    rows: int
    wall_s: float
    scheduler: str | None          # address of the Dask scheduler that computed cells (None: no Dask)
    interrupted: bool = False

    def to_dict(self) -> dict:
        status = {**{i: "computed" for i in self.computed}, **{i: "cached" for i in self.cached}}
        return {"cells": [{"id": c.id, "kind": c.kind, "point": c.point, "json": f"cells/{c.id}.json",
                           "status": status.get(c.id, "pending")} for c in self.cells],
                "n_cells": len(self.cells), "n_computed": len(self.computed), "n_cached": len(self.cached),
                "table": self.table.name, "rows": self.rows, "wall_s": self.wall_s, "scheduler": self.scheduler,
                "interrupted": self.interrupted}


def run_sweep(sweep: Sweep | str | Path, out: str | Path, *, pool=None, progress: bool = True) -> SweepSummary:
    """Compute every unfinished cell of ``sweep`` into ``out`` and write ``out/results.parquet``.

    ``pool``: None or 1 runs the cells one after the other in this process; an int k >= 2 starts a loopback Dask
    LocalCluster of k single-threaded worker processes; a :class:`~kerneleft.distributed.DaskMap` (e.g. on a
    cluster's scheduler) runs several cells at once; any other map (:func:`kerneleft.maps.as_map`) runs one cell
    at a time with it. The numbers do not depend on this choice. Finished cells (``out/cells/<id>.json``) are read
    back, never recomputed, if they verify.
    Ctrl-C/SIGTERM: the table and summary of the finished cells are written (``interrupted: true``, the other
    cells ``pending``), then :class:`~kerneleft.errors.Interrupted` is raised with the summary as ``result``.
    """
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep)
    as_map(pool)                                  # refuse a bad pool before any work
    require("pyarrow.parquet", "out")
    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stored = {c.id: _load_cached(out, c) for c in sweep.cells}
    cached = [i for i, d in stored.items() if d is not None]
    todo = [c for c in sweep.cells if stored[c.id] is None]
    computed = []
    address = None
    bar = tqdm(total=sum(c.tasks for c in todo), unit="task", desc="sweep", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    lock = threading.Lock()
    interrupted = False

    def counted(inner: Callable) -> Callable:
        """``inner`` that ticks the sweep's progress bar per task."""
        def map_(fn, tasks):
            for r in inner(fn, tasks):
                with lock:
                    bar.update(1)
                yield r
        map_.__name__ = describe(inner)           # what the cells' meta records as their pool
        return map_

    def finish(cell: Cell, res: KernelResult) -> None:
        stored[cell.id] = _store(out, cell, res)
        computed.append(cell.id)
        bar.set_postfix_str(f"cells {len(cached) + len(computed)}/{len(sweep.cells)} ({len(cached)} cached)")

    try:
        bar.set_postfix_str(f"cells {len(cached)}/{len(sweep.cells)} ({len(cached)} cached)")
        with _pool_map(pool) if todo else nullcontext() as m:
            address = getattr(m, "address", None)
            if m is not None and _concurrent(m):
                _run_threads(todo, counted(m), max(2, 2 * m.worker_threads), finish, m.abort)
            else:
                for cell in todo:
                    finish(cell, _run_cell(cell, counted(m)))
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
    finally:
        bar.close()
    rows = _write_table(out / TABLE, sweep, [stored[c.id] for c in sweep.cells if stored[c.id] is not None])
    summary = SweepSummary(list(sweep.cells), computed, cached, out / TABLE, rows, time.perf_counter() - start,
                           address, interrupted)
    write_json({**summary.to_dict(), "sweep": sweep.spec()}, out / SUMMARY)
    if interrupted:
        raise Interrupted(f"sweep: interrupted with {len(cached) + len(computed)} of {len(sweep.cells)} cells "
                          f"finished; {out / TABLE} and {out / SUMMARY} hold them (interrupted: true); rerun the "
                          f"same command to finish", result=summary)
    return summary


def _run_threads(todo: list[Cell], map_: Callable, concurrency: int, finish: Callable,
                 abort: Callable[[], None]) -> None:
    """Run cells concurrently, one client thread each (all share the DaskMap's in-flight budget); on an error or
    Ctrl-C, ``abort()`` (:meth:`DaskMap.abort`) makes the other threads give up at once."""
    cells = iter(todo)
    n = min(concurrency, len(todo))
    with ThreadPoolExecutor(n, thread_name_prefix="kerneleft-sweep") as pool:
        running = {}
        try:
            for cell in itertools.islice(cells, n):
                running[pool.submit(_run_cell, cell, map_)] = cell
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    finish(running.pop(f), f.result())
                    nxt = next(cells, None)
                    if nxt is not None:
                        running[pool.submit(_run_cell, nxt, map_)] = nxt
        finally:
            abort()
            for f in running:
                f.cancel()


# --- the table -------------------------------------------------------------------------------------------------
def cell_columns(d: dict) -> dict[str, np.ndarray | list]:
    """Long-format columns of one stored cell (a ``simulate``/``theory`` JSON dict with its ``sweep`` object).

    One row per layer × quantity × entry for every array of shape (L+1,) + (P,)*r, r <= 4; index columns
    a..d are -1 where unused (turned into nulls in the table); ``se`` is NaN where there is none.
    """
    t = np.asarray(d["t"], dtype=float)
    P = len(d["config"]["K_in"])
    cols: dict[str, list] = {k: [] for k in ("l", "t", "quantity", "idx", "value", "se")}
    for q in d["sweep"]["arrays"]:
        v = np.array(d[q], dtype=float)
        r = v.ndim - 1
        if v.shape[0] != len(t) or r > 4 or any(s != P for s in v.shape[1:]):
            continue
        m = P ** r
        se = np.array(d[f"{q}_se"], dtype=float) if f"{q}_se" in d else np.full(v.shape, np.nan)
        idx = np.full((len(t), m, 4), -1, dtype=np.int32)
        idx[:, :, :r] = np.indices((P,) * r).reshape(r, m).T
        cols["l"].append(np.repeat(np.arange(len(t), dtype=np.int32), m))
        cols["t"].append(np.repeat(t, m))
        cols["quantity"].append(np.full(len(t) * m, q, dtype=object))
        cols["idx"].append(idx.reshape(-1, 4))
        cols["value"].append(v.reshape(-1))
        cols["se"].append(se.reshape(-1))
    out = {k: np.concatenate(v) for k, v in cols.items()}
    idx = out.pop("idx")
    out.update({name: idx[:, i] for i, name in enumerate("abcd")})
    return out


def _write_table(path: Path, sweep: Sweep, stored: list[dict]) -> int:
    from ._version import __version__

    pa, pq = require("pyarrow", "out"), require("pyarrow.parquet", "out")

    schema = pa.schema([
        ("cell", pa.string()), ("kind", pa.string()), ("method", pa.string()), ("closure", pa.string()),
        ("depth_model", pa.string()), ("options", pa.string()), ("width", pa.int64()), ("samples", pa.int64()),
        ("seed", pa.int64()), ("chunk_size", pa.int64()), ("activation", pa.string()),
        ("architecture", pa.string()), ("branch", pa.string()), ("C_W", pa.float64()),
        ("C_b", pa.float64()), ("T", pa.float64()), ("depth", pa.int64()), ("P", pa.int64()),
        ("K_in", pa.string()), ("kerneleft_version", pa.string()), ("numpy_version", pa.string()),
        ("l", pa.int32()), ("t", pa.float64()), ("quantity", pa.string()), ("a", pa.int32()), ("b", pa.int32()),
        ("c", pa.int32()), ("d", pa.int32()), ("value", pa.float64()), ("se", pa.float64()),
    ], metadata={"kerneleft.sweep": _canonical({"kerneleft_version": __version__, "sweep": sweep.spec(),
                                                "columns": COLUMNS})})
    tables = []
    for d in stored:
        cols = cell_columns(d)
        n = len(cols["value"])
        key, cfg = d["sweep"]["key"], d["config"]
        net = network_from_dict(cfg)
        const = {"cell": d["sweep"]["cell"], "kind": key["kind"], "method": key.get("method"),
                 "closure": key.get("closure"), "depth_model": key.get("depth_model"),
                 "options": _canonical(key.get("options", {})), "width": key.get("width"),
                 "samples": key.get("samples"), "seed": key.get("seed"), "chunk_size": key.get("chunk_size"),
                 "activation": cfg["activation"], "architecture": net.architecture,
                 "branch": _canonical(branch_to_dicts(net.branch)), "C_W": net.C_W, "C_b": net.C_b,
                 "T": net.T if net.residual else None,
                 "depth": cfg["depth"], "P": len(cfg["K_in"]), "K_in": _canonical(cfg["K_in"]),
                 "kerneleft_version": key["kerneleft"], "numpy_version": d["sweep"]["numpy_version"]}
        arrays = [pa.repeat(pa.scalar(const[f.name], f.type), n) for f in schema if f.name in const]
        arrays += [pa.array(cols["l"]), pa.array(cols["t"]), pa.array(cols["quantity"], pa.string())]
        arrays += [pa.array(cols[k], mask=cols[k] < 0) for k in "abcd"]
        arrays += [pa.array(cols["value"]), pa.array(cols["se"], mask=np.isnan(cols["se"]))]
        tables.append(pa.Table.from_arrays(arrays, schema=schema))
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    atomic_write(path, lambda fh: pq.write_table(table, fh))
    return table.num_rows
