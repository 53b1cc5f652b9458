"""Network specification (THEORY §1) and TOML configuration loading.

A :class:`Network` holds everything that defines the random pre-activation ResNet at initialisation:
activation φ, residual-branch variances C_W and C_b, total depth-time T, number of blocks L (``depth``)
and the P x P input kernel K_in. Validation is done by pydantic; every failure is re-raised as a one-line
``ValueError``/``TypeError`` that names the offending field (INTERFACE.md, "Errors").
"""
from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .activations import Activation, get_activation
from .errors import InputError

__all__ = ["Network", "load_config", "network_from_dict", "input_kernel"]

_PSD_RTOL = 1e-10


def _finite_float(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InputError(f"{name}: must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise InputError(f"{name}: must be finite, got {v}")
    return v


def _matrix(name: str, v: Any) -> np.ndarray:
    try:
        a = np.array(v, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{name}: must be a nested list of real numbers") from None
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"{name}: must be a non-empty 2-d array (list of rows), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name}: contains NaN or inf")
    return a


def check_kernel(name: str, K: Any) -> np.ndarray:
    """Validate a P x P symmetric positive semi-definite kernel; return it as a float array."""
    K = _matrix(name, K)
    if K.shape[0] != K.shape[1]:
        raise InputError(f"{name}: must be square (P x P), got shape {K.shape}")
    scale = max(float(np.max(np.abs(K))), 1e-300)
    if not np.allclose(K, K.T, rtol=0.0, atol=1e-12 * scale):
        raise InputError(f"{name}: must be symmetric")
    K = 0.5 * (K + K.T)
    lam = np.linalg.eigvalsh(K)
    if lam[0] < -_PSD_RTOL * max(lam[-1], 1e-300) or lam[-1] <= 0.0:
        raise InputError(f"{name}: must be positive semi-definite with positive trace "
                         f"(smallest eigenvalue {lam[0]:.3g})")
    return K


def input_kernel(inputs: Any, C_in: float = 1.0, C_b_in: float = 0.0) -> np.ndarray:
    """K_in[a, b] = C_in x_a·x_b / n0 + C_b_in for P inputs x_a ∈ R^{n0} (THEORY §1); returns (P, P)."""
    X = _matrix("inputs", inputs)
    C_in = _finite_float("C_in", C_in)
    C_b_in = _finite_float("C_b_in", C_b_in)
    if C_in <= 0:
        raise InputError(f"C_in: must be > 0, got {C_in}")
    if C_b_in < 0:
        raise InputError(f"C_b_in: must be >= 0, got {C_b_in}")
    return check_kernel("inputs", C_in * X @ X.T / X.shape[1] + C_b_in)


class Network(BaseModel):
    """The random ResNet of THEORY §1.

    Fields: ``activation`` (registered name or :class:`~kerneleft.activations.Activation`), ``C_W``, ``C_b``
    (>= 0), ``T`` (> 0), ``depth`` L (>= 1), ``K_in`` (P, P) symmetric PSD. Derived: ``P``, ``eps`` = T/L,
    ``t`` (L+1,) = l·eps, ``phi`` (the resolved Activation).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, extra="forbid")

    activation: Any
    C_W: float
    C_b: float = 0.0
    T: float
    depth: int
    K_in: Any

    @field_validator("activation", mode="before")
    @classmethod
    def _act(cls, v):
        return get_activation(v)

    @field_validator("C_W", "C_b", mode="before")
    @classmethod
    def _variance(cls, v, info):
        v = _finite_float(info.field_name, v)
        if v < 0:
            raise InputError(f"{info.field_name}: must be >= 0, got {v}")
        return v

    @field_validator("T", mode="before")
    @classmethod
    def _T(cls, v):
        v = _finite_float("T", v)
        if v <= 0:
            raise InputError(f"T: must be > 0, got {v}")
        return v

    @field_validator("depth", mode="before")
    @classmethod
    def _depth(cls, v):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise InputError(f"depth: must be an integer >= 1, got {v!r}")
        if v < 1:
            raise InputError(f"depth: must be an integer >= 1, got {v}")
        return int(v)

    @field_validator("K_in", mode="before")
    @classmethod
    def _kin(cls, v):
        K = check_kernel("K_in", v)
        K.setflags(write=False)
        return K

    # --- derived quantities -------------------------------------------------------------------
    @property
    def phi(self) -> Activation:
        return self.activation

    @property
    def P(self) -> int:
        return int(self.K_in.shape[0])

    @property
    def eps(self) -> float:
        return self.T / self.depth

    @property
    def t(self) -> np.ndarray:
        return np.arange(self.depth + 1) * self.eps

    def replace(self, **changes) -> "Network":
        """A copy with some fields changed (validated again)."""
        d = self.to_dict()
        d["activation"] = self.activation if "activation" not in changes else changes.pop("activation")
        d.update(changes)
        return network_from_dict(d)

    def to_dict(self) -> dict:
        """JSON-serialisable dict that :func:`network_from_dict` maps back to an equal Network."""
        return {"activation": self.activation.name, "C_W": self.C_W, "C_b": self.C_b, "T": self.T,
                "depth": self.depth, "K_in": self.K_in.tolist()}


_KNOWN = {"activation", "C_W", "C_b", "T", "depth", "K_in", "inputs", "C_in", "C_b_in"}


def _one_line(err: ValidationError) -> str:
    e = err.errors()[0]
    msg = str(e.get("ctx", {}).get("error", e["msg"]))
    field = ".".join(str(x) for x in e["loc"]) or "config"
    if msg.startswith(field + ":"):
        return msg
    if e["type"] == "missing":
        return f"{field}: required field is missing"
    return f"{field}: {msg}"


def network_from_dict(d: dict) -> Network:
    """Build a validated :class:`Network` from a config mapping (INTERFACE.md "Configuration").

    Either ``K_in`` or ``inputs`` (+ optional ``C_in`` = 1, ``C_b_in`` = 0) must be given.
    Raises ValueError/TypeError with a one-line message naming the field.
    """
    if not isinstance(d, dict):
        raise InputError("config: must be a mapping of field names to values")
    unknown = sorted(set(d) - _KNOWN)
    if unknown:
        raise InputError(f"{unknown[0]}: unknown config field (allowed: {', '.join(sorted(_KNOWN))})")
    d = dict(d)
    if "inputs" in d:
        if "K_in" in d:
            raise InputError("K_in: give either K_in or inputs, not both")
        d["K_in"] = input_kernel(d.pop("inputs"), d.pop("C_in", 1.0), d.pop("C_b_in", 0.0))
    else:
        for k in ("C_in", "C_b_in"):
            if k in d:
                raise InputError(f"{k}: only allowed together with inputs")
        if "K_in" not in d:
            raise InputError("K_in: required field is missing (give K_in or inputs)")
    try:
        return Network(**d)
    except ValidationError as err:
        raise InputError(_one_line(err)) from None


def load_config(path: str | Path) -> Network:
    """Read a TOML config file (INTERFACE.md) into a validated :class:`Network`."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise InputError(f"config: cannot read {str(p)!r}: {err.strerror or err}") from None
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"config: {str(p)!r} is not valid TOML: {err}") from None
    return network_from_dict(d)

