"""One-line argument checks shared by the API: each raises ValueError naming the field (INTERFACE.md "Errors")."""
from __future__ import annotations

import numpy as np
from .errors import InputError

__all__ = ["check_int", "check_positive"]


def check_int(name: str, value, minimum: int, note: str = "") -> int:
    """``value`` as an int if it is an integer (not a bool) >= ``minimum``; else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name}: must be an integer >= {minimum}{note}, got {value!r}")
    return int(value)


def check_positive(name: str, value) -> float:
    """``value`` as a float if it is a finite real number > 0; else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not (np.isfinite(value) and value > 0):
        raise InputError(f"{name}: must be a finite number > 0, got {value!r}")
    return float(value)
