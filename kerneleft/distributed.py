"""Run ensemble chunks and sweep cells on a Dask cluster (``dask.distributed``), reproducibly.

:class:`DaskMap` is a ``map(fn, tasks)`` for :func:`kerneleft.ensemble.simulate` (and :mod:`kerneleft.sweep`):
it submits ``fn(task)`` to a :class:`dask.distributed.Client`, keeps a bounded number of tasks in flight and
yields the results **in task order**. The ensemble seeds chunk i by ``SeedSequence(seed, spawn_key=(i,))``
and folds the results in chunk order, so a run on any cluster is bit-identical to the serial run
(docs/estimators.md#ensembles).

Fault tolerance is Dask's: tasks are pure (their output is a function of their arguments only), so the
scheduler reruns the tasks of a worker that dies on another worker and the numbers do not change. A task that
has killed ``distributed.scheduler.allowed-failures`` workers ends in ``KilledWorker``; :class:`DaskMap` then
resubmits it up to ``retries`` more times before giving up.

Bit-identity also needs the same kerneleft (version and source) and numpy on every worker (numpy's random
streams are not promised stable across versions): every task checks this on the worker and fails with a
one-line ValueError otherwise.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import os
import threading
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .validate import check_int
from .errors import InputError, Interrupted

__all__ = ["DaskMap", "local_cluster", "environment", "require"]

_DEFAULT_MIN_IN_FLIGHT = 8
_END = object()


@functools.cache
def environment() -> dict[str, str]:
    """What must agree between the client and every worker for bit-identical numbers: the kerneleft and numpy
    versions and a hash of kerneleft's source files (catches edited or stale copies of the same version)."""
    from ._version import __version__

    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {"kerneleft": __version__, "numpy": np.__version__, "source": digest.hexdigest()[:12]}


environment()   # fingerprint the source now, close to when this process imported it


def _call_checked(fn: Callable, expected: dict[str, str], task):
    """Worker side of :class:`DaskMap`: ``fn(task)`` after checking the worker's versions against the client's."""
    found = environment()
    if found != expected:
        from distributed import get_worker

        raise InputError(f"scheduler: worker {get_worker().address} has {_fmt(found)} but the client has "
                         f"{_fmt(expected)}; bit-identical results need the same versions everywhere")
    return fn(task)


def _fmt(env: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in env.items())


def require(module: str, field: str):
    """Import an optional dependency (extra ``kerneleft[cluster]``) or fail with one line naming ``field``."""
    try:
        return import_module(module)
    except ImportError:
        raise InputError(f"{field}: needs the optional dependency {module.split('.')[0]} "
                         f"(pip install 'kerneleft[cluster]')") from None


def _connect(scheduler, timeout):
    """(client, owned): a Client for an address, a scheduler file (``*.json``) or an existing Client."""
    Client = require("distributed", "scheduler").Client
    if isinstance(scheduler, Client):
        return scheduler, False
    if not isinstance(scheduler, (str, os.PathLike)) or not str(scheduler).strip():
        raise InputError(f"scheduler: must be an address string or a dask.distributed.Client, "
                        f"got {type(scheduler).__name__}")
    target = str(scheduler).strip()
    kwargs = {"set_as_default": False}
    if timeout is not None:
        kwargs["timeout"] = timeout
    is_file = target.endswith(".json") and "://" not in target
    if is_file and not os.path.isfile(target):
        raise InputError(f"scheduler: scheduler file {target!r} does not exist")
    try:
        return (Client(scheduler_file=target, **kwargs) if is_file else Client(target, **kwargs)), True
    except (OSError, ValueError) as err:   # TimeoutError is an OSError
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"scheduler: cannot connect to {target!r}: {msg}") from None


class DaskMap:
    """``map(fn, tasks)`` on a Dask cluster: results in task order, bounded work in flight, retries.

    Parameters
    ----------
    scheduler : ``dask.distributed.Client`` (used as is, left open), scheduler address (``"tcp://host:8786"``)
        or path of a scheduler file written by ``dask scheduler --scheduler-file`` (a Client is created here
        and closed by :meth:`close` / the ``with`` block).
    max_in_flight : tasks submitted but not finished, shared by all concurrent calls of this map (threads may
        call it at once, as :mod:`kerneleft.sweep` does). Default ``max(2 · worker threads, 8)`` at start.
    max_ahead : per call, tasks submitted but not yet yielded (bounds the results buffered behind a slow
        task). Default ``4 · max_in_flight``.
    min_workers : wait until this many workers have joined before submitting (e.g. on a batch queue).
    retries : resubmissions of a task that ended in ``KilledWorker``.
    timeout : connection timeout (a Dask duration such as ``"10s"``); default Dask's.

    Attributes
    ----------
    slots : the ``threading.BoundedSemaphore`` of the ``max_in_flight`` task slots (all free between calls).

    Tasks must be picklable and pure: ``fn(task)`` may run more than once and on any worker. :meth:`abort`
    stops every call of the map (from any thread) at once (docs/numerics.md#interrupts).
    """

    def __init__(self, scheduler, *, max_in_flight: int | None = None, max_ahead: int | None = None,
                 min_workers: int | None = None, retries: int = 3, timeout=None):
        for name, v in (("max_in_flight", max_in_flight), ("max_ahead", max_ahead), ("min_workers", min_workers)):
            if v is not None:
                check_int(name, v, 1)
        check_int("retries", retries, 0)
        self.client, self._owned = _connect(scheduler, timeout)
        try:
            if min_workers is not None:
                self.client.wait_for_workers(min_workers)
            threads = sum(self.client.nthreads().values())
        except BaseException:
            self.close()
            raise
        self.max_in_flight = max_in_flight or max(2 * threads, _DEFAULT_MIN_IN_FLIGHT)
        self.max_ahead = max_ahead or 4 * self.max_in_flight
        self.retries = retries
        self.slots = threading.BoundedSemaphore(self.max_in_flight)
        self._env = environment()
        self._aborted = threading.Event()
        self._wakes: set[threading.Event] = set()
        self._wakes_lock = threading.Lock()

    @property
    def address(self) -> str:
        """The scheduler's address."""
        return self.client.scheduler.address

    def __repr__(self) -> str:
        return f"dask({self.address})"

    @property
    def worker_threads(self) -> int:
        """Worker threads currently in the cluster."""
        return sum(self.client.nthreads().values())

    def abort(self) -> None:
        """Make every running and later call raise :class:`~kerneleft.errors.Interrupted` promptly (their
        unfinished futures are cancelled); used when a sweep is interrupted or fails."""
        self._aborted.set()
        with self._wakes_lock:
            for wake in self._wakes:
                wake.set()

    def close(self) -> None:
        """Close the Client if this map created it."""
        if self._owned:
            self.client.close()
            self._owned = False

    def __enter__(self) -> "DaskMap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _submit(self, fn: Callable, task):
        from dask.base import tokenize

        key = f"{getattr(fn, '__name__', 'task')}-{tokenize(fn, task, self._env)}"
        return self.client.submit(_call_checked, fn, self._env, task, key=key, pure=True)

    def _results(self, futures: list) -> list:
        """Results of finished futures, fetched in one round trip; a KilledWorker task is resubmitted."""
        from distributed import KilledWorker

        if not futures:
            return []
        try:
            return self.client.gather(futures)
        except KilledWorker:
            pass
        out = []
        for future in futures:
            for attempt in range(self.retries + 1):
                try:
                    out.append(future.result())
                    break
                except KilledWorker:
                    if attempt == self.retries:
                        raise
                    future.retry()
        return out

    def __call__(self, fn: Callable, tasks: Iterable) -> Iterator:
        """Yield ``fn(task)`` for each task, in task order."""
        tasks = iter(tasks)
        wake = threading.Event()            # set by every future of this call when it finishes
        pending: dict[int, object] = {}     # task index -> Future, submitted and not yet yielded
        running: set[int] = set()           # indices whose future holds a slot (not seen finished)
        submitted = yielded = 0
        exhausted = False
        with self._wakes_lock:
            self._wakes.add(wake)
        try:
            while True:
                if self._aborted.is_set():
                    raise Interrupted("scheduler: the run was aborted")
                wake.clear()
                for i in [i for i in running if pending[i].done()]:
                    running.discard(i)
                    self.slots.release()
                ready = list(itertools.takewhile(lambda i: i in pending and i not in running,
                                                 itertools.count(yielded)))
                for result in self._results([pending.pop(i) for i in ready]):
                    yielded += 1
                    yield result
                # Submit while slots are free; block for a slot only when this call has nothing running
                # (then every slot is held by another call's running task, which frees it when done).
                while not exhausted and submitted - yielded < self.max_ahead and \
                        self.slots.acquire(blocking=not running):
                    task = next(tasks, _END)
                    if task is _END:
                        exhausted = True
                        self.slots.release()
                        break
                    pending[submitted] = self._submit(fn, task)
                    pending[submitted].add_done_callback(lambda _: wake.set())
                    running.add(submitted)
                    submitted += 1
                if not pending:
                    if exhausted:
                        return
                    continue
                if yielded in running:
                    wake.wait()
        finally:
            with self._wakes_lock:
                self._wakes.discard(wake)
            for _ in running:
                self.slots.release()
            if pending:
                self.client.cancel(list(pending.values()))


@contextmanager
def local_cluster(workers: int, field: str = "workers") -> Iterator[DaskMap]:
    """A :class:`DaskMap` on a loopback ``LocalCluster`` of ``workers`` single-threaded worker processes, closed on
    exit (``field`` names the argument in the one-line error if ``distributed`` is missing)."""
    LocalCluster = require("distributed", field).LocalCluster
    import dask

    # Dask's default MALLOC_TRIM_THRESHOLD_ for workers slows the samplers' large temporaries by ~12%.
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address=None) as cluster, DaskMap(cluster.scheduler_address) as dmap:
        yield dmap
