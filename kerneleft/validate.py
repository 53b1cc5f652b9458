"""One-line checks of arguments and output paths, shared by the API and the CLI (docs/reference.md#errors).

Each raises :class:`~kerneleft.errors.InputError` with a message that starts with the field or option it was
given (``width: ...`` from the API, ``--width: ...`` from the CLI). Types are strict: a bool or a string is never
a number, an integer argument takes only integers. The output-path checks run before any computation, so a bad
``--json``/``--out`` costs nothing; they create missing parent directories and probe that a file can be written.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["check_int", "check_positive", "check_workers", "check_output_file",
           "check_output_dir", "MAX_SEED", "WORKERS_PER_CPU"]

MAX_SEED = 2 ** 63 - 1
"""Largest root seed: seeds are stored as int64 (Parquet, npz caches)."""
WORKERS_PER_CPU = 8
"""A local process pool may have at most this many workers per CPU (a pool forks all its workers at once)."""


def _show(value) -> str:
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."


def check_int(name: str, value, minimum: int, note: str = "", maximum: int | None = None) -> int:
    """``value`` as an int if it is an integer (not a bool) in [``minimum``, ``maximum``]; else InputError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum \
            or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise InputError(f"{name}: must be an integer {bound}{note}, got {_show(value)}")
    return int(value)


def check_positive(name: str, value) -> float:
    """``value`` as a float if it is a finite real number > 0 (not a bool); else InputError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not (_finite(value) and value > 0):
        raise InputError(f"{name}: must be a finite number > 0, got {_show(value)}")
    return float(value)


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:                        # an int beyond float64
        return False


def check_workers(name: str, value, local: bool = True) -> int:
    """``value`` as an int >= 1; for a ``local`` process pool at most :data:`WORKERS_PER_CPU` per CPU (more is a
    typo, and would fork that many processes at once). Dask workers (``local=False``) are not bounded."""
    workers = check_int(name, value, 1)
    cpus = os.cpu_count() or 1
    if local and workers > WORKERS_PER_CPU * cpus:
        raise InputError(f"{name}: {workers} local worker processes on {cpus} CPUs (limit {WORKERS_PER_CPU * cpus}); "
                         f"use fewer, or a Dask scheduler for a cluster")
    return workers


def _make_dir(name: str, d: Path) -> None:
    """``mkdir -p d``; InputError naming ``name`` if d (or a parent) is a file or cannot be created."""
    try:
        d.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{name}: {str(d)!r} exists and is not a directory") from None
    except NotADirectoryError:
        raise InputError(f"{name}: a parent of {str(d)!r} is a file, not a directory") from None
    except OSError as err:
        raise InputError(f"{name}: cannot create directory {str(d)!r}: {err.strerror or err}") from None


def _probe(name: str, d: Path) -> None:
    """InputError naming ``name`` unless a file can be created (and is removed again) in the directory ``d``."""
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".kerneleft-write-test-")
    except OSError as err:
        raise InputError(f"{name}: cannot write in {str(d)!r}: {err.strerror or err}") from None
    os.close(fd)
    os.unlink(tmp)


def _writable_file(name: str, p: Path) -> None:
    if p.is_dir():
        raise InputError(f"{name}: {str(p)!r} is a directory; give a file path")
    if p.exists() and not os.access(p, os.W_OK):
        raise InputError(f"{name}: {str(p)!r} exists and is not writable")


def check_output_file(name: str, path) -> Path:
    """Check before computing that ``path`` can be written: not a directory, parents created, directory writable.

    Returns the path; InputError naming ``name`` (e.g. ``--json``) otherwise.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(f"{name}: must be a file path, got {_show(path)}")
    p = Path(path)
    _writable_file(name, p)
    _make_dir(name, p.parent)
    _probe(name, p.parent)
    return p


def check_output_dir(name: str, path, files: tuple[str, ...] = (), dirs: tuple[str, ...] = ()) -> Path:
    """Check before computing that the output directory ``path`` exists or can be created and is writable, and
    that its entries ``files`` are not directories and ``dirs`` are not files. Returns the path."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(f"{name}: must be a directory path, got {_show(path)}")
    p = Path(path)
    _make_dir(name, p)
    for f in files:
        _writable_file(name, p / f)
    for d in dirs:
        if (p / d).exists() and not (p / d).is_dir():
            raise InputError(f"{name}: {str(p / d)!r} exists and is not a directory")
    _probe(name, p)
    return p
