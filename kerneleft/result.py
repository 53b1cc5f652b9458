"""One result type for theories (docs/gonly.md, docs/sigma.md) and samplers (docs/estimators.md) on one depth grid.

Like QuTiP's ``Result`` behind ``mesolve``/``mcsolve``: a theory fills the arrays deterministically and leaves
``se`` empty; a sampler fills them with Monte Carlo estimates and their standard errors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["KernelResult", "to_jsonable", "write_json", "first_nonfinite", "require_finite", "overflow_error",
           "MAX_KERNEL"]

MAX_KERNEL = 1e150
"""Largest kernel entry kept: beyond it, products of entries (V4 = n Cov[G] ~ G²) overflow float64."""


@dataclass
class KernelResult:
    """Depth-resolved kernel statistics on the grid ``t[l] = l·T/L``, l = 0..L.

    Attributes
    ----------
    t : (L+1,)
    arrays : name -> array whose first axis is l. Standard names: ``K0`` (L+1,P,P); ``V4`` (L+1,P,P,P,P) with
        ``V4[l,a,b,c,d] = n Cov[G_ab, G_cd]``; ``K1`` (L+1,P,P); samplers add ``G_mean``, ``Sigma_mean``, ...
    se : name -> standard error array of the same shape (Monte Carlo results only).
    meta : provenance (kind, method/closure, width, samples, seed, config, timings, ...).
    """

    t: np.ndarray
    arrays: dict[str, np.ndarray]
    se: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    @property
    def K0(self) -> np.ndarray:
        return self.arrays["K0"]

    @property
    def V4(self) -> np.ndarray:
        return self.arrays["V4"]

    @property
    def K1(self) -> np.ndarray:
        return self.arrays["K1"]

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON object of the docs/reference.md#cli contract: ``t``, each array, ``<name>_se``, then meta keys."""
        out: dict[str, Any] = {"t": self.t}
        out.update(self.arrays)
        out.update({f"{k}_se": v for k, v in self.se.items()})
        for k, v in self.meta.items():
            out.setdefault(k, v)
        return to_jsonable(out)


def first_nonfinite(a: np.ndarray) -> tuple[int, ...] | None:
    """Index of the first NaN/±inf entry of a float array (C order; index[0] is the layer l), or None."""
    a = np.asarray(a)
    if a.dtype.kind not in "fc" or np.isfinite(a).all():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmin(np.isfinite(a))), a.shape))


def overflow_error(t: float, what: str = "the kernel K0") -> InputError:
    """The InputError for a kernel that leaves float64 by depth t (docs/numerics.md#overflow)."""
    return InputError(f"T: {what} overflows float64 by t = {t:.3g}; reduce T, C_W or the scale of K_in")


def require_finite(res: KernelResult, what: str = "the kernel") -> KernelResult:
    """``res`` if every array is finite; else InputError ``T: <what> (<array>) overflows float64 by t = ...``
    (``K_in: ...`` when already at t = 0).

    Non-finite values that come with ±inf or with entries beyond 1e150 are float64 overflow of a kernel that grows
    like e^{C_W t} (docs/numerics.md#overflow): the config (T, C_W, the scale of K_in) is the cause. Anything else
    (a NaN among moderate numbers) is a bug: RuntimeError.
    """
    arrays = {**res.arrays, **{f"{k}_se": v for k, v in res.se.items()}}
    for name, arr in arrays.items():
        idx = first_nonfinite(arr)
        if idx is None:
            continue
        t = float(res.t[idx[0]]) if np.ndim(arr) >= 1 and len(res.t) == np.shape(arr)[0] else float(res.t[-1])
        huge = max(float(np.max(np.abs(a), where=np.isfinite(a), initial=0.0)) for a in arrays.values())
        if not (np.isinf(arr).any() or huge > MAX_KERNEL):
            raise RuntimeError(f"{name}: non-finite entry at t = {t:.3g} while every finite entry is below "
                               f"{huge:.3g} (not an overflow)")
        if t == 0:
            raise InputError(f"K_in: {what} ({name}) overflows float64 already at t = 0; rescale K_in")
        raise overflow_error(t, f"{what} ({name})")
    return res


def to_jsonable(obj: Any, _path: str = "") -> Any:
    """Convert numpy arrays/scalars (recursively) to plain lists/floats.

    A NaN or ±inf is never written (JSON has no such number and ``null`` would hide it): ValueError naming the key
    and the index of the first non-finite entry. Computations raise their own error earlier (an InputError for an
    overflowing config, :func:`require_finite`), so reaching this is a bug.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, f"{_path}.{k}" if _path else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, f"{_path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        idx = first_nonfinite(obj)
        if idx is not None:
            raise ValueError(f"{_path or 'value'}: non-finite entry {obj[idx]} at index {list(idx)} (layer {idx[0]})"
                             if idx else f"{_path or 'value'}: non-finite value {obj[()]}; refusing to write it")
        if obj.dtype.kind in "iubf":
            return obj.tolist()                 # plain ints/floats/bools
        return to_jsonable(obj.tolist(), _path)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        if not np.isfinite(f):
            raise ValueError(f"{_path or 'value'}: non-finite value {f}; refusing to write it")
        return f
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` (a KernelResult or a mapping) as one JSON object."""
    data = obj.to_dict() if isinstance(obj, KernelResult) else to_jsonable(obj)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data))
