"""Network specification (docs/model.md#network) and TOML configuration loading.

A :class:`Network` holds everything that defines the random pre-activation ResNet at initialisation:
activation φ, residual-branch variances C_W and C_b, total depth-time T, number of blocks L (``depth``)
and the P x P input kernel K_in. Types are strict (a bool or a string is never a number, an integer field takes
only integers) and every stored number is finite. Every failure is an :class:`~kerneleft.errors.InputError` (a
ValueError and a TypeError) with a one-line message that starts with the offending field
(docs/reference.md#errors); an exception of any other type raised during validation is a bug and propagates.
"""
from __future__ import annotations

import math
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from .activations import Activation, get_activation
from .branch import ARCHITECTURES, branch_to_dicts, default_branch, is_default, kernel_map, parse_branch
from .errors import InputError
from .result import MAX_KERNEL

__all__ = ["Network", "load_config", "network_from_dict", "read_toml", "input_kernel", "check_kernel", "MAX_KERNEL",
           "MAX_CONFIG_BYTES"]

_PSD_RTOL = 1e-10
_SYM_RTOL = 1e-12
MAX_CONFIG_BYTES = 256 * 2 ** 20
"""Largest config file read: a larger one is not a config (e.g. /dev/zero) and is refused unread."""


def _is_real(v: Any) -> bool:
    """True for int/float scalars (Python or numpy), False for bool, str and everything else."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _show(v: Any) -> str:
    """``type value`` of a bad value for a message, the repr cut to 40 characters."""
    r = repr(v)
    return f"{type(v).__name__} {r if len(r) <= 40 else r[:37] + '...'}"


def _finite_float(name: str, v: Any) -> float:
    """``v`` as a finite float; InputError naming ``name`` for a non-number (bool, str, ...) or NaN/inf/overflow."""
    if not _is_real(v):
        raise InputError(f"{name}: must be a real number, got {_show(v)}")
    try:
        f = float(v)
    except OverflowError:                        # an int beyond float64
        f = math.inf
    if not math.isfinite(f):
        raise InputError(f"{name}: must be finite, got {_show(v)}")
    return f


def _matrix(name: str, v: Any) -> np.ndarray:
    """A non-empty rectangular 2-d array of real numbers (nested lists or an ndarray) as a finite float (R, C) array.

    Every entry must be an int or float (no bool or str): InputError naming ``name`` and the entry otherwise.
    """
    if isinstance(v, np.ndarray) and v.dtype.kind in "iuf":
        pass                                     # already numeric (and not bool): no per-entry check needed
    elif isinstance(v, (list, tuple, np.ndarray)) and all(isinstance(r, (list, tuple, np.ndarray)) for r in v):
        for i, row in enumerate(v):
            for j, x in enumerate(row):
                if not _is_real(x):
                    raise InputError(f"{name}: entry [{i}][{j}] must be a real number, got {_show(x)}")
        if len({len(r) for r in v}) > 1:
            raise InputError(f"{name}: rows must have equal lengths, got {[len(r) for r in v]}")
    else:
        raise InputError(f"{name}: must be a list of rows of real numbers, got {type(v).__name__}")
    try:
        a = np.array(v, dtype=float)
    except OverflowError:                        # an int entry beyond float64
        raise InputError(f"{name}: contains an integer too large for float64") from None
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"{name}: must be a non-empty 2-d array (list of rows), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name}: contains NaN or inf")
    return a


def _pow2_scale(a: np.ndarray) -> float:
    """A power of two > max|a|: ``a / scale`` has entries in (-1, 1), rescaled without rounding (bar underflow)."""
    m = float(np.max(np.abs(a)))
    return math.ldexp(1.0, math.frexp(m)[1]) if m > 0 else 1.0


def check_kernel(name: str, K: Any) -> np.ndarray:
    """Validate a P x P symmetric positive semi-definite kernel with |entries| <= :data:`MAX_KERNEL`; return it as a
    float (P, P) array, symmetrised. Checks run on the matrix rescaled by a power of two (no overflow)."""
    K = _matrix(name, K)
    if K.shape[0] != K.shape[1]:
        raise InputError(f"{name}: must be square (P x P), got shape {K.shape}")
    big = float(np.max(np.abs(K)))
    if big > MAX_KERNEL:
        raise InputError(f"{name}: entries must be at most {MAX_KERNEL:g} in magnitude (V4 grows like the square "
                         f"of the kernel and must fit in float64), got {big:.3g}")
    Kn = K / _pow2_scale(K)
    if np.max(np.abs(Kn - Kn.T)) > _SYM_RTOL * np.max(np.abs(Kn)):
        raise InputError(f"{name}: must be symmetric")
    if not np.array_equal(K, K.T):
        K = 0.5 * K + 0.5 * K.T
    lam = np.linalg.eigvalsh(0.5 * (Kn + Kn.T))
    if lam[0] < -_PSD_RTOL * max(lam[-1], 0.0) or lam[-1] <= 0.0:
        raise InputError(f"{name}: must be positive semi-definite with positive trace "
                         f"(smallest eigenvalue {lam[0] * _pow2_scale(K):.3g})")
    return K


def input_kernel(inputs: Any, C_in: float = 1.0, C_b_in: float = 0.0) -> np.ndarray:
    """K_in[a, b] = C_in x_a·x_b / n0 + C_b_in for P inputs x_a ∈ R^{n0} (docs/model.md#network); returns (P, P).

    The Gram matrix is formed from the inputs rescaled by a power of two, so large inputs cannot overflow on the
    way; a kernel that itself exceeds :data:`MAX_KERNEL` is an InputError naming ``inputs``.
    """
    X = _matrix("inputs", inputs)
    C_in = _finite_float("C_in", C_in)
    C_b_in = _finite_float("C_b_in", C_b_in)
    if C_in <= 0:
        raise InputError(f"C_in: must be > 0, got {C_in}")
    if C_b_in < 0:
        raise InputError(f"C_b_in: must be >= 0, got {C_b_in}")
    s = _pow2_scale(X)
    Xn = X / s
    with np.errstate(over="ignore"):
        K = (C_in * (Xn @ Xn.T) / X.shape[1]) * s * s + C_b_in
    if not np.all(np.isfinite(K)):
        raise InputError(f"inputs: the input kernel C_in·x_a·x_b/n0 + C_b_in overflows float64 (max |x| = "
                         f"{np.max(np.abs(X)):.3g}, C_in = {C_in:g}); rescale the inputs or C_in")
    return check_kernel("inputs", K)


class Network(BaseModel):
    """The random ResNet of docs/model.md#network.

    Fields: ``activation`` (registered name, :class:`~kerneleft.activations.Activation` or callable), ``C_W``,
    ``C_b`` (finite, >= 0), ``T`` (finite, > 0), ``depth`` L (integer >= 1, with T/L a normal float64), ``K_in``
    (P, P) symmetric PSD with finite entries of magnitude <= :data:`MAX_KERNEL`. Derived: ``P``, ``eps`` = T/L,
    ``t`` (L+1,) = l·eps, ``phi`` (the resolved Activation). Invalid fields raise InputError naming the field.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, extra="forbid")

    activation: Any
    C_W: float | None = None
    C_b: float = 0.0
    T: float | None = None
    depth: int
    K_in: Any
    architecture: str = "resnet"
    branch: Any = None

    def __init__(self, **fields):
        try:
            super().__init__(**fields)
        except ValidationError as err:
            raise InputError(_one_line(err)) from None

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
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"depth: must be an integer >= 1, got {_show(v)}")
        return int(v)

    @field_validator("K_in", mode="before")
    @classmethod
    def _kin(cls, v):
        K = check_kernel("K_in", v)
        K.setflags(write=False)
        return K

    @model_validator(mode="before")
    @classmethod
    def _architecture(cls, d):
        """``architecture`` and ``branch`` (docs/architectures.md#branches): with a branch, C_W and C_b are the last
        dense layer's; without one, the default branch (phi, dense(C_W, C_b)). An MLP has no T (t[l] = l)."""
        if not isinstance(d, dict):
            return d
        d = dict(d)
        arch = d.get("architecture", "resnet")
        if not isinstance(arch, str) or arch not in ARCHITECTURES:
            raise InputError(f"architecture: must be one of {', '.join(map(repr, ARCHITECTURES))}, got {arch!r}"[:200])
        if d.get("branch") is not None:
            for k in ("C_W", "C_b"):
                if k in d:
                    raise InputError(f"{k}: not allowed together with branch (give C_W, C_b on the dense layers)")
            branch = parse_branch(d["branch"])
            d["branch"] = branch
            d["C_W"], d["C_b"] = branch[-1].C_W, branch[-1].C_b
        elif "C_W" not in d:
            raise InputError("C_W: required field is missing (or give a branch)")
        if arch == "mlp" and d.get("T") is not None:
            raise InputError("T: must be absent for architecture = 'mlp' (an MLP's depth grid is t[l] = l)")
        if arch == "resnet" and d.get("T") is None:
            raise InputError("T: required field is missing")
        return d

    @model_validator(mode="after")
    def _step(self):
        if self.branch is None:
            object.__setattr__(self, "branch", default_branch(self.C_W, self.C_b))
        elif not is_default(self.branch):
            kernel_map(self.branch, self.activation, self.K_in)      # a norm of a zero-variance input: InputError
        if self.architecture == "mlp":
            object.__setattr__(self, "T", float(self.depth))
        if self.T / self.depth < sys.float_info.min:
            raise InputError(f"T: the step T/depth = {self.T:g}/{self.depth} is below the smallest normal float64; "
                             f"increase T or reduce depth")
        return self

    # --- derived quantities -------------------------------------------------------------------
    @property
    def phi(self) -> Activation:
        return self.activation

    @property
    def residual(self) -> bool:
        """True for ``architecture = "resnet"`` (h + √ε branch(h)), False for an MLP (branch(h))."""
        return self.architecture == "resnet"

    @property
    def P(self) -> int:
        return int(self.K_in.shape[0])

    @property
    def eps(self) -> float:
        return self.T / self.depth

    @property
    def t(self) -> np.ndarray:
        """(L+1,) t[l] = l·eps, with t[L] = T exactly (l·(T/L) can round one ulp past T). docs/model.md#depth-grid"""
        t = np.arange(self.depth + 1) * self.eps
        t[-1] = self.T
        return t

    def replace(self, **changes) -> "Network":
        """A copy with some fields changed (validated again)."""
        d = self.to_dict()
        d["activation"] = self.activation if "activation" not in changes else changes.pop("activation")
        d.update(changes)
        return network_from_dict(d)

    def to_dict(self) -> dict:
        """JSON-serialisable dict that :func:`network_from_dict` maps back to an equal Network."""
        d = {"activation": self.activation.name}
        if not self.residual:
            d["architecture"] = self.architecture
        if is_default(self.branch):
            d.update(C_W=self.C_W, C_b=self.C_b)
        else:
            d["branch"] = branch_to_dicts(self.branch)
        if self.residual:
            d["T"] = self.T
        d.update(depth=self.depth, K_in=self.K_in.tolist())
        return d


_KNOWN = {"activation", "C_W", "C_b", "T", "depth", "K_in", "inputs", "C_in", "C_b_in", "architecture", "branch"}


def _one_line(err: ValidationError) -> str:
    """The first error as ``field: message``; re-raises an exception that is not an InputError (a bug)."""
    e = err.errors()[0]
    cause = e.get("ctx", {}).get("error")
    if isinstance(cause, BaseException) and not isinstance(cause, InputError):
        raise cause
    if cause is not None:
        return str(cause)                        # an InputError message starts with its field
    msg = str(e["msg"])
    field = ".".join(str(x) for x in e["loc"]) or "config"
    if msg.startswith(field + ":"):
        return msg
    if e["type"] == "missing":
        return f"{field}: required field is missing"
    if e["type"] == "extra_forbidden":
        return f"{field}: unknown config field (allowed: {', '.join(sorted(_KNOWN))})"
    return f"{field}: {msg}"


def network_from_dict(d: dict) -> Network:
    """Build a validated :class:`Network` from a config mapping (docs/reference.md#cli, "Configuration").

    Either ``K_in`` or ``inputs`` (+ optional ``C_in`` = 1, ``C_b_in`` = 0) must be given.
    Raises InputError (a ValueError and a TypeError) with a one-line message naming the field.
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
    return Network(**d)


def read_toml(name: str, path: str | Path) -> dict:
    """Parse the TOML file ``path``; InputError naming ``name`` if it cannot be read, is larger than 256 MiB, is
    not UTF-8 text or is not valid TOML."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise InputError(f"{name}: cannot read {str(p)!r}: {err.strerror or err}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise InputError(f"{name}: {str(p)!r} is larger than {MAX_CONFIG_BYTES >> 20} MiB; not a config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{name}: {str(p)!r} is not UTF-8 text (byte {raw[err.start]:#04x} at offset "
                         f"{err.start}); give a TOML file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{name}: {str(p)!r} is not valid TOML: {err}") from None


def load_config(path: str | Path) -> Network:
    """Read a TOML config file (docs/reference.md#cli, "Configuration") into a validated :class:`Network`."""
    return network_from_dict(read_toml("config", path))

