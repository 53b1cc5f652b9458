"""Activation functions φ (docs/model.md#network): one record per activation, registered in one place.

An :class:`Activation` is everything the package knows about one φ: the pointwise map ``phi`` (samplers), its
exact derivatives ``derivs`` (Taylor mode, :mod:`kerneleft._gauss_taylor`), closed forms of the two Gaussian
moment primitives ``pair_closed``/``diag_closed`` (:mod:`kerneleft._gauss_closed`, docs/numerics.md#closed-forms)
and its quadrature ``profile`` (:mod:`kerneleft._gauss_quad`, docs/numerics.md#quadrature). The Gaussian engine
(:mod:`kerneleft.gaussian`) reads only the record.

Adding an activation is one record in the :func:`register` loop below; :func:`register` refuses a record the
engine could not use, and tests/test_activations.py checks every registered one numerically. A smooth φ built
from x, tanh, σ, softplus and exp gets exact derivatives from series arithmetic, e.g. mish = x·tanh(softplus(x)):
``derivs=taylor_derivs(lambda t: product(t, compose_tanh(compose_softplus(t))))``.

Registered names: :data:`ACTIVATION_NAMES` (in registration order).
A user-supplied activation is any vectorised callable ``f(x: ndarray) -> ndarray``:
``Network(activation=my_phi, ...)`` or ``Activation("mine", my_phi)``; the engine then uses quadrature with
Gaussian integration by parts onto Hermite polynomials. Optionally pass exact derivatives,
``Activation("mine", my_phi, derivs=d)`` with ``d(x, order) -> array (order+1, *x.shape)`` of φ^(m)(x)
(see :mod:`kerneleft._gauss_taylor`); they make degenerate blocks and small variances exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Callable

import numpy as np
from scipy import special

from ._gauss_closed import diag_erf, diag_linear, diag_relu, diag_sin, pair_erf, pair_linear, pair_relu, pair_sin
from ._gauss_quad import Profile
from ._gauss_taylor import (compose_exp, compose_sigmoid, compose_softplus, compose_tanh, d_erf, d_gelu, d_linear,
                            d_silu, d_sin, d_softplus, d_tanh, product, taylor_derivs, variable)
from .errors import InputError

__all__ = ["Activation", "get_activation", "register", "ACTIVATION_NAMES", "REGISTRY", "Profile", "taylor_derivs",
           "variable", "product", "compose_tanh", "compose_sigmoid", "compose_softplus", "compose_exp"]


def _linear(x):
    return np.asarray(x, dtype=float) * 1.0


def _relu(x):
    return np.maximum(x, 0.0)


def _gelu(x):
    return 0.5 * x * special.erfc(-x / np.sqrt(2.0))


def _silu(x):
    return x * special.expit(x)


def _softplus(x):
    return np.logaddexp(0.0, x)


@dataclass(frozen=True, eq=False)
class Activation:
    """One activation φ and everything the Gaussian engine needs about it.

    ``phi(x)`` the vectorised map; ``smooth`` False for activations with kinks (relu); ``derivs(x, order)`` the
    exact derivatives φ^(m)(x), m = 0..order, stacked on axis 0 (optional for a user callable);
    ``pair_closed(k11, k22, k12, order)`` -> M (*S, o+1, o+1) and ``diag_closed(k, order)`` -> D (*S, o+1) closed
    forms of :func:`kerneleft.gaussian.pair_moments`/``diag_moments`` (both or neither); ``profile`` the
    quadrature profile used without closed forms (None: the default ``Profile()``, δ = 1).
    """

    name: str
    phi: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    smooth: bool = True
    derivs: Callable[[np.ndarray, int], np.ndarray] | None = field(default=None, repr=False)
    pair_closed: Callable[..., np.ndarray] | None = field(default=None, repr=False)
    diag_closed: Callable[[np.ndarray, int], np.ndarray] | None = field(default=None, repr=False)
    profile: Profile | None = field(default=None, repr=False)

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
        return Activation, tuple(getattr(self, f.name) for f in fields(self))


REGISTRY: dict[str, Activation] = {}


def _problems(act: Activation) -> list[str]:
    """What a record lacks for the engine (empty if complete); derivs are probed at three points up to order 2."""
    out = []
    if act.name in REGISTRY:
        out.append("the name is already registered")
    if not callable(act.phi):
        out.append("phi is not callable")
    if act.smooth and act.derivs is None:
        out.append("a smooth activation needs exact derivs(x, order)")
    if (act.pair_closed is None) != (act.diag_closed is None):
        out.append("pair_closed and diag_closed must be given together")
    if act.pair_closed is None and act.diag_closed is None:
        if not act.smooth:
            out.append("an activation with kinks needs closed forms (the quadrature assumes a smooth φ)")
        elif act.profile is None:
            out.append("needs closed forms (pair_closed and diag_closed) or a quadrature profile")
    if not out and act.derivs is not None:
        x = np.array([-1.5, 0.0, 0.7])
        d = np.asarray(act.derivs(x, 2))
        if d.shape != (3, 3):
            out.append(f"derivs(x, 2) must have shape (3, *x.shape), got {d.shape} for x of shape {x.shape}")
        elif not np.allclose(d[0], act.phi(x), rtol=1e-12, atol=0.0):
            out.append("derivs(x, order)[0] differs from phi(x)")
    return out


def register(act: Activation) -> Activation:
    """Add a complete record to :data:`REGISTRY` (registered activations pickle by name); InputError if incomplete.

    Complete: a callable ``phi``; exact ``derivs`` (row 0 = φ) if ``smooth``; both closed forms, or (smooth only)
    a quadrature ``profile``. Call it at import (in the loop below) so that worker processes have the record too.
    """
    problems = _problems(act)
    if problems:
        raise InputError(f"activation {act.name!r}: cannot register: {'; '.join(problems)}")
    REGISTRY[act.name] = act
    return act


for _record in (
    Activation("linear", _linear, derivs=d_linear, pair_closed=pair_linear, diag_closed=diag_linear),
    Activation("relu", _relu, smooth=False, pair_closed=pair_relu, diag_closed=diag_relu),
    Activation("tanh", np.tanh, derivs=d_tanh, profile=Profile(math.pi / 2)),
    Activation("erf", special.erf, derivs=d_erf, pair_closed=pair_erf, diag_closed=diag_erf, profile=Profile(1.5)),
    Activation("gelu", _gelu, derivs=d_gelu, profile=Profile(2.0)),
    Activation("silu", _silu, derivs=d_silu, profile=Profile(math.pi)),
    Activation("sin", np.sin, derivs=d_sin, pair_closed=pair_sin, diag_closed=diag_sin,
               profile=Profile(math.inf, 3.0, 96)),
    Activation("softplus", _softplus, derivs=d_softplus, profile=Profile(math.pi)),
):
    register(_record)
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
