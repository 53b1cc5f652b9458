"""Residual branches and MLP blocks as a value (docs/architectures.md#branches).

A branch is a tuple of layers applied to the residual stream h (P inputs, n neurons): ``phi`` (the network's
activation), ``dense`` (W ~ N(0, C_W/fan_in), b ~ N(0, C_b), output width round(width_ratio·n) or n for the last
layer), ``rms`` (u / sqrt(mean_i u²)) and ``layernorm`` ((u − mean_i u) / sqrt(mean_i (u − mean_i u)²)), both per
input over the neurons. The block is ``h + √ε branch(h)`` (``architecture = "resnet"``) or ``branch(h)``
(``"mlp"``); the branch ends with a dense layer, so every block's output is conditionally Gaussian given its input.

Each layer kind keeps, beside its definition (as neural-tangents' ``stax`` keeps a layer's kernel rule):

- ``law(state, act)``: its infinite-width map on the one-neuron law :class:`Law` (docs/architectures.md#kernel-maps);
- ``sample(x, ...)``: its exact finite-width step on the neurons ``x[s, a, i]`` (docs/architectures.md#samplers).

Adding a layer kind is one class here and one entry in :data:`LAYER_KINDS`; the theories see a branch only through
:func:`segments` (the layers between dense layers) and the kernel map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .activations import Activation
from .errors import InputError
from .gaussian import F, diag_moments, mean

__all__ = ["Phi", "Dense", "Norm", "Law", "LAYER_KINDS", "ARCHITECTURES", "parse_branch", "default_branch",
           "branch_to_dicts", "is_default", "kernel_map", "inner_widths", "segments", "Segment", "MAX_LAYERS",
           "MAX_WIDTH_RATIO"]

ARCHITECTURES = ("resnet", "mlp")
MAX_LAYERS = 64
MAX_WIDTH_RATIO = 1024.0


@dataclass(frozen=True)
class Law:
    """Infinite-width law of one neuron of the current representation (docs/architectures.md#kernel-maps):
    u_a = γ_a ψ(α_a x_a) + δ_a with x ~ N(0, K), ψ = φ if ``phi`` else the identity.

    K (..., P, P); alpha, gamma, delta (..., P). A dense layer maps it to the Gaussian law N(0, C_W E[uuᵀ] + C_b).
    """

    K: np.ndarray
    alpha: np.ndarray
    phi: bool
    gamma: np.ndarray
    delta: np.ndarray

    @classmethod
    def gaussian(cls, K: np.ndarray) -> "Law":
        one = np.ones(K.shape[:-1])
        return cls(K, one, False, one, np.zeros_like(one))

    def moments_1d(self, act: Activation) -> tuple[np.ndarray, np.ndarray]:
        """(E ψ(α_a x_a), E ψ(α_a x_a)²), each (..., P)."""
        k = self.alpha ** 2 * np.diagonal(self.K, axis1=-2, axis2=-1)
        if not self.phi:
            return np.zeros_like(k), k
        return mean(act, k), diag_moments(act, k, 0)[..., 0]

    def second_moment(self, act: Activation) -> np.ndarray:
        """E[u_a u_b] (..., P, P)."""
        Kt = self.alpha[..., :, None] * self.K * self.alpha[..., None, :]
        E2 = F(act, Kt) if self.phi else Kt
        g, d = self.gamma, self.delta
        out = g[..., :, None] * E2 * g[..., None, :]
        if np.any(d != 0):                                 # + γ_a m_a δ_b + δ_a γ_b m_b + δ_a δ_b, m = E ψ
            gm = g * self.moments_1d(act)[0]
            out = out + gm[..., :, None] * d[..., None, :] + d[..., :, None] * gm[..., None, :] \
                + d[..., :, None] * d[..., None, :]
        return out


def _zero_variance(where: str, s: np.ndarray) -> None:
    if np.any(~(s > 0)):
        raise InputError(f"{where}: the input of this norm layer has zero variance over the neurons at infinite "
                         "width (an input with K_aa = 0, or C_W = C_b = 0 upstream); it cannot be normalised")


@dataclass(frozen=True)
class Phi:
    """The network's activation, applied per neuron."""

    kind: ClassVar[str] = "phi"

    def law(self, s: Law, act: Activation, where: str) -> Law:
        if s.phi:
            raise InputError(f"{where}: two phi layers without a dense layer between them are not supported")
        return Law(s.K, s.alpha * s.gamma, True, np.ones_like(s.gamma), np.zeros_like(s.delta))

    def sample(self, x: np.ndarray, act: Activation, **_) -> np.ndarray:
        return act.phi(x)

    def to_dict(self) -> dict:
        return {"layer": "phi"}


@dataclass(frozen=True)
class Norm:
    """``rms`` (u / sqrt(mean_i u²)) or ``layernorm`` ((u − ū) / sqrt(mean_i (u − ū)²)), per input over the
    neurons; no gain, bias or epsilon (docs/architectures.md#layernorm)."""

    kind: str

    def law(self, s: Law, act: Activation, where: str) -> Law:
        m, m2 = s.moments_1d(act)
        mu = s.gamma * m + s.delta                                     # E u_a
        second = s.gamma ** 2 * m2 + 2 * s.gamma * s.delta * m + s.delta ** 2
        if self.kind == "rms":
            _zero_variance(where, second)
            r = 1.0 / np.sqrt(second)
            return Law(s.K, s.alpha, s.phi, s.gamma * r, s.delta * r)
        var = second - mu ** 2
        _zero_variance(where, var)
        r = 1.0 / np.sqrt(var)
        return Law(s.K, s.alpha, s.phi, s.gamma * r, (s.delta - mu) * r)

    def sample(self, x: np.ndarray, **_) -> np.ndarray:
        if self.kind == "layernorm":
            x = x - x.mean(axis=-1, keepdims=True)
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True))

    def to_dict(self) -> dict:
        return {"layer": self.kind}


@dataclass(frozen=True)
class Dense:
    """W ~ N(0, C_W/fan_in), b ~ N(0, C_b); output width round(width_ratio·n) (inner) or n (the last layer,
    ``width_ratio`` None)."""

    C_W: float
    C_b: float = 0.0
    width_ratio: float | None = None
    kind: ClassVar[str] = "dense"

    def width(self, n: int) -> int:
        return n if self.width_ratio is None else max(1, round(self.width_ratio * n))

    def law(self, s: Law, act: Activation, where: str) -> Law:
        return Law.gaussian(self.C_W * s.second_moment(act) + self.C_b)

    def sample(self, x: np.ndarray, *, width: int, rng: np.random.Generator, method: str, scale: float = 1.0,
               **_) -> np.ndarray:
        """y (size, P, m_out) given x (size, P, m_in): ``weights`` draws W (m_out x m_in) and b; ``conditional``
        draws y = A Z with A Aᵀ = scale·(C_W xxᵀ/m_in + C_b) (docs/exact.md#conditional-gaussianity).
        ``scale`` multiplies the output's variance (ε for the residual increment)."""
        size, P, m_in = x.shape
        m = self.width(width)
        if method == "conditional":
            Sigma = np.matmul(x, x.transpose(0, 2, 1))
            Sigma *= 1.0 / m_in
            A = psd_factor(scale * (self.C_W * Sigma + self.C_b))
            Z = rng.standard_normal((size, P, m))
            return np.matmul(A, Z)
        W = rng.standard_normal((size, m, m_in))
        b = rng.standard_normal((size, 1, m))
        y = np.matmul(x, W.transpose(0, 2, 1))
        y *= np.sqrt(self.C_W / m_in)
        y += np.sqrt(self.C_b) * b
        if scale != 1.0:
            y *= np.sqrt(scale)
        return y

    def to_dict(self) -> dict:
        d = {"layer": "dense", "C_W": self.C_W, "C_b": self.C_b}
        if self.width_ratio is not None:
            d["width_ratio"] = self.width_ratio
        return d


def psd_factor(S: np.ndarray) -> np.ndarray:
    """A with A Aᵀ = S for symmetric PSD S (..., P, P): batched Cholesky, eigh fallback if any S is singular."""
    try:
        return np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        lam, U = np.linalg.eigh(S)
        return U * np.sqrt(np.clip(lam, 0.0, None))[..., None, :]


LAYER_KINDS = {"phi": (Phi, ()), "dense": (Dense, ("C_W", "C_b", "width_ratio")), "rms": (Norm, ()),
               "layernorm": (Norm, ())}
"""layer name -> (class, its numeric fields)."""


def _real(where: str, v: Any, minimum: float, strict: bool) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InputError(f"{where}: must be a real number, got {type(v).__name__} {v!r}"[:160])
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    ok = math.isfinite(f) and (f > minimum if strict else f >= minimum)
    if not ok:
        raise InputError(f"{where}: must be finite and {'>' if strict else '>='} {minimum:g}, got {v!r}")
    return f


def _layer(i: int, d: Any, last: bool) -> Phi | Dense | Norm:
    where = f"branch[{i}]"
    if isinstance(d, (Phi, Dense, Norm)):
        d = d.to_dict()
    if not isinstance(d, dict):
        raise InputError(f"{where}: must be a table with a 'layer' field, got {type(d).__name__}")
    kind = d.get("layer")
    if kind not in LAYER_KINDS:
        raise InputError(f"{where}.layer: must be one of {', '.join(LAYER_KINDS)}, got {kind!r}"[:200])
    allowed = LAYER_KINDS[kind][1]
    for key in d:
        if key != "layer" and key not in allowed:
            raise InputError(f"{where}.{key}: unknown field for a {kind} layer (allowed: "
                             f"{', '.join(('layer',) + allowed)})")
    if kind == "phi":
        return Phi()
    if kind in ("rms", "layernorm"):
        return Norm(kind)
    if "C_W" not in d:
        raise InputError(f"{where}.C_W: required field of a dense layer is missing")
    C_W = _real(f"{where}.C_W", d["C_W"], 0.0, False)
    C_b = _real(f"{where}.C_b", d.get("C_b", 0.0), 0.0, False)
    ratio = None
    if "width_ratio" in d:
        if last:
            raise InputError(f"{where}.width_ratio: the last dense layer has width n (no width_ratio)")
        ratio = _real(f"{where}.width_ratio", d["width_ratio"], 0.0, True)
        if ratio > MAX_WIDTH_RATIO:
            raise InputError(f"{where}.width_ratio: must be at most {MAX_WIDTH_RATIO:g}, got {ratio:g}")
    elif not last:
        ratio = 1.0
    return Dense(C_W, C_b, ratio)


def parse_branch(value: Any) -> tuple:
    """A validated branch tuple from a list of layer tables (or layer objects); InputError naming ``branch[i].field``."""
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not value:
        raise InputError("branch: must be a non-empty list of layer tables, e.g. [{layer = \"phi\"}, "
                         "{layer = \"dense\", C_W = 1.0}]")
    if len(value) > MAX_LAYERS:
        raise InputError(f"branch: at most {MAX_LAYERS} layers, got {len(value)}")
    last_dense = max((i for i, d in enumerate(value) if (d.get("layer") if isinstance(d, dict) else
                                                         getattr(d, "kind", None)) == "dense"), default=-1)
    layers = tuple(_layer(i, d, i == last_dense) for i, d in enumerate(value))
    if not isinstance(layers[-1], Dense):
        raise InputError(f"branch[{len(layers) - 1}]: the branch must end with a dense layer (so each block's "
                         f"increment is conditionally Gaussian), got {layers[-1].kind}")
    seen_phi = False
    for i, layer in enumerate(layers):
        if isinstance(layer, Dense):
            seen_phi = False
        elif isinstance(layer, Phi):
            if seen_phi:
                raise InputError(f"branch[{i}]: two phi layers without a dense layer between them are not supported")
            seen_phi = True
    return layers


def default_branch(C_W: float, C_b: float) -> tuple:
    """The one-layer block of docs/model.md#network: (phi, dense(C_W, C_b))."""
    return (Phi(), Dense(C_W, C_b))


def is_default(branch: tuple) -> bool:
    """True for (phi, dense) — the branch that top-level C_W, C_b describe."""
    return len(branch) == 2 and isinstance(branch[0], Phi) and isinstance(branch[1], Dense)


def branch_to_dicts(branch: tuple) -> list[dict]:
    return [layer.to_dict() for layer in branch]


@dataclass(frozen=True)
class Segment:
    """The layers between two dense layers (docs/architectures.md#kernel-maps): ``ops`` (phi/norm layers applied
    per neuron to the segment's input) and the ``dense`` layer that ends it; ``index`` its position in the branch."""

    ops: tuple
    dense: Dense
    index: int


def segments(branch: tuple) -> list[Segment]:
    out, ops = [], []
    for i, layer in enumerate(branch):
        if isinstance(layer, Dense):
            out.append(Segment(tuple(ops), layer, i))
            ops = []
        else:
            ops.append(layer)
    return out


def inner_widths(branch: tuple, n: int) -> list[int]:
    """Widths of every dense layer's output, in order (the last is n)."""
    return [layer.width(n) for layer in branch if isinstance(layer, Dense)]


def kernel_map(branch: tuple, act: Activation, K: np.ndarray, upto: int | None = None) -> np.ndarray:
    """Infinite-width kernel map K -> S̄(K) = C_W E[xxᵀ] + C_b of the last dense layer (x its input), for K
    (..., P, P) (docs/architectures.md#kernel-maps). ``upto``: stop after that many dense layers (default all)."""
    s = Law.gaussian(np.asarray(K, dtype=float))
    done = 0
    for i, layer in enumerate(branch):
        s = layer.law(s, act, f"branch[{i}]")
        if isinstance(layer, Dense):
            done += 1
            if upto is not None and done == upto:
                break
    return s.K
