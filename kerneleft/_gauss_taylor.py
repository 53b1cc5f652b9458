"""Exact derivatives φ^(m)(x), m = 0..order, of the smooth registered activations (THEORY §4, §6).

Each function maps x (any shape) to D[m, ...] = φ^(m)(x), shape (order+1, *x.shape). They use stable
Taylor-mode recurrences for the normalised Taylor coefficients y_k = φ^(k)(x)/k! (never finite differences):
tanh' = 1 − tanh², σ' = σ(1 − σ), Φ^(k) = (−1)^(k−1) He_(k−1) φ, gelu = xΦ, silu = xσ, softplus' = σ,
erf(x) = 2Φ(√2 x) − 1, sin^(k)(x) = sin(x + kπ/2).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special

__all__ = ["DERIVATIVES"]

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


DERIVATIVES = {"linear": d_linear, "tanh": d_tanh, "erf": d_erf, "gelu": d_gelu, "silu": d_silu,
               "softplus": d_softplus, "sin": d_sin}
