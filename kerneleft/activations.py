"""Activation functions φ (THEORY §1) and their registry.

An :class:`Activation` carries the pointwise map ``phi`` used by the samplers. The Gaussian-expectation
engine (:mod:`kerneleft.gaussian`) adds what theories need (derivatives, closed forms) keyed by ``name``.

Registered names: linear, relu, tanh, erf, gelu, silu, sin, softplus.
A user-supplied activation is any vectorised callable ``f(x: ndarray) -> ndarray``:
``Network(activation=my_phi, ...)`` or ``Activation("mine", my_phi)``; the engine then uses quadrature with
Gaussian integration by parts onto Hermite polynomials. Optionally pass exact derivatives,
``Activation("mine", my_phi, derivs=d)`` with ``d(x, order) -> array (order+1, *x.shape)`` of φ^(m)(x)
(see :mod:`kerneleft._gauss_taylor`); they make degenerate blocks and small variances exact.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import special

from ._gauss_taylor import DERIVATIVES
from .errors import InputError

__all__ = ["Activation", "get_activation", "ACTIVATION_NAMES", "REGISTRY"]


def _gelu(x):
    return 0.5 * x * special.erfc(-x / np.sqrt(2.0))


def _silu(x):
    return x * special.expit(x)


def _softplus(x):
    return np.logaddexp(0.0, x)


@dataclass(frozen=True, eq=False)
class Activation:
    """A pointwise activation φ. ``smooth`` is False for activations with kinks (relu).

    ``derivs(x, order)`` (optional) returns the exact derivatives φ^(m)(x), m = 0..order, stacked on axis 0.
    """

    name: str
    phi: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    smooth: bool = True
    derivs: Callable[[np.ndarray, int], np.ndarray] | None = field(default=None, repr=False)

    def __call__(self, x):
        return self.phi(x)

    def __eq__(self, other):
        return isinstance(other, Activation) and other.name == self.name and other.phi is self.phi

    def __hash__(self):
        return hash((self.name, id(self.phi)))

    def __reduce__(self):
        # Registered activations pickle by name (their lambdas do not pickle); user ones by value.
        if REGISTRY.get(self.name) is self:
            return get_activation, (self.name,)
        return Activation, (self.name, self.phi, self.smooth, self.derivs)


REGISTRY: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("linear", lambda x: np.asarray(x, dtype=float) * 1.0, derivs=DERIVATIVES["linear"]),
        Activation("relu", lambda x: np.maximum(x, 0.0), smooth=False),
        Activation("tanh", np.tanh, derivs=DERIVATIVES["tanh"]),
        Activation("erf", special.erf, derivs=DERIVATIVES["erf"]),
        Activation("gelu", _gelu, derivs=DERIVATIVES["gelu"]),
        Activation("silu", _silu, derivs=DERIVATIVES["silu"]),
        Activation("sin", np.sin, derivs=DERIVATIVES["sin"]),
        Activation("softplus", _softplus, derivs=DERIVATIVES["softplus"]),
    ]
}
ACTIVATION_NAMES = tuple(REGISTRY)


def get_activation(spec) -> Activation:
    """Resolve a name, an :class:`Activation` or a plain vectorised callable into an Activation."""
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, str):
        try:
            return REGISTRY[spec]
        except KeyError:
            raise InputError(f"activation: unknown activation {spec!r} "
                             f"(allowed: {' | '.join(ACTIVATION_NAMES)} or a Python callable)") from None
    if callable(spec):
        name = getattr(spec, "__name__", "custom")
        if name in REGISTRY:
            name = f"custom_{name}"
        return Activation(name, spec, smooth=True)
    raise InputError(f"activation: must be a name ({' | '.join(ACTIVATION_NAMES)}) or a callable, "
                    f"got {type(spec).__name__}")
