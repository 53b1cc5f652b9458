"""One result type for theories (§4–§6) and samplers (§7) over the same depth grid.

Like QuTiP's ``Result`` behind ``mesolve``/``mcsolve``: a theory fills the arrays deterministically and leaves
``se`` empty; a sampler fills them with Monte Carlo estimates and their standard errors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["KernelResult", "to_jsonable", "write_json"]


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
        """Flat JSON object of the INTERFACE.md contract: ``t``, each array, ``<name>_se``, then meta keys."""
        out: dict[str, Any] = {"t": self.t}
        out.update(self.arrays)
        out.update({f"{k}_se": v for k, v in self.se.items()})
        for k, v in self.meta.items():
            out.setdefault(k, v)
        return to_jsonable(out)


def to_jsonable(obj: Any) -> Any:
    """Convert numpy arrays/scalars (recursively) to plain lists/floats; NaN/inf become None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "iub" or (obj.dtype.kind == "f" and np.isfinite(obj).all()):
            return obj.tolist()                 # fast path: already plain ints/floats/bools, nothing to replace
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if np.isfinite(f) else None
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
