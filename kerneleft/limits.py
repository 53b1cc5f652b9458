"""Work limits (docs/numerics.md#ill-conditioned): refuse what would not finish, show an ETA for what is slow.

- :func:`check_tolerance`: a tolerance outside what float64 and the solver can reach is refused (InputError
  naming the option and the allowed range).
- :func:`check_result`: refuse up front a result with more than :data:`MAX_RESULT_NUMBERS` numbers (its JSON
  would be gigabytes).
- :func:`check_bytes`: refuse up front (InputError naming the option) a computation whose arrays would exceed
  :data:`MAX_BYTES`; the size is exact, known before any work.
- :class:`Budget`: a loop of known length reports its progress; from the first :data:`SAMPLE_SECONDS` of work the
  total time is extrapolated. Above :data:`MAX_SECONDS` the loop is refused (InputError naming the option, with the
  estimate); above :data:`NOTICE_SECONDS` a progress bar with ETA is shown on stderr.

The limits are module constants so that a caller (or a test) can change them.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from .errors import InputError

__all__ = ["MAX_SECONDS", "MAX_BYTES", "MAX_RESULT_NUMBERS", "NOTICE_SECONDS", "SAMPLE_SECONDS", "check_bytes",
           "check_result", "check_tolerance", "Budget", "duration"]

MAX_SECONDS = 3600.0         # refuse loops extrapolated to take longer than this
NOTICE_SECONDS = 30.0        # show a progress bar with ETA for loops extrapolated to take longer than this
SAMPLE_SECONDS = 1.0         # measure at least this long before extrapolating
MAX_BYTES = 4 * 2 ** 30      # refuse computations whose arrays exceed this (float64 bytes)
MAX_RESULT_NUMBERS = 5e7     # refuse results with more numbers than this (~0.4 GB in memory, ~1 GB as JSON)


def duration(seconds: float) -> str:
    """A human duration: '0.2 s', '42 s', '7.3 min', '2.1 h', '3.4e+03 h'."""
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.3g} h"


def check_bytes(option: str, nbytes: float, what: str) -> None:
    """InputError ``<option>: <what> would need X GiB (limit Y GiB)`` if ``nbytes`` > :data:`MAX_BYTES`."""
    if nbytes > MAX_BYTES:
        raise InputError(f"{option}: {what} would need {nbytes / 2 ** 30:.3g} GiB of memory (limit "
                         f"{MAX_BYTES / 2 ** 30:.3g} GiB); reduce {option}")


def check_result(option: str, numbers: float, what: str) -> None:
    """InputError naming ``option`` if a result would hold more than :data:`MAX_RESULT_NUMBERS` numbers."""
    if numbers > MAX_RESULT_NUMBERS:
        raise InputError(f"{option}: {what} would hold {numbers:.3g} numbers (~{numbers * 22 / 1e9:.2g} GB as JSON; "
                         f"limit {MAX_RESULT_NUMBERS:.3g}); reduce {option}")


class Budget:
    """Progress of a loop of ``total`` steps: ``step(done)`` extrapolates and refuses or shows an ETA.

    ``option`` is the field or option whose value makes the loop long (named in the refusal), ``what`` the work.
    Use as a context manager (closes the progress bar).
    """

    def __init__(self, option: str, total: int, what: str):
        self.option, self.total, self.what = option, max(int(total), 1), what
        self.t0 = time.perf_counter()
        self.bar = None

    def step(self, done: int) -> None:
        """Record that ``done`` of ``total`` steps are finished."""
        elapsed = time.perf_counter() - self.t0
        if done <= 0 or (elapsed < SAMPLE_SECONDS and self.bar is None):
            return
        estimate = elapsed * self.total / done
        if estimate > MAX_SECONDS:
            self.close()
            raise InputError(f"{self.option}: {self.what} would take ~{duration(estimate)} ({done} of {self.total} "
                             f"steps in {duration(elapsed)}; limit {duration(MAX_SECONDS)}); reduce {self.option}")
        if self.bar is None and estimate > NOTICE_SECONDS:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, initial=done, desc=self.what, file=sys.stderr, dynamic_ncols=True)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Budget":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_tolerance(name: str, value, lo: float, hi: float) -> float:
    """``value`` as a float if it is a real number in [lo, hi]; else InputError naming ``name`` and the range.

    ``lo`` is what the representation can reach in float64 (a smaller tolerance would run to its budget and fail).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not lo <= value <= hi:
        raise InputError(f"{name}: must be a number in [{lo:g}, {hi:g}] (float64 and the solver cannot reach less "
                         f"than {lo:g}), got {value!r}")
    return float(value)
