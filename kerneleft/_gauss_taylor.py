"""Exact derivatives φ^(m)(x), m = 0..order, of the smooth registered activations (docs/numerics.md#closed-forms).

Each function maps x (any shape) to D[m, ...] = φ^(m)(x), shape (order+1, *x.shape). They use stable
Taylor-mode recurrences for the normalised Taylor coefficients y_k = φ^(k)(x)/k! (never finite differences):
tanh' = 1 − tanh², σ' = σ(1 − σ), Φ^(k) = (−1)^(k−1) He_(k−1) φ, gelu = xΦ, silu = xσ, softplus' = σ,
erf(x) = 2Φ(√2 x) − 1, sin^(k)(x) = sin(x + kπ/2).

Series arithmetic, for declaring a new smooth φ without writing a recurrence: a *series* is the array
(order+1, ...) of normalised Taylor coefficients of a function of s at s = 0; :func:`variable` is t = x + s,
``+``/scalar ``*`` act on arrays, :func:`product` multiplies, :func:`compose_tanh`, :func:`compose_sigmoid`,
:func:`compose_softplus`, :func:`compose_exp` apply an outer function (chain rule in Taylor mode: h = f∘a with
f' = R(f) gives (k+1) h_(k+1) = Σ_j (j+1) a_(j+1) R(h)_(k−j)), and :func:`taylor_derivs` turns an expression
into ``derivs``. Example: mish = x·tanh(softplus(x)) is ``taylor_derivs(lambda t: product(t, compose_tanh(
compose_softplus(t))))``. The registered activations keep their hand-written recurrences (faster, same numbers).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special

__all__ = ["d_linear", "d_tanh", "d_erf", "d_gelu", "d_silu", "d_softplus", "d_sin", "variable", "product",
           "compose_tanh", "compose_sigmoid", "compose_softplus", "compose_exp", "taylor_derivs"]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _to_derivatives(y: np.ndarray) -> np.ndarray:
    """Normalised Taylor coefficients y[k] -> derivatives k! y[k], in place (y is (order+1, ...))."""
    for k in range(2, y.shape[0]):
        y[k] *= float(math.factorial(k))
    return y


def _coefficients(y0: np.ndarray, y1: np.ndarray, order: int) -> np.ndarray:
    """A preallocated (order+1, ...) coefficient array holding y0 (and y1 if order >= 1)."""
    y = np.empty((order + 1,) + y0.shape)
    y[0] = y0
    if order >= 1:
        y[1] = y1
    return y


def _riccati(y: np.ndarray, linear: float) -> np.ndarray:
    """Fill y[k], k >= 2, in place: Taylor coefficients of y' = linear·y − y² (+ const), given y[0] and y[1].

    The convolution Σ_j y_j y_(k−j) is summed over j < k − j and doubled (plus the middle square), halving the
    products.
    """
    tmp, c = np.empty(y.shape[1:]), [y[k, ...] for k in range(y.shape[0])]      # row views (0-d safe)
    for k in range(1, y.shape[0] - 1):
        acc = np.multiply(c[0], c[k], out=c[k + 1])
        for j in range(1, (k + 1) // 2):
            acc += np.multiply(c[j], c[k - j], out=tmp)
        acc *= 2.0
        if k % 2 == 0:
            acc += np.multiply(c[k // 2], c[k // 2], out=tmp)
        if linear:
            acc -= np.multiply(linear, c[k], out=tmp)
        acc *= -1.0 / (k + 1)
    return y


def _tanh_taylor(x: np.ndarray, order: int) -> np.ndarray:
    e = np.exp(-2.0 * np.abs(x))
    return _riccati(_coefficients(np.tanh(x), 4.0 * e / (1.0 + e) ** 2, order), 0.0)   # tanh' = 1 − tanh²


def _sigmoid_taylor(x: np.ndarray, order: int) -> np.ndarray:
    s = special.expit(x)
    return _riccati(_coefficients(s, s * special.expit(-x), order), 1.0)              # σ' = σ − σ²


def _ndtr_taylor(x: np.ndarray, order: int) -> np.ndarray:
    """Taylor coefficients of Φ: c_0 = Φ(x), c_k = (−1)^(k−1) He_(k−1)(x) φ(x) / k! (k >= 1)."""
    pdf = np.exp(-0.5 * x * x) * _INV_SQRT_2PI
    c = np.empty((order + 1,) + x.shape)
    c[0] = special.ndtr(x)
    h_prev, h = np.zeros_like(x), np.ones_like(x)                  # h_n = He_n(x) / n!
    for k in range(1, order + 1):
        c[k] = h * pdf * ((-1) ** (k - 1) / k)
        h_prev, h = h, (x * h - h_prev) / k
    return c


def _times_x(c: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Taylor coefficients of (x + s)·g(x + s) from those of g (c is (order+1, ...))."""
    out = c * x
    out[1:] += c[:-1]
    return out


def d_linear(x, order):
    x = np.asarray(x, dtype=float)
    return np.stack([x, np.ones_like(x)] + [np.zeros_like(x)] * (order - 1))[: order + 1]


def d_tanh(x, order):
    return _to_derivatives(_tanh_taylor(np.asarray(x, dtype=float), order))


def d_erf(x, order):
    x = np.asarray(x, dtype=float)
    y = _ndtr_taylor(math.sqrt(2.0) * x, order)
    y[0] = special.erf(x)
    for k in range(1, order + 1):
        y[k] *= 2.0 * 2.0 ** (k / 2)
    return _to_derivatives(y)


def d_gelu(x, order):
    x = np.asarray(x, dtype=float)
    return _to_derivatives(_times_x(_ndtr_taylor(x, order), x))


def d_silu(x, order):
    x = np.asarray(x, dtype=float)
    return _to_derivatives(_times_x(_sigmoid_taylor(x, order), x))


def d_softplus(x, order):
    x = np.asarray(x, dtype=float)
    y = np.empty((order + 1,) + x.shape)
    y[0] = np.logaddexp(0.0, x)
    if order >= 1:
        y[1:] = _sigmoid_taylor(x, order - 1) / np.arange(1.0, order + 1).reshape((-1,) + (1,) * x.ndim)
    return _to_derivatives(y)


def d_sin(x, order):
    x = np.asarray(x, dtype=float)
    s, c = np.sin(x), np.cos(x)
    return np.stack([(s, c, -s, -c)[m % 4] for m in range(order + 1)])


# ----------------------------------------------------------------------------------------- series arithmetic
def variable(x, order: int) -> np.ndarray:
    """The series of t = x + s: coefficients (x, 1, 0, ..., 0), shape (order+1, *x.shape)."""
    x = np.asarray(x, dtype=float)
    t = np.zeros((order + 1,) + x.shape)
    t[0] = x
    if order >= 1:
        t[1] = 1.0
    return t


def product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The series of a·b (Cauchy product, truncated at the common order)."""
    out = np.empty(np.broadcast_shapes(a.shape, b.shape))
    for k in range(out.shape[0]):
        out[k] = np.sum(a[: k + 1] * b[k::-1], axis=0)
    return out


def _chain(a: np.ndarray, h0, r0, rate) -> np.ndarray:
    """The series of h = f∘a where f' = R(f): (k+1) h_(k+1) = Σ_(j<=k) (j+1) a_(j+1) r_(k−j), r = R(h).

    h0 = f(a_0) and r0 = f'(a_0) are passed in (computed stably by the caller); ``rate(h, k)`` gives r_k, k >= 1,
    from h_0..h_k. a (order+1, ...) -> (order+1, ...).
    """
    order = a.shape[0] - 1
    h, r = np.empty_like(a), np.empty_like(a)
    h[0] = h0
    da = a[1:] * np.arange(1.0, order + 1).reshape((-1,) + (1,) * (a.ndim - 1))          # (j+1) a_(j+1)
    for k in range(order):
        r[k] = r0 if k == 0 else rate(h, k)
        h[k + 1] = np.sum(da[: k + 1] * r[k::-1], axis=0) / (k + 1)
    return h


def _square_coefficient(h: np.ndarray, k: int) -> np.ndarray:
    """[s^k] h² from h_0..h_k."""
    return np.sum(h[: k + 1] * h[k::-1], axis=0)


def compose_tanh(a: np.ndarray) -> np.ndarray:
    """The series of tanh(a): tanh' = 1 − tanh² (sech²(a_0) evaluated without cancellation)."""
    e = np.exp(-2.0 * np.abs(a[0]))
    return _chain(a, np.tanh(a[0]), 4.0 * e / (1.0 + e) ** 2, lambda h, k: -_square_coefficient(h, k))


def compose_sigmoid(a: np.ndarray) -> np.ndarray:
    """The series of σ(a) = 1/(1 + e^(−a)): σ' = σ − σ²."""
    return _chain(a, special.expit(a[0]), special.expit(a[0]) * special.expit(-a[0]),
                  lambda h, k: h[k] - _square_coefficient(h, k))


def compose_softplus(a: np.ndarray) -> np.ndarray:
    """The series of softplus(a) = log(1 + e^a): softplus' = σ."""
    s = compose_sigmoid(a)
    return _chain(a, np.logaddexp(0.0, a[0]), s[0], lambda h, k: s[k])


def compose_exp(a: np.ndarray) -> np.ndarray:
    """The series of exp(a): exp' = exp."""
    e = np.exp(a[0])
    return _chain(a, e, e, lambda h, k: h[k])


def taylor_derivs(expression):
    """``derivs(x, order)`` (φ^(m)(x), m = 0..order, stacked on axis 0) of φ given as a series expression.

    ``expression(t)`` maps the series t = :func:`variable` (x, order) to the series of φ(t) using the arithmetic
    above, e.g. ``lambda t: product(t, compose_tanh(compose_softplus(t)))`` for mish.
    """
    def derivs(x, order):
        return _to_derivatives(expression(variable(x, order)))
    return derivs
