"""Maps that run ``fn(task)`` for each task and yield the results in task order: the one parallelism argument
``pool`` of :func:`kerneleft.ensemble.simulate`, :func:`kerneleft.diagnostics.diagnose` and
:func:`kerneleft.sweep.run_sweep`.

A map is any callable ``m(fn, tasks) -> iterator of fn(task), in order``: :class:`SerialMap` (this process),
:class:`ProcessMap` (local worker processes) or :class:`kerneleft.distributed.DaskMap` (a Dask cluster).
:func:`as_map` turns the ``pool`` argument into one. The numbers never depend on the map: tasks are seeded by their
index, not by where they run (docs/numerics.md#interrupts for Ctrl-C).

Worker processes never outlive the process that started them, and share the CPUs rather than each starting a
BLAS thread per core (:func:`_worker_init`).
"""
from __future__ import annotations

import ctypes
import numbers
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing import connection as _mp_connection
from typing import Callable

from threadpoolctl import threadpool_limits

from .errors import InputError
from .validate import check_workers

__all__ = ["SerialMap", "ProcessMap", "as_map", "describe", "local_workers", "set_pdeathsig"]


class SerialMap:
    """``map(fn, tasks)`` in this process, lazily, in order."""

    def __call__(self, fn: Callable, tasks):
        return map(fn, tasks)

    def __repr__(self) -> str:
        return "serial"


_PR_SET_PDEATHSIG = 1          # linux/prctl.h
_WATCH_PARENT_S = 0.5
# fork on Linux (fast; the worker's parent is this process), spawn elsewhere
_MP = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def set_pdeathsig() -> bool:
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


def blas_threads(workers: int) -> int:
    """BLAS/OpenMP threads per worker when ``workers`` processes share this process's CPUs: at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // workers)


def _worker_init(parent: int, threads: int | None) -> None:
    """Worker start-up: ignore SIGINT (a terminal's Ctrl-C goes to the whole process group; the parent decides
    when to stop and kills its workers); die with the parent ``parent`` — PR_SET_PDEATHSIG(SIGKILL), else a
    watchdog thread polling os.getppid(); a spawned worker limits its BLAS threads to ``threads`` (a forked one
    inherits the limit, :meth:`ProcessMap._start`: no library calls in a child forked from a threaded parent)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads is not None:
        threadpool_limits(threads)
    if not set_pdeathsig():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="kerneleft-watch-parent").start()
    if os.getppid() != parent:     # the parent died before the worker was armed
        os._exit(1)


def _worker_main(conn, parent: int, threads: int | None) -> None:
    """A :class:`ProcessMap` worker (``threads``: :func:`_worker_init`): for each ``(fn, task)``
    received on ``conn`` send back ``(True, fn(task))`` or ``(False, (exception, traceback text))``; ``None`` or a
    closed pipe ends it."""
    _worker_init(parent, threads)
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
    (:func:`_worker_init`), each with its share of the CPUs as BLAS threads; a worker ended by SIGTERM (sent to the
    whole process group, as batch systems do) counts as Ctrl-C. On Ctrl-C the finished results at the head of the order are still yielded before
    KeyboardInterrupt propagates; on any early exit (Ctrl-C, an error, the consumer closing the iterator) the
    workers are killed at once, not waited for.
    """

    def __init__(self, workers: int):
        self.workers = check_workers("workers", workers)

    def __repr__(self) -> str:
        return f"processes({self.workers})"

    def _start(self, workers: list) -> None:
        """Start the worker processes, appending ``(process, connection)`` to ``workers``. Each runs its BLAS with
        :func:`blas_threads` threads, so that concurrent workers do not oversubscribe the cores (as Dask's nanny
        does for its workers): a forked worker inherits the limit set here around the fork, a spawned one sets it
        itself (threadpoolctl)."""
        threads = blas_threads(self.workers)
        with threadpool_limits(threads):
            for _ in range(self.workers):
                ours, theirs = _MP.Pipe()
                proc = _MP.Process(target=_worker_main, daemon=True, name="kerneleft-worker",
                                   args=(theirs, os.getpid(), threads if _MP.get_start_method() == "spawn" else None))
                proc.start()
                theirs.close()
                workers.append((proc, ours))

    def __call__(self, fn, tasks):
        tasks = enumerate(tasks)
        workers, finished = [], False
        try:
            self._start(workers)
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



def as_map(pool) -> Callable:
    """The map of a ``pool`` argument: None or 1 -> :class:`SerialMap`; an int k >= 2 -> ``ProcessMap(k)`` (at most
    :data:`~kerneleft.validate.WORKERS_PER_CPU` per CPU); a callable map object -> itself; else InputError."""
    if pool is None:
        return SerialMap()
    if callable(pool):
        return pool
    if isinstance(pool, bool) or not isinstance(pool, numbers.Integral):
        raise InputError(f"pool: must be None, a number of processes >= 1 or a map object m(fn, tasks), "
                         f"got {type(pool).__name__}")
    workers = check_workers("pool", pool)
    return SerialMap() if workers == 1 else ProcessMap(workers)


def describe(m: Callable) -> str:
    """How a map runs its tasks, for result meta: ``serial``, ``processes(2)``, ``dask(tcp://...)``, or the name
    of another callable."""
    if isinstance(m, (SerialMap, ProcessMap)) or hasattr(m, "address"):
        return repr(m)
    return getattr(m, "__name__", type(m).__name__)


def local_workers(m: Callable) -> int:
    """Processes on this machine that each hold one task's buffers at once: k for ``ProcessMap(k)``, else 1."""
    return m.workers if isinstance(m, ProcessMap) else 1
